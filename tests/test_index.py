"""FAISS indexes checked against brute force: exact results for the flat index, recall for HNSW."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.features.index import EXACT_MAX_VECTORS, build_index, knn, knn_pairs, load_index, range_pairs, save_index
from pipeline.warehouse import Warehouse


def clustered_unit_vectors(n: int, dim: int = 48, clusters: int = 60, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Unit vectors in tight groups, like near-duplicates and templates among photos."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    points = centres[rng.integers(clusters, size=n)] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim) * 4
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def brute_force_pairs(vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    similarities = vectors @ vectors.T
    rows, cols = np.nonzero(np.triu(similarities >= threshold, k=1))
    return set(zip(rows.tolist(), cols.tolist()))


def test_flat_index_matches_brute_force_exactly() -> None:
    vectors = clustered_unit_vectors(1500)
    ids = [f"sha{i}" for i in range(len(vectors))]
    vindex = build_index(vectors, ids)
    assert vindex.kind == "flat" and len(vectors) <= EXACT_MAX_VECTORS

    sims, rows = knn(vindex, vectors[:200], k=10)
    truth = np.argsort(-(vectors[:200] @ vectors.T), axis=1)[:, :10]
    assert np.array_equal(np.sort(rows, axis=1), np.sort(truth, axis=1))
    assert np.allclose(sims[:, 0], 1.0, atol=1e-5)

    threshold = 0.9
    found = {(i, j) for i, j, _ in range_pairs(vindex, vectors, threshold)}
    assert found == brute_force_pairs(vectors, threshold)
    assert len(found) > 1000  # the test data really has near-duplicates
    assert all(i < j for i, j in found)


def test_hnsw_recall_against_brute_force() -> None:
    # dim 512 with thousands of queries: the shape on which faiss 1.15.1 aborted unchunked searches.
    vectors = clustered_unit_vectors(4000, dim=512, seed=1)
    vindex = build_index(vectors, [str(i) for i in range(len(vectors))], kind="hnsw")
    queries = vectors[:500]
    _, rows = knn(vindex, queries, k=10)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall_at_10 = np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, truth)])
    assert recall_at_10 >= 0.95, recall_at_10  # measured 0.99+ with M=32, efSearch=128

    threshold = 0.93
    truth_pairs = brute_force_pairs(vectors, threshold)
    found = {(i, j) for i, j, _ in range_pairs(vindex, vectors, threshold)}
    assert found <= truth_pairs  # never a pair below the threshold
    assert len(found) / len(truth_pairs) >= 0.95, (len(found), len(truth_pairs))


def test_ivf_recall_against_brute_force() -> None:
    vectors = clustered_unit_vectors(20000, dim=64, clusters=400, seed=3)
    vindex = build_index(vectors, [str(i) for i in range(len(vectors))], kind="ivf")
    queries = vectors[:500]
    sims, rows = knn(vindex, queries, k=10)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall_at_10 = np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, truth)])
    assert recall_at_10 >= 0.95, recall_at_10
    exact = np.take_along_axis(queries @ vectors.T, rows, axis=1)
    assert np.abs(sims - exact).max() < 5e-3  # fp16 storage: similarities within 0.005


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_round_trips_through_the_warehouse(kind: str, tmp_path: Path) -> None:
    vectors = clustered_unit_vectors(300, seed=2)
    ids = [f"sha{i}" for i in range(len(vectors))]
    warehouse = Warehouse(str(tmp_path))
    uri = save_index(warehouse, build_index(vectors, ids, kind=kind), "classic-v1", "2026-01-01")
    assert Path(uri, "index.faiss").is_file() and Path(uri, "ids.parquet").is_file()
    loaded = load_index(warehouse, "classic-v1", "2026-01-01")
    assert loaded.ids == ids and loaded.kind == kind and loaded.dim == vectors.shape[1]
    assert np.array_equal(knn(loaded, vectors[:5], 3)[1][:, 0], np.arange(5))
    with pytest.raises(FileNotFoundError, match="no index"):
        load_index(warehouse, "classic-v1", "2030-01-01")


def test_empty_and_mismatched_inputs() -> None:
    empty = build_index(np.zeros((0, 8), np.float32), [])
    assert list(range_pairs(empty, np.zeros((0, 8), np.float32), 0.9)) == []
    with pytest.raises(ValueError, match="2 vectors but 1 ids"):
        build_index(np.ones((2, 8), np.float32), ["a"])


def test_knn_pairs_are_the_thresholded_neighbour_graph() -> None:
    vectors = clustered_unit_vectors(800, seed=4)
    vindex = build_index(vectors, [str(i) for i in range(len(vectors))])
    pairs = knn_pairs(vindex, vectors, threshold=0.9, k=3)
    similarities = vectors @ vectors.T
    np.fill_diagonal(similarities, -np.inf)
    top = np.argsort(-similarities, axis=1)[:, :3]
    expected = {(min(i, int(j)), max(i, int(j))) for i in range(len(vectors)) for j in top[i] if similarities[i, j] >= 0.9}
    assert {(i, j) for i, j, _ in pairs} == expected
    assert len(pairs) == len(expected) and all(i < j for i, j, _ in pairs)
    assert all(abs(s - similarities[i, j]) < 1e-5 for i, j, s in pairs)


def test_float16_vectors_give_nearly_the_same_pairs() -> None:
    vectors = clustered_unit_vectors(600, seed=5)
    ids = [str(i) for i in range(len(vectors))]
    full = {(i, j) for i, j, _ in knn_pairs(build_index(vectors, ids), vectors, 0.9, 5)}
    half = vectors.astype(np.float16)
    halved = knn_pairs(build_index(half, ids), half, 0.9, 5)
    # The test data's groups are so tight that neighbours tie to 1e-3; rounding reorders some ties.
    assert len(full & {(i, j) for i, j, _ in halved}) / len(full) >= 0.9
    assert all(abs(s - float(vectors[i] @ vectors[j])) < 2e-3 for i, j, s in halved)


def test_the_index_kind_follows_this_machines_calibration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small collections are exact without measuring anything; larger ones take the kind the machine's
    own figures predict faster, measured once and kept in the warehouse (another machine measures again)."""
    from pipeline.features import index as index_module
    from pipeline.features.index import CALIBRATE_ABOVE, SearchCalibration, choose_kind, measure_search

    warehouse = Warehouse(str(tmp_path))
    measured: list[int] = []

    def fake_measure(dim: int, size: int = 1000) -> SearchCalibration:
        measured.append(dim)
        # exact 1 s at 1,000 vectors, IVF 4 s: exact grows as N^2, IVF as N^1.5, so they cross at 16,000
        return SearchCalibration(index_module.machine_id(), dim, 1000, flat_s=1.0, ivf_s=4.0, measured_at="2026-01-01T00:00:00+00:00")

    monkeypatch.setattr(index_module, "measure_search", fake_measure)
    assert choose_kind(CALIBRATE_ABOVE, 64, warehouse)[0] == "flat" and measured == []  # seconds anywhere: nothing measured
    monkeypatch.setattr(index_module, "CALIBRATE_ABOVE", 100)
    assert choose_kind(15_000, 64, warehouse)[0] == "flat" and choose_kind(17_000, 64, warehouse)[0] == "ivf"
    kind, why = choose_kind(50_000, 64, warehouse)
    assert kind == "ivf" and "predicted 2500 s exact, 1414 s IVF" in why
    assert measured == [64]  # once, then read back from the warehouse
    assert choose_kind(50_000, 32, warehouse)[0] == "ivf" and measured == [64, 32]  # per dimension
    monkeypatch.setattr(index_module, "machine_id", lambda: "another-cpu")
    choose_kind(50_000, 64, warehouse)
    assert measured == [64, 32, 64] and len(list((tmp_path / "indexes" / "calibration").iterdir())) == 3
    assert choose_kind(50_000, 64)[0] == "flat"  # no warehouse to keep figures in: the default crossover
    real = measure_search(16, size=2048)  # the real measurement runs and times both kinds
    assert real.size == 2048 and real.flat_s > 0 and real.ivf_s > 0

"""The index reference: what every headshot shares, taken out before the homogeneity index.

Constructed cases with known answers, where a reference comes from (warehouse, shipped, frozen by
the first big-enough run, none), what happens to bad reference files, the `homog reference`
commands, and that trends never join indexes measured against different references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.apps.cli import app
from pipeline.features.reference import (
    NO_REFERENCE_ID,
    PACKAGED,
    ReferenceError,
    fit_reference,
    from_bytes,
    no_reference,
    run_reference,
    save_reference,
    stored_reference,
    to_bytes,
)  # fmt: skip
from pipeline.layout import reference_file as reference_key
from pipeline.metrics.homogeneity import page_index
from pipeline.metrics.trends import trends_table
from pipeline.warehouse import Warehouse
from tests.conftest import photo_like

DIM = 32


def headshots(rng: np.random.Generator, n: int, template: np.ndarray | None = None) -> np.ndarray:
    """Unit vectors that share a strong 'generic headshot' direction (axis 0), as real embeddings do;
    a template adds one more shared direction to every photo of a page."""
    vectors = 0.25 * rng.normal(size=(n, DIM))
    vectors[:, 0] += 3.0
    if template is not None:
        vectors += template
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def index_of(vectors: np.ndarray, reference) -> float:  # type: ignore[no-untyped-def]
    n = len(vectors)
    return page_index(reference.centre(vectors), np.zeros((n, n), bool), 200, seed=1)[0]


def test_centring_separates_a_templated_page_that_raw_similarity_cannot() -> None:
    rng = np.random.default_rng(0)
    reference = fit_reference(headshots(rng, 400), "test-embedder", "unrelated headshots")
    diverse = headshots(rng, 30)
    template = np.zeros(DIM)
    template[1:4] = 0.4
    templated = headshots(rng, 30, template)
    none = no_reference("test-embedder", DIM)
    raw_diverse, raw_templated = index_of(diverse, none), index_of(templated, none)
    assert raw_diverse > 0.75 and raw_templated - raw_diverse < 0.05  # the shared part swamps everything
    assert index_of(diverse, reference) < 0.15  # unrelated photos: ~0 once the shared part is out
    assert index_of(templated, reference) > 3 * index_of(diverse, reference)


def test_a_photo_equal_to_the_reference_mean_is_similar_to_nothing() -> None:
    reference = fit_reference(np.eye(4)[:2], "test-embedder", "two photos")
    centred = reference.centre(np.array([[0.5, 0.5, 0, 0], [0, 0, 1, 0]]))
    assert np.isfinite(centred).all() and not centred[0].any()
    assert np.linalg.norm(centred[1]) == pytest.approx(1.0)


def test_reference_id_follows_its_content() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(10, DIM))
    same = fit_reference(vectors, "e", "a"), fit_reference(vectors[::-1].copy(), "e", "b")
    assert same[0].id == same[1].id  # order and wording do not matter
    assert fit_reference(vectors[:9], "e", "a").id != same[0].id
    assert fit_reference(vectors, "other", "a").id != same[0].id
    assert no_reference("e", DIM).id == NO_REFERENCE_ID
    with pytest.raises(ReferenceError, match="at least 2"):
        fit_reference(vectors[:1], "e", "one photo")


# ---------------------------------------------------------------- storage
def test_reference_round_trips_and_bad_files_are_refused(tmp_path: Path) -> None:
    reference = fit_reference(np.random.default_rng(0).normal(size=(5, DIM)), "e", "five photos")
    data = to_bytes(reference)
    back = from_bytes(data, "e", DIM, "f.npz")
    assert back.id == reference.id and back.source == "five photos" and back.n_photos == 5
    with pytest.raises(ReferenceError, match="fitted for 'e', not 'other'"):
        from_bytes(data, "other", DIM, "f.npz")
    with pytest.raises(ReferenceError, match=r"expected \(16,\)"):
        from_bytes(data, "e", 16, "f.npz")
    with pytest.raises(ReferenceError, match="not a reference file"):
        from_bytes(b"<html>not numpy</html>", "e", DIM, "f.npz")
    nan = fit_reference(np.full((2, DIM), np.nan), "e", "broken")
    with pytest.raises(ReferenceError, match="non-finite"):
        from_bytes(to_bytes(nan), "e", DIM, "f.npz")


def test_the_shipped_classic_reference_is_used_and_the_warehouse_one_wins(tmp_path: Path) -> None:
    warehouse = Warehouse(str(tmp_path / "wh"))
    shipped = stored_reference(warehouse, "classic-v1", 785)
    assert shipped is not None and shipped.n_photos == 184 and "real_ffhq" in shipped.source
    assert (PACKAGED / "classic-v1.npz").is_file()
    own = fit_reference(np.random.default_rng(0).normal(size=(3, 785)), "classic-v1", "chosen")
    save_reference(warehouse, own)
    assert stored_reference(warehouse, "classic-v1", 785).id == own.id  # type: ignore[union-attr]
    warehouse.write_bytes(reference_key("classic-v1"), b"garbage")
    with pytest.raises(ReferenceError):  # a broken stored reference is an error, not a silent fallback
        stored_reference(warehouse, "classic-v1", 785)


def test_the_first_big_enough_run_freezes_the_reference(tmp_path: Path) -> None:
    warehouse = Warehouse(str(tmp_path / "wh"))
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, DIM))
    small = run_reference(warehouse, "new-embedder", vectors[:3], min_photos=5, run_date="2026-01-01")
    assert small.id == NO_REFERENCE_ID and not warehouse.exists(reference_key("new-embedder"))
    frozen = run_reference(warehouse, "new-embedder", vectors, min_photos=5, run_date="2026-01-02")
    assert frozen.n_photos == 6 and "2026-01-02" in frozen.source and warehouse.exists(reference_key("new-embedder"))
    later = run_reference(warehouse, "new-embedder", rng.normal(size=(2, DIM)), min_photos=5, run_date="2026-01-03")
    assert later.id == frozen.id  # later runs measure against the frozen one, whatever their photos


# ------------------------------------------------------------------ trends
def test_trends_never_join_indexes_measured_against_different_references() -> None:
    def row(reference: str, index: float, **extra: str) -> dict:
        return {"company": "a", "embedder": "classic-v1", "n_images": 20, "homogeneity_index": index, "ci_low": index - 0.01,
                "ci_high": index + 0.01, "near_dup_rate": 0.0, "status": "ok", "index_reference": reference, **extra}  # fmt: skip

    history = pd.DataFrame([row("none", 0.6, run_date="2026-01-01"), row("184@new", 0.2, run_date="2026-01-02")])
    trends = trends_table(history, pd.DataFrame([row("184@new", 0.25)]), "2026-01-03")
    assert list(trends["run_date"]) == ["2026-01-02", "2026-01-03"]
    old_rows = history.drop(columns="index_reference")  # written before references existed
    assert list(trends_table(old_rows, pd.DataFrame([row("184@new", 0.25)]), "2026-01-03")["run_date"]) == ["2026-01-03"]


# --------------------------------------------------------------------- CLI
def test_reference_fit_and_show(tmp_path: Path) -> None:
    folder = tmp_path / "generic"
    (folder / "more").mkdir(parents=True)
    for i in range(4):
        photo_like(seed=i).save(folder / ("more" if i % 2 else "") / f"p{i}.jpg")
    (folder / "notes.jpg").write_text("not a picture")
    wh = str(tmp_path / "wh")
    runner = CliRunner()
    fitted = runner.invoke(app, ["reference", "fit", str(folder), "--warehouse", wh, "--embedder", "classic"])
    assert fitted.exit_code == 0, fitted.output
    assert "skipped" in fitted.output and "notes.jpg" in fitted.output and "not an image" in fitted.output
    reference = stored_reference(Warehouse(wh), "classic-v1", 785)
    assert reference is not None and reference.n_photos == 4
    again = runner.invoke(app, ["reference", "fit", str(folder), "--warehouse", wh, "--embedder", "classic"])
    assert again.exit_code == 2 and "--force" in again.output  # never replaced by accident
    shown = runner.invoke(app, ["reference", "show", "--warehouse", wh, "--embedder", "classic"])
    assert shown.exit_code == 0 and reference.id in shown.output
    missing = runner.invoke(app, ["reference", "fit", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.npz"), "--embedder", "classic"])
    assert missing.exit_code == 2 and "not found" in missing.output
    unwritable = runner.invoke(
        app, ["reference", "fit", str(folder), "--out", str(tmp_path / "no" / "dir" / "r.npz"), "--embedder", "classic"]
    )
    assert unwritable.exit_code == 2 and "could not write the reference" in unwritable.output


def test_refitting_the_shipped_classic_reference_reproduces_it(corpus: Path) -> None:
    from pipeline.config import IntakeConfig
    from pipeline.features.embedders.classic import ClassicEmbedder
    from pipeline.features.reference import fit_from_folders

    shipped = stored_reference(Warehouse(str(corpus.parent / "no-warehouse-here")), "classic-v1", 785)
    refitted, skipped = fit_from_folders([str(corpus / "real_ffhq"), str(corpus / "ai_stylegan2")], ClassicEmbedder(), IntakeConfig())
    assert not skipped and refitted.id == shipped.id  # type: ignore[union-attr]

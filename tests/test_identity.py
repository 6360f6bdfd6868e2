"""Face identity: pairs by descriptor distance, copies of one photo left out, counts per page, and the
privacy settings (descriptors kept sealed to their photo by default and reused, deleted where the
setting is off or an earlier version kept them in the clear, deleted by retention with their photo;
identity switched off)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.features.identity import (
    FACE_LISTS,
    NEIGHBOURS,
    SAME_FACE_DISTANCE,
    VERSION,
    content_pairs,
    face_descriptor,
    identity_table,
    kept_descriptors,
    page_counts,
    same_face_pairs,
    seal,
    unseal,
)
from pipeline.layout import face_descriptors_folder, neighbour_lists_file


def test_same_face_pairs_finds_close_descriptors_only() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 0.1, (4, 128)).astype(np.float32)
    base[1] += 1.0  # far from everything
    descriptors = np.concatenate([base, base[[0]] + 0.01, base[[2]] + 0.5])  # 4: 0's twin; 5: too far from 2
    pairs = same_face_pairs(descriptors)
    assert [(i, j) for i, j, _ in pairs] == [(0, 4)] and pairs[0][2] < SAME_FACE_DISTANCE
    assert same_face_pairs(descriptors[:1]) == []


def _faces(rng: np.random.Generator, n: int, people: np.ndarray) -> np.ndarray:
    """Descriptors of `n` photos of random `people` (dlib-like scale: one person's photos ~0.2 apart)."""
    return (people[rng.integers(len(people), size=n)] + rng.normal(0, 0.015, (n, 128))).astype(np.float32)


def test_same_face_pairs_are_the_nearest_faces_closer_than_the_threshold() -> None:
    """The search ranks by inner product (`neighbours`); what it returns is what an exact L2
    computation over every pair says: each face's k nearest, those closer than the threshold."""
    rng = np.random.default_rng(3)
    people = rng.normal(0, 0.06, (40, 128))
    descriptors = _faces(rng, 300, people)  # ~7 photos a person, some with more than k others: the cap bites
    distances = np.linalg.norm(descriptors[:, None].astype(np.float64) - descriptors[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    expected = set()
    for i, row in enumerate(distances):
        for j in np.argsort(row, kind="stable")[:NEIGHBOURS]:
            if row[j] < SAME_FACE_DISTANCE:
                expected.add((min(i, int(j)), max(i, int(j))))
    pairs = same_face_pairs(descriptors)
    assert {(i, j) for i, j, _ in pairs} == expected and len(expected) > 300
    assert np.allclose([d for *_, d in pairs], [distances[i, j] for i, j, _ in pairs], atol=1e-4)
    assert max(np.bincount(np.array([ij for i, j, _ in pairs for ij in (i, j)])).tolist()) > NEIGHBOURS  # a person with many photos


def test_same_faces_kept_over_nights_equal_a_fresh_search_and_search_only_the_new_faces(tmp_path: Path) -> None:
    from pipeline.features.identity import kept_content_pairs
    from pipeline.warehouse import Warehouse

    warehouse = Warehouse(str(tmp_path / "w"))
    rng = np.random.default_rng(4)
    people = rng.normal(0, 0.06, (60, 128))
    population = {f"face-{i:04d}": face for i, face in enumerate(_faces(rng, 500, people))}
    made = len(population)
    for night in range(5):
        contents = sorted(population)
        descriptors = np.stack([population[c] for c in contents])
        kept, searched = kept_content_pairs(warehouse, contents, descriptors)
        fresh = content_pairs(contents, descriptors)
        assert {pair[:2] for pair in kept} == {pair[:2] for pair in fresh} and len(fresh) > 500
        assert np.allclose(sorted(d for *_, d in kept), sorted(d for *_, d in fresh), atol=1e-4)
        assert searched == 500 if night == 0 else searched < 60  # the new faces and a few lists run short, not 500
        for gone in rng.choice(contents, size=8, replace=False):  # 1.6% of the faces replaced
            del population[gone]
        for face in _faces(rng, 8, people):
            population[f"face-{made:04d}"] = face
            made += 1
    lists = np.load(tmp_path / "w" / neighbour_lists_file(FACE_LISTS))
    assert set(lists.files) == {"basis", "contents", "rows", "sims"}  # row numbers and scores, no descriptor


def test_identity_table_leaves_out_copies_of_one_photo_and_counts_pages() -> None:
    images = pd.DataFrame({
        "company": ["a", "a", "b", "b"], "image": ["a1", "a2", "b1", "b2"],
        "content_sha256": ["x", "y", "z", "w"], "status": ["ok"] * 4,
    })  # fmt: skip
    descriptors = np.zeros((4, 128), np.float32)
    descriptors[3] += 5.0  # w is someone else; x, y, z are one face
    table = identity_table(images, content_pairs(["x", "y", "z", "w"], descriptors), same_photo={frozenset(("x", "z"))})
    assert sorted(map(tuple, table[["image_a", "image_b", "same_page"]].values.tolist())) == [("a1", "a2", True), ("a2", "b1", False)]
    counts = page_counts(table, ["a", "b", "c"]).set_index("company")
    assert counts.loc["a"].tolist() == [2, 1] and counts.loc["b"].tolist() == [0, 1] and counts.loc["c"].tolist() == [0, 0]
    for nothing in (table.iloc[:0], pd.DataFrame()):  # no pair found; a run without the table at all
        assert page_counts(nothing, ["a", "b"])[["n_face_repeated", "n_face_shared"]].values.tolist() == [[0, 0], [0, 0]]


def test_descriptor_of_a_face_is_stable_under_resizing_and_absent_without_a_face() -> None:
    from tests.fixture_site import face_pictures

    first, second = (Image.open(io.BytesIO(data)) for data in face_pictures(2))
    one = face_descriptor(first)
    assert one is not None and one.shape == (128,)
    resized = face_descriptor(first.resize((first.width * 3 // 4, first.height * 3 // 4)))
    assert resized is not None and np.linalg.norm(one - resized) < SAME_FACE_DISTANCE
    assert face_descriptor(Image.new("RGB", (200, 200), "grey")) is None


def test_the_descriptor_network_is_dlibs_own() -> None:
    """The ResNet run by torch with the weights read from dlib's model file gives dlib's descriptors
    (on faces and on noise, in one batch or one by one); a file of another layout is refused."""
    import dlib
    import face_recognition_models as models

    from pipeline.features.face_network import FaceNetwork, _layers, _structure
    from pipeline.features.identity import _models, describe, face_chip
    from tests.fixture_site import face_pictures

    landmarks, network = _models()
    reference = dlib.face_recognition_model_v1(models.face_recognition_model_location())
    pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in face_pictures(3)]
    pictures.append(Image.fromarray(np.random.default_rng(0).integers(0, 256, (180, 160, 3), np.uint8)))  # noise, any box
    chips, expected = [], []
    for picture in pictures:
        rgb = np.ascontiguousarray(np.asarray(picture))
        shape = landmarks(rgb, dlib.rectangle(20, 20, picture.width - 20, picture.height - 20))
        chips.append(np.asarray(dlib.get_face_chip(rgb, shape, size=150, padding=0.25)))
        expected.append(np.asarray(reference.compute_face_descriptor(rgb, shape), np.float32))
    batch = describe(chips)
    assert batch.shape == (4, 128) and np.abs(batch - np.stack(expected)).max() < 1e-4
    # A face's descriptor does not depend on what else was described with it, to the last bit (a kept
    # descriptor and a recomputed one give the same pairs).
    assert np.array_equal(describe(chips[:1])[0], batch[0]) and np.array_equal(describe(chips[2:] + chips[:2])[0], batch[2])
    assert face_chip(pictures[0]) is not None and describe([]).shape == (0, 128)

    with open(models.face_recognition_model_location(), "rb") as file:
        layers = _layers(file.read())
    with pytest.raises(ValueError, match="not the layout"):
        _structure(layers[:10] + layers[14:])  # a residual block missing
    with pytest.raises(ValueError, match="not the layout"):
        FaceNetwork(models.pose_predictor_five_point_model_location())  # another model file
    assert isinstance(network, FaceNetwork)


def test_the_face_signals_detection_serves_identity_unchanged(tmp_path: Path) -> None:
    """Identity reuses the box the face signals stored instead of running the detector again: the same
    descriptor; a box detected at another score floor, or a cache without boxes, is not used."""
    from pipeline.features.face_signals import face_boxes, measure_images
    from pipeline.warehouse import Warehouse
    from tests.fixture_site import face_pictures

    warehouse = Warehouse(str(tmp_path))
    rows = []
    for i, data in enumerate(face_pictures(2)):
        key = f"objects/raw/{i:02d}/{i}.jpg"
        warehouse.write_bytes(key, data)
        rows.append({"company": "a", "image": f"{i}.jpg", "content_sha256": f"c{i}", "status": "ok", "raw_object": key})
    measure_images(pd.DataFrame(rows), warehouse, score_floor=0.9)
    boxes = face_boxes(warehouse, 0.9)
    assert set(boxes) == {"c0", "c1"} and face_boxes(warehouse, 0.95) == {}
    picture = Image.open(io.BytesIO(face_pictures(2)[0]))
    assert np.array_equal(face_descriptor(picture, 0.9, box=boxes["c0"]), face_descriptor(picture, 0.9))


# ----------------------------------------------------- privacy settings, end to end
@pytest.fixture(scope="module")
def face_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two pages of three faces, and one more face kept aside (`extra.jpg`) to change a page."""
    from tests.fixture_site import face_pictures

    root = tmp_path_factory.mktemp("faces")
    pictures = face_pictures(7)
    for i, data in enumerate(pictures[:6]):
        folder = root / "pages" / ("acme" if i < 3 else "globex")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"p{i}.jpg").write_bytes(data)
    (root / "extra.jpg").write_bytes(pictures[6])
    return root


def _run(pages: Path, warehouse: Path, run_date: str, **privacy: bool):  # type: ignore[no-untyped-def]
    from pipeline.config import load_settings
    from pipeline.ingest.sources import scan_folder
    from pipeline.stages import run_pipeline

    settings = load_settings(warehouse=str(warehouse), reports=str(warehouse.parent / "reports"), embedder="classic", privacy=privacy)
    return run_pipeline(scan_folder(str(pages)), settings, run_date=run_date, progress=False)


def _pages_with_one_more_face(face_folder: Path, tmp_path: Path) -> Path:
    import shutil

    pages = tmp_path / "pages"
    shutil.copytree(face_folder / "pages", pages)
    shutil.copy(face_folder / "extra.jpg", pages / "acme" / "p6.jpg")
    return pages


def test_a_sealed_descriptor_opens_only_with_its_photo() -> None:
    descriptor = np.random.default_rng(0).normal(size=128).astype(np.float32)
    photo, other_photo = b"\xff\xd8 the photo's bytes", b"\xff\xd8 another photo's bytes"
    sealed = seal(descriptor, photo, "content-a")
    assert np.array_equal(unseal(sealed, photo, "content-a"), descriptor)
    assert descriptor.tobytes() not in sealed and len(sealed) == 128 * 4 + 16  # encrypted: ciphertext and tag
    assert seal(descriptor, photo, "content-a") == sealed  # deterministic: a rerun writes the same bytes
    assert unseal(sealed, other_photo, "content-a") is None  # the photo is gone: nothing to read it with
    assert unseal(sealed, photo, "content-b") is None  # moved to another photo's row: refused
    assert unseal(sealed[:-1] + bytes([sealed[-1] ^ 1]), photo, "content-a") is None  # tampered with
    assert unseal(b"short", photo, "content-a") is None
    nan = np.full(128, np.nan, np.float32)  # "no usable face" is kept too, so it is not looked for again
    assert np.isnan(unseal(seal(nan, photo, "c"), photo, "c")).all()


@pytest.mark.parametrize("keep", [False, True])
def test_a_job_describes_each_photo_and_marks_the_faceless(tmp_path: Path, keep: bool) -> None:
    """A worker's job: a descriptor per photo in order, NaN for a photo with no face (kept too, so it
    is not looked for again), each sealed to its own photo where descriptors are kept."""
    from pipeline.features.identity import DescriptorJob, compute_descriptors
    from pipeline.warehouse import Warehouse
    from tests.conftest import encode
    from tests.fixture_site import face_pictures

    warehouse = Warehouse(str(tmp_path))
    photos = [face_pictures(1)[0], encode(Image.new("RGB", (200, 200), "grey"))]
    for i, data in enumerate(photos):
        warehouse.write_bytes(f"objects/raw/{i}.jpg", data)
    job = DescriptorJob(warehouse, [("face", "objects/raw/0.jpg", None), ("blank", "objects/raw/1.jpg", None)], 0.9, keep)
    (face, face_sealed), (blank, blank_sealed) = compute_descriptors(job)
    assert np.isfinite(face).all() and np.array_equal(face, face_descriptor(Image.open(io.BytesIO(photos[0]))))
    assert np.isnan(blank).all()
    if keep:
        assert np.array_equal(unseal(face_sealed, photos[0], "face"), face) and unseal(face_sealed, photos[1], "face") is None
        assert np.isnan(unseal(blank_sealed, photos[1], "blank")).all()
    else:
        assert face_sealed == blank_sealed == b""


@pytest.mark.parametrize("root", ["local", "memory://"])
def test_kept_descriptors_are_read_back_with_their_photos_from_a_disk_and_from_a_store(tmp_path: Path, root: str) -> None:
    """Kept descriptors are unsealed in this thread from a local disk and in threads from a store
    (round trips): the same descriptors either way; a photo whose bytes changed under its key cannot
    open its descriptor, and its face is described again."""
    import uuid

    import pandas as pd

    from pipeline.features.identity import face_descriptors
    from pipeline.warehouse import Warehouse
    from tests.fixture_site import face_pictures

    warehouse = Warehouse(str(tmp_path / "wh") if root == "local" else f"memory://wh-{uuid.uuid4().hex}")
    assert warehouse.is_local == (root == "local")
    pictures = face_pictures(3)
    contents = [f"c{i}" for i in range(len(pictures))]
    for content, data in zip(contents, pictures):
        warehouse.write_bytes(f"objects/raw/{content}.jpg", data)
    images = pd.DataFrame({"content_sha256": contents, "raw_object": [f"objects/raw/{c}.jpg" for c in contents]})
    first, computed = face_descriptors(warehouse, images, contents, keep=True)
    again, computed_again = face_descriptors(warehouse, images, contents, keep=True)
    assert (computed, computed_again) == (3, 0) and np.array_equal(first, again) and np.isfinite(first).all()
    warehouse.write_bytes("objects/raw/c1.jpg", pictures[2])  # other bytes under c1's key: its seal does not open
    changed, computed_changed = face_descriptors(warehouse, images, contents, keep=True)
    assert computed_changed == 1 and np.array_equal(changed[[0, 2]], first[[0, 2]]) and np.array_equal(changed[1], first[2])


@pytest.mark.parametrize("keep", [False, True])
def test_unchanged_faces_reuse_the_pairs_and_kept_descriptors_make_a_change_cost_only_new_faces(
    face_folder: Path, tmp_path: Path, keep: bool
) -> None:
    warehouse = tmp_path / "wh"
    first = _run(face_folder / "pages", warehouse, "2026-01-01", keep_face_descriptors=keep)
    unchanged = _run(face_folder / "pages", warehouse, "2026-01-02", keep_face_descriptors=keep)
    changed = _run(_pages_with_one_more_face(face_folder, tmp_path), warehouse, "2026-01-03", keep_face_descriptors=keep)
    computed = [run.counts["face_descriptors_computed"] for run in (first, unchanged, changed)]
    # unchanged pages: the last run's pairs, no descriptor; a new face: only it where descriptors are kept, else all again
    assert computed == ([6, 0, 1] if keep else [6, 0, 7])
    unsealed = [run.counts["face_descriptors_unsealed"] for run in (first, unchanged, changed)]
    assert unsealed == ([0, 0, 6] if keep else [0, 0, 0])  # the other six were read back, not computed
    assert (warehouse / face_descriptors_folder(VERSION)).is_dir() == keep  # in memory only where the setting is off
    if keep:
        from pipeline.warehouse import Warehouse

        stored = (warehouse / face_descriptors_folder(VERSION)).glob("*.parquet")
        assert all(pd.read_parquet(shard).columns.tolist() == ["content_sha256", "sealed"] for shard in stored)
        assert len(kept_descriptors(Warehouse(str(warehouse)))) == 7
    # kept descriptors give the pairs that computing them all gives
    recomputed = _run(
        _pages_with_one_more_face(face_folder, tmp_path / "again"), tmp_path / "fresh", "2026-01-03", keep_face_descriptors=False
    )
    assert pd.read_parquet(changed.outputs["identities"]).equals(pd.read_parquet(recomputed.outputs["identities"]))
    pairs = [
        pd.read_parquet(run.outputs["identities"]).sort_values(["image_a", "image_b"], ignore_index=True) for run in (first, unchanged)
    ]
    pd.testing.assert_frame_equal(pairs[0], pairs[1])


def test_descriptors_that_must_not_stay_are_deleted_at_the_next_run(face_folder: Path, tmp_path: Path) -> None:
    """Switched off: the kept ones go; an earlier version's descriptors in the clear go in any case."""
    warehouse = tmp_path / "wh"
    _run(face_folder / "pages", warehouse, "2026-01-01")
    assert (warehouse / face_descriptors_folder(VERSION)).is_dir()  # kept (sealed) by default
    clear = warehouse / face_descriptors_folder(1) / "shard-0.parquet"
    clear.parent.mkdir(parents=True)
    pd.DataFrame({"content_sha256": ["x"], "descriptor": [[0.0] * 128]}).to_parquet(clear)
    _run(face_folder / "pages", warehouse, "2026-01-02")
    assert not clear.parent.exists() and (warehouse / face_descriptors_folder(VERSION)).is_dir()
    lists = warehouse / neighbour_lists_file(FACE_LISTS)
    assert lists.is_file()  # each face's nearest faces, kept with the descriptors they come from
    _run(face_folder / "pages", warehouse, "2026-01-03", keep_face_descriptors=False)  # unchanged faces: pairs reused, still deleted
    assert not (warehouse / face_descriptors_folder(VERSION)).exists() and not lists.exists()
    _run(_pages_with_one_more_face(face_folder, tmp_path), warehouse, "2026-01-04", keep_face_descriptors=False)
    assert not lists.exists()  # a change of faces searched every face again, keeping nothing


def test_retention_deletes_a_kept_descriptor_with_its_photo(face_folder: Path, tmp_path: Path) -> None:
    import shutil

    from pipeline.apps.retention import purge_expired
    from pipeline.config import RetentionConfig
    from pipeline.warehouse import Warehouse

    warehouse = tmp_path / "wh"
    pages = tmp_path / "pages"
    shutil.copytree(face_folder / "pages", pages)
    _run(pages, warehouse, "2026-01-01")
    (pages / "acme" / "p0.jpg").unlink()  # this person left acme: their photo is no longer seen
    _run(pages, warehouse, "2026-01-20")
    store = Warehouse(str(warehouse))
    assert len(kept_descriptors(store)) == 6
    retention = RetentionConfig(raw_images_days=30)
    dry = purge_expired(store, retention, "2026-02-05", dry_run=True)
    assert len(kept_descriptors(store)) == 6  # a dry run deletes nothing
    log = purge_expired(store, retention, "2026-02-05")
    rows = log[log["kind"] == "face_descriptor"]
    assert rows["action"].tolist().count("deleted") == 1 and rows["action"].tolist().count("keep") == 5
    assert dry.loc[dry["kind"] == "face_descriptor", "action"].tolist().count("would delete") == 1
    assert rows.loc[rows["action"] == "deleted", "last_seen"].tolist() == ["2026-01-01"]
    assert len(kept_descriptors(store)) == 5 and len(list((warehouse / face_descriptors_folder(VERSION)).glob("*.parquet"))) == 1
    purged = rows.loc[rows["action"] == "deleted", "object"].str.rsplit("/", n=1).str[-1].tolist()
    nearest = np.load(warehouse / neighbour_lists_file(FACE_LISTS))["contents"].tolist()
    assert len(nearest) == 5 and not set(purged) & set(nearest)  # the nearest-faces lists no longer name it
    assert (log.loc[log["kind"] == "raw", "action"] == "deleted").sum() == 1  # and the photo went with it
    signals = log[log["kind"] == "face_signals"]  # and its face signals (face_window is a coarse face descriptor)
    assert signals["action"].tolist().count("deleted") == 1 and signals.loc[signals["action"] == "deleted", "last_seen"].tolist() == [
        "2026-01-01"
    ]
    gone = signals.loc[signals["action"] == "deleted", "object"].str.rsplit("/", n=1).str[-1].tolist()
    from pipeline.features.face_signals import face_windows

    assert not face_windows(store, gone) and len(face_windows(store, list(kept_descriptors(store)))) == 5


def test_face_identity_off_computes_nothing_and_says_not_measured(face_folder: Path, tmp_path: Path) -> None:
    run = _run(face_folder / "pages", tmp_path / "wh", "2026-01-01", face_identity=False)
    assert run.counts["face_descriptors_computed"] == 0 and run.counts["same_face_pairs"] == 0
    assert pd.read_parquet(run.outputs["identities"]).empty
    companies = pd.read_parquet(run.outputs["companies"])
    assert companies["n_face_repeated"].isna().all() and companies["n_face_shared"].isna().all()  # not "0 found"
    assert not (tmp_path / "wh" / "face_identity").exists()
    report = Path(run.outputs["report"])
    assert 'title="face identity is switched off' in report.read_text()
    audit_pages = list((report.parent / "companies").glob("*.html"))
    assert len(audit_pages) == 2 and all("Face identity is switched off" in page.read_text() for page in audit_pages)

"""Face identity: pairs by descriptor distance, copies of one photo left out, counts per page, and the
privacy settings (descriptors not kept by default, kept and reused on request, identity switched off)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.features.identity import (
    SAME_FACE_DISTANCE,
    VERSION,
    content_pairs,
    face_descriptor,
    identity_table,
    page_counts,
    same_face_pairs,
)
from pipeline.layout import face_descriptors_folder


def test_same_face_pairs_finds_close_descriptors_only() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 0.1, (4, 128)).astype(np.float32)
    base[1] += 1.0  # far from everything
    descriptors = np.concatenate([base, base[[0]] + 0.01, base[[2]] + 0.5])  # 4: 0's twin; 5: too far from 2
    pairs = same_face_pairs(descriptors)
    assert [(i, j) for i, j, _ in pairs] == [(0, 4)] and pairs[0][2] < SAME_FACE_DISTANCE
    assert same_face_pairs(descriptors[:1]) == []


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


def test_descriptor_of_a_face_is_stable_under_resizing_and_absent_without_a_face() -> None:
    from tests.fixture_site import face_pictures

    first, second = (Image.open(io.BytesIO(data)) for data in face_pictures(2))
    one = face_descriptor(first)
    assert one is not None and one.shape == (128,)
    resized = face_descriptor(first.resize((first.width * 3 // 4, first.height * 3 // 4)))
    assert resized is not None and np.linalg.norm(one - resized) < SAME_FACE_DISTANCE
    assert face_descriptor(Image.new("RGB", (200, 200), "grey")) is None


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


@pytest.mark.parametrize("keep", [False, True])
def test_unchanged_faces_reuse_the_pairs_and_descriptors_are_kept_only_on_request(face_folder: Path, tmp_path: Path, keep: bool) -> None:
    warehouse = tmp_path / "wh"
    first = _run(face_folder / "pages", warehouse, "2026-01-01", keep_face_descriptors=keep)
    unchanged = _run(face_folder / "pages", warehouse, "2026-01-02", keep_face_descriptors=keep)
    changed = _run(_pages_with_one_more_face(face_folder, tmp_path), warehouse, "2026-01-03", keep_face_descriptors=keep)
    computed = [run.counts["face_descriptors_computed"] for run in (first, unchanged, changed)]
    # unchanged pages: the last run's pairs, no descriptor; a new face: all again, unless descriptors are kept
    assert computed == ([6, 0, 1] if keep else [6, 0, 7])
    assert (warehouse / face_descriptors_folder(VERSION)).is_dir() == keep  # biometric data reaches the disk only on request
    pairs = [
        pd.read_parquet(run.outputs["identities"]).sort_values(["image_a", "image_b"], ignore_index=True) for run in (first, unchanged)
    ]
    pd.testing.assert_frame_equal(pairs[0], pairs[1])


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

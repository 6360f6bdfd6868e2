"""Region views: crops and bordered copies become near-duplicate candidates, at most k a photo,
cached by content hash, and the near-duplicate stage finds a crop that the whole-picture embedding misses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from pipeline.features.calibration import _crop
from pipeline.features.regions import DIM, N_VIEWS, cached_views, region_pairs, views
from pipeline.ingest.fetch import IntakeError
from pipeline.warehouse import Warehouse
from tests.conftest import encode, photo_like


def scene(seed: int, width: int = 240, height: int = 300) -> Image.Image:
    """A picture laid out as coarsely as a headshot (a few large regions of colour), with fine
    texture over it for the keypoints that verification aligns."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    fine = np.asarray(photo_like(width, height, seed=seed + 1000), float)
    return Image.fromarray(np.clip(0.75 * np.asarray(coarse, float) + 0.25 * fine, 0, 255).astype(np.uint8))


def _population(n: int = 12) -> list[Image.Image]:
    return [scene(100 + i) for i in range(n)]


def test_views_are_unit_vectors_of_the_whole_picture_and_its_windows() -> None:
    picture = scene(1)
    found = views(picture)
    assert found.shape == (N_VIEWS, DIM) and found.dtype == np.float32
    assert np.allclose(np.linalg.norm(found, axis=1), 1, atol=1e-5)
    assert np.array_equal(found, views(picture))  # deterministic
    assert not np.allclose(found[1], found[-1])  # the top-left and bottom-right windows differ


def test_a_mirrored_picture_has_the_same_whole_view() -> None:
    picture = scene(2)
    assert float(views(picture)[0] @ views(ImageOps.mirror(picture))[0]) > 0.999


@pytest.mark.parametrize("anchor", [0.0, 0.5, 1.0, 0.3])
def test_a_crop_of_up_to_30_percent_matches_a_window_of_its_original_better_than_the_whole(anchor: float) -> None:
    original = scene(3)
    crop = views(_crop(original, 0.25, anchor=anchor))[0]
    of_original = views(original)
    best_window = float((of_original[1:] @ crop).max())
    assert best_window >= 0.75 and best_window > float(of_original[0] @ crop)


def test_region_pairs_find_crops_and_bordered_copies_among_unrelated_photos() -> None:
    pictures = _population()
    pictures.append(_crop(pictures[3], 0.3, anchor=1.0))  # 12: a crop of 3, cut from the top left
    framed = photo_like(300, 360, seed=99)  # 13: 7 in a patterned frame (a flat one is trimmed, and then the embedding finds it)
    framed.paste(pictures[7], (30, 30))
    pictures.append(framed)
    pairs = {(i, j) for i, j, _ in region_pairs(np.stack([views(p) for p in pictures]), 0.7, 3)}
    assert (3, 12) in pairs and (7, 13) in pairs


def test_region_pairs_are_at_most_k_per_photo_however_alike_the_photos() -> None:
    base = scene(5)
    rng = np.random.default_rng(0)
    alike = [
        Image.fromarray(np.clip(np.asarray(base, float) + rng.normal(0, 3, (300, 240, 3)), 0, 255).astype(np.uint8)) for _ in range(20)
    ]
    all_views = np.stack([views(p) for p in alike])
    for k in (1, 3):
        pairs = region_pairs(all_views, 0.5, k)
        assert 0 < len(pairs) <= k * len(alike)
        assert all(i < j for i, j, _ in pairs) and len({(i, j) for i, j, _ in pairs}) == len(pairs)
    assert region_pairs(all_views[:1], 0.5, 3) == []  # one photo: nothing to pair


def test_region_views_are_computed_once_per_content(tmp_path: Path) -> None:
    warehouse = Warehouse(str(tmp_path / "wh"))
    pictures = _population(4)
    object_of = {}
    for i, picture in enumerate(pictures):
        key = f"objects/raw/{i:02d}/{i}.jpg"
        warehouse.write_bytes(key, encode(picture, quality=95))
        object_of[f"content-{i}"] = key
    first, computed = cached_views(warehouse, ["content-2", "content-0"], object_of)
    assert computed == 2 and first.shape == (2, N_VIEWS, DIM) and first.dtype == np.float16
    again, computed = cached_views(warehouse, ["content-0", "content-1", "content-2"], object_of)
    assert computed == 1  # only content-1 is new
    assert np.array_equal(again[0], first[1]) and np.array_equal(again[2], first[0])  # in the order asked
    assert cached_views(warehouse, [], object_of)[0].shape == (0, N_VIEWS, DIM)


def test_a_missing_picture_is_a_clear_error_and_keeps_the_views_already_cached(tmp_path: Path) -> None:
    warehouse = Warehouse(str(tmp_path / "wh"))
    warehouse.write_bytes("objects/raw/00/a.jpg", encode(photo_like(seed=1)))
    cached_views(warehouse, ["a"], {"a": "objects/raw/00/a.jpg"})
    with pytest.raises(IntakeError, match="not found"):
        cached_views(warehouse, ["a", "gone"], {"a": "objects/raw/00/a.jpg", "gone": "objects/raw/00/gone.jpg"})
    assert cached_views(warehouse, ["a"], {"a": "objects/raw/00/a.jpg"})[1] == 0


def _near_duplicate_pairs(folder: Path, warehouse: Path, **thresholds: object) -> tuple[pd.DataFrame, dict]:
    from pipeline.config import load_settings
    from pipeline.context import RunContext
    from pipeline.ingest.sources import scan_folder
    from pipeline.stages import BY_NAME, advance, begin_run

    settings = load_settings(warehouse=str(warehouse), embedder="classic", thresholds=thresholds or None)
    ctx = RunContext(settings, "2026-01-01", progress=False, rows=scan_folder(str(folder)))
    ctx.embedder()
    begin_run(ctx)
    counts: dict = {}
    for name in ("intake", "faces", "embed", "index", "near_duplicates"):
        result = BY_NAME[name].run(ctx)
        counts.update(result.get("counts", {}))
        ctx = advance(ctx, result)
    return ctx.warehouse.read_table("pairs", ctx.run_date), counts


def test_the_near_duplicate_stage_finds_a_crop_that_the_embedding_misses(tmp_path: Path) -> None:
    folder = tmp_path / "photos" / "acme"
    folder.mkdir(parents=True)
    pictures = _population(10)
    for i, picture in enumerate(pictures):
        (folder / f"p{i}.jpg").write_bytes(encode(picture, quality=95))
    (folder / "p4-cropped.jpg").write_bytes(encode(_crop(pictures[4], 0.3, anchor=0.0), quality=90))

    without, counts = _near_duplicate_pairs(tmp_path / "photos", tmp_path / "without", region_candidates_per_image=0)
    assert without.empty and counts["candidates_by_region_views"] == 0  # the embedding alone does not see it
    found, counts = _near_duplicate_pairs(tmp_path / "photos", tmp_path / "with")
    assert {(a, b) for a, b in zip(found["image_a"], found["image_b"])} == {("acme/p4-cropped.jpg", "acme/p4.jpg")}
    assert counts["candidates_by_region_views"] >= 1 and counts["region_views_computed"] == 11

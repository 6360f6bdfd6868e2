"""Template signals on constructed pictures with known symmetry, smoothness, framing and backdrop."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.features.face_signals import (
    CROP_SIDE,
    PAGE_COLUMNS,
    aligned_face,
    background_mask,
    background_stats,
    colour_grade,
    framing,
    page_signals,
    photo_signals,
    skin_detail,
    symmetry,
    to_lab,
)


def smooth_field(seed: int, side: int = CROP_SIDE) -> np.ndarray:
    """A smooth random grey picture (low frequencies only)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (8, 8)).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)).clip(0, 255).astype(np.uint8)


def test_symmetry_is_one_for_a_mirror_symmetric_face_and_lower_otherwise() -> None:
    half = smooth_field(1)[:, : CROP_SIDE // 2]
    mirrored = np.concatenate([half, half[:, ::-1]], axis=1)
    assert symmetry(mirrored) == pytest.approx(1.0)
    lopsided = mirrored.copy()
    lopsided[:, CROP_SIDE // 2 :] = smooth_field(2)[:, CROP_SIDE // 2 :]
    assert symmetry(lopsided) < 0.95


def test_skin_detail_is_low_for_smooth_skin_and_high_for_textured() -> None:
    smooth = smooth_field(3)
    textured = (smooth.astype(np.float32) + np.random.default_rng(4).normal(0, 20, smooth.shape)).clip(0, 255).astype(np.uint8)
    assert skin_detail(smooth) < 0.1 < skin_detail(textured)
    # contrast-normalised: the same texture under brighter, harsher light scores about the same
    brighter = (textured.astype(np.float32) * 1.5).clip(0, 255).astype(np.uint8)
    assert skin_detail(brighter) == pytest.approx(skin_detail(textured), rel=0.25)


def test_aligned_face_levels_the_eyes() -> None:
    grey = np.full((200, 200), 120, np.uint8)
    grey[90:100, 60:70] = 0  # a dark square at each "eye", the right one 20 px lower
    grey[110:120, 130:140] = 0
    crop = aligned_face(grey, (40, 50, 120, 120), (65, 95), (135, 115))
    rows = np.nonzero((crop < 40).any(axis=1))[0]
    left_rows = np.nonzero((crop[:, : CROP_SIDE // 2] < 40).any(axis=1))[0]
    right_rows = np.nonzero((crop[:, CROP_SIDE // 2 :] < 40).any(axis=1))[0]
    assert len(rows) and abs(left_rows.mean() - right_rows.mean()) < 3  # level after rotation


def test_framing_numbers() -> None:
    assert framing((40, 20, 80, 100), (160, 200)) == (0.5, 0.35, 0.5)


def test_background_stats_tell_a_plain_backdrop_from_a_busy_one() -> None:
    plain = np.zeros((200, 160, 3), np.uint8)
    plain[...] = (90, 110, 130)
    busy = np.random.default_rng(5).integers(0, 255, (200, 160, 3)).astype(np.uint8)
    mask = background_mask((160, 200), (60, 40, 40, 50))
    assert mask[:, :5].all() and not mask[150:, 80].any()  # sides are backdrop, below the face is the person
    plain_stats, busy_stats = background_stats(plain, to_lab(plain), mask), background_stats(busy, to_lab(busy), mask)
    assert plain_stats[0] < 1 < busy_stats[0] and plain_stats[1] < 1 < busy_stats[1]
    assert all(math.isnan(v) for v in background_stats(plain, to_lab(plain), np.zeros((200, 160), bool)))  # face fills the frame


def test_colour_grade_tells_warm_from_cool() -> None:
    warm = np.zeros((50, 50, 3), np.uint8) + np.array([200, 150, 100], np.uint8)
    cool = np.zeros((50, 50, 3), np.uint8) + np.array([100, 150, 200], np.uint8)
    (_, warm_b, warm_s), (_, cool_b, cool_s) = colour_grade(to_lab(warm), warm), colour_grade(to_lab(cool), cool)
    assert warm_b > 20 > -20 > cool_b and warm_s == pytest.approx(cool_s, abs=0.05)


def test_page_signals_of_one_template_have_no_spread() -> None:
    row = {"n_faces": 1, "face_x": 0.5, "face_y": 0.4, "face_scale": 0.35, "symmetry": 0.8, "skin_detail": 0.2,
           "background_std": 3.0, "background_l": 40.0, "background_a": 1.0, "background_b": -5.0, "colour_a": 2.0, "colour_b": 4.0}  # fmt: skip
    templated = pd.DataFrame([row] * 5)
    varied = pd.DataFrame(
        [{**row, "face_x": x, "background_l": 20 + 10 * i, "colour_b": -10 + 5 * i} for i, x in enumerate([0.3, 0.4, 0.5, 0.6, 0.7])]
    )
    t, v = page_signals(templated), page_signals(varied)
    assert set(t) == set(PAGE_COLUMNS)
    assert t["framing_spread"] == 0 and t["background_spread"] == 0 and t["colour_spread"] == 0
    assert v["framing_spread"] > 0.05 and v["background_spread"] > 5 and v["colour_spread"] > 3
    no_faces = page_signals(pd.DataFrame([{**row, "n_faces": 0}] * 3))
    assert no_faces["face_share"] == 0 and math.isnan(no_faces["framing_spread"]) and no_faces["colour_spread"] == 0


def test_a_photo_without_a_face_gets_colour_signals_only() -> None:
    signals = photo_signals(Image.new("RGB", (200, 200), (120, 130, 140)))
    assert signals.n_faces == 0 and math.isnan(signals.symmetry) and not math.isnan(signals.colour_b)


def test_a_detected_face_gets_every_signal() -> None:
    import io

    from tests.fixture_site import face_pictures

    picture = Image.open(io.BytesIO(face_pictures(1)[0]))
    signals = photo_signals(picture)
    assert signals.n_faces == 1 and 0.3 < signals.face_x < 0.7 and 0.2 < signals.face_scale < 0.7
    assert 0.5 < signals.symmetry <= 1 and signals.skin_detail > 0 and signals.background_std >= 0


def test_an_interrupted_measurement_keeps_the_photos_it_finished(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Face signals reach the cache chunk by chunk: a run that fails in its third chunk keeps the first
    two, and the retry measures only the rest, with the signals of a run never interrupted."""
    import pipeline.warehouse
    from pipeline.features import face_signals
    from pipeline.warehouse import Warehouse
    from tests.conftest import encode, photo_like

    monkeypatch.setattr(pipeline.warehouse, "CHECKPOINT_PHOTOS", 2)
    warehouse, fresh = Warehouse(str(tmp_path / "wh")), Warehouse(str(tmp_path / "fresh"))
    rows = []
    for i in range(6):
        key = f"objects/raw/{i:02d}/{i}.jpg"
        for store in (warehouse, fresh):
            store.write_bytes(key, encode(photo_like(seed=i)))
        rows.append({"company": "a", "image": f"{i}.jpg", "content_sha256": f"c{i}", "status": "ok", "raw_object": key})
    images = pd.DataFrame(rows)
    measured = face_signals.photo_signals
    calls: list[int] = []

    def failing_in_the_third_chunk(rgb, score_floor):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) > 4:
            raise OSError("disk gone")
        return measured(rgb, score_floor)

    monkeypatch.setattr(face_signals, "photo_signals", failing_in_the_third_chunk)
    with pytest.raises(OSError, match="disk gone"):
        face_signals.measure_images(images, warehouse, workers=1)
    monkeypatch.setattr(face_signals, "photo_signals", measured)
    resumed, n_measured = face_signals.measure_images(images, warehouse, workers=1)
    assert n_measured == 2
    never_interrupted, _ = face_signals.measure_images(images, fresh, workers=1)
    pd.testing.assert_frame_equal(resumed, never_interrupted)

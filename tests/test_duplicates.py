"""Near-duplicates: verification at the smaller picture's scale, residual motion, and duplicate groups
(with the guard against chaining), on generated pictures and constructed graphs with known answers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.features.calibration import EDIT_KINDS, _badge, _caption, _jpeg, _long_side
from pipeline.features.verify import VerifyParams, features, verify
from pipeline.metrics.near_duplicates import duplicate_groups, group_tables
from tests.conftest import photo_like


@pytest.fixture(scope="module")
def original() -> Image.Image:
    return photo_like(320, 400, seed=4)


@pytest.fixture(scope="module")
def original_features(original: Image.Image) -> tuple:
    return features(original)


def expression_change(picture: Image.Image, amplitude: float, radius_x: float, radius_y: float) -> Image.Image:
    """The same scene with one region moved smoothly by up to `amplitude` pixels, as a changed
    expression or a turned head moves part of a photo taken seconds later."""
    import cv2

    pixels = np.asarray(picture)
    height, width = pixels.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bump = np.exp(-(((xx - width / 2) / radius_x) ** 2 + ((yy - height / 2) / radius_y) ** 2)) * amplitude
    return Image.fromarray(cv2.remap(pixels, xx - bump, yy + bump / 2, cv2.INTER_LINEAR))


# ------------------------------------------------------------- verification
@pytest.mark.parametrize("side", [48, 64, 120, 200])
def test_small_copies_are_compared_at_their_own_scale(original: Image.Image, original_features: tuple, side: int) -> None:
    verdict = verify(original_features, features(_long_side(original, side)))
    assert verdict.same_photo and verdict.compared_side == side


@pytest.mark.parametrize("quality", [5, 10, 30])
def test_heavily_compressed_copies_verify(original: Image.Image, original_features: tuple, quality: int) -> None:
    assert verify(original_features, features(_jpeg(original, quality))).same_photo


def test_overlays_up_to_a_quarter_of_the_picture_verify(original: Image.Image, original_features: tuple) -> None:
    assert verify(original_features, features(_caption(original, 0.25))).same_photo
    for seed in range(4):  # logos in each corner, on whatever lies beneath
        assert verify(original_features, features(_badge(original, 0.2, np.random.default_rng(seed)))).same_photo


@pytest.mark.parametrize("kind", sorted(EDIT_KINDS))
def test_every_edit_kind_at_a_drawn_strength_verifies(original: Image.Image, original_features: tuple, kind: str) -> None:
    edited = EDIT_KINDS[kind](original, np.random.default_rng(3))
    assert verify(original_features, features(edited)).same_photo, kind


@pytest.mark.parametrize(("amplitude", "radius_x", "radius_y"), [(6, 60, 60), (4, 80, 90), (8, 70, 80)])
def test_a_moved_region_is_another_photo_though_every_block_agrees(
    original: Image.Image, original_features: tuple, amplitude: float, radius_x: float, radius_y: float
) -> None:
    verdict = verify(original_features, features(expression_change(original, amplitude, radius_x, radius_y)))
    assert not verdict.same_photo
    assert verdict.block_correlation > 0.98  # correlation alone would take it for a copy
    assert verdict.motion > VerifyParams.from_thresholds().motion_limit(verdict.compared_side)


def test_a_moved_region_of_a_small_copy_is_held_to_close_agreement(original: Image.Image) -> None:
    """Below the detail side motion is under a pixel; agreement block by block must be close instead."""
    moved_small = _long_side(expression_change(original, 10, 70, 80), 64)
    verdict = verify(features(original), features(moved_small))
    assert verdict.compared_side == 64
    params = VerifyParams.from_thresholds()
    assert verdict.same_photo == (verdict.block_correlation >= params.min_small_correlation and verdict.motion <= params.motion_limit(64))


def test_a_residual_spread_over_the_picture_is_noise_and_one_in_the_face_is_not(original: Image.Image) -> None:
    from pipeline.features.verify import _face_residual_ratio

    grey = np.asarray(original.convert("L")).astype(np.float32)
    valid = np.ones(grey.shape, bool)
    face = (100, 120, 120, 150)  # x, y, w, h
    rng = np.random.default_rng(0)
    noisy = np.clip(grey + rng.normal(0, 6, grey.shape), 0, 255).astype(np.uint8)  # compression-like noise everywhere
    assert _face_residual_ratio(grey.astype(np.uint8), noisy, valid, face) < 1.3
    changed = grey.copy()
    x, y, w, h = face
    changed[y : y + h, x : x + w] += rng.normal(0, 12, (h, w))  # only the face differs
    assert _face_residual_ratio(grey.astype(np.uint8), np.clip(changed, 0, 255).astype(np.uint8), valid, face) > 5
    assert _face_residual_ratio(grey.astype(np.uint8), noisy, np.zeros(grey.shape, bool), face) is None  # nothing measurable


def test_two_faces_of_one_template_cost_no_refinement(original: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ECC refinement (most of what a pair of one template costs) runs only where the face could
    agree: another face in the same backdrop and suit is judged without it (no rule could pass however
    well it were aligned), while an edited copy is still refined, and accepted."""
    import pipeline.features.verify as verify_module

    face = (100, 120, 120, 150)  # x, y, w, h in the picture (under the faces stage's working side)
    another = original.copy()
    another.paste(photo_like(120, 150, seed=9), face[:2])  # the template's other sitter
    refined: list[float] = []
    real = verify_module._refine
    monkeypatch.setattr(verify_module, "_refine", lambda *args: refined.append(args[-1]) or real(*args))
    template_pair = verify(features(original, face), features(another, face))
    assert not template_pair.same_photo and refined == []
    assert template_pair.block_correlation >= VerifyParams.from_thresholds().min_block_correlation  # backdrop and suit agree
    assert template_pair.face_correlation is not None and template_pair.face_correlation < 0.3  # the face does not
    copy = verify(features(original, face), features(_jpeg(original, 30), face))
    assert copy.same_photo and len(refined) >= 1


@pytest.mark.parametrize("block", [25, 12, 6, 4])
def test_block_correlations_are_each_blocks_centred_correlation(block: int) -> None:
    """The correlation of each textured block inside the overlap, as centring the block and correlating
    gives it; a block whose standard deviation is exactly 4 counts as textured, one just below does
    not; blocks partly outside the overlap, and blocks of b that are flat, are left out."""
    from pipeline.features.verify import _block_correlations

    rng = np.random.default_rng(block)
    rows, cols = 9, 7
    a = rng.integers(0, 256, (rows * block + 3, cols * block + 2)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    tile = lambda plane, r, c: plane[r * block : (r + 1) * block, c * block : (c + 1) * block]  # noqa: E731
    n = block * block
    # Values whose standard deviation is exactly 4: half at 100 -+ 4 (n even), or 16/25 of them at
    # 100 -+ 5 and the rest at 100 (n = 625).
    exact = [96, 104] * (n // 2) if n % 2 == 0 else [95, 105] * (8 * n // 25) + [100] * (9 * n // 25)
    tile(a, 0, 0)[:] = rng.permutation(exact).reshape(block, block)
    tile(a, 0, 1)[:] = rng.permutation(np.resize([97, 104], n)).reshape(block, block)  # std ~3.5: flat
    tile(b, 1, 1)[:] = 50  # b flat there: nothing to correlate
    valid = np.ones(a.shape, bool)
    valid[: block // 2, cols * block - 1] = False  # the last column's top block is partly outside the overlap

    expected = []
    for r in range(rows):
        for c in range(cols):
            x, y = tile(a, r, c).astype(float).ravel(), tile(b, r, c).astype(float).ravel()
            if tile(valid, r, c).mean() >= 0.99 and x.std() >= 4 - 1e-9 and y.std() > 0:
                expected.append(np.corrcoef(x, y)[0, 1])
    found = _block_correlations(a, b, valid, block)
    assert np.std(tile(a, 0, 0)) == 4.0 and len(found) == rows * cols - 3 and np.allclose(found, expected, atol=1e-12)


def test_a_pictures_shrunk_plane_is_made_once_per_size_and_never_travels(tmp_path) -> None:
    """`Features.shrunk` is the area-averaged resize, made once per size and read-only (pairs share
    it); a copy of the features (`dataclasses.replace`) and the scratch file start without it."""
    import cv2

    from pipeline.features.verify import load_features, save_features

    views = features(photo_like(seed=3), face=None)
    plane = views[0].shrunk((150, 200))
    assert np.array_equal(plane, cv2.resize(views[0].grey, (150, 200), interpolation=cv2.INTER_AREA))
    assert views[0].shrunk((150, 200)) is plane and not plane.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        plane[0, 0] = 0
    whole = views[0].shrunk(views[0].grey.shape[::-1])  # at its own size: the plane, not a copy
    assert np.shares_memory(whole, views[0].grey) and not whole.flags.writeable and views[0].grey.flags.writeable
    assert dataclasses.replace(views[0])._shrunk == {}
    save_features(str(tmp_path / "views.pickle"), views)
    direct, mirrored = load_features(str(tmp_path / "views.pickle"))
    assert direct._shrunk == {} and mirrored._shrunk == {} and np.array_equal(direct.grey, views[0].grey)


@pytest.mark.parametrize(
    ("measures", "same"),
    [
        ((0.5, 0.99, 0.99, 0.2, 300, 0.95, None), True),  # a clean copy: the first rule
        ((0.5, 0.93, 0.85, 0.7, 150, 0.75, 1.2), True),  # degraded evenly: the spread-noise rule
        ((0.5, 0.93, 0.85, 0.7, 150, 0.75, 3.0), False),  # as degraded, but the face differs more than the rest
        ((0.5, 0.93, 0.85, 0.7, 150, 0.75, None), False),  # no face: the spread-noise rule does not apply
        ((0.5, 0.93, 0.85, 2.5, 400, 0.75, 1.2), False),  # something moved
        ((0.1, 0.93, 0.85, 0.7, 150, 0.75, 1.2), False),  # no real alignment
    ],
)
def test_the_two_rules_of_a_verdict(measures: tuple, same: bool) -> None:
    assert VerifyParams.from_thresholds().accepts(*measures) == same


def test_thresholds_come_from_the_settings() -> None:
    from pipeline.config import load_settings

    settings = load_settings(thresholds={"verify_min_small_correlation": 0.99, "verify_max_motion_share": 0.01})
    params = VerifyParams.from_thresholds(settings.thresholds)
    assert params.min_small_correlation == 0.99 and params.motion_limit(400) == pytest.approx(4.0)
    assert params.cache_id != VerifyParams.from_thresholds().cache_id  # other thresholds: other cached verdicts


# ------------------------------------------------------------- groups
def test_copies_of_one_photo_are_one_group_with_the_pairs_between_copies_implied() -> None:
    links = {("copy1", "original"), ("copy2", "original"), ("copy3", "original")}
    groups = duplicate_groups(["copy1", "copy2", "copy3", "original", "other"], links, lambda a, b: 0.95, guard=0.8)
    assert groups == [["original", "copy1", "copy2", "copy3"]]


def test_a_chain_of_small_steps_does_not_join_its_far_ends() -> None:
    """a0 - a1 - ... - a7, each step verified, each photo a bit further from the first."""
    nodes = [f"a{i}" for i in range(8)]
    links = {(nodes[i], nodes[i + 1]) for i in range(7)}

    def similarity(a: str, b: str) -> float:
        return 1.0 - 0.06 * abs(int(a[1:]) - int(b[1:]))

    groups = duplicate_groups(nodes, links, similarity, guard=0.85)
    assert sorted(node for group in groups for node in group) == nodes  # nobody lost
    for group in groups:
        anchor, *members = group
        assert all(similarity(anchor, member) >= 0.85 for member in members)
        assert max(int(n[1:]) for n in group) - min(int(n[1:]) for n in group) <= 4  # at most two steps either side
    assert not any({"a0", "a7"} <= set(group) for group in groups)


def test_groups_are_deterministic_whatever_the_order() -> None:
    links = {("b", "a"), ("c", "b"), ("d", "c"), ("x", "y")}
    first = duplicate_groups(["a", "b", "c", "d", "x", "y"], links, lambda a, b: 0.9, guard=0.8)
    second = duplicate_groups(["y", "x", "d", "c", "b", "a"], {tuple(reversed(link)) for link in links}, lambda a, b: 0.9, guard=0.8)
    assert first == second


def test_group_tables_hold_exact_copies_direct_and_implied_pairs() -> None:
    ok = pd.DataFrame({
        "company": ["acme", "acme", "beta", "beta", "gamma", "gamma"],
        "image": ["o.jpg", "o_again.jpg", "crop.jpg", "small.jpg", "alone.jpg", "twin.png"],
        "content_sha256": ["o", "o", "c", "s", "x", "x2"],
    })  # fmt: skip
    # o_again has o's bytes; twin.png has alone.jpg's pixels; crop and small were each verified against o.
    representative = {"o": "o", "c": "c", "s": "s", "x": "x", "x2": "x"}
    near = [("c", "o", 0.91), ("o", "s", 0.88)]
    pairs, groups = group_tables(ok, representative, near, lambda a, b: 0.87, guard=0.8)

    assert sorted(groups.groupby("group_id")["image"].apply(sorted).tolist()) == [
        ["alone.jpg", "twin.png"], ["crop.jpg", "o.jpg", "o_again.jpg", "small.jpg"],
    ]  # fmt: skip
    big = groups[groups["group_size"] == 4]
    assert set(big.loc[big["anchor"], "image"]) == {"o.jpg", "o_again.jpg"}  # exact copies share the anchor
    assert len(pairs) == 6 + 1  # every pair within each group
    by_rows = {frozenset((r.image_a, r.image_b)): r for r in pairs.itertuples()}
    assert by_rows[frozenset(("o.jpg", "o_again.jpg"))].kind == "exact"
    assert by_rows[frozenset(("crop.jpg", "o.jpg"))].link == "direct"
    assert by_rows[frozenset(("crop.jpg", "o_again.jpg"))].link == "direct"  # o_again is o
    implied = by_rows[frozenset(("crop.jpg", "small.jpg"))]
    assert (implied.kind, implied.link, implied.similarity) == ("near_duplicate", "implied", 0.87)
    assert set(pairs["group_id"]) == set(groups["group_id"])


def test_no_verified_pair_no_group() -> None:
    ok = pd.DataFrame({"company": ["a", "b"], "image": ["1.jpg", "2.jpg"], "content_sha256": ["h1", "h2"]})
    pairs, groups = group_tables(ok, {"h1": "h1", "h2": "h2"}, [], lambda a, b: 0.0, guard=0.8)
    assert pairs.empty and groups.empty
    assert list(groups.columns) == ["image", "company", "group_id", "group_size", "anchor"]


def test_pairs_are_verified_in_an_order_where_each_photos_features_are_computed_once() -> None:
    """With more photos than the feature cache holds, verifying pairs sorted by content hash would
    compute a photo's features again for most of its pairs; the candidate graph's ordering keeps each
    photo's pairs together. Same pairs, another order."""
    import hashlib
    from functools import lru_cache

    from pipeline.metrics.near_duplicates import cache_friendly_order

    names = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(300)]  # hashes: sorted order is random order
    pairs = sorted({tuple(sorted((names[i], names[(i + step) % 300]))) for i in range(300) for step in range(1, 6)})

    def computed(order: list[tuple[str, str]]) -> int:
        @lru_cache(maxsize=24)
        def features_of(name: str) -> str:
            return name

        for a, b in order:
            features_of(a), features_of(b)
        return features_of.cache_info().misses

    ordered = cache_friendly_order(pairs)
    assert sorted(ordered) == pairs
    assert computed(ordered) == 300 and computed(pairs) > 5 * 300
    assert cache_friendly_order([]) == [] and cache_friendly_order(pairs[:1]) == pairs[:1]


# ------------------------------------------------------------- both directions
def _pairs_to_judge(original: Image.Image) -> list[tuple[Image.Image, bool]]:
    """Edited copies of every kind (same photo) and moved-region versions (another photo)."""
    copies = [(EDIT_KINDS[kind](original, np.random.default_rng(3)), True) for kind in sorted(EDIT_KINDS)]
    others = [(expression_change(original, amplitude, rx, ry), False) for amplitude, rx, ry in ((6, 60, 60), (8, 70, 80))]
    return copies + others


def test_a_verdict_does_not_depend_on_which_picture_comes_first(original: Image.Image, original_features: tuple) -> None:
    for picture, same in _pairs_to_judge(original):
        other = features(picture)
        assert verify(original_features, other).same_photo == verify(other, original_features).same_photo == same


def test_the_calibrations_decision_on_many_pairs_is_verifys(original: Image.Image, original_features: tuple) -> None:
    """bench.calibrate_verify tries thresholds with `accepted_views`: it must decide as `verify` does,
    at the configured thresholds and at looser and stricter ones."""
    from pipeline.features.verify import accepted_views, as_measures, measure_views

    pairs = [features(picture) for picture, _ in _pairs_to_judge(original)]
    views = np.stack([as_measures(measure_views(original_features, other)) for other in pairs])
    assert views.shape == (len(pairs), 4, 7)
    default = VerifyParams.from_thresholds()
    for params in (default, dataclasses.replace(default, min_block_correlation=0.99, min_noisy_correlation=0.99),
                   dataclasses.replace(default, max_motion_share=0.02, min_face_floor=-1.0)):  # fmt: skip
        assert list(accepted_views(params, views)) == [verify(original_features, other, params).same_photo for other in pairs]


def test_a_runs_content_pairs_as_integer_keys() -> None:
    """The verdict cache is read into integer keys (`_PairKeys`): a pair's key does not depend on which
    photo comes first, keys sort as the canonical content pairs (a < b) sort, a cached pair of a photo
    the run does not show has none (-1), and a pair without a verdict is an error, not a guess."""
    import pyarrow as pa

    from pipeline.metrics.near_duplicates import _PairKeys

    contents = ["f0", "a1", "c2", "b3"]  # the run's rows, in no order
    pairs = _PairKeys(contents)
    rows_a, rows_b = np.array([0, 1, 3, 2]), np.array([1, 0, 2, 1])
    keys = pairs.of_rows(rows_a, rows_b)
    assert keys[0] == keys[1]  # (f0, a1) and (a1, f0)
    assert pairs.contents(keys) == [("a1", "f0"), ("a1", "f0"), ("b3", "c2"), ("a1", "c2")]
    assert pairs.contents(np.sort(keys)) == sorted(pairs.contents(keys))
    cached = pairs.of_contents(pa.chunked_array([["a1", "b3", "zz"]]), pa.chunked_array([["f0", "c2", "a1"]]))
    assert cached[:2].tolist() == keys[[0, 2]].tolist() and cached[2] == -1
    same = pairs.same_photo(keys, np.concatenate([cached[:2], cached[:1], keys[3:]]), np.array([True, False, True, False]))
    assert same.tolist() == [True, True, False, False]  # a pair listed twice: its one verdict
    with pytest.raises(RuntimeError, match="no verdict"):
        pairs.same_photo(keys, cached[:2], np.array([True, False]))
    assert pairs.same_photo(keys[:0], cached[:0], np.zeros(0, bool)).tolist() == []

"""The template index: component kernels, one page's index and what makes it up, a template spreading
over a page, the shipped model, and bad model files."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.metrics import template_index
from pipeline.metrics.template_index import (
    COMPONENTS,
    PHOTO_COLUMNS,
    TemplateModel,
    component_kernels,
    drivers,
    load_model,
    page_template_index,
    signal_reference,
)


def _photos(rng: np.random.Generator, n: int, templated: bool) -> pd.DataFrame:
    """Per-photo signals: a templated page holds framing, backdrop, grade and skin finish (plus a
    little noise); an unrelated page draws each photo's at random."""
    spread = 0.05 if templated else 1.0
    centre = {"face_x": 0.5, "face_y": 0.4, "face_scale": 0.4, "background_l": 60, "background_a": 2, "background_b": 8,
              "background_std": 6, "background_blur": 30, "colour_a": 4, "colour_b": 10, "saturation": 0.3,
              "skin_detail": 0.05, "symmetry": 0.9}  # fmt: skip
    wide = {"face_x": 0.1, "face_y": 0.08, "face_scale": 0.1, "background_l": 20, "background_a": 8, "background_b": 12,
            "background_std": 8, "background_blur": 200, "colour_a": 5, "colour_b": 8, "saturation": 0.1,
            "skin_detail": 0.04, "symmetry": 0.04}  # fmt: skip
    return pd.DataFrame({c: centre[c] + abs(wide[c]) * spread * rng.standard_normal(n) for c in PHOTO_COLUMNS}).clip(lower=0)


def _vectors(rng: np.random.Generator, n: int, shared: float) -> np.ndarray:
    common = rng.standard_normal(32)
    vectors = shared * common + rng.standard_normal((n, 32))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def model() -> template_index.TemplateModel:
    """A model whose reference is 60 unrelated photos, every component weighted alike."""
    rng = np.random.default_rng(0)
    mean, std, thresholds = signal_reference(_photos(rng, 60, templated=False), _vectors(rng, 60, 0.0), 0.95)
    weights = dict.fromkeys(COMPONENTS, 1 / len(COMPONENTS))
    return TemplateModel("test-embedder", weights, mean, std, 0.95, thresholds, "synthetic")


def test_unrelated_pairs_rarely_count_and_equal_photos_count_fully(model: template_index.TemplateModel) -> None:
    rng = np.random.default_rng(1)
    photos, vectors = _photos(rng, 40, templated=False), _vectors(rng, 40, 0.0)
    kernels = component_kernels(model, photos, vectors)
    off_diagonal = ~np.eye(40, dtype=bool)
    for component, kernel in kernels.items():
        assert kernel.shape == (40, 40)
        assert (kernel[off_diagonal] > 0).mean() < 0.15, component  # ~5% of unrelated pairs pass the level
        assert np.allclose(np.diag(kernel), 1.0), component
    photos.loc[3, ["face_x", "face_y", "face_scale"]] = np.nan  # no face found: framing adds nothing
    framing = component_kernels(model, photos, vectors)["framing"]
    assert (framing[3] == 0).all() and (framing[:, 3] == 0).all()
    block = component_kernels(model, photos, vectors, slice(1, 3))["grade"]
    assert block.shape == (2, 40)


def test_a_templated_page_of_different_people_scores_above_an_unrelated_one(model: template_index.TemplateModel) -> None:
    rng = np.random.default_rng(2)
    scores = {}
    for templated in (True, False):
        photos = _photos(rng, 20, templated)
        vectors = _vectors(rng, 20, 0.0)  # every face and scene different: the whole picture shares nothing
        scores[templated] = page_template_index(model, photos, vectors, np.zeros((20, 20), bool), 300, 0)
    assert scores[True].index > 0.5 > 0.1 > scores[False].index
    assert scores[True].ci_low <= scores[True].index <= scores[True].ci_high
    assert scores[True].components["whole"] < 0.05  # the faces differ: the other parts carry it
    assert set(drivers(scores[True].components)) <= {"framing", "backdrop", "grade", "skin"}
    assert drivers(scores[True].components)


def test_components_add_up_to_the_index(model: template_index.TemplateModel) -> None:
    rng = np.random.default_rng(3)
    photos, vectors = _photos(rng, 12, templated=True), _vectors(rng, 12, 0.3)
    result = page_template_index(model, photos, vectors, np.zeros((12, 12), bool), 100, 0)
    assert sum(result.components.values()) == pytest.approx(result.index)
    assert set(result.components) == set(COMPONENTS)


def test_a_template_spreading_over_a_real_page_raises_the_index_at_every_step(model: template_index.TemplateModel) -> None:
    """The failure of the whole-picture index this one exists for: the first templated photos must
    not lower the page (real-to-templated pairs count no less than real-to-real ones)."""
    rng = np.random.default_rng(6)
    real, real_vectors = _photos(rng, 24, templated=False), _vectors(rng, 24, 0.0)
    templated, templated_vectors = _photos(rng, 24, templated=True), _vectors(rng, 24, 0.0)
    curve = []
    for k in (0, 6, 12, 18, 24):
        photos = pd.concat([real.iloc[k:], templated.iloc[:k]], ignore_index=True)
        vectors = np.concatenate([real_vectors[k:], templated_vectors[:k]])
        curve.append(page_template_index(model, photos, vectors, np.zeros((24, 24), bool), 100, 0).index)
    assert all(b > a for a, b in zip(curve, curve[1:])), curve


def test_duplicates_count_as_one_template(model: template_index.TemplateModel) -> None:
    rng = np.random.default_rng(4)
    photos, vectors = _photos(rng, 10, templated=False), _vectors(rng, 10, 0.0)
    plain = page_template_index(model, photos, vectors, np.zeros((10, 10), bool), 100, 0)
    duplicate = np.zeros((10, 10), bool)
    duplicate[0, 1] = duplicate[1, 0] = True
    doubled = page_template_index(model, photos, vectors, duplicate, 100, 0)
    assert doubled.index > plain.index
    faceless = photos.copy()
    faceless[PHOTO_COLUMNS] = np.nan  # nothing measured: only the whole picture can count
    blank = page_template_index(model, faceless, vectors, np.zeros((10, 10), bool), 100, 0)
    assert all(blank.components[part] == 0.0 for part in ("framing", "backdrop", "grade", "skin"))


def test_large_pages_are_computed_in_blocks_with_the_same_result(
    model: template_index.TemplateModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    photos, vectors = _photos(rng, 30, templated=True), _vectors(rng, 30, 0.2)
    whole = page_template_index(model, photos, vectors, np.zeros((30, 30), bool), 100, 0)
    monkeypatch.setattr(template_index, "_BLOCK", 7)
    blocked = page_template_index(model, photos, vectors, np.zeros((30, 30), bool), 100, 0)
    assert blocked.index == pytest.approx(whole.index)
    assert blocked.components == pytest.approx(whole.components)


def test_model_files_round_trip_and_a_wrong_one_is_refused(model: template_index.TemplateModel, tmp_path: Path) -> None:
    model.save(tmp_path / "test-embedder.json")
    assert load_model("test-embedder", tmp_path) == model
    assert load_model("another-embedder", tmp_path) is None  # no model: no template index, not an error
    stale = {**asdict(model), "embedder_id": "stale", "weights": {"whole": 1.0}}
    (tmp_path / "stale.json").write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="stale.json.*refit"):
        load_model("stale", tmp_path)
    old = {key: value for key, value in asdict(model).items() if key != "thresholds"}
    (tmp_path / "old.json").write_text(json.dumps({**old, "embedder_id": "old", "bandwidth": 0.5}))
    with pytest.raises(ValueError, match="old.json.*not a template model of this version"):
        load_model("old", tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_model("broken", tmp_path)


def test_the_classic_embedder_ships_a_model() -> None:
    model = load_model("classic-v1")
    assert model is not None and set(model.weights) == set(COMPONENTS)
    assert sum(model.weights.values()) == pytest.approx(1.0)
    assert 0.5 < model.quantile < 1

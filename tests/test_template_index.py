"""The template index: component kernels, one page's index and what makes it up, a template spreading
over a page, the shipped model, and bad model files."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
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


def _photos(rng: np.random.Generator, n: int, templated: bool, spread: float | None = None, shift: float | None = None) -> pd.DataFrame:
    """Per-photo signals: a templated page holds framing, backdrop, grade and skin finish (plus a
    little noise) at a setting one spread away from where unrelated photos centre; an unrelated page
    draws each photo's at random. `spread` and `shift` (in those spreads) override both."""
    spread = spread if spread is not None else (0.05 if templated else 1.0)
    shift = shift if shift is not None else (1.0 if templated else 0.0)
    centre = {"face_x": 0.5, "face_y": 0.4, "face_scale": 0.4, "background_l": 60, "background_a": 2, "background_b": 8,
              "background_std": 6, "background_blur": 30, "colour_a": 4, "colour_b": 10, "saturation": 0.3,
              "skin_detail": 0.05, "symmetry": 0.9}  # fmt: skip
    wide = {"face_x": 0.1, "face_y": 0.08, "face_scale": 0.1, "background_l": 20, "background_a": 8, "background_b": 12,
            "background_std": 8, "background_blur": 200, "colour_a": 5, "colour_b": 8, "saturation": 0.1,
            "skin_detail": 0.04, "symmetry": 0.04}  # fmt: skip
    return pd.DataFrame({c: centre[c] + wide[c] * (shift + spread * rng.standard_normal(n)) for c in PHOTO_COLUMNS}).clip(lower=0)


def _vectors(rng: np.random.Generator, n: int, shared: float) -> np.ndarray:
    common = rng.standard_normal(32)
    vectors = shared * common + rng.standard_normal((n, 32))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def model() -> template_index.TemplateModel:
    """A model whose reference is 80 unrelated photos, every component weighted alike."""
    rng = np.random.default_rng(0)
    reference = _photos(rng, 80, templated=False)
    mean, std = signal_reference(reference)
    weights = dict.fromkeys(COMPONENTS, 1 / len(COMPONENTS))
    return TemplateModel("test-embedder", weights, mean, std, 0.5, 3.0, 0.1, "synthetic", _vectors(rng, 80, 0.0), reference.to_numpy())


def test_unrelated_pairs_average_zero_and_a_shared_template_does_not(model: template_index.TemplateModel) -> None:
    rng = np.random.default_rng(1)
    photos, vectors = _photos(rng, 60, templated=False), _vectors(rng, 60, 0.0)
    kernels = component_kernels(model, photos, vectors)
    off_diagonal = ~np.eye(60, dtype=bool)
    templated = component_kernels(model, _photos(rng, 60, templated=True), vectors)
    for component, kernel in kernels.items():
        assert kernel.shape == (60, 60)
        assert abs(kernel[off_diagonal].mean()) < 0.03, component  # centred on the reference photos
        if component == "departure":  # one spread from where the reference centres: a little away
            assert templated[component][off_diagonal].mean() > 0.02
        elif component != "whole":  # the vectors are unrelated in both
            assert templated[component][off_diagonal].mean() > 0.2, component
    photos.loc[3, ["face_x", "face_y", "face_scale"]] = np.nan  # no face found: framing adds nothing
    framing = component_kernels(model, photos, vectors)["framing"]
    assert (framing[3] == 0).all() and (framing[:, 3] == 0).all()
    block = component_kernels(model, photos, vectors, slice(1, 3))["grade"]
    assert block.shape == (2, 60) and np.allclose(block, kernels["grade"][1:3])


def test_departure_is_per_photo_and_zero_on_average_for_reference_like_photos(model: template_index.TemplateModel) -> None:
    """The departure part: each photo's distance from the reference photos, counted even where the
    page's photos are not alike; its pair kernel is the mean of the two photos' departures."""
    rng = np.random.default_rng(7)
    vectors = _vectors(rng, 40, 0.0)
    unrelated = component_kernels(model, _photos(rng, 40, templated=False), vectors)["departure"]
    assert abs(unrelated.mean()) < 0.03
    scattered = _photos(rng, 40, templated=False, spread=1.0, shift=3.0)  # far from the reference, not alike
    departure = component_kernels(model, scattered, vectors)["departure"]
    assert departure.mean() > 0.2
    per_photo = np.diag(departure)
    assert np.allclose(departure, (per_photo[:, None] + per_photo[None, :]) / 2)
    scattered.loc[5] = np.nan  # nothing measured: no departure
    assert (np.diag(component_kernels(model, scattered, vectors)["departure"])[5] == 0).all()


def test_the_broad_kernel_counts_photos_that_depart_together_without_being_alike(model: template_index.TemplateModel) -> None:
    """An AI pack frames wider than staff photos, each picture differently: several reference spreads
    away and spread among themselves. The sharp kernel alone counts them little more than any photos
    far from the reference and from each other; the broad one counts that they depart together."""
    rng = np.random.default_rng(8)
    pack, vectors = _photos(rng, 30, templated=False, spread=1.5, shift=4.0), _vectors(rng, 30, 0.0)
    off_diagonal = ~np.eye(30, dtype=bool)
    framing = component_kernels(model, pack, vectors)["framing"][off_diagonal].mean()
    sharp_only = component_kernels(replace(model, broad_width=model.width), pack, vectors)["framing"][off_diagonal].mean()
    assert framing > 0.4 and framing > 2 * sharp_only


def test_a_templated_page_of_different_people_scores_above_an_unrelated_one(model: template_index.TemplateModel) -> None:
    rng = np.random.default_rng(2)
    scores = {}
    for templated in (True, False):
        photos = _photos(rng, 20, templated)
        vectors = _vectors(rng, 20, 0.0)  # every face and scene different: the whole picture shares nothing
        scores[templated] = page_template_index(model, photos, vectors, np.zeros((20, 20), bool), 300, 0)
    assert scores[True].index > 0.3 > 0.05 > abs(scores[False].index)
    assert scores[True].ci_low <= scores[True].index <= scores[True].ci_high
    assert scores[True].components["whole"] < 0.05  # the faces differ: the other parts carry it
    assert set(drivers(scores[True].components)) <= set(COMPONENTS) - {"whole"}
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
    assert all(blank.components[part] == 0.0 for part in COMPONENTS if part != "whole")


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
    model = replace(model, validation=[["real staff pages", -0.01, 0.0], ["AI headshot packs", 0.05, 0.13]])
    model.save(tmp_path)
    loaded = load_model("test-embedder", tmp_path)
    assert loaded == model and loaded.id == model.id
    assert loaded.validation == model.validation
    assert replace(model, validation=[]).id == model.id  # the figures describe the model, they do not change it
    assert np.allclose(loaded.reference_whole, model.reference_whole, atol=1e-6)
    assert load_model("another-embedder", tmp_path) is None  # no model: no template index, not an error
    fields = {key: value for key, value in asdict(model).items() if not key.startswith("reference_")}
    arrays = tmp_path / "test-embedder.npz"
    for name, changed in (
        ("stale", {"weights": {"whole": 1.0}}),  # other components
        ("old", {"quantile": 0.98}),  # another version's fields
    ):
        (tmp_path / f"{name}.json").write_text(json.dumps({**fields, "embedder_id": name, **changed}))
        (tmp_path / f"{name}.npz").write_bytes(arrays.read_bytes())
        with pytest.raises(ValueError, match=f"{name}.json.*refit"):
            load_model(name, tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_model("broken", tmp_path)
    (tmp_path / "lonely.json").write_text(json.dumps({**fields, "embedder_id": "lonely"}))  # its reference photos missing
    with pytest.raises(ValueError, match="lonely.json"):
        load_model("lonely", tmp_path)


def test_the_audit_page_names_every_part() -> None:
    from pipeline.report.render import TEMPLATE_PARTS

    assert [part for part, _, _ in TEMPLATE_PARTS] == COMPONENTS


def test_the_audit_page_quotes_the_validation_of_the_model_that_measured_the_page() -> None:
    from pipeline.report.render import template_index_view

    model = load_model("classic-v1")
    assert model is not None
    row = pd.Series({"template_index": 0.1, "template_ci_low": 0.05, "template_ci_high": 0.15, "template_model": model.id, "status": "ok",
                     "embedder": "classic-v1", **{f"template_from_{part}": 0.1 / len(COMPONENTS) for part in COMPONENTS}})  # fmt: skip
    view = template_index_view(row)
    assert view["validation"] == model.validation
    assert [what for what, _, _ in view["validation"]][:2] == ["real staff pages", "AI headshot packs"]
    assert all(low <= high for _, low, high in view["validation"])
    # A page measured by another fit (an older run) is not described by this fit's figures.
    assert template_index_view(row.copy().replace(model.id, "classic-v1@0000000000"))["validation"] == []


def test_the_classic_embedder_ships_a_model() -> None:
    model = load_model("classic-v1")
    assert model is not None and set(model.weights) == set(COMPONENTS)
    assert sum(model.weights.values()) == pytest.approx(1.0)
    assert len(model.reference_whole) == len(model.reference_signals) > 30


def test_two_pages_listing_the_same_file_names_keep_their_own_photos_signals(
    model: template_index.TemplateModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image names are each page's own: two pages may both list "team/1.jpg" and mean different photos."""
    from pipeline.config import ThresholdsConfig

    monkeypatch.setattr(template_index, "load_model", lambda _embedder: model)
    rng = np.random.default_rng(5)
    images, faces, vectors_of = [], [], {}
    for company, templated in (("a", True), ("b", False)):
        signals = _photos(rng, 6, templated)
        for i, vector in enumerate(_vectors(rng, 6, 0.0)):
            content = f"{company}{i:063d}"
            images.append({"company": company, "image": f"team/{i}.jpg", "content_sha256": content, "status": "ok"})
            faces.append({"company": company, "image": f"team/{i}.jpg", "content_sha256": content, **signals.iloc[i].to_dict()})
            vectors_of[content] = vector
    images, faces = pd.DataFrame(images), pd.DataFrame(faces)
    pairs = pd.DataFrame(columns=["company_a", "company_b", "image_a", "image_b"])

    def table(companies: list[str]) -> pd.DataFrame:
        mine = images["company"].isin(companies)
        found = template_index.page_table(companies, images[mine], faces[mine], vectors_of, pairs, "test", ThresholdsConfig())
        return found.set_index("company")

    both = table(["a", "b"])
    for company in ("a", "b"):
        pd.testing.assert_series_equal(both.loc[company], table([company]).loc[company])
    assert both.loc["a", "template_index"] > both.loc["b", "template_index"]

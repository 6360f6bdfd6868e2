"""The template index of a page: how often two different photos on it agree, part by part, more closely
than unrelated photos do.

The homogeneity index (pipeline/metrics/homogeneity.py) compares whole pictures. A studio or generator
template fixes the framing, the backdrop and the colour grade while every face and outfit differs,
and a whole-picture comparison of different people through one template moves little. The template
index compares each pair of photos on those parts separately:

    T = mean over unordered pairs {i, j} of k(i, j),  k = 1 for exact/near-duplicate pairs,
        k(i, j) = sum over components c of w_c * k_c(i, j) otherwise,
        k_c(i, j) = how far the pair is beyond the level that only a few unrelated reference pairs reach,
                    0..1 (0 at or short of that level, 1 for equal photos)

(the model's `quantile`: 0.98 for classic-v1, so 2% of them), with the components: whole (cosine of the reference-centred embeddings, as in the homogeneity
index), framing (face position and size), backdrop (colour, busyness and blur beside the head),
grade (the picture's a*, b* and saturation) and skin (skin detail and face symmetry), the last four
from the per-photo template signals of pipeline/features/face_signals.py, standardised by their
spread over reference photos and compared by root mean square distance. A photo without a face (or
without a measurable backdrop) adds 0 on the parts it lacks.

Why a threshold: an index whose unrelated pairs are ~0 on average but spread around it (as the
homogeneity index's are) dips when a template's photos first join a real page, because they agree
with real photos less than real photos agree with each other; counting only agreement beyond what
unrelated photos reach puts real pairs, and pairs of a real and a templated photo, at ~0 alike, so
the index rises as a template spreads over a page. It is the same U-statistic as the homogeneity
index, with the same bootstrap interval, so its expectation does not depend on the page's size.
Its scale: real staff pages ~0.00-0.01, AI packs 0.01-0.07, a templated page 0.06, one studio 0.5.

The model (the reference's signal means and spreads, the levels, the weights) is fixed per embedder,
shipped as `template_models/<embedder id>.json`, and never fitted on the run being measured:
bench/template_index.py fits the reference and levels on half of the corpus's real staff photos and
chooses the weights and the quantile by leave-one-folder-out over the AI packs, the studio set and
templated pages made from the same half; the other half is left for validation. An embedder without
a shipped model gets no template index (`template_model` = "none").

Explainable by construction: T is a weighted sum of one U-statistic per component, so a page's
index splits exactly into one share per component (`template_from_whole`, `_framing`, `_backdrop`,
`_grade`, `_skin`; they add up to the index), which the audit page shows.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import ThresholdsConfig

MODELS = Path(__file__).resolve().parent / "template_models"
NO_MODEL_ID = "none"
# Each component: the per-photo signals it compares (columns of the faces table, some on a log scale);
# "whole" compares the reference-centred embeddings instead.
COMPONENT_SIGNALS: dict[str, list[str]] = {
    "whole": [],
    "framing": ["face_x", "face_y", "face_scale"],
    "backdrop": ["background_l", "background_a", "background_b", "background_std", "background_blur"],
    "grade": ["colour_a", "colour_b", "saturation"],
    "skin": ["skin_detail", "symmetry"],
}
COMPONENTS = list(COMPONENT_SIGNALS)
PHOTO_COLUMNS = [column for columns in COMPONENT_SIGNALS.values() for column in columns]
_LOG_SCALE = ("background_std", "background_blur")  # spreads and variances: compared as ratios
PAGE_COLUMNS = ["template_index", "template_ci_low", "template_ci_high", *(f"template_from_{c}" for c in COMPONENTS), "template_model"]
_BLOCK = 512  # rows of the pair matrix computed at once: memory stays ~ _BLOCK x n per component


@dataclass(frozen=True)
class TemplateModel:
    embedder_id: str
    weights: dict[str, float]  # component -> weight; they add up to 1
    signal_mean: dict[str, float]  # the signal reference: each photo column's mean and spread over
    signal_std: dict[str, float]  # diverse real staff photos (log scale where _LOG_SCALE says)
    quantile: float  # a pair counts only where it is more alike than this share of unrelated reference pairs are
    thresholds: dict[str, float]  # per component, that level: whole a cosine, the others a distance
    source: str  # what it was fitted on, in words

    @property
    def id(self) -> str:
        digest = hashlib.sha256(json.dumps([self.embedder_id, self.weights, self.signal_mean, self.signal_std, self.quantile,
                                            self.thresholds], sort_keys=True).encode()).hexdigest()  # fmt: skip
        return f"{self.embedder_id}@{digest[:10]}"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")


def load_model(embedder_id: str, folder: Path = MODELS) -> TemplateModel | None:
    """The shipped model for this embedder, or None (no template index for it). A file that does not
    fit this module's components is an error naming it, not a silent wrong index."""
    path = folder / f"{embedder_id}.json"
    if not path.is_file():
        return None
    try:
        model = TemplateModel(**json.loads(path.read_text()))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a template model of this version ({error}); refit it") from error
    if set(model.weights) != set(COMPONENTS) or set(model.signal_mean) != set(PHOTO_COLUMNS) or model.embedder_id != embedder_id:
        raise ValueError(f"{path}: a template model for other components or another embedder ({model.embedder_id}); refit it")
    return model


# ------------------------------------------------------------------ per-photo descriptors and pair kernels
def standardised(photos: pd.DataFrame, mean: dict[str, float], std: dict[str, float]) -> dict[str, np.ndarray]:
    """Per signal component, (n, d) signals in reference spreads from the reference mean; NaN rows
    where a photo lacks the signal (no face, or no backdrop to measure)."""
    blocks = {}
    for component, columns in COMPONENT_SIGNALS.items():
        if not columns:
            continue
        values = []
        for column in columns:
            raw = photos[column].to_numpy(np.float64) if column in photos else np.full(len(photos), np.nan)
            raw = np.log1p(np.maximum(raw, 0)) if column in _LOG_SCALE else raw
            values.append((raw - mean[column]) / std[column])
        block = np.stack(values, axis=1)
        block[np.isnan(block).any(axis=1)] = np.nan
        blocks[component] = block
    return blocks


def signal_distance(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Root mean square difference of standardised signals (reference spreads); NaN where either
    photo lacks the signal."""
    return np.sqrt(((left[:, None, :] - right[None, :, :]) ** 2).mean(axis=-1))


def component_kernels(model: TemplateModel, photos: pd.DataFrame, centred: np.ndarray, rows: slice | None = None) -> dict[str, np.ndarray]:
    """Per component, the (rows, n) kernel of the pairs (row photo, any photo): how much more alike
    the two are than all but the model's `1 - quantile` share of unrelated reference pairs, 0..1
    (1 for equal photos, 0 at or beyond that level and where a photo lacks the signal). whole: on the
    cosine of the reference-centred embeddings; the others: on the distance of the standardised signals."""
    rows = rows or slice(0, len(photos))
    level = model.thresholds["whole"]
    kernels = {"whole": np.clip((centred[rows] @ centred.T - level) / (1.0 - level), 0.0, 1.0)}
    for component, block in standardised(photos, model.signal_mean, model.signal_std).items():
        closeness = 1.0 - signal_distance(block[rows], block) / model.thresholds[component]
        kernels[component] = np.clip(np.nan_to_num(closeness, nan=0.0), 0.0, 1.0)
    return kernels


# ------------------------------------------------------------------ one page
@dataclass(frozen=True)
class PageTemplateIndex:
    index: float
    ci_low: float
    ci_high: float
    components: dict[str, float]  # each component's weighted share of the index; they add up to it


def page_template_index(
    model: TemplateModel, photos: pd.DataFrame, centred: np.ndarray, duplicate: np.ndarray, samples: int, seed: int
) -> PageTemplateIndex:
    """The template index of one page, its bootstrap interval and what makes it up (module doc)."""
    from pipeline.metrics.homogeneity import homogeneity

    n = len(photos)
    kernel = np.zeros((n, n))
    shares = dict.fromkeys(COMPONENTS, 0.0)
    off_diagonal = ~np.eye(n, dtype=bool)
    for start in range(0, n, _BLOCK):
        rows = slice(start, min(n, start + _BLOCK))
        for component, part in component_kernels(model, photos, centred, rows).items():
            part = np.where(duplicate[rows], 1.0, part)  # a copy is one template on every part
            kernel[rows] += model.weights[component] * part
            shares[component] += model.weights[component] * float(part[off_diagonal[rows]].sum())
    index, low, high = homogeneity(kernel, samples, seed)
    pairs = max(1, n * (n - 1))
    return PageTemplateIndex(index, low, high, {component: total / pairs for component, total in shares.items()})


def drivers(components: dict[str, float], top: int = 2) -> list[str]:
    """The components that make up most of a page's template index: those holding at least a quarter
    of it, largest first, at most `top`."""
    total = sum(components.values())
    return [name for value, name in sorted(((v, n) for n, v in components.items() if total > 0 and v >= total / 4), reverse=True)][:top]


def empty_row() -> dict[str, float | str]:
    return {**{column: math.nan for column in PAGE_COLUMNS}, "template_model": NO_MODEL_ID}


# ------------------------------------------------------------------ fitting
def signal_reference(photos: pd.DataFrame, centred: np.ndarray, quantile: float) -> tuple[dict, dict, dict]:
    """(mean, spread, thresholds) over a reference set of unrelated real photos: the signals' mean and
    spread, and per component the level that only `1 - quantile` of the set's pairs pass."""
    mean, std = {}, {}
    for column in PHOTO_COLUMNS:
        raw = photos[column].to_numpy(np.float64)
        raw = np.log1p(np.maximum(raw, 0)) if column in _LOG_SCALE else raw
        mean[column] = float(np.nanmean(raw))
        std[column] = float(np.nanstd(raw)) or 1.0
    upper = np.triu_indices(len(photos), 1)
    thresholds = {"whole": float(np.quantile((centred @ centred.T)[upper], quantile))}
    for component, block in standardised(photos, mean, std).items():
        distances = signal_distance(block, block)[upper]
        thresholds[component] = float(np.nanquantile(distances, 1.0 - quantile))
    return mean, std, thresholds


def weight_grid(step: float = 0.1) -> np.ndarray:
    """Every weighting of the components on a grid of `step` that adds up to 1."""
    units = round(1 / step)
    grid = [c for c in np.ndindex(*(units + 1,) * len(COMPONENTS)) if sum(c) == units]
    return np.asarray(grid, np.float64) / units


# ------------------------------------------------------------------ the companies table's columns
def page_table(
    companies: list[str], images: pd.DataFrame, faces: pd.DataFrame, vectors_of: dict[str, np.ndarray], pairs: pd.DataFrame,
    embedder_id: str, thresholds: ThresholdsConfig,
) -> pd.DataFrame:  # fmt: skip
    """The template-index columns of every company: on the same photos as the homogeneity index (its
    sample on large pages), NaN with model "none" where no model is shipped for the embedder or the
    page has too few photos. `vectors_of`: content hash -> reference-centred unit vector."""
    from pipeline.metrics.homogeneity import duplicate_matrix, page_sample, page_seed

    model = load_model(embedder_id)
    signals = faces.drop_duplicates("image").set_index("image") if len(faces) else pd.DataFrame(columns=PHOTO_COLUMNS)
    within = pairs[pairs["company_a"] == pairs["company_b"]]
    rows = []
    for company in companies:
        row: dict = {"company": company, **empty_row()}
        ok = page_sample(images[images["company"] == company], company, thresholds)
        if model is not None and len(ok) >= thresholds.min_images:
            photos = signals.reindex(ok["image"]).reindex(columns=PHOTO_COLUMNS).reset_index(drop=True).astype(float)
            centred = np.stack([vectors_of[content] for content in ok["content_sha256"]])
            duplicate = duplicate_matrix(ok["image"], within[within["company_a"] == company])
            result = page_template_index(model, photos, centred, duplicate, thresholds.bootstrap_samples, page_seed(company))
            row.update(template_index=result.index, template_ci_low=result.ci_low, template_ci_high=result.ci_high, template_model=model.id)
            row.update({f"template_from_{name}": value for name, value in result.components.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=["company", *PAGE_COLUMNS])

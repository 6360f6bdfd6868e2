"""The template index of a page: how far its photos, part by part, gather somewhere that diverse real
staff photos do not.

The homogeneity index (pipeline/metrics/homogeneity.py) compares whole pictures. A studio or generator
template fixes the framing, the backdrop, the colour grade and the skin finish while every face and
outfit differs. The template index compares photos on those parts separately, each against a fixed
set of reference photos (diverse, unrelated real staff photos):

    T = mean over unordered pairs {i, j} of k(i, j),   k = 1 for exact/near-duplicate pairs, else
    k(i, j) = sum over parts c of w_c * [g_c(i, j) - m_c(i) - m_c(j) + m_c]  +  w_d * (d(i) + d(j)) / 2

with g_c a positive-definite kernel that is 1 for equal photos, on the reference-centred embeddings
for "whole" and on the standardised template signals of pipeline/features/face_signals.py for
"framing" (face position and size), "backdrop" (its colour beside the head), "backdrop_texture" (how
busy and blurred it is), "grade" (the picture's a*, b*, saturation) and "skin" (skin detail, face
symmetry); m_c(i) the mean of g_c between photo i and the reference photos, m_c its mean over
reference pairs; and d(i) = the mean over the signal parts of m_c - m_c(i), the *departure*: how far
photo i's signals lie from the reference photos'. A photo without a face, or without a measurable
backdrop, adds 0 on the parts it lacks.

What that is. The pair parts' U-statistic is an unbiased estimate of the squared maximum mean
discrepancy (MMD^2, Gretton et al. 2012) between the page's photos and the reference photos, per part,
weighted: it counts departure *together*. The departure part is the mean of a per-photo score: it
counts departure at all. Hence:
- a page of photos like the reference set scores ~0 (either sign, by chance); a page whose photos
  share what a template fixes (one framing, one backdrop, smooth skin) scores well above;
- a page where a share p of real photos is replaced by a template's scores p * D + p^2 * S in
  expectation (D: the departure part of the fully templated page, S: the pair parts'): it rises at
  every step as a template spreads, because a templated photo and a real one count 0 on average in
  the pair parts, as two real ones do. (The homogeneity index dips at the first step when a
  template's photos are less alike to real photos than real photos are to each other, which is the
  usual case.) The pair parts alone rise as p^2, so the first quarter of a page templated adds only
  1/16 of S, below a 24-photo page's noise for the subtler templates: the departure part is what
  makes the first steps count;
- it is a U-statistic like the homogeneity index, with the same bootstrap interval, so its
  expectation does not depend on the page's size.
A page of photos that are each unusual in a different way scores through the departure part only;
one whose photos agree on something the reference photos do not agree on scores through both. The
reference decides what counts as ordinary; the shipped one is real staff photos.

Kernels. A signal part's g is the mean of a sharp Gaussian (a template's exact setting: one framing,
one backdrop colour) and a broad one (photos that depart from the reference together, though not
alike: AI packs frame wider and lower than staff photos, each picture differently). With the sharp
one alone, a pack's photos, several reference spreads away and spread among themselves, counted
little more than any photos far from the reference and from each other.

The model (the reference photos as the kernels see them, the signals' means and spreads, the
kernels' widths, the weights) is fixed per embedder, shipped as `template_models/<embedder id>.json`
and `.npz`, and never fitted on the run being measured: bench/template_index.py takes a quarter of
the corpus's real staff photos as the reference and chooses the widths and the weights on another
quarter, by simulating the validation's checks (ladders of a real page progressively replaced by AI
packs, a studio set and templated photos; separation from real pages) with leave-one-folder-out;
the other half is kept for validation. An embedder without a shipped model gets no template index
(`template_model` = "none").

Explainable by construction: T is a weighted sum of one U-statistic per part, so a page's index
splits exactly into one share per part (`template_from_whole`, `_framing`, `_backdrop`,
`_backdrop_texture`, `_grade`, `_skin`, `_departure`; they add up to it), which the audit page shows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import ThresholdsConfig
from pipeline.tables import rows_by

MODELS = Path(__file__).resolve().parent / "template_models"
NO_MODEL_ID = "none"
# Each component: the per-photo signals it compares (columns of the faces table, some on a log scale);
# "whole" compares the reference-centred embeddings instead.
# The backdrop's colour and its texture are apart: a template fixes the colour exactly, while how busy
# and blurred the strip beside the head measures varies with each person's outline as much as between
# real photos, and diluted the colour's agreement when they were one part.
COMPONENT_SIGNALS: dict[str, list[str]] = {
    "whole": [],
    "framing": ["face_x", "face_y", "face_scale"],
    "backdrop": ["background_l", "background_a", "background_b"],
    "backdrop_texture": ["background_std", "background_blur"],
    "grade": ["colour_a", "colour_b", "saturation"],
    "skin": ["skin_detail", "symmetry"],
}
DEPARTURE = "departure"  # the per-photo part: how far each photo's signals lie from the reference photos'
COMPONENTS = [*COMPONENT_SIGNALS, DEPARTURE]
PHOTO_COLUMNS = [column for columns in COMPONENT_SIGNALS.values() for column in columns]
_LOG_SCALE = ("background_std", "background_blur")  # spreads and variances: compared as ratios
PAGE_COLUMNS = ["template_index", "template_ci_low", "template_ci_high", *(f"template_from_{c}" for c in COMPONENTS), "template_model"]
_BLOCK = 512  # rows of the pair matrix computed at once: memory stays ~ _BLOCK x n per component


@dataclass(frozen=True)
class TemplateModel:
    embedder_id: str
    weights: dict[str, float]  # component -> weight; they add up to 1
    signal_mean: dict[str, float]  # each photo column's mean and spread over the reference photos
    signal_std: dict[str, float]  # (log scale where _LOG_SCALE says): the signals are standardised by them
    width: float  # the signal components' sharp Gaussian kernel width, in reference spreads
    broad_width: float  # and their broad one (module doc: Kernels)
    whole_scale: float  # the whole picture's kernel: exp((cosine - 1) / whole_scale)
    source: str  # what it was fitted on, in words
    # The reference photos (diverse, unrelated real staff photos), as the kernels see them: their
    # reference-centred embeddings and raw signals. Kept in <embedder>.npz beside the JSON.
    reference_whole: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False, compare=False)
    reference_signals: np.ndarray = field(default_factory=lambda: np.zeros((0, len(PHOTO_COLUMNS))), repr=False, compare=False)
    # How pages scored in the bench's validation, for readers of an audit page: [what, lowest median,
    # highest median] per kind of page. It describes the model and does not change an index, so the
    # model's id leaves it out.
    validation: list[list] = field(default_factory=list, compare=False)

    @property
    def id(self) -> str:
        digest = hashlib.sha256(json.dumps([self.embedder_id, self.weights, self.signal_mean, self.signal_std, self.width,
                                            self.broad_width, self.whole_scale], sort_keys=True).encode())  # fmt: skip
        digest.update(np.ascontiguousarray(self.reference_whole, np.float32).tobytes())
        digest.update(np.ascontiguousarray(self.reference_signals, np.float64).tobytes())
        return f"{self.embedder_id}@{digest.hexdigest()[:10]}"

    def save(self, folder: Path) -> None:
        fields = {key: value for key, value in asdict(self).items() if not key.startswith("reference_")}
        (folder / f"{self.embedder_id}.json").write_text(json.dumps(fields, indent=1, sort_keys=True) + "\n")
        with (folder / f"{self.embedder_id}.npz").open("wb") as handle:
            np.savez_compressed(handle, whole=self.reference_whole.astype(np.float32), signals=self.reference_signals.astype(np.float64))


def load_model(embedder_id: str, folder: Path = MODELS) -> TemplateModel | None:
    """The shipped model for this embedder, or None (no template index for it). A file that does not
    fit this module's components is an error naming it, not a silent wrong index."""
    path = folder / f"{embedder_id}.json"
    if not path.is_file():
        return None
    try:
        with np.load(folder / f"{embedder_id}.npz") as arrays:
            whole, signals = arrays["whole"], arrays["signals"]
        model = TemplateModel(**json.loads(path.read_text()), reference_whole=whole, reference_signals=signals)
    except (TypeError, ValueError, KeyError, OSError) as error:
        raise ValueError(f"{path}: not a template model of this version ({error}); refit it") from error
    if set(model.weights) != set(COMPONENTS) or set(model.signal_mean) != set(PHOTO_COLUMNS) or model.embedder_id != embedder_id:
        raise ValueError(f"{path}: a template model for other components or another embedder ({model.embedder_id}); refit it")
    if signals.shape[1] != len(PHOTO_COLUMNS) or len(whole) != len(signals):
        raise ValueError(f"{path}: its reference photos do not match its signals; refit it")
    return model


# ------------------------------------------------------------------ per-photo descriptors and pair kernels
def _signal(photos: pd.DataFrame, column: str) -> np.ndarray:
    """One signal of every photo, on the scale it is compared on (NaN where not measured)."""
    values = photos[column].to_numpy(np.float64) if column in photos else np.full(len(photos), np.nan)
    return np.log1p(np.maximum(values, 0)) if column in _LOG_SCALE else values


def standardised(photos: pd.DataFrame, mean: dict[str, float], std: dict[str, float]) -> dict[str, np.ndarray]:
    """Per signal component, (n, d) signals in reference spreads from the reference mean; NaN rows
    where a photo lacks the signal (no face, or no backdrop to measure)."""
    blocks = {}
    for component, columns in COMPONENT_SIGNALS.items():
        if not columns:
            continue
        values = []
        for column in columns:
            values.append((_signal(photos, column) - mean[column]) / std[column])
        block = np.stack(values, axis=1)
        block[np.isnan(block).any(axis=1)] = np.nan
        blocks[component] = block
    return blocks


def _kernel(model: TemplateModel, component: str, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The component's positive-definite kernel, 1 for equal photos: a Gaussian of the distance of
    unit embeddings (whole), or the mean of a sharp and a broad Gaussian of the distance of
    standardised signals (module doc: Kernels)."""
    if component == "whole":
        return np.exp((left @ right.T - 1.0) / model.whole_scale)
    squared = ((left[:, None, :] - right[None, :, :]) ** 2).mean(axis=-1)
    return (np.exp(-squared / (2 * model.width**2)) + np.exp(-squared / (2 * model.broad_width**2))) / 2


def _descriptors(model: TemplateModel, photos: pd.DataFrame, centred: np.ndarray) -> dict[str, np.ndarray]:
    return {"whole": np.asarray(centred, np.float64), **standardised(photos, model.signal_mean, model.signal_std)}


_REFERENCES: dict[str, dict[str, tuple[np.ndarray, float]]] = {}  # model id -> `_reference`


def _reference(model: TemplateModel) -> dict[str, tuple[np.ndarray, float]]:
    """Per component: the reference photos that have it, and the kernel's mean over their pairs.
    The model's own, so made once per model and process (it was ~4 ms of each of 834 pages a night)."""
    key = model.id
    if key not in _REFERENCES:
        signals = pd.DataFrame(model.reference_signals, columns=PHOTO_COLUMNS)
        found = {}
        for component, block in _descriptors(model, signals, model.reference_whole).items():
            block = block[~np.isnan(block).any(axis=1)]
            kernel = _kernel(model, component, block, block)
            found[component] = (block, float(kernel[~np.eye(len(block), dtype=bool)].mean()))
        if len(_REFERENCES) >= 8:  # a process meets one or two models; tests make many
            _REFERENCES.clear()
        _REFERENCES[key] = found
    return _REFERENCES[key]


@dataclass(frozen=True)
class _Part:
    """One component of a page's photos, ready for its centred kernel."""

    block: np.ndarray  # (n, d) descriptors, 0 where missing
    missing: np.ndarray  # (n,) the photo lacks the signal
    typical: np.ndarray  # (n,) m(i): the kernel's mean between photo i and the reference photos
    reference: float  # m: the kernel's mean over pairs of reference photos


def _parts(model: TemplateModel, photos: pd.DataFrame, centred: np.ndarray) -> dict[str, _Part]:
    descriptors = _descriptors(model, photos, centred)
    parts = {}
    for component, (reference, reference_mean) in _reference(model).items():
        block = descriptors[component]
        missing = np.isnan(block).any(axis=1)
        block = np.nan_to_num(block)
        to_reference = _kernel(model, component, block, reference)
        # A photo that is itself one of the reference photos (the same descriptor) is not compared
        # with itself: m(i) is then over the other reference photos, as m is over distinct pairs.
        itself = to_reference > 1.0 - 1e-9
        typical = (to_reference.sum(axis=1) - (to_reference * itself).sum(axis=1)) / np.maximum(1, len(reference) - itself.sum(axis=1))
        parts[component] = _Part(block, missing, typical, reference_mean)
    return parts


def _centred_kernel(model: TemplateModel, component: str, part: _Part, rows: slice) -> np.ndarray:
    kernel = _kernel(model, component, part.block[rows], part.block) - part.typical[rows, None] - part.typical[None, :] + part.reference
    kernel[part.missing[rows]] = 0.0
    kernel[:, part.missing] = 0.0
    return kernel


def _departure(parts: dict[str, _Part]) -> np.ndarray:
    """Per photo, m - m(i) averaged over the signal components (0 on a component the photo lacks): how
    far its template signals lie from the reference photos'. Its mean is 0 over reference-like photos."""
    signal_parts = [part for component, part in parts.items() if component != "whole"]
    return sum(np.where(part.missing, 0.0, part.reference - part.typical) for part in signal_parts) / len(signal_parts)


def _component_rows(model: TemplateModel, component: str, parts: dict[str, _Part], departure: np.ndarray, rows: slice) -> np.ndarray:
    """The (rows, n) pair kernel of one component (component_kernels)."""
    if component == DEPARTURE:
        return (departure[rows, None] + departure[None, :]) / 2
    return _centred_kernel(model, component, parts[component], rows)


def component_kernels(model: TemplateModel, photos: pd.DataFrame, centred: np.ndarray, rows: slice | None = None) -> dict[str, np.ndarray]:
    """Per component, the (rows, n) kernel of the pairs (row photo, any photo). For a pair component,
    centred on the reference photos: k(i, j) - m(i) - m(j) + m, m(i) the kernel's mean between photo i
    and the reference photos (other than itself, where it is one), m its mean over reference pairs;
    its mean is 0 over pairs of reference-like photos and over pairs of one reference-like and any
    other photo; 0 where a photo lacks the signal. For the departure: (d(i) + d(j)) / 2."""
    rows = rows or slice(0, len(photos))
    parts = _parts(model, photos, centred)
    departure = _departure(parts)
    return {component: _component_rows(model, component, parts, departure, rows) for component in COMPONENTS}


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
    parts = _parts(model, photos, centred)  # once per page; the blocks only bound the memory of the pair matrix
    departure = _departure(parts)
    for start in range(0, n, _BLOCK):
        rows = slice(start, min(n, start + _BLOCK))
        for component in COMPONENTS:
            # A copy is one template on every part.
            part = np.where(duplicate[rows], 1.0, _component_rows(model, component, parts, departure, rows))
            kernel[rows] += model.weights[component] * part
            shares[component] += model.weights[component] * float(part[off_diagonal[rows]].sum())
    index, low, high = homogeneity(kernel, samples, seed)
    pairs = max(1, n * (n - 1))
    return PageTemplateIndex(index, low, high, {component: total / pairs for component, total in shares.items()})


@functools.cache
def validation_of(model_id: str) -> list[list]:
    """The validation figures of the shipped model with this id ([] where none ships, or where the
    shipped one is another fit than the id names: an older run's figures are not this model's)."""
    try:
        model = load_model(model_id.rsplit("@", 1)[0]) if "@" in model_id else None
    except ValueError:  # a model file of another version: the page was measured with an older model
        return []
    return model.validation if model is not None and model.id == model_id else []


def drivers(components: dict[str, float], top: int = 2) -> list[str]:
    """The components that make up most of a page's template index: the largest, in turn, until they
    hold half of what the positive ones add, at most `top`; none where nothing raises the index."""
    raising = sorted(((value, name) for name, value in components.items() if value > 0), reverse=True)
    total, held, found = sum(value for value, _ in raising), 0.0, []
    for value, name in raising[:top]:
        if held >= total / 2:
            break
        found.append(name)
        held += value
    return found


def empty_row() -> dict[str, float | str]:
    return {**{column: math.nan for column in PAGE_COLUMNS}, "template_model": NO_MODEL_ID}


# ------------------------------------------------------------------ fitting
def signal_reference(photos: pd.DataFrame) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, spread) of each signal over the reference photos (log scale where _LOG_SCALE says)."""
    mean, std = {}, {}
    for column in PHOTO_COLUMNS:
        values = _signal(photos, column)
        mean[column] = float(np.nanmean(values))
        std[column] = float(np.nanstd(values)) or 1.0
    return mean, std


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
    # By content (signals are measured once per content): image names are a page's own, and two pages
    # may both list a "team/1.jpg" that are different photos.
    signals = faces.drop_duplicates("content_sha256").set_index("content_sha256") if len(faces) else pd.DataFrame(columns=PHOTO_COLUMNS)
    images_of = rows_by(images, "company")
    within_of = rows_by(pairs[pairs["company_a"] == pairs["company_b"]], "company_a")
    rows = []
    for company in companies:
        row: dict = {"company": company, **empty_row()}
        ok = page_sample(images_of.get(company, images.iloc[:0]), company, thresholds)
        if model is not None and len(ok) >= thresholds.min_images:
            photos = signals.reindex(ok["content_sha256"]).reindex(columns=PHOTO_COLUMNS).reset_index(drop=True).astype(float)
            centred = np.stack([vectors_of[content] for content in ok["content_sha256"]])
            duplicate = duplicate_matrix(ok["image"], within_of.get(company, pairs.iloc[:0]))
            result = page_template_index(model, photos, centred, duplicate, thresholds.bootstrap_samples, page_seed(company))
            row.update(template_index=result.index, template_ci_low=result.ci_low, template_ci_high=result.ci_high, template_model=model.id)
            row.update({f"template_from_{name}": value for name, value in result.components.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=["company", *PAGE_COLUMNS])

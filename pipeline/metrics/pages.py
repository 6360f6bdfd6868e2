"""The companies table: one row per staff page, one group of columns per registered page metric.

Every metric that describes a page registers here (`PAGE_METRICS`): its name, the run tables it
reads, its columns and the function that computes them, and `PAGE_READS` says what it reads of each
of those tables. The first one (near-duplicate rate, clusters, the homogeneity index) has a row for
every company; each later one is joined on the company, so a new metric is one entry here and
nothing else changes hands.

Every metric of a page is a function of that page's own rows alone (its photos, their vectors and
signals, the pairs and clusters that name it) and of what the run fixes for every page (embedder,
reference, thresholds, this code). Each row therefore carries `inputs_digest`, a digest of exactly
that, and a night keeps an earlier row whose digest is unchanged instead of computing it again: at
20,000 photos a 1% night changes about a fifth of the pages, and the stage then costs about that
share of what it did. Ids the near-duplicate stage numbers afresh over the whole run (style
clusters) enter a digest as which of the page's photos they put together, not as numbers, or one
new cluster anywhere would renumber every page's.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Settings
from pipeline.features import face_signals, zero_shot
from pipeline.features.embed import Embeddings
from pipeline.features.reference import Reference
from pipeline.metrics import template_index
from pipeline.metrics.homogeneity import COMPANY_COLUMNS, company_metrics

FACE_COUNT_COLUMNS = ("n_face_repeated", "n_face_shared")
INPUTS_DIGEST = "inputs_digest"


@dataclass
class PageInputs:
    settings: Settings
    images: pd.DataFrame
    embeddings: Embeddings  # the run's distinct ok pictures
    reference: Reference  # what the homogeneity index takes out before cosine
    read: Callable[[str], pd.DataFrame]  # one of the run's tables by name (empty where the run has none)


@dataclass(frozen=True)
class PageMetric:
    name: str
    reads: tuple[str, ...]  # the run's tables it reads (besides images and vectors)
    columns: tuple[str, ...]
    compute: Callable[[PageInputs, list[str]], pd.DataFrame]  # (inputs, companies) -> company + columns


def _homogeneity(inputs: PageInputs, _companies: list[str]) -> pd.DataFrame:
    return company_metrics(inputs.images, inputs.embeddings, inputs.read("pairs"), inputs.read("clusters"),
                           inputs.settings.thresholds, inputs.reference)  # fmt: skip


def _template_signals(inputs: PageInputs, companies: list[str]) -> pd.DataFrame:
    return face_signals.page_table(inputs.read("faces"), companies)


def _template_index(inputs: PageInputs, companies: list[str]) -> pd.DataFrame:
    needed = set(inputs.images["content_sha256"])  # the pages computed now: a night's few, not the whole run
    rows = [row for row, content in enumerate(inputs.embeddings.content_sha256) if content in needed]
    contents = [inputs.embeddings.content_sha256[row] for row in rows]
    centred = dict(zip(contents, inputs.reference.centre(inputs.embeddings.vectors[rows])))
    return template_index.page_table(companies, inputs.images, inputs.read("faces"), centred, inputs.read("pairs"),
                      inputs.embeddings.embedder_id, inputs.settings.thresholds)  # fmt: skip


def _zero_shot(inputs: PageInputs, companies: list[str]) -> pd.DataFrame:
    styles = inputs.read("zero_shot")
    return styles if len(styles) else pd.DataFrame({"company": companies, **{c: np.nan for c in zero_shot.PAGE_COLUMNS}})


def _face_identity(inputs: PageInputs, companies: list[str]) -> pd.DataFrame:
    from pipeline.features.identity import page_counts

    counts = page_counts(inputs.read("identities"), companies)
    if not inputs.settings.privacy.face_identity:  # not measured, which is not the same as none found
        counts[list(FACE_COUNT_COLUMNS)] = np.nan
    return counts


@dataclass(frozen=True)
class TableRead:
    """What page metrics read of one run table: in the rows that name the page (in `company`, or in
    `company_a` or `company_b`), these `columns` (None: every column); `ordered` where a metric
    follows the rows' order on the page (a seeded sample or bootstrap over its photos, a float sum)."""

    columns: tuple[str, ...] | None
    ordered: bool = False


# Vectors are not here: a photo's vector is its content's under the run's embedder, both in the digest.
PAGE_READS: dict[str, TableRead] = {
    "images": TableRead(("company", "image", "content_sha256", "status"), ordered=True),
    "pairs": TableRead(("company_a", "image_a", "company_b", "image_b")),
    "clusters": TableRead(("company", "image", "cluster_id")),
    "faces": TableRead(None, ordered=True),
    "zero_shot": TableRead(None),
    "identities": TableRead(("company_a", "image_a", "company_b", "image_b", "same_page")),
}
RENUMBERED = ("cluster_id",)  # a whole-run numbering: read as which rows of the page share a value
_PAGE_NAMES = ("company", "company_a", "company_b")

PAGE_METRICS: tuple[PageMetric, ...] = (
    PageMetric("homogeneity", ("pairs", "clusters"), tuple(COMPANY_COLUMNS[1:]), _homogeneity),
    PageMetric("template_signals", ("faces",), tuple(face_signals.PAGE_COLUMNS), _template_signals),
    PageMetric("template_index", ("faces", "pairs"), tuple(template_index.PAGE_COLUMNS), _template_index),
    PageMetric("zero_shot", ("zero_shot",), tuple(zero_shot.PAGE_COLUMNS), _zero_shot),
    PageMetric("face_identity", ("identities",), FACE_COUNT_COLUMNS, _face_identity),
)


def companies_table(inputs: PageInputs, earlier: pd.DataFrame | None = None) -> tuple[pd.DataFrame, int]:
    """Every page metric of every company, in registry order, and how many pages were computed: the
    rest are `earlier`'s rows (a companies table of another run) whose inputs are unchanged."""
    companies = sorted(set(inputs.images["company"])) if len(inputs.images) else []
    digests = dict(zip(companies, page_digests(inputs, companies)))
    kept = _kept_rows(earlier, digests)
    kept_companies = set(kept["company"])
    todo = [company for company in companies if company not in kept_companies]
    computed = _computed_rows(inputs, todo) if todo or kept.empty else None
    table = kept if computed is None else computed if kept.empty else pd.concat([kept, computed], ignore_index=True)
    table = table.sort_values("company", ignore_index=True) if len(table) > 1 else table.reset_index(drop=True)
    table[INPUTS_DIGEST] = [digests[company] for company in table["company"]]
    return table[page_columns()], len(todo)


def _kept_rows(earlier: pd.DataFrame | None, digests: dict[str, str]) -> pd.DataFrame:
    """`earlier`'s rows whose page has the same inputs now (none from a table of other columns: an
    older version's, whose digests, if any, were of other inputs)."""
    if earlier is None or list(earlier.columns) != page_columns():
        return pd.DataFrame(columns=page_columns())
    same = earlier["inputs_digest"].to_numpy() == earlier["company"].map(digests).to_numpy()
    return earlier[same].drop_duplicates("company").reset_index(drop=True)


def _computed_rows(inputs: PageInputs, companies: list[str]) -> pd.DataFrame:
    """Every metric of these companies' pages."""
    first, *rest = PAGE_METRICS
    inputs = replace(inputs, images=inputs.images[inputs.images["company"].isin(companies)])
    table = first.compute(inputs, companies)
    for metric in rest:
        table = table.merge(metric.compute(inputs, companies)[["company", *metric.columns]], on="company", how="left")
    return table


def page_digests(inputs: PageInputs, companies: list[str]) -> list[str]:
    """Per company, a digest of everything its row of the companies table is computed from (module
    doc): equal digests, equal rows. Each table's rows are hashed (two 64-bit hashes each) and
    summed per page they name, so the cost is a pass over each table, whatever the pages."""
    run = json.dumps({
        "code": _code_digest(), "embedder": inputs.embeddings.embedder_id, "reference": inputs.reference.id,
        "thresholds": inputs.settings.thresholds.model_dump(mode="json"), "face_identity": inputs.settings.privacy.face_identity,
    }, sort_keys=True).encode()  # fmt: skip
    sums = [_page_sums(inputs.images if table == "images" else inputs.read(table), read, companies) for table, read in PAGE_READS.items()]
    per_page = np.concatenate(sums, axis=1)
    return [hashlib.sha256(run + company.encode() + row.tobytes()).hexdigest()[:32] for company, row in zip(companies, per_page)]


_ROW_HASH_KEYS = ("homog-page-rows1", "homog-page-rows2")  # pandas' row hash takes a 16-character key


def _page_sums(frame: pd.DataFrame, read: TableRead, companies: list[str]) -> np.ndarray:
    """(companies, 2) uint64: the sums (wrapping) of the hashes of the rows that name each company."""
    sums = np.zeros((len(companies), len(_ROW_HASH_KEYS)), np.uint64)
    names = [column for column in _PAGE_NAMES if column in frame]
    if frame.empty or not names:
        return sums
    columns = list(frame.columns) if read.columns is None else [column for column in read.columns if column in frame]
    hashed = frame[columns].reset_index(drop=True)
    position = frame["company"].groupby(frame["company"].to_numpy()).cumcount().to_numpy() if "company" in frame else None
    for column in RENUMBERED:
        if column in hashed and position is not None:
            first = pd.Series(position).groupby([frame["company"].to_numpy(), frame[column].to_numpy()]).transform("min")
            hashed[column] = np.where(frame[column].to_numpy() < 0, frame[column].to_numpy(), first.to_numpy())
    if read.ordered and position is not None:
        hashed["position on the page"] = position
    hashed["columns"] = ",".join(columns)  # a column missing from an older table is a change too
    hashes = np.stack([pd.util.hash_pandas_object(hashed, index=False, hash_key=key).to_numpy() for key in _ROW_HASH_KEYS], axis=1)
    for name in names:
        codes = pd.Categorical(frame[name], categories=companies).codes
        np.add.at(sums, codes[codes >= 0], hashes[codes >= 0])
    return sums


@functools.cache
def _code_digest() -> str:
    """The pipeline package's files: rows computed by other code (or another shipped template model)
    are computed again, whatever changed."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def page_columns() -> list[str]:
    """The companies table's columns, in order."""
    return ["company", *(column for metric in PAGE_METRICS for column in metric.columns), INPUTS_DIGEST]

"""The companies table: one row per staff page, one group of columns per registered page metric.

Every metric that describes a page registers here (`PAGE_METRICS`): its name, the run tables it
reads, its columns and the function that computes them, and `PAGE_READS` says what it reads of each
of those tables. Each metric's columns are joined on the company (every company of the run's
images table has a row), so a new metric is one entry here and nothing else changes hands.

Every metric of a page is a function of that page's own rows alone (its photos, their vectors and
signals, the pairs and clusters that name it) and of what the run fixes for every page (embedder,
reference, thresholds, this code). Each row therefore carries `inputs_digest`: per metric, a digest
of exactly what that metric reads of the page. A night keeps an earlier row's values of a metric
whose digest is unchanged instead of computing them again, so a photo replaced on one page costs
that page's metrics, and a face it shares with a photo of another page costs that page's face counts
only. Ids the near-duplicate stage numbers afresh over the whole run (style clusters) enter a digest
as which of the page's photos they put together, not as numbers, or one new cluster anywhere would
renumber every page's.
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
    # Where the warehouse is: crawled photos are named by where they are stored in it, and enter a
    # digest relative to it, so the same inputs give the same digests in any warehouse.
    warehouse_uri: str = ""


@dataclass(frozen=True)
class PageMetric:
    name: str
    reads: tuple[str, ...]  # the run's tables it reads (vectors follow the content hashes of `images`)
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
    styles = inputs.read("zero_shot")  # every page's: companies_table keeps the rows of the pages it asked for
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
_IMAGE_NAMES = ("image", "image_a", "image_b")

PAGE_METRICS: tuple[PageMetric, ...] = (
    PageMetric("homogeneity", ("images", "pairs", "clusters"), tuple(COMPANY_COLUMNS[1:]), _homogeneity),
    PageMetric("template_signals", ("faces",), tuple(face_signals.PAGE_COLUMNS), _template_signals),
    PageMetric("template_index", ("images", "faces", "pairs"), tuple(template_index.PAGE_COLUMNS), _template_index),
    PageMetric("zero_shot", ("zero_shot",), tuple(zero_shot.PAGE_COLUMNS), _zero_shot),
    PageMetric("face_identity", ("identities",), FACE_COUNT_COLUMNS, _face_identity),
)


def companies_table(inputs: PageInputs, earlier: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every page metric of every company, in registry order, and for how many pages each metric was
    computed: the others keep `earlier`'s values (a companies table of another run) where that
    metric's inputs are unchanged (module doc)."""
    companies = sorted(set(inputs.images["company"])) if len(inputs.images) else []
    digests = page_digests(inputs, companies)
    earlier = earlier.drop_duplicates("company") if earlier is not None and "company" in earlier else None  # one row a company, as here
    known = _earlier_digests(earlier)
    table, computed = pd.DataFrame({"company": pd.Series(companies, dtype=inputs.images["company"].dtype)}), {}
    for metric in PAGE_METRICS:
        columns = ["company", *metric.columns]
        keep = [company for company, digest in zip(companies, digests[metric.name]) if known.get(company, {}).get(metric.name) == digest]
        kept = set(keep)
        todo = [company for company in companies if company not in kept]
        parts = [earlier.loc[earlier["company"].isin(kept), columns]] if keep else []
        if todo or not keep:  # computed for no page at all where there is none: the columns' types
            part_inputs = replace(inputs, images=inputs.images[inputs.images["company"].isin(todo)])
            found = metric.compute(part_inputs, todo)
            parts.append(found.loc[found["company"].isin(todo), columns])  # each page once, from one source
        table = table.merge(pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0], on="company", how="left")
        computed[metric.name] = len(todo)
    table[INPUTS_DIGEST] = [
        " ".join(f"{metric.name}:{digests[metric.name][row]}" for metric in PAGE_METRICS) for row in range(len(companies))
    ]
    return table[page_columns()], computed


def _earlier_digests(earlier: pd.DataFrame | None) -> dict[str, dict[str, str]]:
    """company -> metric -> the digest of the inputs of `earlier`'s values; none from a table of
    other columns (an older version's, whose digests, if any, were of other inputs)."""
    if earlier is None or list(earlier.columns) != page_columns():
        return {}
    return {
        company: dict(part.split(":", 1) for part in str(digest).split() if ":" in part)  # anything else: nothing known
        for company, digest in zip(earlier["company"], earlier[INPUTS_DIGEST])
    }


def page_digests(inputs: PageInputs, companies: list[str]) -> dict[str, list[str]]:
    """Per metric, per company, a digest of everything the metric's columns of the company's row are
    computed from (module doc): equal digests, equal values. Each table's rows are hashed (two
    64-bit hashes each) and summed per page they name: a pass over each table, whatever the pages."""
    run = json.dumps({
        "code": _code_digest(), "embedder": inputs.embeddings.embedder_id, "reference": inputs.reference.id,
        "thresholds": inputs.settings.thresholds.model_dump(mode="json"), "face_identity": inputs.settings.privacy.face_identity,
    }, sort_keys=True).encode()  # fmt: skip
    tables = {table for metric in PAGE_METRICS for table in metric.reads}
    sums = {
        table: _page_sums(inputs.images if table == "images" else inputs.read(table), PAGE_READS[table], companies, inputs.warehouse_uri)
        for table in tables
    }
    digests = {}
    for metric in PAGE_METRICS:
        per_page = np.concatenate([sums[table] for table in metric.reads], axis=1)
        salt = run + metric.name.encode()
        digests[metric.name] = [
            hashlib.sha256(salt + company.encode() + row.tobytes()).hexdigest()[:16] for company, row in zip(companies, per_page)
        ]
    return digests


_ROW_HASH_KEYS = ("homog-page-rows1", "homog-page-rows2")  # pandas' row hash takes a 16-character key


def _page_sums(frame: pd.DataFrame, read: TableRead, companies: list[str], warehouse_uri: str = "") -> np.ndarray:
    """(companies, 2) uint64: the sums (wrapping) of the hashes of the rows that name each company,
    with image names under `warehouse_uri` taken relative to it."""
    sums = np.zeros((len(companies), len(_ROW_HASH_KEYS)), np.uint64)
    names = [column for column in _PAGE_NAMES if column in frame]
    if frame.empty or not names:
        return sums
    columns = list(frame.columns) if read.columns is None else [column for column in read.columns if column in frame]
    hashed = frame[columns].reset_index(drop=True)
    for column in _IMAGE_NAMES:
        if warehouse_uri and column in hashed:
            hashed[column] = hashed[column].astype(str).str.removeprefix(warehouse_uri.rstrip("/") + "/")
    position = frame["company"].groupby(frame["company"].to_numpy()).cumcount().to_numpy() if "company" in frame else None
    for column in RENUMBERED:
        if column in hashed and position is not None:
            first = pd.Series(position).groupby([frame["company"].to_numpy(), frame[column].to_numpy()]).transform("min")
            hashed[column] = np.where(frame[column].to_numpy() < 0, frame[column].to_numpy(), first.to_numpy())
    if read.ordered and position is not None:
        hashed["position on the page"] = position
    hashed["columns"] = ",".join(columns)  # a column missing from an older table is a change too
    hashes = np.stack([pd.util.hash_pandas_object(hashed, index=False, hash_key=key).to_numpy() for key in _ROW_HASH_KEYS], axis=1)
    pages = pd.Index(companies)
    for name in names:
        codes = pages.get_indexer(frame[name])  # -1: a page not in this run (a pair with a photo refused now)
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

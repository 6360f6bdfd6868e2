"""The companies table: one row per staff page, one group of columns per registered page metric.

Every metric that describes a page registers here (`PAGE_METRICS`): its name, the run tables it
reads, its columns and the function that computes them. The first one (near-duplicate rate,
clusters, the homogeneity index) has a row for every company; each later one is joined on the
company, so a new metric is one entry here and nothing else changes hands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import Settings
from pipeline.features import face_signals, zero_shot
from pipeline.features.embed import Embeddings
from pipeline.features.reference import Reference
from pipeline.metrics import template_index
from pipeline.metrics.homogeneity import COMPANY_COLUMNS, company_metrics

FACE_COUNT_COLUMNS = ("n_face_repeated", "n_face_shared")


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
    centred = dict(zip(inputs.embeddings.content_sha256, inputs.reference.centre(inputs.embeddings.vectors)))
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


PAGE_METRICS: tuple[PageMetric, ...] = (
    PageMetric("homogeneity", ("pairs", "clusters"), tuple(COMPANY_COLUMNS[1:]), _homogeneity),
    PageMetric("template_signals", ("faces",), tuple(face_signals.PAGE_COLUMNS), _template_signals),
    PageMetric("template_index", ("faces", "pairs"), tuple(template_index.PAGE_COLUMNS), _template_index),
    PageMetric("zero_shot", ("zero_shot",), tuple(zero_shot.PAGE_COLUMNS), _zero_shot),
    PageMetric("face_identity", ("identities",), FACE_COUNT_COLUMNS, _face_identity),
)


def companies_table(inputs: PageInputs) -> pd.DataFrame:
    """Every page metric of every company, in registry order."""
    first, *rest = PAGE_METRICS
    table = first.compute(inputs, [])
    companies = list(table["company"])
    for metric in rest:
        table = table.merge(metric.compute(inputs, companies)[["company", *metric.columns]], on="company", how="left")
    return table


def page_columns() -> list[str]:
    """The companies table's columns, in order."""
    return ["company", *(column for metric in PAGE_METRICS for column in metric.columns)]

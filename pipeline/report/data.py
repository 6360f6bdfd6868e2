"""What a report shows, read back from the warehouse: a run's tables and its vectors, centred as the index centres them."""

from __future__ import annotations

import base64
import logging
import math
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from pipeline.context import RunContext
from pipeline.ingest.intake import distinct_ok
from pipeline.warehouse import Warehouse

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    run_date: str
    embedder: str
    embedder_fallback: str
    images: pd.DataFrame
    companies: pd.DataFrame
    pairs: pd.DataFrame
    groups: pd.DataFrame
    clusters: pd.DataFrame
    reuse: pd.DataFrame
    trends: pd.DataFrame
    crawl_log: pd.DataFrame
    vectors: np.ndarray  # one row per distinct ok picture, in `keys` order
    keys: list[str]
    # The same rows with the index reference taken out and re-normalised (pipeline/features/reference.py):
    # the similarities the homogeneity index is made of, so the report's plots agree with it.
    centred: np.ndarray
    index_reference: str


def _reference_centred(store: Warehouse, embedder_id: str, vectors: np.ndarray, index_reference: str) -> np.ndarray:
    from pipeline.features.reference import NO_REFERENCE_ID, ReferenceError, no_reference, stored_reference

    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    reference = no_reference(embedder_id, dim)
    if len(vectors) and index_reference not in ("", NO_REFERENCE_ID):
        try:
            found = stored_reference(store, embedder_id, dim)
        except ReferenceError as exc:
            found = None
            logger.warning("report: the index reference cannot be read (%s): plots use raw cosine", exc)
        if found is not None and found.id == index_reference:
            reference = found
        else:
            logger.warning("report: the run was measured against reference %s, which the warehouse no longer holds: "
                           "the report's similarities are raw cosine", index_reference)  # fmt: skip
    return reference.centre(vectors) if len(vectors) else vectors


def load_run(ctx: RunContext) -> RunData:
    from pipeline.features.embed import vectors_for

    store, run_date, embedder_id = ctx.warehouse, ctx.run_date, ctx.require_embedder_id()

    def table(name: str) -> pd.DataFrame:
        return store.read_table(name, run_date)  # empty where the run has no such table

    images, companies = table("images"), table("companies")
    keys = list(distinct_ok(images)["content_sha256"]) if len(images) else []
    vectors = vectors_for(store, embedder_id, keys, 0) if keys else np.zeros((0, 0), np.float32)
    trends = table("trends")
    if len(trends):
        trends = trends[trends["embedder"] == embedder_id]  # never mix embedders
    index_reference = str(companies["index_reference"].iloc[0]) if "index_reference" in companies and len(companies) else ""
    return RunData(run_date, embedder_id, ctx.embedder_fallback, images, companies, table("pairs"), table("groups"), table("clusters"),
                   table("reuse"), trends, table("crawl_log"), vectors, keys,
                   _reference_centred(store, embedder_id, vectors, index_reference), index_reference)  # fmt: skip


# ------------------------------------------------------------------ values as pages show them
def label(row: pd.Series | dict) -> str:
    """How a photo is named on a page: the person's name where the page gave one, else its file name."""
    person = str(row.get("person") or "").strip()
    if person:
        return person
    source = str(row.get("image_url") or row.get("image") or "")
    return PurePosixPath(source.split("?", 1)[0]).name or source


def thumbnail(store: Warehouse, key: object) -> str | None:
    if not isinstance(key, str) or not key or not store.exists(key):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(store.read_bytes(key)).decode("ascii")


def finite(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def count(value: object) -> int | None:
    """A count column, or None where it was not measured (missing, NaN)."""
    number = finite(value)
    return None if number is None else int(number)


def plot_label(name: str, width: int = 40) -> str:
    # Scraped names may hold control or format characters that fonts cannot draw.
    return "".join(ch if ch.isprintable() else "?" for ch in str(name))[:width]

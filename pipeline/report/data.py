"""What a report shows, read back from the warehouse: a run's tables and its vectors, centred as the index centres them."""

from __future__ import annotations

import base64
import dataclasses
import logging
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from pipeline.context import RunContext
from pipeline.ingest.intake import distinct_ok
from pipeline.tables import records_by, rows_by
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
    changes: pd.DataFrame
    change_history: pd.DataFrame  # the changes rows of every run up to this one
    newly_shared: pd.DataFrame
    # Earlier runs whose indexes the trends do not join (another embedder or reference): run_date, embedder, index_reference.
    not_joined: pd.DataFrame
    crawl_log: pd.DataFrame
    vectors: np.ndarray  # one row per distinct ok picture, in `keys` order
    keys: list[str]
    # The same rows with the index reference taken out and re-normalised (pipeline/features/reference.py):
    # the similarities the homogeneity index is made of, so the report's plots agree with it.
    centred: np.ndarray
    index_reference: str

    def for_pages(self, companies: list[str]) -> RunData:
        """This run as these companies' audit pages read it, to send to a worker: the centred vectors
        of their pictures only (the whole run's are ~60 MB at 20,000 photos, sent once per worker),
        none of the raw ones (the map is drawn from them, once), and of the run's tables only what
        their pages show, as this process works it out once for every part: their own rows, and the
        rows of their photos' partners in other companies (reuse pairs, duplicate groups). Every
        worker got the whole run's tables before, and worked the whole run's caches out of them
        again: ~60 MB a worker at 20,000 photos. The population's figures (`centre`,
        `population_similarities`, the rated pages, the band of the index over time) are the whole
        run's, as every page shows them.

        An audit page reads the run through these caches only: a page that read a table of the
        part directly would find it empty (the byte-equal pages with one and several workers are
        what tests that)."""
        mine = set(companies)
        group_ids = sorted({group_id for company in mine for group_id in self.group_ids_of_company.get(company, [])})
        partners = {(r["company"], r["image"]) for group_id in group_ids for r in self.group_members[group_id]}
        for position in {position for company in mine for position in self.reuse_of_company.get(company, [])}:
            pair = self.reuse_records[position]
            partners |= {(pair["company_a"], pair["image_a"]), (pair["company_b"], pair["image_b"])}
        ok = self.ok_images
        keys = sorted(set(ok.loc[ok["company"].isin(mine), "content_sha256"]) & set(self.row_of)) if len(ok) else []
        part = dataclasses.replace(
            self, **{name: getattr(self, name).iloc[:0] for name in _TABLES_PAGES_DO_NOT_READ},
            groups=self.groups[self.groups["group_id"].isin(group_ids)] if len(self.groups) else self.groups,
            vectors=self.vectors[:0], keys=keys, centred=self.centred[[self.row_of[key] for key in keys]],
        )  # fmt: skip
        part.__dict__.update({name: getattr(self, name) for name in _RUN_WIDE_CACHES})
        part.__dict__.update({name: {c: value for c, value in getattr(self, name).items() if c in mine} for name in _COMPANY_CACHES})
        part.__dict__.update({
            "group_members": {g: self.group_members[g] for g in group_ids},
            "group_links": {g: self.group_links[g] for g in group_ids if g in self.group_links},
            "ok_rows": {key: self.ok_rows[key] for key in partners if key in self.ok_rows},
        })  # fmt: skip
        return part

    # What every audit page of a run shares, computed once per run rather than once per page.
    @cached_property
    def row_of(self) -> dict[str, int]:
        """content hash -> its row in `vectors` and `centred`."""
        return {key: row for row, key in enumerate(self.keys)}

    @cached_property
    def ok_pictures(self) -> pd.DataFrame:
        """One row per distinct usable picture and page (`distinct_ok` of the images table)."""
        return distinct_ok(self.images)

    @cached_property
    def ok_images(self) -> pd.DataFrame:
        """The images table's ok rows (every row, duplicates included)."""
        return self.images[self.images["status"] == "ok"] if len(self.images) else self.images

    @cached_property
    def ok_rows(self) -> dict[tuple[str, str], dict]:
        """The run's ok rows as plain records by (company, image), a row listed twice counting once, as
        the first: a lookup per photo shown, where a pandas multi-index lookup costs ~0.2 ms and a
        report shows thousands."""
        ok = self.ok_images.drop_duplicates(["company", "image"])
        return {(row["company"], row["image"]): row for row in ok.to_dict("records")}

    @cached_property
    def ok_records_of_company(self) -> dict[str, list[dict]]:
        """Each company's ok rows as plain records, in the table's order."""
        return records_by(self.ok_images, "company")

    @cached_property
    def ok_pictures_of_company(self) -> dict[str, pd.DataFrame]:
        return rows_by(self.ok_pictures, "company")

    @cached_property
    def ok_of_company(self) -> dict[str, pd.DataFrame]:
        """Each company's ok rows as a frame (a page's gallery sample is drawn from it)."""
        return rows_by(self.ok_images, "company")

    @cached_property
    def clusters_of_company(self) -> dict[str, pd.DataFrame]:
        return rows_by(self.clusters, "company")

    @cached_property
    def trends_of_company(self) -> dict[str, pd.DataFrame]:
        """Each company's trends rows, oldest run first."""
        return rows_by(self.trends.sort_values("run_date", kind="stable") if len(self.trends) else self.trends, "company")

    @cached_property
    def history_of_company(self) -> dict[str, list[dict]]:
        """Each company's changes rows, newest run first."""
        history = self.change_history
        return records_by(history.sort_values("run_date", ascending=False, kind="stable") if len(history) else history, "company")

    @cached_property
    def trends_now(self) -> dict[str, dict]:
        """Each company's trends row of this run, the first where there are several."""
        now = self.trends[self.trends["run_date"] == self.run_date] if len(self.trends) else self.trends
        return {company: rows[0] for company, rows in records_by(now, "company").items()}

    @cached_property
    def group_ids_of_company(self) -> dict[str, list[int]]:
        """The duplicate groups each company has a photo in, by id (largest first, as numbered)."""
        if self.groups.empty:
            return {}
        return {company: sorted(set(ids)) for company, ids in self.groups.groupby("company", sort=False)["group_id"]}

    @cached_property
    def group_members(self) -> dict[int, list[dict]]:
        """Each group's member rows, its anchor first, then by company and image."""
        ordered = self.groups.sort_values(["group_id", "anchor", "company", "image"], ascending=[True, False, True, True])
        return records_by(ordered, "group_id")

    @cached_property
    def reuse_records(self) -> list[dict]:
        """The reuse table's rows as plain records, in table order (`reuse_of_company` holds positions)."""
        return self.reuse.to_dict("records")

    @cached_property
    def group_links(self) -> dict[int, tuple[int, int]]:
        """Each group's pairs verified directly and implied by the group."""
        if self.pairs.empty:
            return {}
        counts = self.pairs.groupby(["group_id", "link"]).size().unstack(fill_value=0)
        return {int(g): (int(row.get("direct", 0)), int(row.get("implied", 0))) for g, row in counts.iterrows()}

    @cached_property
    def reuse_of_company(self) -> dict[str, list[int]]:
        """Positions in the reuse table of each company's pairs (either side), in table order."""
        positions: dict[str, list[int]] = {}
        for position, (a, b) in enumerate(zip(self.reuse["company_a"], self.reuse["company_b"])):
            positions.setdefault(a, []).append(position)
            if b != a:
                positions.setdefault(b, []).append(position)
        return positions

    @cached_property
    def population_band(self) -> pd.DataFrame:
        """Per run date, the median and quartiles of every rated page's index (`plots.population_band`)."""
        from pipeline.report.plots import population_band

        return population_band(self.trends) if len(self.trends) else pd.DataFrame(columns=["run_date", "q1", "median", "q3"])

    @cached_property
    def rated(self):  # noqa: ANN201 - plots.RatedPages (plots imports this module)
        """The rated pages as every audit page compares itself with them (`plots.RatedPages`)."""
        from pipeline.report.plots import RatedPages

        return RatedPages.of(self.companies)

    @cached_property
    def ascending_columns(self) -> dict[str, np.ndarray]:
        """Each numeric column of the companies table: its finite values, sorted (`plots.median_without`)."""
        numeric = self.companies.select_dtypes("number")
        return {column: np.sort(values[np.isfinite(values)]) for column, values in ((c, numeric[c].to_numpy(float)) for c in numeric)}

    @cached_property
    def centre(self) -> np.ndarray:
        """The run's mean centred vector, unit length: what a photo's "generic" score is the cosine to."""
        centre = self.centred.mean(axis=0)
        return centre / (np.linalg.norm(centre) or 1.0)

    @cached_property
    def population_similarities(self) -> np.ndarray:
        """Index similarities of a seeded sample of up to 4,000 pairs of the run's pictures: the
        population every page's histogram is drawn against (the same report every time)."""
        rng = np.random.default_rng(0)
        a, b = rng.integers(0, len(self.centred), 4000), rng.integers(0, len(self.centred), 4000)
        return np.einsum("ij,ij->i", self.centred[a[a != b]], self.centred[b[a != b]])


# What an audit page reads of a run, besides its rows of the companies table and its vectors
# (`RunData.for_pages`): the figures of the whole run that every page shows, the caches by company
# (cut to a worker's pages), and the groups and photos of its pages' partners in other companies.
_RUN_WIDE_CACHES = ("rated", "population_band", "ascending_columns", "centre", "population_similarities", "reuse_records")
_COMPANY_CACHES = (
    "ok_records_of_company", "ok_pictures_of_company", "ok_of_company", "clusters_of_company", "trends_of_company",
    "history_of_company", "trends_now", "group_ids_of_company", "reuse_of_company",
)  # fmt: skip
# The tables an audit page reads only through those caches: a worker's part holds none of their rows.
_TABLES_PAGES_DO_NOT_READ = ("images", "pairs", "clusters", "trends", "changes", "change_history", "newly_shared", "crawl_log")


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
    # Kept in float32, as the vectors are: a report shows similarities to two decimals, and float64
    # doubled the largest thing it holds and sends to each audit-page worker (120 MB at 20,000 photos).
    return reference.centre(vectors).astype(np.float32) if len(vectors) else vectors


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
                   table("reuse"), trends, table("changes"), _change_history(store, run_date), table("newly_shared"),
                   _not_joined(store, run_date, embedder_id, index_reference), table("crawl_log"), vectors, keys,
                   _reference_centred(store, embedder_id, vectors, index_reference), index_reference)  # fmt: skip


def _change_history(store: Warehouse, run_date: str) -> pd.DataFrame:
    history = store.read_table("changes")
    return history[history["run_date"] <= run_date] if len(history) else history


def _not_joined(store: Warehouse, run_date: str, embedder_id: str, index_reference: str) -> pd.DataFrame:
    """The earlier runs measured with another embedder or reference: the report names them instead of drawing a line through them."""
    runs = []
    for date in store.run_dates("companies"):
        if date >= run_date:
            continue
        measured = store.read_table("companies", date)
        if {"embedder", "index_reference"} <= set(measured.columns) and len(measured):
            runs.append(measured[["embedder", "index_reference"]].iloc[:1].assign(run_date=date))
    if not runs:
        return pd.DataFrame(columns=["run_date", "embedder", "index_reference"])
    earlier = pd.concat(runs, ignore_index=True)[["run_date", "embedder", "index_reference"]]
    return earlier[(earlier["embedder"] != embedder_id) | (earlier["index_reference"] != index_reference)].reset_index(drop=True)


# ------------------------------------------------------------------ values as pages show them
def label(row: pd.Series | dict) -> str:
    """How a photo is named on a page: the person's name where the page gave one, else its file name."""
    person = str(row.get("person") or "").strip()
    if person:
        return person
    source = str(row.get("image_url") or row.get("image") or "")
    return PurePosixPath(source.split("?", 1)[0]).name or source


def thumbnail(store: Warehouse, key: object) -> str | None:
    """The stored thumbnail as a data URI; None where there is none (not kept, or purged since)."""
    if not isinstance(key, str) or not key:
        return None
    try:  # one round trip, not a check and a read: ~40 thumbnails an audit page, ~800 pages a night
        data = store.read_bytes(key)
    except FileNotFoundError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


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


# ------------------------------------------------------------------ the trends table as `homog trends` shows it
TREND_VIEW_COLUMNS = [
    "company", "run_date", "n_images", "homogeneity_index", "ci_low", "ci_high", "change", "z", "significant",
    "template_index", "template_change", "template_significant", "summary",
]  # fmt: skip


class NoRunError(LookupError):
    """The warehouse has no finished run to read trends from (the message says which)."""


def trends_view(store: Warehouse, run_date: str | None = None, company: str | None = None, since: str | None = None) -> pd.DataFrame:
    """Every comparable run of every company up to `run_date` (default: the latest finished run),
    as that run's trends table joins them, with each run's change in words (the `changes` table)."""
    finished = store.finished_run_dates("trends")
    if run_date is not None:
        finished = [date for date in finished if date <= run_date]
    if not finished:
        raise NoRunError(f"no finished run{' up to ' + run_date if run_date else ''} with a trends table in {store.uri()}")
    latest = finished[-1]
    trends = store.read_table("trends", latest)
    changes = store.read_table("changes")
    if len(changes):
        trends = trends.merge(changes[["company", "run_date", "summary"]], on=["company", "run_date"], how="left")
    else:
        trends = trends.assign(summary=None)
    if company is not None:
        trends = trends[trends["company"] == company]
    if since is not None:
        trends = trends[trends["run_date"] >= since]
    # Trends written before the template index have no template columns: empty there, not an error.
    view = trends.sort_values(["company", "run_date"], ignore_index=True).reindex(columns=TREND_VIEW_COLUMNS)
    return view.assign(summary=view["summary"].fillna(""), significant=view["significant"].fillna(False).astype(bool),
                       template_significant=view["template_significant"].eq(True))  # fmt: skip

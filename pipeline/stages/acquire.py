"""The stages that bring pictures in: crawl (team pages -> manifest) and intake (manifest -> `images`).

Both fan out per company under Airflow (`company_part`, then `collect` joins the parts in one
task), so one failing site fails alone; the CLI runs the same parts one company after another.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

from pipeline import layout
from pipeline.context import RunContext

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

CRAWL_COUNTS = ("candidates", "kept", "skipped", "rejected", "error")


def _sites(ctx: RunContext):  # noqa: ANN202 - (sites file, settings with its crawl overrides)
    from pipeline.ingest.crawl import load_sites, with_site_overrides

    sites = load_sites(ctx.sites_file)
    return sites, with_site_overrides(ctx.settings, sites)


def _crawl_counts(log: pd.DataFrame) -> dict[str, int]:
    """Candidate pictures of a crawl log, and how many were kept, skipped, rejected or failed."""
    images = log[log["kind"] == "image"]["status"].value_counts()
    return {"candidates": int(images.sum()), **{status: int(images.get(status, 0)) for status in CRAWL_COUNTS[1:]}}


def crawl_company_part(ctx: RunContext, company: str) -> dict[str, Any]:
    """Crawl one company of the sites file; writes its manifest and log under `crawl/runs/run_date=D/`."""
    import pandas as pd

    from pipeline.ingest.crawl import LOG_COLUMNS, crawl_company, manifest_csv

    sites, settings = _sites(ctx)
    warehouse = ctx.warehouse
    # An interrupted earlier attempt must not pass for this one.
    warehouse.remove(layout.crawl_folder(ctx.run_date, company), recursive=True)
    result = crawl_company(sites.company(company), settings, warehouse, ctx.run_date)
    log = pd.DataFrame(result.log, columns=LOG_COLUMNS)
    warehouse.write_frame(layout.crawl_log(ctx.run_date, company), log)
    # Written last: the mark of a finished crawl.
    manifest = warehouse.write_bytes(layout.crawl_manifest(ctx.run_date, company), manifest_csv(result.manifest))
    counts = {**_crawl_counts(log), "pages_failed": int(((log["kind"] == "page") & (log["status"] != "crawled")).sum())}
    return {"company": company, "outputs": {"manifest": manifest}, "counts": counts}


def collect_crawl(ctx: RunContext, companies: list[str] | None = None) -> dict[str, Any]:
    """Join the companies' crawl results into one manifest and the `crawl_log` table.

    A company whose crawl did not finish gets a log row saying so; the others go on. Every company of
    the sites file is collected (`companies`, the registry's collect signature, is not needed here)."""
    import pandas as pd

    from pipeline.ingest.crawl import LOG_COLUMNS, MANIFEST_COLUMNS, manifest_csv

    warehouse = ctx.warehouse
    manifests, logs, failed = [], [], []
    sites, _ = _sites(ctx)
    for site in sites.companies:
        if not warehouse.exists(layout.crawl_manifest(ctx.run_date, site.name)):
            failed.append(site.name)
            logs.append(pd.DataFrame([{
                "company": site.name, "kind": "page", "url": url, "source_url": "", "status": "error",
                "reason": "the crawl of this company did not finish (see its task log)", "image": "", "n_bytes": 0,
            } for url in site.where], columns=LOG_COLUMNS))  # fmt: skip
            continue
        raw = warehouse.read_bytes(layout.crawl_manifest(ctx.run_date, site.name))
        manifests.append(pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False))
        logs.append(warehouse.read_frame(layout.crawl_log(ctx.run_date, site.name)))
    manifest = pd.concat(manifests, ignore_index=True) if manifests else pd.DataFrame(columns=MANIFEST_COLUMNS)
    log = pd.concat(logs, ignore_index=True) if logs else pd.DataFrame(columns=LOG_COLUMNS)
    manifest_uri = warehouse.write_bytes(layout.crawl_manifest(ctx.run_date), manifest_csv(manifest.to_dict("records")))
    if failed:
        logger.warning("crawl did not finish for %d company(ies): %s", len(failed), ", ".join(failed))
    return {
        "outputs": {"manifest": manifest_uri, "crawl_log": warehouse.write_table("crawl_log", ctx.run_date, log)},
        "counts": {**_crawl_counts(log), "companies_failed": len(failed)},
        "failed_companies": failed,
    }


def crawl(ctx: RunContext) -> dict[str, Any]:
    """Every company of the sites file, one after another, then the joined manifest."""
    sites, _ = _sites(ctx)
    for site in sites.companies:
        try:
            crawl_company_part(ctx, site.name)
        except Exception:  # one broken site must not stop the others; collect records it
            logger.exception("crawl of %s failed", site.name)
    return collect_crawl(ctx)


# ------------------------------------------------------------------ intake
def _rows(ctx: RunContext, company: str | None = None) -> list:  # noqa: ANN202
    """The run's manifest rows: the crawl's (where the run crawls a sites file), then those given to the run."""
    from pipeline.ingest.sources import read_manifest

    rows = []
    if ctx.sites_file:
        rows += read_manifest(ctx.warehouse.uri(layout.crawl_manifest(ctx.run_date, company)))
    rows += list(ctx.rows or [])
    return [row for row in rows if company is None or row.company == company]


def _previous_images(ctx: RunContext) -> pd.DataFrame | None:
    """The latest stored `images` table: rows whose source is unchanged are carried over from it."""
    earlier_dates = ctx.warehouse.run_dates("images")
    return ctx.warehouse.read_table("images", earlier_dates[-1]) if earlier_dates else None


def _intake_counts(images: pd.DataFrame) -> dict[str, int]:
    n_ok = int((images["status"] == "ok").sum())
    return {"rows": len(images), "ok": n_ok, "error": len(images) - n_ok, "companies": int(images["company"].nunique())}


def _ingest(ctx: RunContext, company: str | None, progress: bool) -> pd.DataFrame:
    from pipeline.ingest.intake import ingest

    settings = ctx.settings
    return ingest(_rows(ctx, company), ctx.warehouse, ctx.run_date, settings.intake, settings.privacy, progress=progress,
                  previous=_previous_images(ctx), crawl=settings.crawl)  # fmt: skip


def intake(ctx: RunContext) -> dict[str, Any]:
    """Fetch, check and store every row; writes the `images` table."""
    ctx.warehouse.sweep_stale_temp(ctx.settings.retention.staging_grace_hours)
    images = _ingest(ctx, None, ctx.progress)
    return {"outputs": {"images": ctx.warehouse.write_table("images", ctx.run_date, images)}, "counts": _intake_counts(images)}


def intake_company_part(ctx: RunContext, company: str) -> dict[str, Any]:
    """Intake of one company's rows into a per-company part of the run's `images` table."""
    images = _ingest(ctx, company, progress=False)
    part = ctx.warehouse.write_frame(layout.intake_part(ctx.run_date, company), images)
    return {"company": company, "outputs": {"part": part}, "counts": _intake_counts(images)}


def collect_intake(ctx: RunContext, companies: list[str]) -> dict[str, Any]:
    """Join the companies' intake parts (in the given order) into the run's `images` table.

    A company without a part (its task failed) is absent from the table and listed in the result."""
    import pandas as pd

    from pipeline.ingest.intake import IMAGE_COLUMNS

    warehouse = ctx.warehouse
    warehouse.sweep_stale_temp(ctx.settings.retention.staging_grace_hours)
    parts, missing = [], []
    for company in companies:
        key = layout.intake_part(ctx.run_date, company)
        if not warehouse.exists(key):
            missing.append(company)
            continue
        parts.append(warehouse.read_frame(key))
    images = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=IMAGE_COLUMNS)
    if missing:
        logger.warning("intake did not finish for %d company(ies): %s", len(missing), ", ".join(missing))
    return {
        "outputs": {"images": warehouse.write_table("images", ctx.run_date, images)},
        "counts": {**_intake_counts(images), "companies_missing": len(missing)},
        "missing_companies": missing,
    }

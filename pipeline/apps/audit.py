"""Brand audit: one company's team page (URL) or folder of photos against the latest nightly population.

The audit is a complete run in its own warehouse (`<warehouse>/audits/<company>/<date>`), so the
nightly tables are never touched: its rows are the audited company's pictures plus every usable
picture of the latest nightly run (the company's own nightly rows left out: the audit replaces them).
The caches that `pipeline.layout.REUSABLE_CACHES` names (face signals, region views, near-duplicate verdicts, and where
the embedder is the same its vectors, index reference and map projection; identity descriptors only
where the nightly keeps them) are copied from the nightly's warehouse, so only the
audited pictures are embedded and measured. The result is the company's audit page, rendered by the
report stage with the population as its comparison.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from pipeline import layout
from pipeline.config import Settings
from pipeline.ingest.sources import ManifestRow
from pipeline.layout import validate_run_date
from pipeline.warehouse import Warehouse

logger = logging.getLogger(__name__)


class AuditError(ValueError):
    """The audit cannot run; the message says why."""


def _company_source(source: str, company: str, settings: Settings) -> tuple[list[ManifestRow], str]:
    """The audited company's pictures: a sites file to crawl (a team page's URL, or a domain whose
    staff pages are found by discovery), or the rows of its folder."""
    from pydantic import ValidationError

    from pipeline.ingest.crawl.sites import SiteEntry
    from pipeline.ingest.sources import SourceError, scan_company_folder

    entry: dict | None = None
    if source.startswith(("http://", "https://")):
        entry = {"name": company, "urls": [source]}
    elif "." in source and not Path(source).exists():  # "acme.example": a domain, unless such a folder exists
        try:
            entry = SiteEntry(name=company, domain=source).model_dump(exclude={"urls"})
        except ValidationError:
            entry = None
    if entry is not None:
        store = Warehouse(settings.warehouse)
        store.write_bytes(layout.AUDIT_SITES_FILE, yaml.safe_dump({"companies": [entry]}).encode())
        return [], store.uri(layout.AUDIT_SITES_FILE)
    try:
        return scan_company_folder(source, company), ""
    except SourceError as exc:
        raise AuditError(f"{source} is neither an http(s) URL, a domain nor a usable folder: {exc}") from None


def _population(main: Warehouse, exclude: str) -> tuple[list[ManifestRow], str | None, str | None]:
    """Rows of the latest finished nightly run (its originals), and its run date and embedder."""
    dates = main.finished_run_dates()
    if not dates:
        return [], None, None
    latest = dates[-1]
    run = main.read_json(layout.run_record(latest))
    images = main.read_table("images", latest)
    usable = images[(images["status"] == "ok") & (images["company"] != exclude) & (images["raw_object"].fillna("") != "")]
    rows = [
        ManifestRow(
            company=r.company, image=r.image, uri=main.uri(r.raw_object), person=r.person, source_url=r.source_url, image_url=r.image_url
        )
        for r in usable.itertuples()
        if main.exists(r.raw_object)  # in no-raw-images mode the originals are gone: those rows cannot take part
    ]
    return rows, latest, run.get("embedder")


def _cache_keys(cache: layout.ReusableCache, settings: Settings, embedder_id: str) -> tuple[list[str], list[str]]:
    """(shard folders, single files) of one reusable cache in the warehouse layout."""
    from pipeline.features import face_signals, identity, regions
    from pipeline.features.verify import VerifyParams

    folders = {
        "face_signals": [layout.face_signals_folder(face_signals.VERSION)],
        "regions": [layout.regions_folder(regions.VERSION)],
        "verifications": [layout.verifications_folder(VerifyParams.from_thresholds(settings.thresholds).cache_id)],
        "face_descriptors": [layout.face_descriptors_folder(identity.VERSION)],
        "embeddings": [layout.embeddings_folder(embedder_id)],
    }
    files = {"reference": [layout.reference_file(embedder_id)], "projection": [layout.projection_file(embedder_id)]}
    if cache.name not in folders and cache.name not in files:  # a cache added to the layout's list and not here
        raise KeyError(f"no warehouse keys known for the reusable cache {cache.name!r}")
    return folders.get(cache.name, []), files.get(cache.name, [])


def copy_reusable_caches(
    main: Warehouse, audit_store: Warehouse, settings: Settings, population_embedder: str, embedder_id: str
) -> list[str]:
    """Copy what the nightly already measured of the population (`layout.REUSABLE_CACHES`) into the
    audit's warehouse, so it is not measured again; returns the names of the caches copied."""
    copied = []
    for cache in layout.REUSABLE_CACHES:
        if cache.same_embedder_only and population_embedder != embedder_id:
            continue
        if cache.needs_kept_descriptors and not settings.privacy.keep_face_descriptors:
            continue  # biometric: only where the nightly keeps them anyway
        folders, files = _cache_keys(cache, settings, population_embedder)
        for folder in folders:
            audit_store.copy_shards(main, folder)
        for key in files:
            if main.exists(key):
                audit_store.write_bytes(key, main.read_bytes(key))
        copied.append(cache.name)
    return copied


HISTORY_TABLES = ("companies", "changes")  # what the audit page's history is drawn from


def copy_history(main: Warehouse, audit_store: Warehouse, run_date: str) -> int:
    """Copy the nightly's page tables of the runs before the audit's date into the audit's warehouse,
    so the audit page shows the company's own history and the population's beside the audited page
    (the trends join them only where embedder and reference are the audit's); returns the runs copied."""
    dates = [d for d in main.finished_run_dates("companies") if d < run_date]
    for date in dates:
        for table in HISTORY_TABLES:
            key = layout.table_file(table, date)
            if main.exists(key):
                audit_store.write_bytes(key, main.read_bytes(key))
    return len(dates)


def audit(source: str, company: str, settings: Settings, run_date: str | None = None) -> dict[str, Any]:
    """Run the audit; returns the audit page's URI, the population's run date and the run's JSON."""
    from pipeline.context import today
    from pipeline.features.embed import resolve_embedder
    from pipeline.stages import run_pipeline

    run_date = validate_run_date(run_date or today())
    main = Warehouse(settings.warehouse)
    audit_settings = settings.model_copy(update={
        "warehouse": main.uri(*layout.audit_root(company, run_date)),
        "reports": Warehouse(settings.reports).uri("audits", layout.company_slug(company)),
    })  # fmt: skip
    own, sites_file = _company_source(source, company, audit_settings)
    population, population_date, population_embedder = _population(main, exclude=company)
    choice = resolve_embedder(audit_settings)
    copy_history(main, Warehouse(audit_settings.warehouse), run_date)
    if population:
        copy_reusable_caches(main, Warehouse(audit_settings.warehouse), settings, population_embedder or "", choice.embedder.id)
        if population_embedder != choice.embedder.id:
            logger.warning("the latest nightly run used %s, this audit uses %s: the population is embedded again",
                           population_embedder, choice.embedder.id)  # fmt: skip
    else:
        logger.warning(
            "no nightly population in %s (no finished run, or its originals are not kept): the audit compares the page with itself only",
            settings.warehouse,
        )
    result = run_pipeline(own + population, audit_settings, run_date=run_date, source=source, progress=False, sites_file=sites_file)
    page = Warehouse(audit_settings.reports).uri(run_date, layout.company_page(company))
    return {
        "page": page,
        "company": company,
        "population_run_date": population_date,
        "population_rows": len(population),
        "run": result.as_json(),
    }

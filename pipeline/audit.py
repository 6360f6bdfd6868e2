"""Brand audit: one company's team page (URL) or folder of photos against the latest nightly population.

The audit is a complete run in its own warehouse (`<warehouse>/audits/<company>/<date>`), so the
nightly tables are never touched: its rows are the audited company's pictures plus every usable
picture of the latest nightly run (the company's own nightly rows left out: the audit replaces them).
The population's vectors (when the embedder is the same), face signals, near-duplicate verdicts and,
where the nightly keeps them, identity descriptors are copied from the nightly's caches, so only the
audited pictures are embedded and measured. The result is the company's audit page, rendered by the
report stage with the population as its comparison.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Settings
from pipeline.sources import ManifestRow
from pipeline.warehouse import Warehouse, validate_run_date

logger = logging.getLogger(__name__)


class AuditError(ValueError):
    """The audit cannot run; the message says why."""


def _company_rows(source: str, company: str, settings: Settings, run_date: str) -> tuple[list[ManifestRow], dict[str, Any] | None]:
    from pipeline.run import crawl_stage
    from pipeline.sources import SourceError, read_manifest, scan_company_folder

    if source.startswith(("http://", "https://")):
        sites_file = Path(Warehouse(settings.warehouse).path("audit-sites.yaml"))
        sites_file.parent.mkdir(parents=True, exist_ok=True)
        sites_file.write_text(yaml.safe_dump({"companies": [{"name": company, "urls": [source]}]}))
        crawled = crawl_stage(str(sites_file), settings, run_date)
        return read_manifest(crawled["manifest"]), crawled
    try:
        return scan_company_folder(source, company), None
    except SourceError as exc:
        raise AuditError(f"{source} is neither an http(s) URL nor a usable folder: {exc}") from None


def _population(main: Warehouse, exclude: str) -> tuple[list[ManifestRow], str | None, str | None]:
    """Rows of the latest finished nightly run (its originals), and its run date and embedder."""
    dates = [d for d in main.run_dates("images") if main.exists(f"runs/run_date={d}/run.json")]
    if not dates:
        return [], None, None
    latest = dates[-1]
    run = main.read_json(f"runs/run_date={latest}/run.json")
    images = main.read_table("images", latest)
    usable = images[(images["status"] == "ok") & (images["company"] != exclude) & (images["raw_object"].fillna("") != "")]
    rows = [
        ManifestRow(company=r.company, image=r.image, uri=main.uri(r.raw_object), person=r.person, source_url=r.source_url, image_url=r.image_url)
        for r in usable.itertuples()
        if main.exists(r.raw_object)  # in no-raw-images mode the originals are gone: those rows cannot take part
    ]
    return rows, latest, run.get("embedder")


def audit(source: str, company: str, settings: Settings, run_date: str | None = None) -> dict[str, Any]:
    """Run the audit; returns the audit page's URI, the population's run date and the run's JSON."""
    from pipeline.crawl import company_slug
    from pipeline.analyze import verifications_folder, verify_params
    from pipeline.embed import cache_folder, resolve_embedder
    from pipeline.face_signals import signals_folder
    from pipeline.identity import descriptors_folder
    from pipeline.reference import reference_key
    from pipeline.report import company_page_name, projection_key
    from pipeline.run import run_pipeline, today

    run_date = validate_run_date(run_date or today())
    main = Warehouse(settings.warehouse)
    slug = company_slug(company)
    audit_settings = settings.model_copy(update={
        "warehouse": main.uri("audits", slug, run_date),
        "reports": Warehouse(settings.reports).uri("audits", slug),
    })  # fmt: skip
    own, crawled = _company_rows(source, company, audit_settings, run_date)
    population, population_date, population_embedder = _population(main, exclude=company)
    choice = resolve_embedder(audit_settings)
    audit_store = Warehouse(audit_settings.warehouse)
    if population:  # what the nightly already measured of the population is not measured again
        audit_store.copy_shards(main, signals_folder())
        audit_store.copy_shards(main, verifications_folder(verify_params(settings.thresholds)))
        if settings.privacy.keep_face_descriptors:  # only where the nightly keeps them anyway
            audit_store.copy_shards(main, descriptors_folder())
    if population and population_embedder == choice.embedder.id:
        audit_store.copy_shards(main, cache_folder(population_embedder))
        # The nightly's index reference and map projection: the audit's index and map compare with the nightly's.
        for key in (reference_key(population_embedder), projection_key(population_embedder)):
            if main.exists(key):
                audit_store.write_bytes(key, main.read_bytes(key))
    elif population:
        logger.warning("the latest nightly run used %s, this audit uses %s: the population is embedded again", population_embedder, choice.embedder.id)
    if not population:
        logger.warning("no nightly population in %s (no finished run, or its originals are not kept): "
                       "the audit compares the page with itself only", settings.warehouse)
    result = run_pipeline(own + population, audit_settings, run_date=run_date, source=source, progress=False, crawl=crawled)
    page = Warehouse(audit_settings.reports).uri(run_date, company_page_name(company))
    return {"page": page, "company": company, "population_run_date": population_date, "population_rows": len(population), "run": result.as_json()}

"""Crawl stage: `sites.yaml` -> a manifest for intake, plus a log of every candidate image.

For each company: fetch its team page(s) politely and safely (`http.py`, `robots.py`), find the
candidate pictures in the markup (`extract.py`), drop what is not a headshot (size, aspect ratio,
site chrome, card structure, a face check: `classify.py`), and download what is left into the
warehouse, where intake reads it (`company.py`). Every candidate gets one log row: `kept`,
`skipped` (a rule said no: robots, noai, opt-out, private address, caps), `rejected` (not a
headshot) or `error` (could not be fetched or decoded), with the reason in words (`files.py`).

A nightly rerun sends conditional GETs: an unchanged picture (304) costs no bytes, and what was
learnt from it (size, faces) is reused from the crawl state, so no picture is kept just to be
re-checked. Rejected pictures are never stored.
"""

from pipeline.ingest.crawl.company import CompanyCrawl, crawl_company
from pipeline.ingest.crawl.files import LOG_COLUMNS, MANIFEST_COLUMNS, log_csv, log_path_for, manifest_csv
from pipeline.ingest.crawl.sites import SiteEntry, SitesError, SitesFile, crawl_settings, load_sites, with_site_overrides

__all__ = [
    "LOG_COLUMNS", "MANIFEST_COLUMNS", "CompanyCrawl", "SiteEntry", "SitesError", "SitesFile", "crawl_company",
    "crawl_settings", "load_sites", "log_csv", "log_path_for", "manifest_csv", "with_site_overrides",
]  # fmt: skip

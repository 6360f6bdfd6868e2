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

from __future__ import annotations

import importlib
from typing import Any

# What the package exports, and the module each comes from. Imported on first use (PEP 562): every
# `homog run` imports the package for its sites-file errors, and only a crawl needs the HTML parser
# and the HTTP client that `company` brings in (~0.3 s of start-up otherwise).
_EXPORTS = {
    "CompanyCrawl": "company", "crawl_company": "company",
    "LOG_COLUMNS": "files", "MANIFEST_COLUMNS": "files", "log_csv": "files", "log_path_for": "files", "manifest_csv": "files",
    "SiteEntry": "sites", "SitesError": "sites", "SitesFile": "sites", "crawl_settings": "sites", "load_sites": "sites",
    "with_site_overrides": "sites",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)

"""The crawl's files for people and for intake: the manifest CSV and the crawl log CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

MANIFEST_COLUMNS = ["company", "image", "image_url", "person", "source_url"]
LOG_COLUMNS = ["company", "kind", "url", "source_url", "status", "reason", "person", "role", "alt", "image", "n_bytes"]


def _spreadsheet_safe(value: str) -> str:
    # A scraped name starting with = + - @ would run as a formula when an analyst opens the CSV.
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


def manifest_csv(rows: list[dict[str, str]]) -> bytes:
    """The manifest exactly as crawled (intake reads it back, so no value is altered)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: row[key] for key in MANIFEST_COLUMNS} for row in rows)
    return buffer.getvalue().encode("utf-8")


def log_csv(log: pd.DataFrame) -> bytes:
    """The crawl log for people: scraped text is made safe to open in a spreadsheet."""
    log = log.copy()
    for column in ("person", "role", "alt"):
        log[column] = log[column].fillna("").map(_spreadsheet_safe)
    return log.to_csv(index=False).encode("utf-8")


def log_path_for(manifest_path: str | Path) -> Path:
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(manifest_path.stem + ".crawl-log.csv")

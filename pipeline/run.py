"""One run, stage after stage: the single function the CLI and the Airflow tasks both call.

Stages built so far: intake, embed, index, analyze. Reports are a separate issue; until it lands,
the `report` output is `null` rather than faked.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
from dataclasses import dataclass, field
from typing import Any

from pipeline import __version__
from pipeline.analyze import analyze, trends_table
from pipeline.config import Settings
from pipeline.embed import embed_images, resolve_embedder
from pipeline.index import build_index, save_index
from pipeline.intake import ingest, write_images_table
from pipeline.sources import ManifestRow
from pipeline.warehouse import Warehouse, validate_run_date

logger = logging.getLogger(__name__)

OUTPUT_KEYS = ("images", "pairs", "companies", "clusters", "report")  # DESIGN.md contract; more are added


@dataclass
class RunResult:
    run_date: str
    embedder: str | None
    outputs: dict[str, str | None]
    counts: dict[str, int]
    stages_run: list[str]
    warnings: list[str] = field(default_factory=list)
    embedder_fallback: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "run_date": self.run_date,
            "embedder": self.embedder,
            "embedder_fallback": self.embedder_fallback,
            "outputs": self.outputs,
            "counts": self.counts,
            "stages_run": self.stages_run,
            "warnings": self.warnings,
        }


def today() -> str:
    return dt.date.today().isoformat()


def run_pipeline(
    rows: list[ManifestRow],
    settings: Settings,
    run_date: str | None = None,
    source: str = "",
    progress: bool = True,
) -> RunResult:
    """Run every built stage for `rows` into the warehouse; rerunning a run date replaces it."""
    run_date = validate_run_date(run_date or today())
    warehouse = Warehouse(settings.warehouse)
    warehouse.sweep_stale_temp(settings.retention.staging_grace_hours)
    started = dt.datetime.now(dt.timezone.utc)
    # Chosen before any work, so that `--embedder clip` without weights fails in a second, not after intake.
    choice = resolve_embedder(settings)

    earlier_dates = warehouse.run_dates("images")
    previous = warehouse.read_table("images", earlier_dates[-1]) if earlier_dates else None
    images = ingest(rows, warehouse, run_date, settings.intake, settings.privacy, progress=progress, previous=previous)
    outputs: dict[str, str | None] = dict.fromkeys(OUTPUT_KEYS)
    outputs["images"] = write_images_table(images, warehouse, run_date)

    embeddings = embed_images(images, warehouse, choice.embedder, progress=progress)
    vector_index = build_index(embeddings.vectors, embeddings.content_sha256)
    outputs["index"] = save_index(warehouse, vector_index, embeddings.embedder_id, run_date)

    analysis = analyze(images, embeddings, vector_index, warehouse, settings.thresholds)
    for table in ("pairs", "clusters", "companies", "reuse"):
        outputs[table] = warehouse.write_table(table, run_date, getattr(analysis, table))
    trends = trends_table(warehouse.read_table("companies"), analysis.companies, run_date)
    outputs["trends"] = warehouse.write_table("trends", run_date, trends)

    if not settings.privacy.keep_raw_images:
        # No-raw-images mode: originals lived in staging only for the stages of this run.
        warehouse.drop_staging(run_date)

    n_ok = int((images["status"] == "ok").sum())
    result = RunResult(
        run_date=run_date,
        embedder=embeddings.embedder_id,
        embedder_fallback=choice.fallback_reason,
        outputs=outputs,
        counts={
            "rows": len(images),
            "ok": n_ok,
            "error": len(images) - n_ok,
            "companies": images["company"].nunique(),
            "distinct_images": len(embeddings.content_sha256),
            "embedded": embeddings.n_embedded,
            "embedding_cache_hits": len(embeddings.content_sha256) - embeddings.n_embedded,
            "near_duplicate_candidates": analysis.n_candidates,
            "near_duplicates_verified": analysis.n_verified,
            "pairs": len(analysis.pairs),
            "cross_company_pairs": len(analysis.reuse),
            "significant_changes": int(trends.loc[trends["run_date"] == run_date, "significant"].sum()),
        },
        stages_run=["intake", "embed", "index", "analyze"],
    )
    if n_ok == 0:
        result.warnings.append("no image passed intake: see the images table's error column")
        logger.warning(result.warnings[-1])
    if choice.fallback_reason:
        result.warnings.append(choice.fallback_reason)
    warehouse.write_json(
        f"runs/run_date={run_date}/run.json",
        {
            **result.as_json(),
            "source": source,
            "started_at": started.isoformat(),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "embedder_requested": settings.embedder,
            "index_kind": vector_index.kind,
            "settings": settings.model_dump(mode="json"),
            "pipeline_version": __version__,
            "python": platform.python_version(),
        },
    )
    return result

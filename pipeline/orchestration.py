"""What each Airflow task does, as plain functions of strings and small dicts.

The DAG files in `dags/` only wire these together; everything here is importable and testable
without Airflow. Tasks pass each other a `plan` (run date, sites file, warehouse, company names)
and the dicts of URIs and counts the stages in `pipeline.run` return: never pictures, vectors or
frames. Settings are loaded inside every task from the environment (`HOMOG_CONFIG`, `HOMOG_*`), so
a task behaves the same on whichever worker runs it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from pathlib import Path
from typing import Any

from pipeline.config import Settings, load_settings

logger = logging.getLogger(__name__)


TAG = "profile-homogenization"


def dag_arguments(*tags: str, retries: int = 2, retry_delay: dt.timedelta = dt.timedelta(minutes=2)) -> dict[str, Any]:
    """What every DAG of the project shares: start date, no catch-up, one active run, owner, retries, tags."""
    return {
        "start_date": dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {"owner": TAG, "retries": retries, "retry_delay": retry_delay, "retry_exponential_backoff": True},
        "tags": [TAG, *tags],
    }


def location_params() -> dict[str, Any]:
    """The `warehouse` and `reports` params every DAG takes (empty = from the settings)."""
    from airflow.sdk import Param

    return {
        "warehouse": Param("", type="string", description="warehouse root; empty = from settings"),
        "reports": Param("", type="string", description="reports root; empty = from settings"),
    }


def settings_for(plan: dict[str, Any]) -> Settings:
    return load_settings(None, warehouse=plan.get("warehouse") or None, reports=plan.get("reports") or None)


def plan_run(params: dict[str, Any], logical_date: dt.datetime | None) -> dict[str, Any]:
    """Resolve the run: which date (a param, else the logical date), which sites file, which companies.

    Fails the task with the sites file's own error message when the file is unusable: nothing
    else can run without it.
    """
    from pipeline.crawl import load_sites
    from pipeline.warehouse import validate_run_date

    sites_file = str(Path(params.get("sites_file") or os.environ.get("HOMOG_SITES", "sites.yaml")).resolve())
    when = params.get("run_date") or (logical_date or dt.datetime.now(dt.timezone.utc)).date().isoformat()
    sites = load_sites(sites_file)
    settings = settings_for(params)
    return {
        "run_date": validate_run_date(when),
        "sites_file": sites_file,
        "warehouse": settings.warehouse,
        "reports": settings.reports,
        "companies": [company.name for company in sites.companies],
        "embed_shards": list(range(settings.embed_shards)),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def collect_company(plan: dict[str, Any], company: str) -> dict[str, Any]:
    """Crawl one company's pages and take its pictures in: one mapped task per company."""
    from pipeline.run import crawl_company_stage, intake_company_stage

    settings = settings_for(plan)
    crawled = crawl_company_stage(plan["sites_file"], company, settings, plan["run_date"])
    taken = intake_company_stage(crawled["manifest"], company, settings, plan["run_date"])
    logger.info("%s: %d pictures kept by the crawler, %d ok after intake", company, crawled["kept"], taken["ok"])
    return {"company": company, "crawl": crawled, "intake": taken, "worker": worker_identity()}


def worker_identity() -> str:
    """Which worker ran a task, for lineage: `$HOMOG_WORKER_ID` where set (workers on one host share
    a hostname), else the hostname."""
    return os.environ.get("HOMOG_WORKER_ID") or socket.gethostname()


def gather(plan: dict[str, Any]) -> dict[str, Any]:
    """Join the companies' parts into the run's `crawl_log` and `images` tables (also after failures)."""
    from pipeline.run import collect_crawl_stage, collect_intake_stage

    settings = settings_for(plan)
    crawl = collect_crawl_stage(plan["sites_file"], settings, plan["run_date"])
    intake = collect_intake_stage(settings, plan["run_date"], plan["companies"])
    return {"crawl": crawl, "intake": intake}


def faces(plan: dict[str, Any]) -> dict[str, Any]:
    from pipeline.run import faces_stage

    return faces_stage(settings_for(plan), plan["run_date"])


def embed_part(plan: dict[str, Any], shard: int) -> dict[str, Any]:
    """One of the run's mapped embedding tasks (`embed_shards` setting), on the embedding queue."""
    from pipeline.run import embed_shard_stage

    part = embed_shard_stage(settings_for(plan), plan["run_date"], shard, len(plan["embed_shards"]))
    return {**part, "worker": worker_identity()}


def embed(plan: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """After the mapped parts: embeds what they left out, reads every vector of the run, zero-shot
    styles; counts what the parts embedded as embedded by this run."""
    from pipeline.run import embed_stage

    result = embed_stage(settings_for(plan), plan["run_date"], progress=False)
    by_parts = sum(part["embedded"] for part in parts)
    return {**result, "embedded": result["embedded"] + by_parts, "embedding_cache_hits": result["embedding_cache_hits"] - by_parts}


def index(plan: dict[str, Any], embedded: dict[str, Any]) -> dict[str, Any]:
    from pipeline.run import index_stage

    return index_stage(settings_for(plan), plan["run_date"], embedded["embedder"], embedded["dim"])


def analyze(plan: dict[str, Any], embedded: dict[str, Any]) -> dict[str, Any]:
    from pipeline.run import analyze_stage

    return analyze_stage(settings_for(plan), plan["run_date"], embedded["embedder"])


def report(plan: dict[str, Any], embedded: dict[str, Any]) -> dict[str, Any]:
    from pipeline.run import report_stage

    return report_stage(settings_for(plan), plan["run_date"], embedded["embedder"], embedded["embedder_fallback"])


def finish(plan: dict[str, Any], stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write run.json (the mark of a finished run) and return the run's JSON summary.

    `stages`: what gather (crawl, intake), embed, index, analyze and report returned."""
    from pipeline.run import finish_run

    gathered = stages["gather"]
    stages = {"crawl": gathered["crawl"], "intake": gathered["intake"], **{k: v for k, v in stages.items() if k != "gather"}}
    result = finish_run(settings_for(plan), plan["run_date"], stages, source=plan["sites_file"], started=plan["started"])
    return result.as_json()


def purge(params: dict[str, Any], logical_date: dt.datetime | None) -> dict[str, Any]:
    """The retention task: purge (or, dry run, list) expired pictures; the log is the `retention` table."""
    from pipeline.retention import purge_expired
    from pipeline.warehouse import Warehouse

    settings = settings_for(params)
    today = (logical_date or dt.datetime.now(dt.timezone.utc)).date().isoformat()
    log = purge_expired(Warehouse(settings.warehouse), settings.retention, today, dry_run=bool(params.get("dry_run")))
    actions = log["action"].value_counts().to_dict() if len(log) else {}
    logger.info("retention %s: %s", today, actions or "nothing stored")
    return {"date": today, "dry_run": bool(params.get("dry_run")), "checked": len(log), **{str(k): int(v) for k, v in actions.items()}}


def brand_audit(params: dict[str, Any], logical_date: dt.datetime | None) -> dict[str, Any]:
    """The brand-audit task: one company's page or folder against the latest nightly population."""
    from pipeline.audit import audit

    settings = settings_for(params)
    when = (logical_date or dt.datetime.now(dt.timezone.utc)).date().isoformat()
    return audit(str(params["source"]), str(params["company"]), settings, run_date=when)

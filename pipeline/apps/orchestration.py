"""What each Airflow task does, as plain functions of strings and small dicts.

The DAG files in `dags/` only wire these together; everything here is importable and testable
without Airflow. Tasks pass each other a `plan` (run date, sites file, warehouse, company names)
and the dicts of URIs and counts the stages of `pipeline.stages` return: never pictures, vectors or
frames. Settings are loaded inside every task from the environment (`HOMOG_CONFIG`, `HOMOG_*`), so
a task behaves the same on whichever worker runs it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Settings, load_settings

if TYPE_CHECKING:
    from pipeline.context import RunContext

logger = logging.getLogger(__name__)


TAG = "profile-homogenization"


def dag_arguments(*tags: str, retries: int = 2, retry_delay: dt.timedelta = dt.timedelta(minutes=2)) -> dict[str, Any]:
    """What every DAG of the project shares: start date, no catch-up, one active run, owner, retries, tags."""
    return {
        "start_date": dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
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


def plan_run(params: dict[str, Any], logical_date: dt.datetime | None, dag_id: str = "profile_homogenization_nightly") -> dict[str, Any]:
    """Resolve the run: which date (a param, else the logical date), which sites file, which companies.

    Fails the task with the sites file's own error message when the file is unusable: nothing
    else can run without it.
    """
    from pipeline.context import RunContext
    from pipeline.ingest.crawl import load_sites
    from pipeline.layout import validate_run_date
    from pipeline.lease import take_lease
    from pipeline.stages import begin_run

    sites_file = str(params.get("sites_file") or os.environ.get("HOMOG_SITES", "sites.yaml"))
    if "://" not in sites_file:  # a local path is resolved where the plan runs; a URL is read by every worker as it is
        sites_file = str(Path(sites_file).resolve())
    when = params.get("run_date") or (logical_date or dt.datetime.now(dt.UTC)).date().isoformat()
    sites = load_sites(sites_file)
    settings = settings_for(params)
    run_date = validate_run_date(when)
    ctx = RunContext(settings, run_date)
    owner = f"airflow:{dag_id}"
    # One writer per run date: a CLI run of this date stops the nightly here (and the other way round).
    take_lease(ctx.warehouse, run_date, f"the nightly DAG ({dag_id})", owner=owner)
    begin_run(ctx)
    return {
        "run_date": run_date,
        "sites_file": sites_file,
        "warehouse": settings.warehouse,
        "reports": settings.reports,
        "companies": [company.name for company in sites.companies],
        "embed_shards": list(range(settings.embed_shards)),
        "lease_owner": owner,
        "started": dt.datetime.now(dt.UTC).isoformat(),
    }


def context_for(plan: dict[str, Any], upstream: dict[str, dict[str, Any]] | None = None) -> RunContext:
    """The task's RunContext: the plan's settings and run date, the embedder the embed stage chose."""
    from pipeline.context import RunContext
    from pipeline.stages import advance

    ctx = RunContext(settings_for(plan), plan["run_date"], sites_file=plan.get("sites_file", ""))
    for result in (upstream or {}).values():
        ctx = advance(ctx, result)
    return ctx


def collect_company(plan: dict[str, Any], company: str) -> dict[str, Any]:
    """One mapped task per company: every per-company stage part (crawl, then intake) for it."""
    from pipeline.stages import STAGES, timed

    ctx = context_for(plan)
    parts = {stage.name: timed(stage.company_part)(ctx, company) for stage in STAGES if stage.company_part and stage.applies(ctx)}
    logger.info("%s: %s", company, {name: part["counts"] for name, part in parts.items()})
    return {"company": company, **parts, "worker": worker_identity()}


def worker_identity() -> str:
    """Which worker ran a task, for lineage: `$HOMOG_WORKER_ID` where set (workers on one host share
    a hostname), else the hostname."""
    return os.environ.get("HOMOG_WORKER_ID") or socket.gethostname()


def gather(plan: dict[str, Any]) -> dict[str, Any]:
    """Join the companies' parts into the run's tables (also after some companies failed): one
    result per per-company stage (`crawl_log` and the manifest, `images`)."""
    from pipeline.stages import STAGES, timed

    ctx = context_for(plan)
    return {stage.name: timed(stage.collect)(ctx, plan["companies"]) for stage in STAGES if stage.collect and stage.applies(ctx)}


def dag_stages() -> list[dict[str, Any]]:
    """How the nightly DAG lays out the stages after the per-company ones: for each, in registry
    order, the stages it waits for, whether it is mapped over embedding shards and whether it needs
    the embedding pool. Read at DAG parse time: nothing heavy is imported."""
    from pipeline.stages import STAGES, needs

    return [
        {"name": stage.name, "needs": needs(stage), "sharded": stage.shard_part is not None, "uses_embedder": stage.uses_embedder}
        for stage in STAGES
        if stage.company_part is None
    ]


def stage_part(plan: dict[str, Any], stage: str, shard: int) -> dict[str, Any]:
    """One mapped part of a sharded stage (embedding: `embed_shards` tasks on the embedding queue)."""
    from pipeline.stages import BY_NAME, timed

    part = timed(BY_NAME[stage].shard_part)(context_for(plan), shard, len(plan["embed_shards"]))
    return {**part, "worker": worker_identity()}


def run_stage(
    plan: dict[str, Any], stage: str, upstream: dict[str, dict[str, Any]], parts: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One stage of the registry as one task. `upstream`: what the stages it needs returned (the
    embed stage's result names the run's embedder); `parts`: its mapped parts, where it has them."""
    from pipeline.stages import BY_NAME, timed

    spec = BY_NAME[stage]
    result = timed(spec.run)(context_for(plan, upstream))
    if parts is not None and spec.combine is not None:
        result = spec.combine(result, list(parts))
    return result


def finish(plan: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write run.json (the mark of a finished run) and return the run's JSON summary.

    `results`: what gather (crawl, intake) and every later stage returned, by stage name."""
    from pipeline.lease import release_owned
    from pipeline.stages import STAGES, finish_run

    gathered = results.get("gather", {})
    ordered = {stage.name: gathered[stage.name] if stage.name in gathered else results[stage.name] for stage in STAGES
               if stage.name in gathered or stage.name in results}  # fmt: skip
    ctx = context_for(plan, ordered)
    result = finish_run(ctx, ordered, source=plan["sites_file"], started=plan["started"])
    release_owned(ctx.warehouse, ctx.run_date, plan.get("lease_owner", ""))
    return result.as_json()


def purge(params: dict[str, Any], logical_date: dt.datetime | None) -> dict[str, Any]:
    """The retention task: purge (or, dry run, list) expired pictures; the log is the `retention` table."""
    from pipeline.apps.retention import purge_expired
    from pipeline.warehouse import Warehouse

    settings = settings_for(params)
    today = (logical_date or dt.datetime.now(dt.UTC)).date().isoformat()
    log = purge_expired(Warehouse(settings.warehouse), settings.retention, today, dry_run=bool(params.get("dry_run")))
    actions = log["action"].value_counts().to_dict() if len(log) else {}
    logger.info("retention %s: %s", today, actions or "nothing stored")
    return {"date": today, "dry_run": bool(params.get("dry_run")), "checked": len(log), **{str(k): int(v) for k, v in actions.items()}}


def brand_audit(params: dict[str, Any], logical_date: dt.datetime | None) -> dict[str, Any]:
    """The brand-audit task: one company's page or folder against the latest nightly population."""
    from pipeline.apps.audit import audit

    settings = settings_for(params)
    when = (logical_date or dt.datetime.now(dt.UTC)).date().isoformat()
    return audit(str(params["source"]), str(params["company"]), settings, run_date=when)

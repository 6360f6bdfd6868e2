"""
### Profile homogenization: nightly run

Every night: read `sites.yaml`, crawl each company's team pages and take their pictures in (one
mapped task per company: a failing site fails alone and is reported in the `crawl_log` table and in
`run.json`), then one task per stage of the registry (`pipeline.stages.STAGES`), each waiting for
the stages whose outputs it reads: faces, embed (`embed_shards` mapped tasks split by content hash,
embedding pool, optional GPU queue), zero-shot styles, the run's FAISS index, near-duplicates and
clusters, face identity, the companies table and trends, the HTML report; then write `run.json` and
publish the `profile_homogenization_run` asset.

Every task is idempotent per run date (a rerun replaces that date's partitions) and passes only
paths, URIs and counts. The work itself lives in `pipeline/apps/orchestration.py` and `pipeline/stages/`.

Params: `sites_file` (default `$HOMOG_SITES` or `sites.yaml`), `run_date` (default: the logical
date), `warehouse` and `reports` (default: the settings, from `$HOMOG_CONFIG` / `$HOMOG_WAREHOUSE` /
`$HOMOG_REPORTS`).
Pools: `crawler` (concurrent company crawls) and `embedding`; queue for embedding: `$HOMOG_EMBED_QUEUE`.
"""

from __future__ import annotations

import os

from airflow.sdk import Asset, Param, dag, get_current_context, task

from pipeline.apps.orchestration import dag_arguments, dag_stages, location_params

EMBED_QUEUE = os.environ.get("HOMOG_EMBED_QUEUE", "default")
NIGHTLY_RUN = Asset(name="profile_homogenization_run", uri="file:///profile-homogenization/runs")


@dag(
    dag_id="profile_homogenization_nightly",
    schedule="0 2 * * *",
    doc_md=__doc__,
    params={
        "sites_file": Param(os.environ.get("HOMOG_SITES", "sites.yaml"), type="string", description="sites.yaml to crawl"),
        "run_date": Param("", type="string", description="YYYY-MM-DD; empty = the logical date"),
        **location_params(),
    },
    **dag_arguments("nightly"),
)
def profile_homogenization_nightly():
    @task
    def plan() -> dict:
        from pipeline.apps.orchestration import plan_run

        context = get_current_context()
        return plan_run(dict(context["params"]), context.get("logical_date"))

    @task
    def companies(run: dict) -> list:
        return run["companies"]  # mapping needs a task's own return value

    @task(pool="crawler", map_index_template="{{ company }}")
    def crawl_and_intake(run: dict, company: str) -> dict:
        from pipeline.apps.orchestration import collect_company

        return collect_company(run, company)

    # Also after some companies failed: they are reported, not fatal. One XCom per per-company stage.
    @task(trigger_rule="all_done", multiple_outputs=True)
    def gather(run: dict, _companies_done: list) -> dict:
        from pipeline.apps.orchestration import gather

        return gather(run)

    @task
    def shards(run: dict, _upstream: dict) -> list:
        return run["embed_shards"]  # mapping needs a task's own return value

    @task(map_index_template="shard {{ shard }}")
    def stage_part(run: dict, stage: str, shard: int) -> dict:
        from pipeline.apps.orchestration import stage_part

        return stage_part(run, stage, shard)

    @task
    def stage(run: dict, name: str, upstream: dict, parts: list | None = None) -> dict:
        from pipeline.apps.orchestration import run_stage

        return run_stage(run, name, upstream, parts)

    @task(outlets=[NIGHTLY_RUN])
    def finish(run: dict, results: dict) -> dict:
        from pipeline.apps.orchestration import finish

        return finish(run, results)

    run = plan()
    gathered = gather(run, crawl_and_intake.partial(run=run).expand(company=companies(run)))
    results = {"crawl": gathered["crawl"], "intake": gathered["intake"]}
    for spec in dag_stages():  # the registry's stages after the per-company ones, in order
        upstream = {name: results[name] for name in spec["needs"]}
        embedding = {"pool": "embedding", "queue": EMBED_QUEUE} if spec["uses_embedder"] else {}
        parts = None
        if spec["sharded"]:
            parts = (
                stage_part.override(task_id=f"{spec['name']}_part", **embedding)
                .partial(run=run, stage=spec["name"])
                .expand(shard=shards.override(task_id=f"{spec['name']}_shards")(run, upstream))
            )
        results[spec["name"]] = stage.override(task_id=spec["name"], **embedding)(run, spec["name"], upstream, parts)
    finish(run, results)


profile_homogenization_nightly()

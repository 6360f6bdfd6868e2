"""
### Profile homogenization: nightly run

Every night: read `sites.yaml`, crawl each company's team pages and take their pictures in (one
mapped task per company: a failing site fails alone and is reported in the `crawl_log` table and in
`run.json`), measure faces and template signals, embed the run's new pictures (`embed_shards` mapped
tasks split by content hash, embedding pool, optional GPU queue), build the run's FAISS
index, compute near-duplicates, clusters, homogeneity indexes, cross-company reuse and trends, render
the HTML run report and every company's audit page, then write `run.json` and publish the
`profile_homogenization_run` asset.

Every task is idempotent per run date (a rerun replaces that date's partitions) and passes only
paths, URIs and counts. The work itself lives in `pipeline/orchestration.py` and `pipeline/run.py`.

Params: `sites_file` (default `$HOMOG_SITES` or `sites.yaml`), `run_date` (default: the logical
date), `warehouse` and `reports` (default: the settings, from `$HOMOG_CONFIG` / `$HOMOG_WAREHOUSE` /
`$HOMOG_REPORTS`).
Pools: `crawler` (concurrent company crawls) and `embedding`; queue for embedding: `$HOMOG_EMBED_QUEUE`.
"""

from __future__ import annotations

import os

from airflow.sdk import Asset, Param, dag, get_current_context, task

from pipeline.orchestration import dag_arguments, location_params

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
        from pipeline.orchestration import plan_run

        context = get_current_context()
        return plan_run(dict(context["params"]), context.get("logical_date"))

    @task
    def companies(run: dict) -> list:
        return run["companies"]  # mapping needs a task's own return value

    @task(pool="crawler", map_index_template="{{ company }}")
    def crawl_and_intake(run: dict, company: str) -> dict:
        from pipeline.orchestration import collect_company

        return collect_company(run, company)

    @task(trigger_rule="all_done")  # also after some companies failed: they are reported, not fatal
    def gather(run: dict, _companies_done: list) -> dict:
        from pipeline.orchestration import gather

        return gather(run)

    @task
    def embed_shards(run: dict, _gathered: dict) -> list:
        return run["embed_shards"]  # mapping needs a task's own return value

    @task(pool="embedding", queue=EMBED_QUEUE, map_index_template="shard {{ shard }}")
    def embed_part(run: dict, shard: int) -> dict:
        from pipeline.orchestration import embed_part

        return embed_part(run, shard)

    @task(pool="embedding", queue=EMBED_QUEUE)
    def embed(run: dict, parts: list) -> dict:
        from pipeline.orchestration import embed

        return embed(run, list(parts))

    @task
    def faces(run: dict, _gathered: dict) -> dict:
        from pipeline.orchestration import faces

        return faces(run)

    @task
    def index(run: dict, embedded: dict) -> dict:
        from pipeline.orchestration import index

        return index(run, embedded)

    @task
    def analyze(run: dict, embedded: dict, _indexed: dict, _faces: dict) -> dict:
        from pipeline.orchestration import analyze

        return analyze(run, embedded)

    @task
    def report(run: dict, embedded: dict, _analysed: dict) -> dict:
        from pipeline.orchestration import report

        return report(run, embedded)

    @task(outlets=[NIGHTLY_RUN])
    def finish(run: dict, gathered: dict, measured: dict, embedded: dict, indexed: dict, analysed: dict, reported: dict) -> dict:
        from pipeline.orchestration import finish

        stages = {"gather": gathered, "faces": measured, "embed": embedded, "index": indexed, "analyze": analysed, "report": reported}
        return finish(run, stages)

    run = plan()
    done = crawl_and_intake.partial(run=run).expand(company=companies(run))
    gathered = gather(run, done)
    measured = faces(run, gathered)
    parts = embed_part.partial(run=run).expand(shard=embed_shards(run, gathered))
    embedded = embed(run, parts)
    indexed = index(run, embedded)
    analysed = analyze(run, embedded, indexed, measured)
    reported = report(run, embedded, analysed)
    finish(run, gathered, measured, embedded, indexed, analysed, reported)


profile_homogenization_nightly()

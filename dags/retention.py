"""
### Profile homogenization: retention

Daily: delete stored originals and thumbnails that no run has referenced for longer than
`retention.raw_images_days` / `retention.thumbnails_days`. Tables, metrics, embeddings and verdicts
stay. Every decision is logged in the warehouse's `retention` table; `dry_run` decides and logs
without deleting. The work is `pipeline.retention.purge_expired`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="profile_homogenization_retention",
    schedule="30 4 * * *",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "profile-homogenization", "retries": 2, "retry_delay": dt.timedelta(minutes=5)},
    tags=["profile-homogenization", "retention", "privacy"],
    doc_md=__doc__,
    params={
        "dry_run": Param(False, type="boolean", description="decide and log, delete nothing"),
        "warehouse": Param("", type="string", description="warehouse root; empty = from settings"),
    },
)
def profile_homogenization_retention():
    @task
    def purge() -> dict:
        from pipeline.orchestration import purge

        context = get_current_context()
        return purge(dict(context["params"]), context.get("logical_date"))

    purge()


profile_homogenization_retention()

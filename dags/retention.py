"""
### Profile homogenization: retention

Daily: delete stored originals and thumbnails that no run has referenced for longer than
`retention.raw_images_days` / `retention.thumbnails_days`. What the caches derive from a photo goes
with its original: embedding vectors, face signals, kept face descriptors, region views, keypoints
and the verdicts of its pairs. Tables and metrics stay. A cache that loses rows, or holds more than
16 shards, is rewritten as one. Every decision is logged in the warehouse's `retention` table;
`dry_run` decides and logs without deleting. The work is `pipeline.apps.retention.purge_expired`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task

from pipeline.apps.orchestration import dag_arguments, location_params


@dag(
    dag_id="profile_homogenization_retention",
    schedule="30 4 * * *",
    doc_md=__doc__,
    params={"dry_run": Param(False, type="boolean", description="decide and log, delete nothing"), **location_params()},
    **dag_arguments("retention", "privacy", retry_delay=dt.timedelta(minutes=5)),
)
def profile_homogenization_retention():
    @task
    def purge() -> dict:
        from pipeline.apps.orchestration import purge

        context = get_current_context()
        return purge(dict(context["params"]), context.get("logical_date"))

    purge()


profile_homogenization_retention()

"""
### Profile homogenization: brand audit

Triggered by hand (or by the API) for one company: its team-page URL or a folder of its photos
that the brand team uploaded. Crawl or read, intake, embed, index and analyze it together with the
latest nightly population, in the audit's own warehouse folder (the nightly tables are never
touched), and render the company's audit page. The task returns the page's path.

The work is `pipeline.apps.audit.audit`: the same stage functions as the nightly run.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task

from pipeline.apps.orchestration import dag_arguments, location_params


@dag(
    dag_id="profile_homogenization_brand_audit",
    schedule=None,
    doc_md=__doc__,
    params={
        "source": Param(type="string", minLength=1, description="team-page URL (http/https) or a folder of the company's photos"),
        "company": Param(type="string", minLength=1, description="company name"),
        **location_params(),
    },
    **dag_arguments("brand-audit", retries=1, retry_delay=dt.timedelta(minutes=1)),
)
def profile_homogenization_brand_audit():
    @task(pool="embedding")
    def audit() -> dict:
        from pipeline.apps.orchestration import brand_audit

        context = get_current_context()
        return brand_audit(dict(context["params"]), context.get("logical_date"))

    audit()


profile_homogenization_brand_audit()

"""
### Profile homogenization: brand audit

Triggered by hand (or by the API) for one company: its team-page URL or a folder of its photos
that the brand team uploaded. Crawl or read, intake, embed, index and analyze it together with the
latest nightly population, in the audit's own warehouse folder (the nightly tables are never
touched), and render the company's audit page. The task returns the page's path.

The work is `pipeline.audit.audit`: the same stage functions as the nightly run.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="profile_homogenization_brand_audit",
    schedule=None,
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    default_args={"owner": "profile-homogenization", "retries": 1, "retry_delay": dt.timedelta(minutes=1)},
    tags=["profile-homogenization", "brand-audit"],
    doc_md=__doc__,
    params={
        "source": Param(type="string", minLength=1, description="team-page URL (http/https) or a folder of the company's photos"),
        "company": Param(type="string", minLength=1, description="company name"),
        "warehouse": Param("", type="string", description="warehouse with the nightly runs; empty = from settings"),
        "reports": Param("", type="string", description="reports root; empty = from settings"),
    },
)
def profile_homogenization_brand_audit():
    @task(pool="embedding")
    def audit() -> dict:
        from pipeline.orchestration import brand_audit

        context = get_current_context()
        return brand_audit(dict(context["params"]), context.get("logical_date"))

    audit()


profile_homogenization_brand_audit()

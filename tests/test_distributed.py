"""Beyond one machine: the nightly DAG through the CeleryExecutor, two workers that share nothing
but PostgreSQL, Redis and an S3 bucket.

Each worker has a private scratch directory (its working directory, TMPDIR, HOME and AIRFLOW_HOME,
with its own logs); the warehouse, the reports and the sites file are on a bucket of a real
S3-compatible server (moto's, tests/s3_server.py); the embedding tasks go to their own Celery queue,
which only one worker serves (as a GPU pool would). Run by `make test-distributed` (which installs
Debian's postgresql and redis-server and the `distributed` extra), not by `make test`. Everything it
starts listens on 127.0.0.1 only and is stopped at the end; the test then checks that no process and
no port is left behind.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from pipeline.warehouse import Warehouse

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN_DATE = "2026-11-28"
TABLES = ("images", "pairs", "companies", "clusters", "reuse", "trends", "changes", "newly_shared", "crawl_log", "faces")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(check, what: str, timeout: float = 180) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.5)


class Services:
    """PostgreSQL, Redis, the Airflow api-server and two Celery workers, on 127.0.0.1."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.processes: list[subprocess.Popen] = []
        self.ports = {name: _free_port() for name in ("postgres", "redis", "api")}
        self.pg_bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]) if glob.glob("/usr/lib/postgresql/*/bin") else None
        # Postgres refuses to run as root: as root, its data lives in a folder the postgres user owns.
        self.pg_dir = Path(tempfile.mkdtemp(prefix="homog-pg-"))
        self.pg_started = False
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    # ------------------------------------------------------------ servers
    def start_postgres(self) -> str:
        if self.pg_bin is None:
            pytest.fail("PostgreSQL server binaries not found: `make test-distributed` installs Debian's postgresql")
        if self.as_postgres:
            shutil.chown(self.pg_dir, "postgres", "postgres")
        data = self.pg_dir / "data"
        subprocess.run(
            [*self.as_postgres, str(self.pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "airflow"],
            check=True,
            capture_output=True,
        )
        port = self.ports["postgres"]
        options = f"-h 127.0.0.1 -p {port} -k {self.pg_dir} -c fsync=off"
        subprocess.run([*self.as_postgres, str(self.pg_bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.pg_dir / "log"), "-w", "start"],
                       check=True, capture_output=True)  # fmt: skip
        self.pg_started = True
        subprocess.run(
            [str(self.pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "airflow", "airflow"], check=True, capture_output=True
        )
        return f"postgresql+psycopg2://airflow@127.0.0.1:{port}/airflow"

    def start_redis(self) -> str:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server not found: `make test-distributed` installs Debian's redis-server")
        port = self.ports["redis"]
        self.spawn(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.base)], "redis"
        )
        _wait_for(lambda: _listening(port), "redis")
        return f"redis://127.0.0.1:{port}/0"

    @contextlib.contextmanager
    def running(self) -> Iterator[Services]:
        """Everything started is stopped on the way out: after the test, on Ctrl-C, and on SIGTERM (a
        CI timeout), which would otherwise end this process and leave the servers, started in their
        own sessions, running."""

        def interrupted(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, interrupted)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.stop()

    def spawn(self, command: list[str], name: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.base / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # warm shutdown: workers finish or requeue their task
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            try:
                os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group (celery's pool children)
            except ProcessLookupError:
                pass
        if self.pg_started:
            subprocess.run([*self.as_postgres, str(self.pg_bin / "pg_ctl"), "-D", str(self.pg_dir / "data"), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.pg_dir, ignore_errors=True)


def _airflow_env(services: Services, db: str, broker: str) -> dict[str, str]:
    api = services.ports["api"]
    return {
        **os.environ,
        "AIRFLOW_HOME": str(services.base / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db,
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",  # a worker takes one task at a time: both get work
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "HOMOG_EMBEDDER": "classic",
        "HOMOG_EMBED_SHARDS": "2",
    }


def _demo(env: dict[str, str], root: Path, port: int, warehouse: str, reports: str) -> dict:
    command = [str(BIN / "homog"), "demo", "--root", str(root), "--warehouse", warehouse, "--reports", reports, "--run-date", RUN_DATE,
               "--nights", "1", "--port", str(port), "--json", "--use-executor", "--log-file", str(root / "dag.log")]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _tables(root: str) -> dict[str, pd.DataFrame]:
    """The run's tables, wherever the warehouse is, with its root spelled W (it differs between the two runs)."""
    import re

    from pipeline.warehouse import Warehouse

    store = Warehouse(root)
    roots = "|".join(re.escape(spelling) for spelling in sorted({store.uri(), store.root}, key=len, reverse=True))
    tables = {}
    for table in TABLES:
        frame = store.read_table(table, RUN_DATE)
        assert len(frame.columns), f"no {table} table in {root}"
        frame = frame.drop(columns=[c for c in ("source_fingerprint",) if c in frame]).replace(roots, "W", regex=True)
        tables[table] = frame.sort_values(list(frame.columns[:3])).reset_index(drop=True)
    return tables


WORKERS = {"worker-1": "default,embedding", "worker-2": "default"}  # only worker-1 serves the embedding queue


def test_nightly_dag_on_two_celery_workers_equals_a_local_run(tmp_path: Path) -> None:
    from tests.s3_server import S3Server

    with Services(tmp_path).running() as services, S3Server(tmp_path).running() as s3:
        # Built after the S3 server is up: the credentials and its endpoint are in the environment.
        env = {**_airflow_env(services, services.start_postgres(), services.start_redis()), "HOMOG_EMBED_QUEUE": "embedding"}
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
        for pool, slots in (("crawler", "4"), ("embedding", "2")):
            subprocess.run([str(BIN / "airflow"), "pools", "set", pool, slots, pool], env=env, check=True, capture_output=True, timeout=120)
        api = services.ports["api"]
        services.spawn([str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(api), "--workers", "1"], "api-server", env)
        _wait_for(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{api}/api/v2/monitor/health", timeout=2).status == 200
                if _listening(api)
                else False
            ),
            "api-server",
        )
        for name, queues in WORKERS.items():
            scratch = tmp_path / name  # everything the worker keeps locally, and nothing the other one sees
            (scratch / "tmp").mkdir(parents=True)
            private = {
                "HOMOG_WORKER_ID": name,
                "AIRFLOW_HOME": str(scratch / "airflow"),
                "TMPDIR": str(scratch / "tmp"),
                "HOME": str(scratch),
            }
            services.spawn([str(BIN / "airflow"), "celery", "worker", "--skip-serve-logs", "--concurrency", "1", "--queues", queues,
                            "--celery-hostname", f"{name}@127.0.0.1", "--without-gossip"], name, {**env, **private}, cwd=scratch)  # fmt: skip
        site_port = _free_port()
        bucket = s3.bucket()
        celery = _demo(env, tmp_path / "celery", site_port, f"{bucket}/warehouse", f"{bucket}/reports")
        local_env = {**env, "AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
        local = _demo(local_env, tmp_path / "local", site_port, str(tmp_path / "local" / "wh"), str(tmp_path / "local" / "reports"))
        distributed_tables = _tables(f"{bucket}/warehouse")
        reports_on_bucket = Warehouse(f"{bucket}/reports").keys_matching(f"{RUN_DATE}/*")

    assert celery["state"] == "success", celery["tasks"]
    mapped = [task for task in celery["tasks"] if task["task_id"] == "crawl_and_intake"]
    assert len(mapped) == 5 and all(task["state"] == "success" for task in mapped)
    assert {task["result"]["worker"] for task in mapped} == {"worker-1", "worker-2"}
    parts = [task for task in celery["tasks"] if task["task_id"] == "embed_part"]
    assert len(parts) == 2 and all(task["state"] == "success" for task in parts)
    assert {task["result"]["worker"] for task in parts} == {"worker-1"}  # the embedding queue's only worker
    assert sum(task["result"]["counts"]["embedded"] for task in parts) == celery["run"]["counts"]["distinct_images"]
    assert celery["run"]["outputs"]["images"].startswith(f"{bucket}/warehouse/")
    assert {f"{RUN_DATE}/index.html", f"{RUN_DATE}/summary.json"} <= set(reports_on_bucket)
    assert not (tmp_path / "celery" / "wh").exists()  # nothing of the distributed run on a local disk
    assert local["state"] == "success"
    clean = _tables(str(tmp_path / "local" / "wh"))
    for table in TABLES:
        pd.testing.assert_frame_equal(clean[table], distributed_tables[table], check_like=True, obj=table)

    for name, port in {**services.ports, "s3": s3.port}.items():
        assert not _listening(port), f"{name} still listens on {port}"
    assert all(process.poll() is not None for process in services.processes) and s3.process.poll() is not None
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], leftovers


def test_an_interrupted_run_leaves_no_server_behind(tmp_path: Path) -> None:
    """SIGTERM (what a CI timeout sends) to a run with PostgreSQL and Redis up: both are stopped."""
    script = (
        f"import sys, time\nsys.path.insert(0, {str(ROOT)!r})\nfrom pathlib import Path\n"
        "from tests.test_distributed import Services\n"
        f"with Services(Path({str(tmp_path)!r})).running() as services:\n"
        "    services.start_postgres(); services.start_redis()\n"
        "    print(services.ports['postgres'], services.ports['redis'], flush=True)\n"
        "    time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        ports = [int(port) for port in process.stdout.readline().split()]
        assert len(ports) == 2 and all(_listening(port) for port in ports)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert not any(_listening(port) for port in ports), "a server outlived the interrupted run"

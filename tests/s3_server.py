"""A real S3-compatible server for the tests: moto's standalone server, an HTTP server in a process of
its own on 127.0.0.1, which s3fs and botocore talk to through their real clients, with credentials
and buckets, as they would talk to AWS S3 or MinIO.

`S3Server.running()` starts it on a free port and stops it on the way out: after the tests, on
Ctrl-C, and on SIGTERM (a CI timeout), which would otherwise end the test process and leave the
server, started in its own session, running. While it runs, this process and the processes it
starts (`homog`, Airflow) find it through the environment: `FSSPEC_S3_ENDPOINT_URL` (fsspec's own
configuration, read at import) and `AWS_ENDPOINT_URL` (botocore), plus test credentials; in this
process fsspec's configuration is set directly, since fsspec is already imported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "homog-test", "AWS_SECRET_ACCESS_KEY": "homog-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3Server:
    def __init__(self, log_dir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach this server with s3:// URLs."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url, "FSSPEC_S3_ENDPOINT_URL": self.url}

    def bucket(self, prefix: str = "homog") -> str:
        """A new, empty bucket; returns its s3:// URL."""
        import s3fs

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(endpoint_url=self.url, key=CREDENTIALS["AWS_ACCESS_KEY_ID"], secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"]).mkdir(
            name
        )
        return f"s3://{name}"

    def start(self) -> None:
        log = open(self.log_dir / "moto-server.log", "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as probe:
                probe.settimeout(0.5)
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not come up on {self.url}; see {self.log_dir / 'moto-server.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    @contextlib.contextmanager
    def running(self) -> Iterator[S3Server]:
        import fsspec.config

        def interrupted(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, interrupted)
        saved_env = {key: os.environ.get(key) for key in self.env}
        saved_conf = fsspec.config.conf.get("s3")
        try:
            self.start()
            os.environ.update(self.env)
            fsspec.config.conf["s3"] = {**(saved_conf or {}), "endpoint_url": self.url}
            yield self
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if saved_conf is None:
                fsspec.config.conf.pop("s3", None)
            else:
                fsspec.config.conf["s3"] = saved_conf
            self.stop()
            signal.signal(signal.SIGTERM, previous)

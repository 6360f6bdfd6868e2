"""Shared fixtures: images made in the test, a loopback HTTP server, the optional shared corpus."""

from __future__ import annotations

import atexit
import http.server
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "headshots"

# numba keeps the code it compiles for UMAP (pipeline/report/projection.py) beside the installed package
# by default: the suite keeps it in a temporary folder of its own instead (set before numba is imported,
# and inherited by the worker processes), so that tests write only in temporary folders.
if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="homog-tests-numba-")
    atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], True)


def photo_like(width: int = 160, height: int = 200, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture: enough structure for hashes, no person in it."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BICUBIC)


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"shared headshot corpus not found at {CORPUS}")
    return CORPUS


class _Routes(dict):
    """path -> (status, content type, body)"""


@pytest.fixture
def http_server() -> Iterator[tuple[str, _Routes]]:
    """A server on 127.0.0.1 (random port) serving `routes`; it stops when the test ends."""
    routes = _Routes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            status, content_type, body = routes.get(self.path, (404, "text/plain", b"not found"))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def fixture_site():
    """The crawler's fixture website (tests/fixture_site.py), served while the module's tests run."""
    from tests.fixture_site import served

    with served() as site:
        yield site


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random tiny open_clip model saved as a local checkpoint file."""
    import open_clip
    import torch

    from pipeline.features.embedders.clip import TINY_TEST_MODEL, ClipEmbedder

    ClipEmbedder(TINY_TEST_MODEL, pretrained=None, random_init_seed=0, precision="fp32")  # registers the config
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_TEST_MODEL)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3-compatible server on 127.0.0.1 for the whole session (tests/s3_server.py); each test
    takes a bucket of its own with `s3.bucket()`."""
    from tests.s3_server import S3Server

    with S3Server(tmp_path_factory.mktemp("s3")).running() as server:
        yield server


@pytest.fixture(params=["local", "memory", "s3"])
def warehouse_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One warehouse root of each kind the project supports: a local folder, fsspec's in-memory
    filesystem, and a bucket on the S3 server."""
    import uuid

    if request.param == "local":
        return str(tmp_path / "wh")
    if request.param == "memory":
        return f"memory://wh-{uuid.uuid4().hex}"
    return request.getfixturevalue("s3").bucket() + "/wh"


# What the suite must leave as it found it: the checkout (it may be read-only) and the shared corpus.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NOT_OURS = {".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "var"}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below `root` (but build and cache folders) with its size and mtime."""
    found = {}
    if not root.is_dir():
        return found
    for path in root.rglob("*"):
        if NOT_OURS & set(path.relative_to(root).parts) or path.name.endswith(".egg-info"):
            continue
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        found[str(path.relative_to(root))] = (info.st_size if path.is_file() else 0, info.st_mtime_ns if path.is_file() else 0)
    return found


@pytest.fixture(scope="session", autouse=True)
def _outputs_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every default place a run writes to (./warehouse, ./reports) points into the session's temporary
    folder, set before any fixture of any scope runs; and at the end, the checkout and ../shared must
    be exactly as they were (the suite has to pass from read-only copies of both)."""
    checkout = Path(__file__).resolve().parents[1]
    before = {root: _tree(root) for root in (checkout, SHARED)}
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOMOG_REPORTS", str(base / "reports"))
        patch.setenv("HOMOG_WAREHOUSE", str(base / "warehouse"))
        yield
    for root, files in before.items():
        after = _tree(root)
        changed = sorted(name for name in set(files) | set(after) if files.get(name) != after.get(name))
        assert not changed, f"the tests wrote into {root}: {changed[:20]}"

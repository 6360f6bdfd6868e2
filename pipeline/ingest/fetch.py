"""Reading a picture's (or a manifest's) bytes from wherever it is, safely.

Local paths must be regular files (a named pipe would block forever) and are read in blocks within a
byte cap and a deadline; http(s) goes through the crawler's guarded `Fetcher` (address guard, caps,
deadline, per-host spacing), so every remote byte the project reads passes the same checks; other
fsspec URLs (s3://, memory://, ...) are the operator's own stores.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from typing import TYPE_CHECKING

from pipeline.config import CrawlConfig
from pipeline.warehouse import is_local_fs

if TYPE_CHECKING:
    from pipeline.ingest.crawl.http import Fetcher


class IntakeError(Exception):
    """A payload that is not a usable image; `kind` is a stable code, the message is for people."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _read_capped(handle, uri: str, max_bytes: int, deadline: float) -> bytes:  # noqa: ANN001 - a binary file object
    """Read in blocks, stopping past `max_bytes` or the deadline: a file on a slow network mount cannot
    hold a worker longer than a remote response may (the deadline is checked between blocks)."""
    blocks, received = [], 0
    while block := handle.read(1 << 20):
        blocks.append(block)
        received += len(block)
        if received > max_bytes:
            break  # the caller refuses it as too large
        if time.monotonic() > deadline:
            raise IntakeError("fetch_failed", f"reading {uri} did not finish in time (3 x intake.fetch_timeout_s): refused")
    return b"".join(blocks)


def is_remote(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def fetch_bytes(uri: str, max_bytes: int, timeout_s: float, fetcher: Fetcher | None = None) -> bytes:
    """Read at most `max_bytes` from any fsspec URL or path; refuse, rather than truncate, more.

    http(s) goes through the crawler's guarded `Fetcher` (`fetcher`, or one with the default crawl
    settings): the same address guard, byte caps and deadlines for every remote byte the project
    reads, whether a crawl found the URL or a manifest named it."""
    import fsspec

    if is_remote(uri):
        return _fetch_remote(uri, max_bytes, fetcher)
    try:
        _refuse_special_file(uri)
        with fsspec.open(uri, "rb") as handle:
            size = getattr(handle, "size", None)
            if isinstance(size, int) and size > max_bytes:
                raise IntakeError("too_large", f"payload is {size} bytes, over the limit of {max_bytes}")
            data = _read_capped(handle, uri, max_bytes, deadline=time.monotonic() + 3 * timeout_s)
    except IntakeError:
        raise
    except FileNotFoundError:
        raise IntakeError("fetch_failed", f"not found: {uri}") from None
    except Exception as exc:  # network, permission, protocol: all mean "could not fetch"
        raise IntakeError("fetch_failed", f"could not read {uri}: {type(exc).__name__}: {exc}") from None
    if len(data) > max_bytes:
        raise IntakeError("too_large", f"payload is over the limit of {max_bytes} bytes")
    return data


_SPECIAL_FILES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))  # fmt: skip


def remote_fetcher(crawl: CrawlConfig | None = None) -> Fetcher:
    """The guarded HTTP client intake uses for http(s) rows (a context manager)."""
    from pipeline.ingest.crawl.http import Fetcher

    return Fetcher(crawl or CrawlConfig())


def _fetch_remote(uri: str, max_bytes: int, fetcher: Fetcher | None) -> bytes:
    from pipeline.ingest.crawl.http import CrawlRefused, FetchFailed

    with contextlib.ExitStack() as stack:
        if fetcher is None:
            fetcher = stack.enter_context(remote_fetcher())
        try:
            # robots.txt governs crawling; a manifest row is a picture someone chose to measure.
            response = fetcher.get(uri, max_bytes=max_bytes, check_robots=False)
        except CrawlRefused as exc:
            raise IntakeError("fetch_refused", f"not fetched ({exc.rule}): {exc}") from None
        except FetchFailed as exc:
            raise IntakeError("too_large" if exc.kind == "too_large" else "fetch_failed", f"{exc.kind}: {exc}") from None
    if response.status >= 400:
        raise IntakeError("fetch_failed", f"HTTP {response.status} for {uri}")
    return response.body


def _refuse_special_file(uri: str) -> None:
    """A local path must be a regular file before it is opened: opening a named pipe blocks until
    someone writes to it (forever, in a folder of pictures), and a device never ends."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if not is_local_fs(fs):
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise IntakeError("fetch_failed", f"not found: {uri}") from None
    except OSError as exc:
        raise IntakeError("fetch_failed", f"could not read {uri}: {exc.strerror or exc}") from None
    for is_kind, kind in _SPECIAL_FILES:
        if is_kind(mode):
            raise IntakeError("fetch_failed", f"{uri} is {kind}, not a file: refused without opening it")


def source_fingerprint(uri: str) -> str:
    """A cheap "has this source changed?" token from metadata alone; "" where the source offers none.

    Only a modification time or an ETag is trusted, together with the size: a size alone says too
    little to skip reading the bytes.
    """
    import fsspec

    if is_remote(uri):
        return ""  # asking a server (HEAD) is a request like any other: only the guarded fetcher sends those
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        info = fs.info(path)
    except Exception:  # any failure just means: fetch it
        return ""
    version = info.get("mtime") or info.get("ETag") or info.get("LastModified") or info.get("last_modified")
    if not version:
        return ""
    return f"size={info.get('size')};version={version}"

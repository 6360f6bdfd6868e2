"""Polite, guarded HTTP for the crawler: one `Fetcher` per site.

Safety is enforced where the socket is opened, not where the URL is read (`guard.py`: the address
guard and the per-response deadline). Redirects are followed by hand, so each hop is checked against
the scheme rule, the opt-out list and robots.txt too.

Politeness: one `HostGate` per host spaces requests by `crawl.min_delay_s` (or a longer robots.txt
Crawl-delay) and caps concurrent requests; 429 and 5xx are retried with exponential backoff that
honours Retry-After; conditional GETs (ETag / Last-Modified) let a nightly rerun skip unchanged bytes.
"""

from __future__ import annotations

import contextlib
import email.utils
import fnmatch
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx
import tenacity

from pipeline.config import CrawlConfig
from pipeline.ingest.crawl.guard import AddressGuard, BlockedAddress, GuardedTransport, ResponseStalled, deadline

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


class CrawlRefused(Exception):
    """A rule said no (robots, opt-out, private address, budget): recorded as `skipped`, never fetched."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class FetchFailed(Exception):
    """The request was allowed but did not give a usable response: recorded as `error`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ------------------------------------------------------------------ politeness
class HostGate:
    """Spaces requests to one host by `delay` seconds and caps how many are in flight."""

    def __init__(self, delay: float, concurrency: int) -> None:
        self.delay = delay
        self._slots = threading.Semaphore(concurrency)
        self._lock = threading.Lock()
        self._next_start = 0.0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        with self._slots:
            with self._lock:
                start = max(time.monotonic(), self._next_start)
                self._next_start = start + self.delay
            pause = start - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            yield


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def registrable_host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower().rstrip(".")


def domain_matches(host: str, domain: str) -> bool:
    domain = domain.lower().strip(".")
    return host == domain or host.endswith("." + domain)


# ------------------------------------------------------------------ fetching
@dataclass
class Response:
    url: str  # after redirects
    status: int
    headers: httpx.Headers
    body: bytes = b""
    not_modified: bool = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass
class SiteBudget:
    limit: int
    used: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, n: int) -> None:
        with self.lock:
            self.used += n
            if self.used > self.limit:
                raise CrawlRefused("site_byte_cap", f"the site's byte budget of {self.limit} bytes (crawl.max_bytes_per_site) is spent")


class Fetcher:
    """GETs for one site: guarded, polite, retried, capped. Use as a context manager."""

    def __init__(self, cfg: CrawlConfig, robots_check=None) -> None:  # noqa: ANN001 - set by the crawler
        self.cfg = cfg
        self.budget = SiteBudget(cfg.max_bytes_per_site)
        self.robots_check = robots_check  # callable(url) raising CrawlRefused, or None
        self._gates: dict[str, HostGate] = {}
        self._gates_lock = threading.Lock()
        self.client = httpx.Client(
            transport=GuardedTransport(AddressGuard(cfg.allow_private)),
            headers={"User-Agent": cfg.resolved_user_agent, "Accept-Encoding": "gzip, deflate"},
            timeout=httpx.Timeout(cfg.timeout_s),
            follow_redirects=False,
            trust_env=False,  # an environment proxy would bypass the address guard
        )

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def gate(self, host: str) -> HostGate:
        with self._gates_lock:
            if host not in self._gates:
                self._gates[host] = HostGate(self.cfg.min_delay_s, self.cfg.max_concurrency_per_host)
            return self._gates[host]

    def check_url(self, url: str) -> None:
        """Rules that refuse a URL before any request: scheme, opt-out domains and URL patterns."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise CrawlRefused("scheme", f"only http and https are crawled, not {parts.scheme or 'a relative URL'!r}")
        if not parts.hostname:
            raise CrawlRefused("scheme", "the URL has no host")
        host = registrable_host(url)
        for domain in self.cfg.opt_out.domains:
            if domain_matches(host, domain):
                raise CrawlRefused("opt_out_domain", f"opt-out: domain {domain!r} (crawl.opt_out.domains)")
        for pattern in self.cfg.opt_out.url_patterns:
            if fnmatch.fnmatchcase(url, pattern):
                raise CrawlRefused("opt_out_url", f"opt-out: URL pattern {pattern!r} (crawl.opt_out.url_patterns)")

    def get(
        self,
        url: str,
        validators: dict[str, str] | None = None,
        max_bytes: int | None = None,
        check_robots: bool = True,
    ) -> Response:
        """GET `url`, following redirects by hand; raises CrawlRefused or FetchFailed."""
        seen: set[str] = set()
        current = url
        for _ in range(self.cfg.max_redirects + 1):
            self.check_url(current)
            if check_robots and self.robots_check is not None:
                self.robots_check(current)
            if current in seen:
                raise FetchFailed("redirect_loop", f"redirect loop: {current} was already visited")
            seen.add(current)
            response = self._send(current, validators if current == url else None, max_bytes or self.cfg.max_bytes_per_response)
            location = response.headers.get("location")
            if response.status in REDIRECT_STATUS and location:
                current = urljoin(current, location.strip())
                continue
            return response
        raise FetchFailed("too_many_redirects", f"more than {self.cfg.max_redirects} redirects (crawl.max_redirects)")

    def _send(self, url: str, validators: dict[str, str] | None, max_bytes: int) -> Response:
        headers = {}
        if validators:
            if validators.get("etag"):
                headers["If-None-Match"] = validators["etag"]
            if validators.get("last_modified"):
                headers["If-Modified-Since"] = validators["last_modified"]
        gate = self.gate(registrable_host(url))
        cfg = self.cfg

        def attempt() -> Response:
            with gate.turn():
                return self._send_once(url, headers, max_bytes)

        def wait(state: tenacity.RetryCallState) -> float:
            outcome = state.outcome
            if outcome is not None and not outcome.failed:
                asked = retry_after_seconds(outcome.result().headers.get("retry-after"))
                if asked is not None:
                    return asked
            backoff = cfg.backoff_s * 2 ** (state.attempt_number - 1)
            return backoff * (1 + 0.1 * random.random())  # jitter: many crawlers must not retry in step

        def asks_too_long(state: tenacity.RetryCallState) -> bool:
            outcome = state.outcome
            if outcome is None or outcome.failed:
                return False
            asked = retry_after_seconds(outcome.result().headers.get("retry-after"))
            return asked is not None and asked > cfg.max_retry_after_s

        def give_up(state: tenacity.RetryCallState) -> Response:
            outcome = state.outcome
            assert outcome is not None
            if outcome.failed:
                exc = outcome.exception()
                raise FetchFailed("network", f"{type(exc).__name__}: {exc} (after {state.attempt_number} attempts)") from None
            return outcome.result()  # the last 429/5xx: the caller records its status

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(cfg.max_retries + 1) | asks_too_long,
            wait=wait,
            retry=tenacity.retry_if_exception_type(httpx.TransportError)
            | tenacity.retry_if_result(lambda response: response.status in RETRYABLE_STATUS),
            retry_error_callback=give_up,
            reraise=False,
        )
        try:
            return retrying(attempt)
        except BlockedAddress as exc:
            raise CrawlRefused("private_address", str(exc)) from None
        except ResponseStalled:  # a trickling server: not retried, it would only trickle again
            raise FetchFailed("stalled", f"response incomplete after {self.cfg.timeout_s * 3:.0f} s (3 x crawl.timeout_s)") from None

    def _send_once(self, url: str, headers: dict[str, str], max_bytes: int) -> Response:
        # Connect, status line, headers and body: all within one deadline (see DeadlineStream).
        deadline.at = time.monotonic() + self.cfg.timeout_s * 3
        try:
            return self._receive(url, headers, max_bytes)
        finally:
            deadline.at = None

    def _receive(self, url: str, headers: dict[str, str], max_bytes: int) -> Response:
        with self.client.stream("GET", url, headers=headers) as stream:
            response = Response(url=url, status=stream.status_code, headers=stream.headers)
            if stream.status_code == 304:
                response.not_modified = True
                return response
            if stream.status_code in REDIRECT_STATUS or stream.status_code >= 400:
                return response  # bodies of errors and redirects are not needed
            encodings = [coding.strip().lower() for coding in stream.headers.get("content-encoding", "").split(",") if coding.strip()]
            if len(encodings) > 1 or any(coding not in ("gzip", "deflate", "identity") for coding in encodings):
                # We ask for gzip or deflate; a stack of them (3.5 KB on the wire can be 2 GB after two
                # gzip layers) or anything else is refused before a byte is decoded.
                raise FetchFailed("encoding", f"Content-Encoding {', '.join(encodings)} refused: one layer of gzip or deflate at most")
            declared = stream.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchFailed("too_large", f"Content-Length {declared} is over the limit of {max_bytes} bytes")
            chunks, received = [], 0
            for chunk in stream.iter_bytes():  # decoded bytes: a gzip bomb is capped too
                received += len(chunk)
                if received > max_bytes:
                    raise FetchFailed("too_large", f"response is over the limit of {max_bytes} bytes")
                self.budget.take(len(chunk))
                chunks.append(chunk)
            response.body = b"".join(chunks)
            return response

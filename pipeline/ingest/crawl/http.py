"""Polite, guarded HTTP for the crawler: one `Fetcher` per site.

Safety is enforced where the socket is opened, not where the URL is read: every connection goes
through `GuardedBackend`, which resolves the host itself, refuses private, loopback, link-local,
shared and metadata addresses (unless `crawl.allow_private` names them), and connects to the very
address it checked. So a redirect, a DNS answer that changes between checks (rebinding) or an IP
written in decimal cannot reach an internal service. Redirects are followed by hand, so each hop is
checked against the scheme rule, the opt-out list and robots.txt too.

Politeness: one `HostGate` per host spaces requests by `crawl.min_delay_s` (or a longer robots.txt
Crawl-delay) and caps concurrent requests; 429 and 5xx are retried with exponential backoff that
honours Retry-After; conditional GETs (ETag / Last-Modified) let a nightly rerun skip unchanged bytes.
"""

from __future__ import annotations

import contextlib
import email.utils
import fnmatch
import ipaddress
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
import tenacity

from pipeline.config import CrawlConfig

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


class BlockedAddress(Exception):
    """Raised inside the connection pool when a host resolves to a refused address."""


class ResponseStalled(Exception):
    """Raised inside the connection when one response's deadline (connect, headers and body) passed."""


# The deadline of the response being fetched on this thread: the connection pool's sockets check it on
# every read and write, so a server that trickles its status line or headers byte by byte, each byte
# just inside the read timeout, cannot hold a worker longer than the whole-response deadline.
_deadline = threading.local()


def _time_left(timeout: float | None) -> float | None:
    at = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise ResponseStalled("the response did not complete within its deadline")
    return left if timeout is None else min(timeout, left)


@contextlib.contextmanager
def _stalled_when_past_deadline() -> Iterator[None]:
    """A socket timeout that the deadline shortened is the deadline passing, not a network hiccup to retry."""
    try:
        yield
    except httpcore.TimeoutException:
        at = getattr(_deadline, "at", None)
        if at is not None and time.monotonic() >= at - 0.05:
            raise ResponseStalled("the response did not complete within its deadline") from None
        raise


class DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every operation ends by the current response's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _stalled_when_past_deadline():
            return self.inner.read(max_bytes, _time_left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _stalled_when_past_deadline():
            self.inner.write(buffer, _time_left(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):  # noqa: ANN001, ANN201
        return DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, _time_left(timeout)))

    def get_extra_info(self, info: str):  # noqa: ANN201
        return self.inner.get_extra_info(info)


# ------------------------------------------------------------------ address guard
class AddressGuard:
    def __init__(self, allow: list[str]) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.hosts: set[str] = set()
        for entry in allow:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))

    def refusal(self, host: str, address: str) -> str | None:
        """Why `address` (resolved from `host`) may not be contacted, or None if it may."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_global and not ip.is_multicast:
            return None
        if host.lower().rstrip(".") in self.hosts or any(ip in network for network in self.networks):
            return None
        what = (
            "loopback"
            if ip.is_loopback
            else "link-local (cloud metadata lives here)"
            if ip.is_link_local
            else "private"
            if ip.is_private
            else "not a public address"
        )
        return f"{host} resolves to {ip}, which is {what}; crawl.allow_private can permit it"

    def resolve(self, host: str, port: int) -> list[str]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:  # one refused address refuses the host: we would not choose which one is used
            reason = self.refusal(host, address)
            if reason:
                raise BlockedAddress(reason)
        return addresses


class GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard
        self.inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ANN001
        last_error: Exception | None = None
        for address in self.guard.resolve(host, port):
            try:  # connect to the address that was checked, never re-resolve
                return DeadlineStream(self.inner.connect_tcp(address, port, _time_left(timeout), local_address, socket_options))
            except httpcore.ConnectError as exc:
                last_error = exc
        raise last_error or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(self, path, timeout=None, socket_options=None):  # noqa: ANN001
        raise BlockedAddress("unix sockets are never crawled")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    def __init__(self, guard: AddressGuard) -> None:
        super().__init__(retries=0, http2=False)
        # httpx has no public hook for the network backend; the pool it builds is replaced by the
        # same pool type with the guarded backend (proxies are off: trust_env=False on the client).
        self._pool = httpcore.ConnectionPool(network_backend=GuardedBackend(guard), retries=0)


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
        _deadline.at = time.monotonic() + self.cfg.timeout_s * 3
        try:
            return self._receive(url, headers, max_bytes)
        finally:
            _deadline.at = None

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

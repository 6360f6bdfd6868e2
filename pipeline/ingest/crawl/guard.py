"""Where the crawler's sockets are opened: the address guard and the per-response deadline.

`GuardedBackend` resolves each host itself, refuses private, loopback, link-local, shared and
metadata addresses (unless `crawl.allow_private` names them), and connects to the very address it
checked, so a redirect, a DNS answer that changes between checks (rebinding) or an IP written in
decimal cannot reach an internal service. Every socket it returns is a `DeadlineStream`: each read
and write ends by the deadline of the response being fetched, so a server that trickles its status
line or headers cannot hold a worker past it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import httpcore
import httpx


class BlockedAddress(Exception):
    """Raised inside the connection pool when a host resolves to a refused address."""


class ResponseStalled(Exception):
    """Raised inside the connection when one response's deadline (connect, headers and body) passed."""


# The deadline of the response being fetched on this thread: the connection pool's sockets check it on
# every read and write, so a server that trickles its status line or headers byte by byte, each byte
# just inside the read timeout, cannot hold a worker longer than the whole-response deadline.
deadline = threading.local()


def _time_left(timeout: float | None) -> float | None:
    at = getattr(deadline, "at", None)
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
        at = getattr(deadline, "at", None)
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

"""Rendering a team page in headless Chromium (Playwright), for pages that build their cards in the browser.

The browser never reaches the network by itself. Every request it makes is intercepted and either
fulfilled by the crawler's own `Fetcher` (so the address guard, robots.txt, opt-outs, per-host
politeness and the byte budget apply exactly as to every other request) or refused and logged:
- the page's document is fulfilled with the HTML the crawler already fetched (one request, not two);
- scripts and stylesheets from any http(s) URL the rules allow (libraries often come from a CDN);
- data requests (fetch, XHR, EventSource) only to the page's own origin, as a `connect-src 'self'`
  would: a page's scripts have no business talking to another port or another host through us;
- pictures, fonts and media are not loaded by the browser at all: the crawler fetches the pictures it
  finds in the rendered DOM afterwards, through the same checks as from any page;
- other frames, navigations away from the page, WebSockets, beacons, methods other than GET, and
  every scheme but http(s) are refused; service workers are blocked and downloads are not accepted.
Name resolution inside Chromium maps every host to nothing (`--host-resolver-rules`), so a request
that interception does not see (a prefetch, a preconnect) cannot leave the browser either. Nothing of
ours enters the page: a fresh context per page (no cookies, no storage), no exposed functions.

One deadline covers the whole page (`crawl.render_deadline_s`): navigation, the scripts' requests,
settling (no request for 500 ms, Playwright's "networkidle") and reading the DOM. A page that never
settles is read as it stands at the deadline; a page whose script hangs the renderer is stopped by
killing the browser (started again for the next page).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pipeline.config import CrawlConfig
from pipeline.ingest.crawl.http import CrawlRefused, Fetcher, FetchFailed

logger = logging.getLogger(__name__)

FETCHED_KINDS = frozenset({"script", "stylesheet", "fetch", "xhr", "eventsource"})
SAME_ORIGIN_KINDS = frozenset({"fetch", "xhr", "eventsource"})
NOT_LOADED_KINDS = frozenset({"image", "media", "font"})  # silently: the crawler fetches the pictures itself
_READ_GRACE_S = 3.0  # after the deadline, for reading the DOM before the browser is stopped
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")


class RenderUnavailable(Exception):
    """No Chromium (or no Playwright) to render with."""


class RenderFailed(Exception):
    """The page could not be rendered; the message says why."""


def chromium_executable(cfg: CrawlConfig) -> str:
    """The Chromium to render with (`crawl.chromium`, else one on PATH); RenderUnavailable if none."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise RenderUnavailable("the playwright package is not installed") from None
    if cfg.chromium:
        if os.access(cfg.chromium, os.X_OK):
            return cfg.chromium
        raise RenderUnavailable(f"crawl.chromium={cfg.chromium!r} is not an executable file")
    for name in _BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise RenderUnavailable(f"no Chromium on PATH ({', '.join(_BROWSER_NAMES)}); install Debian's chromium or set crawl.chromium")


@dataclass
class Rendered:
    html: str
    settled: bool  # False: the deadline came first and the DOM was read as it stood
    seconds: float
    served: int = 0  # requests fulfilled through the crawler's fetcher (the document included)
    not_loaded: int = 0  # pictures, fonts and media the browser asked for and was not given
    refused: list[tuple[str, str]] = field(default_factory=list)  # (url, rule: reason)

    @property
    def summary(self) -> str:
        how = "settled" if self.settled else "did not settle by the deadline (crawl.render_deadline_s): read as it stood"
        return (
            f"rendered in Chromium in {self.seconds:.1f} s, {how}; {self.served} request(s) served through the crawler, "
            f"{len(self.refused)} refused, {self.not_loaded} picture/font/media request(s) left to the crawler"
        )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


class Renderer:
    """One headless Chromium for one company's crawl, started on first use; use as a context manager.

    Playwright's sync API is bound to the thread that starts it and refuses to run where an asyncio
    loop is running, so the browser lives on a thread of its own: callers may be anywhere (an Airflow
    task, a thread pool), and the interception handlers run there too (the fetcher is thread-safe)."""

    def __init__(self, cfg: CrawlConfig, fetcher: Fetcher) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.cfg = cfg
        self.fetcher = fetcher
        self.executable = chromium_executable(cfg)
        self._playwright = None
        self._browser = None
        self._browser_pid: int | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="renderer")

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._thread.submit(self._close).result()
        self._thread.shutdown()

    def _close(self) -> None:
        for closing in (self._browser, self._playwright):
            if closing is None:
                continue
            try:
                closing.close() if closing is self._browser else closing.stop()
            except Exception:  # a browser killed by the deadline is already gone
                logger.debug("closing the renderer", exc_info=True)
        self._browser = self._playwright = None

    def _launch(self):  # noqa: ANN202 - a playwright Browser
        if self._browser is not None and self._browser.is_connected():
            return self._browser
        if self._playwright is None:
            from playwright.sync_api import sync_playwright

            self._playwright = sync_playwright().start()
        args = ["--host-resolver-rules=MAP * ~NOTFOUND", "--force-webrtc-ip-handling-policy=disable_non_proxied_udp"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to start as root with its sandbox (containers, CI)
        self._browser = self._playwright.chromium.launch(executable_path=self.executable, headless=True, args=args)
        processes = self._browser.new_browser_cdp_session().send("SystemInfo.getProcessInfo")["processInfo"]
        self._browser_pid = next((int(p["id"]) for p in processes if p.get("type") == "browser"), None)
        return self._browser

    def _stop_browser(self) -> None:
        """Called from a timer thread when reading the DOM outlasts the deadline: a script holds the
        renderer. Killing the process is the one thing that is safe to do from another thread."""
        if self._browser_pid is not None:
            try:
                os.kill(self._browser_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def render(self, url: str, html: bytes, content_type: str) -> Rendered:
        """The DOM of `url` (whose server HTML is `html`) after its scripts ran; RenderFailed if none."""
        return self._thread.submit(self._render, url, html, content_type).result()

    def _render(self, url: str, html: bytes, content_type: str) -> Rendered:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        started = time.monotonic()
        deadline = started + self.cfg.render_deadline_s
        result = Rendered(html="", settled=False, seconds=0.0)
        page_url, page_origin = url.split("#", 1)[0], _origin(url)

        def refuse(route, request_url: str, reason: str) -> None:  # noqa: ANN001
            result.refused.append((request_url, reason))
            route.abort("blockedbyclient")

        def handle(route, request) -> None:  # noqa: ANN001
            try:
                intercept(route, request)
            except Exception as exc:  # noqa: BLE001 - e.g. the browser stopped meanwhile: the request must not hang
                result.refused.append((request.url, f"render_error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
                try:
                    route.abort("failed")
                except PlaywrightError:
                    pass

        def intercept(route, request) -> None:  # noqa: ANN001
            request_url, kind = request.url, request.resource_type
            if time.monotonic() > deadline:
                return refuse(route, request_url, "render_deadline: the page's deadline had passed")
            if request.is_navigation_request():
                if request.frame.parent_frame is None and request_url.split("#", 1)[0] == page_url and not result.served:
                    result.served += 1
                    return route.fulfill(status=200, headers={"content-type": content_type or "text/html"}, body=html)
                what = "a frame inside the page" if request.frame.parent_frame is not None else "a navigation away from the page"
                return refuse(route, request_url, f"render_navigation: {what} is not followed")
            if kind in NOT_LOADED_KINDS:
                result.not_loaded += 1
                return route.abort("blockedbyclient")
            if kind not in FETCHED_KINDS:
                return refuse(route, request_url, f"render_kind: {kind} requests are not made for a page")
            if request.method != "GET":
                return refuse(route, request_url, f"render_method: only GET is sent for a page, not {request.method}")
            if kind in SAME_ORIGIN_KINDS and _origin(request_url) != page_origin:
                return refuse(route, request_url, "render_cross_origin: a page's scripts may request data from its own origin only")
            try:
                response = self.fetcher.get(request_url)
            except CrawlRefused as exc:
                return refuse(route, request_url, f"{exc.rule}: {exc}")
            except FetchFailed as exc:
                return refuse(route, request_url, f"{exc.kind}: {exc}")
            result.served += 1
            headers = {"content-type": response.headers.get("content-type", "application/octet-stream")}
            route.fulfill(status=response.status, headers=headers, body=response.body)

        def refuse_socket(socket_route) -> None:  # noqa: ANN001
            result.refused.append((socket_route.url, "render_websocket: WebSockets are not opened for a page"))
            socket_route.close(code=1008, reason="refused")

        def note_failure(request) -> None:  # noqa: ANN001 - requests the browser blocked itself (file:, chrome:)
            if urlsplit(request.url).scheme not in ("http", "https", "data", "blob", "about"):
                result.refused.append((request.url, f"scheme: only http and https are crawled, not {urlsplit(request.url).scheme!r}"))

        try:
            browser = self._launch()
        except PlaywrightError as exc:
            raise RenderFailed(f"Chromium did not start: {str(exc).splitlines()[0]}") from None
        context = browser.new_context(
            service_workers="block", accept_downloads=False, user_agent=self.cfg.resolved_user_agent,
            viewport={"width": 1280, "height": 2000}, java_script_enabled=True,
        )  # fmt: skip
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()) + _READ_GRACE_S, self._stop_browser)
        watchdog.daemon = True
        watchdog.start()
        try:
            context.route(re.compile(r".*"), handle)
            context.route_web_socket(re.compile(r".*"), refuse_socket)
            page = context.new_page()
            page.on("requestfailed", note_failure)
            left_ms = lambda: max(1.0, (deadline - time.monotonic()) * 1000)  # noqa: E731
            try:
                page.goto(url, wait_until="load", timeout=left_ms())
                page.wait_for_load_state("networkidle", timeout=left_ms())
                result.settled = True
            except PlaywrightTimeout:
                result.settled = False
            result.html = page.content()
        except PlaywrightError as exc:
            if not browser.is_connected():
                self._browser = None  # stopped by the watchdog: a new one for the next page
                raise RenderFailed(
                    f"the page's scripts held the browser past the deadline of {self.cfg.render_deadline_s:g} s: Chromium was stopped"
                ) from None
            raise RenderFailed(f"rendering failed: {str(exc).splitlines()[0]}") from None
        finally:
            watchdog.cancel()
            if browser.is_connected():
                try:
                    context.close()
                except PlaywrightError:
                    pass
        result.seconds = time.monotonic() - started
        return result

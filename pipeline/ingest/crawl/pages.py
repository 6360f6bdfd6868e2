"""Reading one page of a company's site: fetched, checked, parsed, and rendered in Chromium where the
server's HTML is only an application shell (`crawl.render`). Discovery and the crawl of team pages
read pages through the same `PageLoader`, so a page that discovery chose is not fetched twice."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.config import CrawlConfig
from pipeline.ingest.crawl.extract import ParsedPage, parse_page
from pipeline.ingest.crawl.http import CrawlRefused, Fetcher, FetchFailed, Response
from pipeline.ingest.crawl.render import Rendered, Renderer, RenderFailed, RenderUnavailable, chromium_executable
from pipeline.ingest.crawl.robots import blocking, directives

logger = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")


class PageUnusable(Exception):
    """The page was not read: `status` is `skipped` (a rule said no) or `error`; the message says why."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Page:
    url: str  # after redirects
    parsed: ParsedPage
    rules: set[str]  # robots directives that apply to us (X-Robots-Tag and <meta name=robots>)
    rendered: Rendered | None = None
    render_problem: str = ""  # why a page that needed rendering was not rendered

    @property
    def summary(self) -> str:
        found = f"{len(self.parsed.candidates)} candidate pictures"
        if self.rendered is not None:
            return f"{found}; {self.rendered.summary}"
        return f"{found}; {self.render_problem}" if self.render_problem else found


def render_check(cfg: CrawlConfig) -> str:
    """Whether this crawl can render: "" where it can or need not, else a warning for `auto`.
    RenderUnavailable for `always`, which must not pass for a crawl that rendered nothing."""
    if cfg.render == "never":
        return ""
    try:
        chromium_executable(cfg)
    except RenderUnavailable as exc:
        if cfg.render == "always":
            raise RenderUnavailable(f"crawl.render=always, but {exc}") from None
        return f"crawl.render=auto renders nothing on this machine: {exc}"
    return ""


def page_problem(response: Response) -> str | None:
    if response.status >= 400:
        return f"HTTP {response.status}"
    if response.status >= 300:
        return f"HTTP {response.status} without a usable Location"
    if response.content_type and response.content_type not in HTML_TYPES:
        return f"not an HTML page (Content-Type {response.content_type})"
    return None


class PageLoader:
    """Pages of one company's crawl, each read once. Use as a context manager (it may hold a browser)."""

    def __init__(self, cfg: CrawlConfig, fetcher: Fetcher) -> None:
        self.cfg = cfg
        self.fetcher = fetcher
        self._pages: dict[str, Page | PageUnusable] = {}
        self._renderer: Renderer | None = None
        self.render_warning = render_check(cfg)  # raises for `always` without Chromium
        if self.render_warning:
            logger.warning(self.render_warning)

    def __enter__(self) -> PageLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._renderer is not None:
            self._renderer.close()

    def load(self, url: str) -> Page:
        """The page at `url`, or PageUnusable."""
        if url not in self._pages:
            try:
                self._pages[url] = self._read(url)
            except PageUnusable as exc:
                self._pages[url] = exc
        found = self._pages[url]
        if isinstance(found, PageUnusable):
            raise found
        return found

    def _read(self, url: str) -> Page:
        try:
            response = self.fetcher.get(url)
        except CrawlRefused as exc:
            raise PageUnusable("skipped", f"{exc.rule}: {exc}") from None
        except FetchFailed as exc:
            raise PageUnusable("error", f"{exc.kind}: {exc}") from None
        problem = page_problem(response)
        if problem:
            raise PageUnusable("error", problem)
        header_rules = directives(response.headers.get_list("x-robots-tag"), self.cfg.robots_token)
        if blocking(header_rules):
            raise PageUnusable("skipped", f"X-Robots-Tag: {blocking(header_rules)}")
        parsed = parse_page(response.body, response.url, self.cfg.preferred_width)
        meta_rules = directives(parsed.robots_meta, self.cfg.robots_token)
        if blocking(meta_rules):
            raise PageUnusable("skipped", f"<meta name=robots>: {blocking(meta_rules)}")
        page = Page(response.url, parsed, header_rules | meta_rules)
        if self._needs_rendering(parsed):
            self._render(page, response)
        return page

    def _needs_rendering(self, parsed: ParsedPage) -> bool:
        if self.cfg.render == "always":
            return True
        return self.cfg.render == "auto" and parsed.app_shell and not any(not c.in_chrome for c in parsed.candidates)

    def _render(self, page: Page, response: Response) -> None:
        if self.render_warning:
            page.render_problem = f"an application shell, not rendered: {self.render_warning}"
            return
        if self._renderer is None:
            self._renderer = Renderer(self.cfg, self.fetcher)
        try:
            rendered = self._renderer.render(response.url, response.body, response.headers.get("content-type", ""))
        except RenderFailed as exc:
            page.render_problem = f"rendering failed: {exc}"
            return
        parsed = parse_page(rendered.html, response.url, self.cfg.preferred_width)
        meta_rules = directives(parsed.robots_meta, self.cfg.robots_token)
        if blocking(meta_rules):  # a script may add the directive; it binds us all the same
            raise PageUnusable("skipped", f"<meta name=robots> in the rendered page: {blocking(meta_rules)}")
        page.parsed, page.rendered, page.rules = parsed, rendered, page.rules | meta_rules

"""Crawling one company: its pages, their candidate pictures, the downloads, the verdicts, the crawl state."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline import layout
from pipeline.config import CrawlConfig, Settings
from pipeline.ingest.crawl.classify import Facts, FactsCache, n_faces, pre_fetch_refusal, shape_problem, verdict
from pipeline.ingest.crawl.discover import discover
from pipeline.ingest.crawl.extract import Candidate
from pipeline.ingest.crawl.http import CrawlRefused, Fetcher, FetchFailed
from pipeline.ingest.crawl.pages import PageLoader, PageUnusable
from pipeline.ingest.crawl.robots import RobotsBook, blocking, directives
from pipeline.ingest.crawl.sites import SiteEntry
from pipeline.warehouse import Warehouse

logger = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class CompanyCrawl:
    manifest: list[dict[str, str]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Pending:
    candidate: Candidate
    page_url: str
    facts: Facts | None = None
    data: bytes | None = None
    used_url: str = ""
    status: str = ""
    reason: str = ""
    validators: dict[str, str] = field(default_factory=dict)


def crawl_company(site: SiteEntry, settings: Settings, warehouse: Warehouse, run_date: str) -> CompanyCrawl:
    """Crawl one company's pages into the warehouse under `settings.crawl` (the sites file's overrides
    already applied: `sites.with_site_overrides`)."""
    cfg = settings.crawl
    result = CompanyCrawl()

    def log(
        kind: str, url: str, page: str, status: str, reason: str, candidate: Candidate | None = None, image: str = "", n_bytes: int = 0
    ) -> None:
        result.log.append(
            {
                "company": site.name,
                "kind": kind,
                "url": url,
                "source_url": page,
                "status": status,
                "reason": reason,
                "person": candidate.person if candidate else "",
                "role": candidate.role if candidate else "",
                "alt": candidate.alt if candidate else "",
                "image": image,
                "n_bytes": n_bytes,
            }
        )

    if any(site.name.casefold() == name.casefold() for name in cfg.opt_out.companies):
        for url in site.where:  # nothing is requested, not even the page
            log("page", url, "", "skipped", "opt-out: company (crawl.opt_out.companies)")
        return result

    previous = warehouse.read_json(layout.crawl_state(site.name)) if warehouse.exists(layout.crawl_state(site.name)) else {}
    known: dict[str, dict] = previous.get("images", {}) if previous.get("version") == STATE_VERSION else {}
    pending: list[_Pending] = []

    with Fetcher(cfg) as fetcher, PageLoader(cfg, fetcher) as loader:
        robots = RobotsBook(fetcher)
        fetcher.robots_check = robots.check
        urls = list(site.urls)
        if site.domain:
            discovery = discover(site, cfg, loader, robots)
            for row in discovery.log:
                log(*row)
            urls += [url for url in discovery.chosen if url not in urls]
        _collect_candidates(urls, cfg, loader, pending, log)
        todo = [item for item in pending if not item.status]
        import cv2  # noqa: F401 - first import here, not in the pool: cv2's loader is not safe to run from several threads at once

        facts_cache = FactsCache()
        with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
            list(pool.map(lambda item: _download(item, fetcher, settings, facts_cache, known.get(item.candidate.url)), todo))
        _decide(pending, cfg)
        # A picture kept earlier and answered 304 now, whose stored copy retention has removed, is
        # fetched again in full: the manifest must point at bytes that exist.
        missing = [item for item in pending if item.status == "kept" and item.data is None and not _object_exists(item, known, warehouse)]
        with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
            list(pool.map(lambda item: _download(item, fetcher, settings, facts_cache, None), missing))
        _decide(pending, cfg)

    state_images: dict[str, dict] = {}
    for item in pending:
        candidate, key = item.candidate, ""
        if item.status == "kept" and item.facts is not None:
            key = _store(item, known, warehouse, settings, run_date)
            image_uri = warehouse.uri(key)
            result.manifest.append(
                {
                    "company": site.name,
                    "image": image_uri,
                    "image_url": item.used_url or candidate.url,
                    "person": candidate.person,
                    "source_url": item.page_url,
                }
            )
            log("image", item.used_url or candidate.url, item.page_url, "kept", item.reason, candidate, image_uri, item.facts.n_bytes)
        else:
            log(
                "image",
                item.used_url or candidate.url,
                item.page_url,
                item.status,
                item.reason,
                candidate,
                "",
                item.facts.n_bytes if item.facts else 0,
            )
        if item.facts is not None and item.validators and not item.facts.error_kind:
            state_images[candidate.url] = {
                **item.validators,
                "url": item.used_url,
                "facts": asdict(item.facts),
                "object": key,
            }
    warehouse.write_json(
        layout.crawl_state(site.name), {"version": STATE_VERSION, "company": site.name, "run_date": run_date, "images": state_images}
    )
    return result


def _collect_candidates(urls: list[str], cfg: CrawlConfig, loader: PageLoader, pending: list[_Pending], log) -> None:  # noqa: ANN001
    queue, visited, seen_images = list(urls), set(), set()
    while queue and len(visited) < cfg.max_pages_per_site:
        page_url = queue.pop(0)
        if page_url in visited:
            continue
        visited.add(page_url)
        try:
            page = loader.load(page_url)
        except PageUnusable as exc:
            log("page", page_url, "", exc.status, exc.reason)
            continue
        log("page", page_url, "", "crawled", page.summary)
        for url, reason in page.rendered.refused if page.rendered else []:
            log("render", url, page.url, "skipped", reason)
        to_fetch = 0
        for candidate in page.parsed.candidates:
            if candidate.url in seen_images:
                continue  # the same picture on page 1 and page 2 is one candidate
            seen_images.add(candidate.url)
            item = _Pending(candidate, page.url)
            if refusal := pre_fetch_refusal(candidate, cfg):
                item.status, item.reason = refusal
            elif to_fetch >= cfg.max_images_per_page:
                item.status, item.reason = (
                    "skipped",
                    f"page_image_cap: more than crawl.max_images_per_page={cfg.max_images_per_page} pictures to fetch on the page",
                )
            else:
                to_fetch += 1
            pending.append(item)
        if cfg.follow_pagination and not ({"nofollow", "none"} & page.rules):
            queue.extend(url for url in page.parsed.next_pages if url not in visited)


def _download(item: _Pending, fetcher: Fetcher, settings: Settings, facts_cache: FactsCache, earlier: dict | None) -> None:
    """Fetch the first usable URL of a candidate (srcset fallbacks when one is too large)."""
    cfg = fetcher.cfg
    for url in item.candidate.urls:
        validators = (
            {k: earlier[k] for k in ("etag", "last_modified") if earlier and earlier.get(k)}
            if earlier and earlier.get("url") == url
            else {}
        )
        try:
            response = fetcher.get(url, validators=validators or None, max_bytes=min(cfg.max_bytes_per_response, settings.intake.max_bytes))
        except CrawlRefused as exc:
            item.status, item.reason, item.used_url = "skipped", f"{exc.rule}: {exc}", url
            return
        except FetchFailed as exc:
            item.status, item.reason, item.used_url = "error", f"{exc.kind}: {exc}", url
            if exc.kind == "too_large" and url != item.candidate.urls[-1]:
                continue  # a smaller size from the srcset may fit the byte budget
            return
        item.used_url = url
        if response.not_modified and earlier:
            item.facts = Facts(**earlier["facts"])
            item.validators = validators
            item.status = item.reason = ""
            return
        if response.status >= 400:
            item.status, item.reason = "error", f"HTTP {response.status}"
            return
        rules = blocking(directives(response.headers.get_list("x-robots-tag"), cfg.robots_token))
        if rules:
            item.status, item.reason = "skipped", f"X-Robots-Tag on the picture: {rules}"
            return
        if response.content_type in ("image/svg+xml",):
            item.status, item.reason = "rejected", "SVG: vector graphics are logos and icons, not photographs"
            return
        item.facts = facts_cache.examine(response.body, url, settings)
        item.data = response.body
        item.validators = {
            k: v for k, v in (("etag", response.headers.get("etag")), ("last_modified", response.headers.get("last-modified"))) if v
        }
        item.status = item.reason = ""
        return


def _decide(pending: list[_Pending], cfg: CrawlConfig) -> None:
    cards: dict[str, list[bool]] = {}
    for item in pending:
        if item.facts is not None and item.candidate.card and not item.facts.error_kind and shape_problem(item.facts, cfg) is None:
            cards.setdefault(item.candidate.card, []).append(n_faces(item.facts, cfg) > 0)
    for item in pending:
        if item.facts is None or (item.status and item.status != "kept"):
            continue
        with_faces = cards.get(item.candidate.card, [])
        share = sum(with_faces) / len(with_faces) if with_faces else 0.0
        item.status, item.reason = verdict(item.facts, item.candidate, cfg, share)
        if item.data is None and item.status == "kept":
            item.reason += " (unchanged since the last crawl: conditional GET, no bytes downloaded)"


def _object_exists(item: _Pending, known: dict[str, dict], warehouse: Warehouse) -> bool:
    key = (known.get(item.candidate.url) or {}).get("object", "")
    return bool(key) and warehouse.exists(key)


def _store(item: _Pending, known: dict[str, dict], warehouse: Warehouse, settings: Settings, run_date: str) -> str:
    from pipeline.ingest.intake import store_original

    if item.data is None:
        return known[item.candidate.url]["object"]
    facts = item.facts
    assert facts is not None
    return store_original(warehouse, settings.privacy, run_date, facts.sha256, facts.extension, item.data)

"""Crawl stage: `sites.yaml` -> a manifest for intake, plus a log of every candidate image.

For each company: fetch its team page(s) politely and safely (`http.py`, `robots.py`), find the
candidate pictures in the markup (`extract.py`), drop what is not a headshot (size, aspect ratio,
site chrome, card structure, a face check), and download what is left into the warehouse, where
intake reads it. Every candidate gets one log row: `kept`, `skipped` (a rule said no: robots,
noai, opt-out, private address, caps), `rejected` (not a headshot) or `error` (could not be fetched
or decoded), with the reason in words.

A nightly rerun sends conditional GETs: an unchanged picture (304) costs no bytes, and what was
learnt from it (size, faces) is reused from the crawl state, so no picture is kept just to be
re-checked. Rejected pictures are never stored.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.config import CrawlConfig, Settings
from pipeline.crawl.extract import Candidate, parse_page
from pipeline.crawl.http import CrawlRefused, Fetcher, FetchFailed, Response
from pipeline.crawl.robots import RobotsBook, blocking, directives
from pipeline.warehouse import Warehouse

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["company", "image", "image_url", "person", "source_url"]
LOG_COLUMNS = ["company", "kind", "url", "source_url", "status", "reason", "person", "role", "alt", "image", "n_bytes"]
STATE_VERSION = 1
HTML_TYPES = ("text/html", "application/xhtml+xml")


class SitesError(ValueError):
    """sites.yaml cannot be used; the message says where and why."""


class SiteEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    urls: list[str] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("company name is empty")
        return value


class SitesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    companies: list[SiteEntry] = Field(min_length=1)
    crawl: dict[str, Any] = Field(default_factory=dict)

    @field_validator("companies")
    @classmethod
    def _unique(cls, companies: list[SiteEntry]) -> list[SiteEntry]:
        names = [company.name.casefold() for company in companies]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"company names must be unique, repeated: {', '.join(repeated)}")
        return companies

    def company(self, name: str) -> SiteEntry:
        for entry in self.companies:
            if entry.name == name:
                return entry
        raise SitesError(f"no company named {name!r} in sites.yaml")


def load_sites(path: str | Path) -> SitesFile:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SitesError(f"sites file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SitesError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SitesError(f"{path}: expected a mapping with a 'companies' list")
    try:
        sites = SitesFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors())
        raise SitesError(f"{path}: {problems}") from None
    return sites


def crawl_settings(settings: Settings, sites: SitesFile) -> CrawlConfig:
    """The crawl config with the sites file's `crawl:` overrides applied (and validated)."""
    merged = settings.crawl.model_dump()
    for key, value in sites.crawl.items():
        if key == "opt_out" and isinstance(value, dict):
            merged["opt_out"] = {**merged["opt_out"], **value}
        else:
            merged[key] = value
    try:
        return CrawlConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"crawl.{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors())
        raise SitesError(f"sites file crawl overrides: {problems}") from None


def company_slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:40] or "company"
    return f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"  # names that slug alike stay apart


def normalise_name(name: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


# ------------------------------------------------------------------ per-picture facts and verdicts
@dataclass
class Facts:
    """What one download told us; kept in the crawl state so an unchanged picture needs no bytes."""

    sha256: str = ""
    extension: str = ""
    width: int = 0
    height: int = 0
    face_scores: list[float] = field(default_factory=list)
    error_kind: str = ""
    error: str = ""
    n_bytes: int = 0


class FactsCache:
    """Facts by content hash within one crawl: a picture used on many cards is examined once."""

    def __init__(self) -> None:
        self._facts: dict[str, Facts] = {}
        self._lock = threading.Lock()

    def examine(self, data: bytes, url: str, settings: Settings) -> Facts:
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            known = self._facts.get(sha)
        if known is None:
            known = examine(data, url, settings, sha)
            with self._lock:
                self._facts[sha] = known
        return Facts(**asdict(known))


def examine(data: bytes, url: str, settings: Settings, sha256: str = "") -> Facts:
    from pipeline.faces import detect_faces
    from pipeline.intake import IntakeError, decode_image

    facts = Facts(sha256=sha256 or hashlib.sha256(data).hexdigest(), n_bytes=len(data))
    try:
        decoded = decode_image(data, urlsplit(url).path.rsplit("/", 1)[-1], settings.intake)
    except IntakeError as exc:
        facts.error_kind, facts.error = exc.kind, str(exc)
        return facts
    facts.extension, (facts.width, facts.height) = decoded.extension, decoded.rgb.size
    if _shape_problem(facts, settings.crawl) is None:  # the face check is the costly part: only where it can matter
        facts.face_scores = [round(face.score, 4) for face in detect_faces(decoded.rgb, score_floor=0.5)]
    return facts


def _shape_problem(facts: Facts, cfg: CrawlConfig) -> str | None:
    if min(facts.width, facts.height) < cfg.min_side:
        return f"{facts.width}x{facts.height} is smaller than crawl.min_side={cfg.min_side}: an icon, not a headshot"
    aspect = facts.width / facts.height
    if aspect < cfg.min_aspect:
        return f"aspect ratio {aspect:.2f} is below crawl.min_aspect={cfg.min_aspect}: a vertical strip, not a headshot"
    if aspect > cfg.max_aspect:
        return f"aspect ratio {aspect:.2f} is above crawl.max_aspect={cfg.max_aspect}: a banner, not a headshot"
    return None


def n_faces(facts: Facts, cfg: CrawlConfig) -> int:
    return sum(score >= cfg.face_score_floor for score in facts.face_scores)


def verdict(facts: Facts, candidate: Candidate, cfg: CrawlConfig, card_face_share: float) -> tuple[str, str]:
    if facts.error_kind == "not_an_image":
        return "rejected", facts.error
    if facts.error_kind:
        return "error", f"{facts.error_kind}: {facts.error}"
    problem = _shape_problem(facts, cfg)
    if problem:
        return "rejected", problem
    faces = n_faces(facts, cfg)
    if faces == 1:
        return "kept", "face found"
    if faces > 1:
        return "kept", f"{faces} faces found: the largest is the subject"
    if candidate.card and card_face_share >= 0.5:
        # Detectors miss some real headshots (profile views, sunglasses, small faces); a picture in
        # a staff grid whose other pictures are faces is one of them, not a logo.
        return "kept", f"no face found, kept as one of a repeated card group whose photos are {card_face_share:.0%} faces"
    return "rejected", "no face found (not in a card group of faces)"


def pre_fetch_refusal(candidate: Candidate, cfg: CrawlConfig) -> tuple[str, str] | None:
    """Decisions the markup alone supports, made before any request for the picture."""
    if candidate.person and any(normalise_name(candidate.person) == normalise_name(p) for p in cfg.opt_out.persons):
        return "skipped", "opt-out: person (crawl.opt_out.persons)"
    url = candidate.url
    if url.startswith("data:"):
        return "rejected", "inline data: URI (placeholders and icons); not fetched"
    if urlsplit(url).path.lower().endswith((".svg", ".svgz")):
        return "rejected", "SVG: vector graphics are logos and icons, not photographs"
    if candidate.in_chrome:
        return "rejected", "in the page's header, navigation or footer: logos and icons, not staff photos"
    width, height = candidate.declared_width, candidate.declared_height
    if width is not None and height is not None and max(width, height) < cfg.min_side:
        return "rejected", f"declared {width}x{height}: a tracking pixel or icon"
    return None


# ------------------------------------------------------------------ crawling one company
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


def state_key(company: str) -> str:
    return f"crawl/state/{company_slug(company)}.json"


def crawl_company(
    site: SiteEntry, settings: Settings, cfg: CrawlConfig, warehouse: Warehouse, run_date: str
) -> CompanyCrawl:
    result = CompanyCrawl()

    def log(kind: str, url: str, page: str, status: str, reason: str, candidate: Candidate | None = None, image: str = "", n_bytes: int = 0) -> None:
        result.log.append({
            "company": site.name, "kind": kind, "url": url, "source_url": page, "status": status, "reason": reason,
            "person": candidate.person if candidate else "", "role": candidate.role if candidate else "",
            "alt": candidate.alt if candidate else "", "image": image, "n_bytes": n_bytes,
        })

    if any(site.name.casefold() == name.casefold() for name in cfg.opt_out.companies):
        for url in site.urls:  # nothing is requested, not even the page
            log("page", url, "", "skipped", "opt-out: company (crawl.opt_out.companies)")
        return result

    previous = warehouse.read_json(state_key(site.name)) if warehouse.exists(state_key(site.name)) else {}
    known: dict[str, dict] = previous.get("images", {}) if previous.get("version") == STATE_VERSION else {}
    pending: list[_Pending] = []

    with Fetcher(cfg) as fetcher:
        fetcher.robots_check = RobotsBook(fetcher).check
        _collect_candidates(site, cfg, fetcher, pending, log)
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
            result.manifest.append({
                "company": site.name, "image": image_uri, "image_url": item.used_url or candidate.url,
                "person": candidate.person, "source_url": item.page_url,
            })
            log("image", item.used_url or candidate.url, item.page_url, "kept", item.reason, candidate, image_uri, item.facts.n_bytes)
        else:
            log("image", item.used_url or candidate.url, item.page_url, item.status, item.reason, candidate, "", item.facts.n_bytes if item.facts else 0)
        if item.facts is not None and item.validators and not item.facts.error_kind:
            state_images[candidate.url] = {
                **item.validators, "url": item.used_url, "facts": asdict(item.facts),
                "object": key,
            }
    warehouse.write_json(state_key(site.name), {"version": STATE_VERSION, "company": site.name, "run_date": run_date, "images": state_images})
    return result


def _collect_candidates(site: SiteEntry, cfg: CrawlConfig, fetcher: Fetcher, pending: list[_Pending], log) -> None:  # noqa: ANN001
    queue, visited, seen_images = list(site.urls), set(), set()
    while queue and len(visited) < cfg.max_pages_per_site:
        page_url = queue.pop(0)
        if page_url in visited:
            continue
        visited.add(page_url)
        try:
            response = fetcher.get(page_url)
        except CrawlRefused as exc:
            log("page", page_url, "", "skipped", f"{exc.rule}: {exc}")
            continue
        except FetchFailed as exc:
            log("page", page_url, "", "error", f"{exc.kind}: {exc}")
            continue
        problem = _page_problem(response)
        if problem:
            log("page", page_url, "", "error", problem)
            continue
        header_rules = directives(response.headers.get_list("x-robots-tag"), cfg.robots_token)
        if blocking(header_rules):
            log("page", page_url, "", "skipped", f"X-Robots-Tag: {blocking(header_rules)}")
            continue
        parsed = parse_page(response.body, response.url, cfg.preferred_width)
        meta_rules = directives(parsed.robots_meta, cfg.robots_token)
        if blocking(meta_rules):
            log("page", page_url, "", "skipped", f"<meta name=robots>: {blocking(meta_rules)}")
            continue
        log("page", page_url, "", "crawled", f"{len(parsed.candidates)} candidate pictures")
        to_fetch = 0
        for candidate in parsed.candidates:
            if candidate.url in seen_images:
                continue  # the same picture on page 1 and page 2 is one candidate
            seen_images.add(candidate.url)
            item = _Pending(candidate, response.url)
            if refusal := pre_fetch_refusal(candidate, cfg):
                item.status, item.reason = refusal
            elif to_fetch >= cfg.max_images_per_page:
                item.status, item.reason = "skipped", f"page_image_cap: more than crawl.max_images_per_page={cfg.max_images_per_page} pictures to fetch on the page"
            else:
                to_fetch += 1
            pending.append(item)
        if cfg.follow_pagination and not ({"nofollow", "none"} & (header_rules | meta_rules)):
            queue.extend(url for url in parsed.next_pages if url not in visited)


def _page_problem(response: Response) -> str | None:
    if response.status >= 400:
        return f"HTTP {response.status}"
    if response.status >= 300:
        return f"HTTP {response.status} without a usable Location"
    if response.content_type and response.content_type not in HTML_TYPES:
        return f"not an HTML page (Content-Type {response.content_type})"
    return None


def _download(item: _Pending, fetcher: Fetcher, settings: Settings, facts_cache: FactsCache, earlier: dict | None) -> None:
    """Fetch the first usable URL of a candidate (srcset fallbacks when one is too large)."""
    cfg = fetcher.cfg
    for url in item.candidate.urls:
        validators = {k: earlier[k] for k in ("etag", "last_modified") if earlier and earlier.get(k)} if earlier and earlier.get("url") == url else {}
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
        item.validators = {k: v for k, v in (("etag", response.headers.get("etag")), ("last_modified", response.headers.get("last-modified"))) if v}
        item.status = item.reason = ""
        return


def _decide(pending: list[_Pending], cfg: CrawlConfig) -> None:
    cards: dict[str, list[bool]] = {}
    for item in pending:
        if item.facts is not None and item.candidate.card and not item.facts.error_kind and _shape_problem(item.facts, cfg) is None:
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
    from pipeline.intake import store_original

    if item.data is None:
        return known[item.candidate.url]["object"]
    facts = item.facts
    assert facts is not None
    return store_original(warehouse, settings.privacy, run_date, facts.sha256, facts.extension, item.data)


# ------------------------------------------------------------------ files
def _spreadsheet_safe(value: str) -> str:
    # A scraped name starting with = + - @ would run as a formula when an analyst opens the CSV.
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


def manifest_csv(rows: list[dict[str, str]]) -> bytes:
    """The manifest exactly as crawled (intake reads it back, so no value is altered)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: row[key] for key in MANIFEST_COLUMNS} for row in rows)
    return buffer.getvalue().encode("utf-8")


def log_csv(log: pd.DataFrame) -> bytes:
    """The crawl log for people: scraped text is made safe to open in a spreadsheet."""
    log = log.copy()
    for column in ("person", "role", "alt"):
        log[column] = log[column].fillna("").map(_spreadsheet_safe)
    return log.to_csv(index=False).encode("utf-8")


def log_path_for(manifest_path: str | Path) -> Path:
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(manifest_path.stem + ".crawl-log.csv")



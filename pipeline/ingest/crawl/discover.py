"""Discovery: from a company's domain to its staff pages, politely (the same fetcher, robots rules,
opt-outs and caps as the rest of the crawl).

Where staff pages are found, cheapest first:
1. the home page, and its links (header, navigation, footer and body) whose words or path say team,
   people, leadership, partners, about us, staff, attorneys, faculty, ... (and common translations);
2. the sitemaps robots.txt names, else `/sitemap.xml` (sitemap index files and gzip included): the
   URLs whose path says the same;
3. pages one step further: the links of an "about us" page that are not a staff grid themselves;
4. only where none of that finds a staff grid, a short list of common paths (`/team`, `/people`, ...).

Candidate pages are fetched in order of that evidence, at most `crawl.max_discovery_pages` of them
(the home page included), rendered where `crawl.render` says so, and ranked by how much each looks
like a staff grid: repeated cards (or schema.org Person entries) with a picture and a name. The
chosen ones are the pages with a grid of at least three such cards and no word that marks another
kind of page (blog, news, clients, careers, ...), best first, leaving out a page whose pictures the
chosen ones already show. Every source tried and every page fetched gets a `discovery` row in the
crawl log with where it was found and its score; a company whose discovery finds nothing gets a row
that says what was tried.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pipeline.config import CrawlConfig
from pipeline.ingest.crawl.extract import MIN_CARD_REPEATS, ParsedPage
from pipeline.ingest.crawl.http import CrawlRefused, FetchFailed
from pipeline.ingest.crawl.pages import Page, PageLoader, PageUnusable
from pipeline.ingest.crawl.robots import RobotsBook
from pipeline.ingest.crawl.sites import SiteEntry

# Words of a link or a path that point at staff pages: 3 = the page is about the people, 1 = a page
# that often holds or links them ("about us"). Accents are stripped before matching.
STAFF_WORDS: dict[str, int] = {
    **dict.fromkeys((
        "team", "our team", "meet the team", "the team", "people", "our people", "staff", "leadership", "leaders", "management",
        "partners", "attorneys", "lawyers", "faculty", "board", "founders", "employees", "experts", "our experts", "who is who",
        "equipe", "notre equipe", "direction", "associes", "avocats",  # French
        "mitarbeiter", "mitarbeitende", "unser team", "geschaftsfuhrung", "ansprechpartner", "anwalte", "personen",  # German
        "equipo", "nuestro equipo", "personal", "socios", "abogados", "directiva",  # Spanish
        "nossa equipe", "lideranca", "advogados",  # Portuguese
        "il nostro team", "persone", "soci", "avvocati",  # Italian
        "medewerkers", "ons team", "mensen",  # Dutch
    ), 3),
    **dict.fromkeys((
        "about", "about us", "who we are", "company", "our company", "firm", "our firm",
        "a propos", "qui sommes nous", "uber uns", "ueber uns", "quienes somos", "sobre nosotros", "quem somos", "sobre nos",
        "chi siamo", "over ons",
    ), 1),
}  # fmt: skip
# Words that mark another kind of page, even one with a grid of named pictures (authors, clients, products).
OTHER_WORDS = (
    "blog", "news", "press", "article", "articles", "careers", "career", "jobs", "vacancies", "contact", "privacy", "terms", "cookies",
    "login", "cart", "shop", "store", "products", "product", "pricing", "clients", "customers", "case studies", "events", "portfolio",
)  # fmt: skip
COMMON_PATHS = ("/team", "/our-team", "/people", "/about/team", "/about-us/team", "/leadership", "/staff", "/about-us", "/about")
MAX_SITEMAPS = 8  # sitemap files read per company (an index and its children)
MAX_SITEMAP_BYTES = 50_000_000  # the sitemap protocol's own limit for one file, uncompressed
MIN_NAMED_CARDS = 3  # a grid of this many cards with a picture and a name is a staff grid
COVERED = 0.8  # a page whose pictures are this much on chosen pages adds nothing


def _words(text: str) -> str:
    """Lower case, accents stripped, every run of non-letters one space: 'Über-uns' -> 'uber uns'."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " " + " ".join(re.findall(r"[a-z0-9]+", plain)) + " "


def _has(words: str, phrase: str) -> bool:
    return f" {phrase} " in words


def hint(text: str, path: str) -> int:
    """How strongly a link's words and its path point at a staff page (negative: another kind of page)."""
    score = 0
    for source in (_words(text), _words(path)):
        if any(_has(source, word) for word in OTHER_WORDS):
            return -1
        score += max((weight for phrase, weight in STAFF_WORDS.items() if _has(source, phrase)), default=0)
    return score


@dataclass
class Lead:
    url: str
    hint: int
    found: list[str] = field(default_factory=list)  # where, in words


@dataclass
class Discovery:
    chosen: list[str] = field(default_factory=list)
    log: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # (kind, url, page, status, reason)


def staff_grid(parsed: ParsedPage) -> tuple[int, int]:
    """(cards with a picture, of which named) of the page's largest repeated card structure (or its
    schema.org Person entries), outside site chrome."""
    groups: dict[str, list] = defaultdict(list)
    for candidate in parsed.candidates:
        key = candidate.card or ("json-ld" if candidate.source == "json-ld" else "")
        if key and not candidate.in_chrome:
            groups[key].append(candidate)
    best = max(groups.values(), key=lambda group: (sum(bool(c.person) for c in group), len(group)), default=[])
    return len(best), sum(bool(c.person) for c in best)


def _same_site(url: str, origin: str) -> bool:
    """Whether `url` is on the company's site: the origin's host with or without `www.`, either
    scheme, the same port where one is written."""
    parts, home = urlsplit(url), urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or not home.hostname:
        return False

    def host(name: str) -> str:
        return name.lower().rstrip(".").removeprefix("www.")

    def port(split) -> int | None:  # noqa: ANN001
        return None if split.port in (None, 80, 443) else split.port

    return host(parts.hostname) == host(home.hostname) and port(parts) == port(home)


def _sitemap_locations(body: bytes) -> tuple[bool, list[str]]:
    """(is a sitemap index, the <loc> URLs) of a sitemap file, gzip-compressed or not."""
    from lxml import etree

    if body[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        body = inflater.decompress(body, MAX_SITEMAP_BYTES)
        if inflater.unconsumed_tail:
            raise ValueError(f"decompresses to more than {MAX_SITEMAP_BYTES} bytes")
    # No entities, no network, no huge trees: a sitemap is data from a stranger.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, recover=True)
    root = etree.fromstring(body, parser)
    if root is None:
        raise ValueError("not XML")
    name = etree.QName(root).localname
    locations = [(element.text or "").strip() for element in root.iter("{*}loc")]
    return name == "sitemapindex", [location for location in locations if location]


def discover(site: SiteEntry, cfg: CrawlConfig, loader: PageLoader, robots: RobotsBook) -> Discovery:
    """The company's staff pages, found from `site.domain`; every step logged in `Discovery.log`."""
    result = Discovery()

    def note(url: str, status: str, reason: str, page: str = "") -> None:
        result.log.append(("discovery", url, page, status, reason))

    leads: dict[str, Lead] = {}

    def lead(url: str, strength: int, where: str) -> None:
        url = url.split("#", 1)[0]
        if strength < 0 or not _same_site(url, origin):
            return
        entry = leads.setdefault(url, Lead(url, strength))
        entry.hint = max(entry.hint, strength)
        if where not in entry.found:
            entry.found.append(where)

    home: Page | None = None
    tried: list[str] = []
    for origin in site.origins:  # never empty: discovery runs for a company with a domain
        try:
            home = loader.load(origin + "/")
            break
        except PageUnusable as exc:
            note(origin + "/", exc.status, f"home page: {exc.reason}")
            tried.append(f"home page {origin}/ ({exc.reason})")
            if not exc.reason.startswith("network"):
                break  # the server answered: the other scheme would not answer differently
    fetched: dict[str, Page | None] = {}  # None: tried, unusable
    if home is not None:
        origin = f"{urlsplit(home.url).scheme}://{urlsplit(home.url).netloc}"
        lead(home.url, 0, "home page")
        fetched[home.url] = home
        pointing = 0
        for link in home.parsed.links:
            strength = hint(link.text, urlsplit(link.url).path)
            if strength > 0 and _same_site(link.url, origin):
                pointing += 1
                lead(link.url, strength, f"home page {link.place} link {link.text[:60]!r}")
        tried.append(f"home page ({pointing} link(s) that look like staff pages)")

    _read_sitemaps(origin, cfg, loader, robots, lead, note, tried)

    budget = cfg.max_discovery_pages - len(fetched)
    common_tried = False
    while True:
        waiting = [entry for url, entry in leads.items() if url not in fetched]
        if not waiting or budget <= 0:
            if not common_tried and budget > 0 and not any(_qualifies(p) and _hint_of(p, leads) > 0 for p in fetched.values() if p):
                common_tried = True
                for path in COMMON_PATHS:
                    lead(origin + path, 1, "common path")
                tried.append(f"{len(COMMON_PATHS)} common paths ({', '.join(COMMON_PATHS)})")
                continue
            break
        entry = max(waiting, key=lambda e: (e.hint, len(e.found), -len(e.url)))
        budget -= 1
        try:
            page = loader.load(entry.url)
        except PageUnusable as exc:
            fetched[entry.url] = None
            note(entry.url, _status_of(exc.reason, exc.status), f"found: {'; '.join(entry.found)}; {exc.reason}")
            continue
        fetched[entry.url] = page
        if page.url != entry.url:
            fetched[page.url] = page
        if not _qualifies(page) and entry.hint > 0:
            for link in page.parsed.links:  # an "about us" page that links the team page
                strength = hint(link.text, urlsplit(link.url).path)
                if strength >= 3:
                    lead(link.url, strength, f"linked from {entry.url} as {link.text[:60]!r}")

    not_fetched = [url for url in leads if url not in fetched]
    _choose(fetched, leads, result, note)
    if not_fetched:
        note(
            origin, "skipped", f"{len(not_fetched)} more candidate page(s) not fetched: crawl.max_discovery_pages={cfg.max_discovery_pages}"
        )
    if not result.chosen:
        looked = sum(1 for page in fetched.values() if page is not None)
        note(origin, "error", f"no staff page found on {site.domain}: tried {'; '.join(tried)}; {looked} page(s) read, none a staff grid")
    return result


def _status_of(reason: str, status: str) -> str:
    """A guessed or listed URL that is not there is what discovery expects to meet: `not found`, not an error."""
    return "not found" if reason in ("HTTP 404", "HTTP 410") else status


def _qualifies(page: Page | None) -> bool:
    """Whether the page holds a staff grid: enough cards with a picture and a name."""
    if page is None:
        return False
    n, named = staff_grid(page.parsed)
    return n >= MIN_CARD_REPEATS and named >= MIN_NAMED_CARDS


def _hint_of(page: Page, leads: dict[str, Lead]) -> int:
    return leads[page.url].hint if page.url in leads else 0


def _choose(fetched: dict[str, Page | None], leads: dict[str, Lead], result: Discovery, note) -> None:  # noqa: ANN001
    pages = {id(page): page for page in fetched.values() if page is not None}.values()  # a redirect's page once
    # A grid of named pictures on a page that nothing calls a staff page (the home page's services
    # or clients) is chosen only where no page that is called one holds a grid: a one-page site.
    named_pages_exist = any(_qualifies(page) and _hint_of(page, leads) > 0 for page in pages)

    def score(page: Page) -> float:
        n, named = staff_grid(page.parsed)
        return named + 0.5 * (n - named) + _hint_of(page, leads)

    shown: set[str] = set()
    for page in sorted(pages, key=lambda p: (-score(p), p.url)):
        entry = leads.get(page.url) or Lead(page.url, 0, ["a redirect"])
        n, named = staff_grid(page.parsed)
        pictures = {c.url for c in page.parsed.candidates if not c.in_chrome}
        where = f"found: {'; '.join(entry.found)}; staff grid: {n} cards with a picture, {named} with a name; score {score(page):.1f}"
        if page.rendered is not None:
            where += "; rendered"
        if not _qualifies(page):
            note(page.url, "not chosen", f"{where}; not a staff grid (at least {MIN_NAMED_CARDS} named cards with a picture)")
        elif named_pages_exist and entry.hint <= 0:
            note(page.url, "not chosen", f"{where}; nothing calls it a staff page, and pages that are called one hold a grid")
        elif pictures and len(pictures & shown) >= COVERED * len(pictures):
            note(page.url, "not chosen", f"{where}; its pictures are on a chosen page already")
        else:
            result.chosen.append(page.url)
            shown |= pictures
            note(page.url, "chosen", where)


def _read_sitemaps(origin: str, cfg: CrawlConfig, loader: PageLoader, robots: RobotsBook, lead, note, tried: list[str]) -> None:  # noqa: ANN001
    try:
        named = robots.sitemaps(origin + "/")
    except CrawlRefused as exc:
        note(origin + "/robots.txt", "skipped", f"{exc.rule}: {exc}")
        named = []
    queue = list(dict.fromkeys(named)) or [origin + "/sitemap.xml"]
    tried.append(f"robots.txt sitemaps ({len(named)})" if named else "/sitemap.xml (robots.txt names none)")
    read = 0
    while queue and read < MAX_SITEMAPS:
        url = queue.pop(0)
        read += 1
        try:
            response = loader.fetcher.get(url, max_bytes=min(cfg.max_bytes_per_response, MAX_SITEMAP_BYTES))
            if response.status >= 400:
                raise FetchFailed("http", f"HTTP {response.status}")
            is_index, locations = _sitemap_locations(response.body)
        except CrawlRefused as exc:
            note(url, "skipped", f"sitemap: {exc.rule}: {exc}")
            continue
        except FetchFailed as exc:
            note(url, _status_of(str(exc), "error"), f"sitemap: {exc}")
            continue
        except (ValueError, SyntaxError) as exc:  # lxml's XMLSyntaxError is a SyntaxError
            note(url, "error", f"sitemap unreadable: {exc}")
            continue
        if is_index:
            queue += [location for location in locations if location not in queue]
            note(url, "crawled", f"sitemap index: {len(locations)} sitemap(s)")
            continue
        found = 0
        for location in locations:
            strength = hint("", urlsplit(location).path)
            if strength > 0:
                found += 1
                lead(location, strength, f"sitemap {url}")
        note(url, "crawled", f"sitemap: {len(locations)} URLs, {found} whose path looks like a staff page")
    if queue:
        note(origin, "skipped", f"{len(queue)} more sitemap(s) not read: {MAX_SITEMAPS} at most per company")

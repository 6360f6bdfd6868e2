"""robots.txt (parsed by Protego, the parser Scrapy maintains) and robots directives in headers/meta.

robots.txt follows RFC 9309: a 4xx answer means no rules (crawl allowed), a 5xx answer or an
unreachable server means "assume complete disallow" until the next run. `X-Robots-Tag` and
`<meta name="robots">` are read for `noai`, `noimageai` and `noindex` (any of them stops the
collection of a page's or an image's pictures) and `nofollow` (no pagination links are followed).
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from protego import Protego

from pipeline.ingest.crawl.http import CrawlRefused, Fetcher, FetchFailed

BLOCKING_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "none"})
VALUE_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def directives(values: list[str], token: str) -> set[str]:
    """Directives that apply to us from X-Robots-Tag headers or robots meta contents.

    A value may address one crawler ("otherbot: noindex"); only unaddressed values and values
    addressed to our product token count.
    """
    found: set[str] = set()
    token = token.lower()
    for value in values:
        addressed_to = None  # "otherbot: noindex, nofollow": both words are for otherbot
        for part in value.split(","):
            part = part.strip().lower()
            if ":" in part:
                name, _, rest = part.partition(":")
                if name.strip() in VALUE_DIRECTIVES:  # "unavailable_after: <date>" carries a value
                    continue
                addressed_to, part = name.strip(), rest
            if addressed_to in (None, token):
                found.update(part.split())
    return found


def blocking(found: set[str]) -> str | None:
    hit = sorted(found & BLOCKING_DIRECTIVES)
    return ", ".join(hit) if hit else None


class RobotsBook:
    """robots.txt per origin, fetched once per crawl through the site's guarded fetcher."""

    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher
        self.token = fetcher.cfg.robots_token
        self._rules: dict[str, Protego | str] = {}
        self._lock = threading.Lock()

    def _load(self, origin: str) -> Protego | str:
        try:
            response = self.fetcher.get(origin + "/robots.txt", max_bytes=500_000, check_robots=False)
        except FetchFailed as exc:
            return f"robots.txt unreachable ({exc}): treated as disallow-all until the next run"
        except CrawlRefused:
            raise
        if 400 <= response.status < 500:
            return Protego.parse("")
        if response.status >= 500:
            return f"robots.txt answered {response.status}: treated as disallow-all until the next run"
        rules = Protego.parse(response.body.decode("utf-8", errors="replace"))
        delay = rules.crawl_delay(self.token)
        if delay:
            gate = self.fetcher.gate(urlsplit(origin).hostname or "")
            gate.delay = max(gate.delay, min(float(delay), self.fetcher.cfg.max_crawl_delay_s))
        return rules

    def _rules_for(self, url: str) -> tuple[str, Protego | str]:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._lock:  # one robots.txt request per origin, even with parallel downloads
            if origin not in self._rules:
                self._rules[origin] = self._load(origin)
            return origin, self._rules[origin]

    def sitemaps(self, url: str) -> list[str]:
        """The sitemaps that the robots.txt of `url`'s origin names (none where it could not be read)."""
        _, rules = self._rules_for(url)
        return [] if isinstance(rules, str) else list(rules.sitemaps)

    def check(self, url: str) -> None:
        origin, rules = self._rules_for(url)
        if isinstance(rules, str):
            raise CrawlRefused("robots_txt", rules)
        if not rules.can_fetch(url, self.token):
            raise CrawlRefused("robots_txt", f"robots.txt of {origin} disallows this URL for {self.token}")

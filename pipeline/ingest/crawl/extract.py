"""Find profile-image candidates in a team page's markup (BeautifulSoup over lxml; nothing is executed).

What real team pages do, and where the picture then is:
- `<img src>`, or a lazy-loader's `data-src` / `data-lazy-src` / `data-original` with a placeholder
  in `src`; `srcset` / `data-srcset` with width or density descriptors; `<picture><source>`.
- CSS `background-image: url(...)` in an inline style (card layouts often use a div, not an img).
- `<noscript><img></noscript>` fallbacks beside a lazy image (merged with it by URL).
- JSON-LD `Person.image` (schema.org), Open Graph `og:image` on a profile page (`og:type=profile`).

Each candidate keeps the person's name / role / alt text when the markup gives them, and whether it
sits in a repeated "card" structure (the shape of a staff grid) or in site chrome (header, nav,
footer: logos and icons). Every scraped string is untrusted: it is normalised, stripped of control
characters and capped before it goes anywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from bs4 import BeautifulSoup, Tag

from pipeline.ingest.text import clean_text

LAZY_SRC_ATTRIBUTES = ("data-src", "data-lazy-src", "data-lazy", "data-original", "data-url", "data-bg", "data-background-image")
LAZY_SRCSET_ATTRIBUTES = ("data-srcset", "data-lazy-srcset")
CHROME_TAGS = frozenset({"header", "nav", "footer"})
CHROME_ROLES = frozenset({"banner", "navigation", "contentinfo"})
NEXT_TEXTS = frozenset({"next", "next page", "load more", "show more", "more", "older", "›", "»", "→"})
MIN_CARD_REPEATS = 3
_CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)""", re.IGNORECASE)  # CSS value syntax, not HTML


@dataclass
class Candidate:
    urls: list[str]  # preferred first; later ones are smaller fallbacks from a srcset
    source: str  # img, picture, css, noscript, json-ld, og
    person: str = ""
    role: str = ""
    alt: str = ""
    card: str = ""  # key of the repeated card structure it sits in; "" = none
    in_chrome: bool = False
    declared_width: int | None = None
    declared_height: int | None = None

    @property
    def url(self) -> str:
        return self.urls[0]


@dataclass(frozen=True)
class Link:
    url: str  # absolute, without its fragment
    text: str  # the link's words (its text, else aria-label or title), cleaned
    place: str  # "header", "nav", "footer" or "body": where on the page it sits


@dataclass
class ParsedPage:
    candidates: list[Candidate] = field(default_factory=list)
    next_pages: list[str] = field(default_factory=list)
    robots_meta: list[str] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    # Scripts and almost no words outside site chrome: the page is built in the browser.
    app_shell: bool = False


# ------------------------------------------------------------------ srcset
def parse_srcset(value: str) -> list[tuple[str, float, str]]:
    """(url, number, unit) per candidate: unit "w" (width), "x" (density) or "" (none).

    Follows the HTML spec's splitting rule: a URL runs to whitespace, so URLs with commas (image CDNs
    use "w_200,h_200") survive; a candidate ends at a comma outside parentheses.
    """
    results = []
    position, length = 0, len(value)
    while position < length:
        while position < length and (value[position].isspace() or value[position] == ","):
            position += 1
        start = position
        while position < length and not value[position].isspace():
            position += 1
        url = value[start:position]
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            depth, start = 0, position
            while position < length and (value[position] != "," or depth):
                depth += {"(": 1, ")": -1}.get(value[position], 0)
                position += 1
            descriptor = value[start:position].strip()
        if not url:
            continue
        number, unit = 1.0, ""
        match = re.fullmatch(r"([0-9.]+)([wx])", descriptor.split()[0]) if descriptor else None
        if match:
            number, unit = float(match.group(1)), match.group(2)
        results.append((url, number, unit))
    return results


def order_by_preference(options: list[tuple[str, float, str]], preferred_width: int) -> list[str]:
    """The smallest option at least `preferred_width` wide first, then the next smaller ones (byte
    budget fallbacks), then larger ones. Density descriptors count as multiples of the layout width."""
    if not options:
        return []

    def width(option: tuple[str, float, str]) -> float:
        url, number, unit = option
        return number if unit == "w" else number * preferred_width / 2 if unit == "x" else preferred_width / 2

    ranked = sorted(options, key=width)
    wide_enough = [option for option in ranked if width(option) >= preferred_width]
    first = wide_enough[0] if wide_enough else ranked[-1]
    smaller = [option for option in reversed(ranked) if width(option) < width(first)]
    larger = [option for option in ranked if width(option) > width(first)]
    ordered = [first] + smaller + larger
    return list(dict.fromkeys(option[0] for option in ordered))


# ------------------------------------------------------------------ structure
def _signature(tag: Tag) -> tuple[str, tuple[str, ...]]:
    return tag.name, tuple(sorted(tag.get("class") or []))


def card_of(element: Tag, max_depth: int = 6) -> Tag | None:
    """The closest ancestor (or the element) that repeats at least 3 times among its siblings."""
    node: Tag | None = element
    for _ in range(max_depth):
        if node is None or node.parent is None or node.name in ("body", "html", "[document]"):
            return None
        signature = _signature(node)
        repeats = sum(1 for sibling in node.parent.find_all(recursive=False) if _signature(sibling) == signature)
        if repeats >= MIN_CARD_REPEATS:
            return node
        node = node.parent
    return None


def _path(tag: Tag) -> str:
    parts = []
    node: Tag | None = tag
    while node is not None and node.name != "[document]":
        parent = node.parent
        index = 0
        if parent is not None:
            index = [child for child in parent.find_all(recursive=False)].index(node)
        parts.append(f"{node.name}[{index}]")
        node = parent
    return "/".join(reversed(parts))


def in_chrome(element: Tag) -> bool:
    for parent in element.parents:
        if parent.name in CHROME_TAGS or (parent.get("role") or "") in CHROME_ROLES:
            return True
    return False


def _class_has(tag: Tag, words: tuple[str, ...]) -> bool:
    classes = " ".join(tag.get("class") or []).lower()
    return any(word in classes for word in words)


def person_and_role(card: Tag | None) -> tuple[str, str]:
    if card is None:
        return "", ""
    name_tag = card.find(attrs={"itemprop": "name"}) or card.find(
        lambda t: isinstance(t, Tag) and _class_has(t, ("name",)) and t.name != "img"
    )
    if name_tag is None:
        name_tag = card.find(["h1", "h2", "h3", "h4", "h5", "h6", "strong", "figcaption"])
    role_tag = card.find(attrs={"itemprop": "jobTitle"}) or card.find(
        lambda t: isinstance(t, Tag) and t is not name_tag and _class_has(t, ("role", "title", "position", "job")) and t.name != "img"
    )
    return clean_text(name_tag.get_text(" ") if name_tag else ""), clean_text(role_tag.get_text(" ") if role_tag else "")


def _int_attr(tag: Tag, name: str) -> int | None:
    value = str(tag.get(name) or "").strip().removesuffix("px")
    return int(value) if value.isdigit() else None


def _is_placeholder(url: str) -> bool:
    lowered = url.lower()
    return lowered.startswith("data:") or any(
        word in lowered for word in ("placeholder", "blank.gif", "spacer.gif", "lazy.gif", "transparent.gif")
    )


# ------------------------------------------------------------------ page
def parse_page(html: bytes | str, page_url: str, preferred_width: int = 800) -> ParsedPage:
    soup = BeautifulSoup(html, "lxml")
    base = page_url
    base_tag = soup.find("base", href=True)
    if base_tag is not None:
        base = urljoin(page_url, str(base_tag["href"]))
    page = ParsedPage()
    by_url: dict[str, Candidate] = {}

    def absolute(url: str) -> str:
        url = url.strip()
        return url if url.startswith("data:") else urljoin(base, url)

    def add(urls: list[str], source: str, element: Tag | None, **extra: object) -> None:
        urls = [absolute(url) for url in urls if url and url.strip()]
        if not urls:
            return
        if urls[0] in by_url:  # the same picture through another route: fill in what was missing
            known = by_url[urls[0]]
            for key in ("person", "role", "alt"):
                if not getattr(known, key) and extra.get(key):
                    setattr(known, key, extra[key])
            return
        card = card_of(element) if element is not None else None
        person, role = person_and_role(card)
        candidate = Candidate(
            urls=list(dict.fromkeys(urls)),
            source=source,
            person=str(extra.get("person") or person),
            role=str(extra.get("role") or role),
            alt=str(extra.get("alt") or ""),
            card=f"{_path(card.parent)}>{'.'.join(_signature(card)[1]) or card.name}"
            if card is not None and card.parent is not None
            else "",
            in_chrome=in_chrome(element) if element is not None else False,
            declared_width=extra.get("width"),  # type: ignore[arg-type]
            declared_height=extra.get("height"),  # type: ignore[arg-type]
        )
        by_url[candidate.url] = candidate
        page.candidates.append(candidate)

    for img in soup.find_all("img"):
        options: list[tuple[str, float, str]] = []
        picture = img.find_parent("picture")  # lxml nests the img inside the (void) <source>: look up, not at the parent
        for source in picture.find_all("source") if picture is not None else []:
            for attribute in ("srcset", *LAZY_SRCSET_ATTRIBUTES):
                options += parse_srcset(str(source.get(attribute) or ""))
        for attribute in (*LAZY_SRCSET_ATTRIBUTES, "srcset"):
            options += parse_srcset(str(img.get(attribute) or ""))
        lazy = next((str(img[a]) for a in LAZY_SRC_ATTRIBUTES if img.get(a)), "")
        src = str(img.get("src") or "")
        single = lazy or ("" if _is_placeholder(src) and options else src)
        urls = order_by_preference(options, preferred_width) + ([single] if single else [])
        source_kind = "picture" if picture is not None else "noscript" if img.find_parent("noscript") else "img"
        add(urls, source_kind, img, alt=clean_text(img.get("alt")), width=_int_attr(img, "width"), height=_int_attr(img, "height"))

    for element in soup.find_all(style=True):
        style = str(element.get("style") or "")
        if "background" not in style.lower():
            continue
        for match in _CSS_URL.finditer(style):
            add([match.group(2)], "css", element, alt=clean_text(element.get("aria-label") or element.get("title")))

    for element in soup.find_all(attrs={"data-bg": True}):
        if element.name != "img":
            add([str(element["data-bg"])], "css", element)

    for script in soup.find_all("script", type="application/ld+json"):
        try:
            data = json.loads(script.string or "")
        except (json.JSONDecodeError, TypeError):
            continue  # broken JSON-LD is common; the rest of the page still counts
        for person in _json_ld_people(data):
            image = person.get("image")
            if isinstance(image, list):
                image = image[0] if image else None
            if isinstance(image, dict):
                image = image.get("contentUrl") or image.get("url")
            if isinstance(image, str):
                add([image], "json-ld", None, person=clean_text(person.get("name")), role=clean_text(person.get("jobTitle")))

    og_type = soup.find("meta", property="og:type")
    og_image = soup.find("meta", property="og:image")
    if og_type is not None and str(og_type.get("content", "")).lower() == "profile" and og_image is not None:
        first = soup.find("meta", property="profile:first_name")
        last = soup.find("meta", property="profile:last_name")
        title = soup.find("meta", property="og:title")
        name = " ".join(str(tag.get("content", "")) for tag in (first, last) if tag is not None) or (
            str(title.get("content", "")) if title else ""
        )
        add([str(og_image.get("content", ""))], "og", None, person=clean_text(name))

    for meta in soup.find_all("meta", attrs={"name": True, "content": True}):
        if str(meta["name"]).lower() in ("robots",) or str(meta["name"]).lower().startswith("profile-homogenization"):
            page.robots_meta.append(str(meta["content"]))

    page.next_pages = _next_pages(soup, base, page_url)
    page.links = _links(soup, base)
    page.app_shell = _looks_like_app_shell(soup)
    return page


def _links(soup: BeautifulSoup, base: str) -> list[Link]:
    links: dict[str, Link] = {}
    for tag in soup.find_all("a", href=True):
        url = urljoin(base, str(tag["href"]).strip()).split("#", 1)[0]
        if urlsplit(url).scheme not in ("http", "https") or url in links:
            continue
        text = clean_text(tag.get_text(" ") or tag.get("aria-label") or tag.get("title"))
        place = next((parent.name for parent in tag.parents if parent.name in CHROME_TAGS), "body")
        links[url] = Link(url, text, place)
    return list(links.values())


_SCRIPT_TYPES = frozenset({"text/javascript", "application/javascript", "module", "text/ecmascript"})
APP_SHELL_MAX_WORDS = 40  # a server-rendered team page has names and roles; a shell has a title and a "loading"


def _looks_like_app_shell(soup: BeautifulSoup) -> bool:
    """A page whose content the browser builds: it has scripts, and under APP_SHELL_MAX_WORDS words
    outside scripts, styles, noscript fallbacks and site chrome. Measured on the parsed tree, so it
    must run last: it removes those elements from it."""
    scripts = [script for script in soup.find_all("script") if str(script.get("type") or "text/javascript").lower() in _SCRIPT_TYPES]
    if not any(script.get("src") or (script.string or "").strip() for script in scripts):
        return False
    for tag in soup.find_all(["script", "style", "noscript", "template", *CHROME_TAGS]):
        tag.decompose()
    body = soup.body or soup
    return len(body.get_text(" ").split()) < APP_SHELL_MAX_WORDS


def _json_ld_people(data: object) -> list[dict]:
    found: list[dict] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            kind = item.get("@type")
            kinds = kind if isinstance(kind, list) else [kind]
            if "Person" in kinds:
                found.append(item)
            stack.extend(reversed([value for value in item.values() if isinstance(value, (list, dict))]))
    return found


def _next_pages(soup: BeautifulSoup, base: str, page_url: str) -> list[str]:
    host = urlsplit(page_url).hostname
    links = []
    for tag in soup.find_all(["a", "link", "button"]):
        href = tag.get("href") or tag.get("data-href") or tag.get("data-next-url")
        if not href:
            continue
        rel = [value.lower() for value in (tag.get("rel") or [])]
        text = clean_text(tag.get_text(" ")).lower()
        if "next" in rel or text in NEXT_TEXTS or _class_has(tag, ("load-more", "loadmore", "next")):
            url = urljoin(base, str(href)).split("#", 1)[0]
            if urlsplit(url).hostname == host and url != page_url:  # pagination stays on the site
                links.append(url)
    return list(dict.fromkeys(links))

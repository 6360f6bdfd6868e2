"""The project's own demo website: the synthetic demo companies' team pages, served on 127.0.0.1.

Each company's page uses a different real-world markup style, so the demo exercises the crawler the
way real sites do: a card grid with a logo in the header and icons in the footer (northwind-legal),
lazy-loaded images with `<noscript>` fallbacks over two paginated pages and a shop banner
(bluebird-bakery), CSS background-image cards with JSON-LD `Person` data (copperleaf-consulting),
and two plain `<figure>`s (tiny-startup). The pictures are the drawings of `pipeline.apps.demo.data`.

`serve()` uses the standard library's static file server, which answers conditional GETs
(If-Modified-Since -> 304), so a second demo run downloads no picture again.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import http.server
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from pipeline.apps.demo.data import jpeg_bytes, write_pictures

FIRST_NAMES = [
    "Avery",
    "Jordan",
    "Riley",
    "Morgan",
    "Casey",
    "Quinn",
    "Rowan",
    "Sasha",
    "Emery",
    "Hayden",
    "Noor",
    "Kai",
    "Elif",
    "Tomás",
    "Aiyana",
    "Zhen",
]
LAST_NAMES = [
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "Haddad",
    "Kowalski",
    "Fernández",
    "Osei",
    "Brennan",
    "Varga",
    "Iqbal",
    "Sørensen",
]
ROLES = ["Partner", "Associate", "Paralegal", "Head of Operations", "Baker", "Pastry Chef", "Consultant", "Analyst", "Founder", "Engineer"]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>{{ head_extra }}</head>
<body>
<header><a href="/"><img src="/img/logo-{{ slug }}.svg" alt="{{ title }} logo" width="120" height="40"></a>
<nav><a href="/">Home</a> <a href="{{ page_url }}">Team</a></nav></header>
<main><h1>{{ title }}</h1>
{{ body }}
</main>
<footer><img src="/img/icon-mail.png" alt="mail" width="24" height="24"><img src="/img/icon-social.png" alt="social" width="24" height="24">
<img src="/img/pixel.gif" width="1" height="1" alt=""></footer>
</body></html>
"""


def _env():
    import jinja2

    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def _person(company: str, file: str) -> dict[str, str]:
    """A made-up name and role for a picture, drawn from its file name: the same person every night."""
    rng = np.random.default_rng(zlib.crc32(f"{company}/{file}".encode()))
    first, last = FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))], LAST_NAMES[int(rng.integers(len(LAST_NAMES)))]
    return {"file": file, "person": f"{first} {last}", "role": ROLES[int(rng.integers(len(ROLES)))]}


def _icons(img_dir: Path, companies: list[str]) -> None:
    for company in companies:
        (img_dir / f"logo-{company}.svg").write_text(
            '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="40"><rect width="120" height="40" fill="#234"/></svg>'
        )
    for name, colour in (("icon-mail.png", (200, 60, 60)), ("icon-social.png", (60, 60, 200))):
        icon = Image.new("RGB", (24, 24), "white")
        ImageDraw.Draw(icon).ellipse([2, 2, 22, 22], fill=colour)
        icon.save(img_dir / name)
    Image.new("RGBA", (1, 1), (0, 0, 0, 0)).save(img_dir / "pixel.gif")
    Image.new("RGB", (8, 8), (230, 230, 230)).save(img_dir / "placeholder.gif")
    banner = Image.new("RGB", (1200, 300), (210, 180, 140))
    ImageDraw.Draw(banner).rectangle([100, 80, 1100, 260], fill=(150, 100, 60))
    (img_dir / "shop-banner.jpg").write_bytes(jpeg_bytes(banner))


def _cards(people: list[dict[str, str]], company: str) -> str:
    env = _env()
    return env.from_string(
        """<section class="team">{% for p in people %}
<article class="card"><img src="/img/{{ company }}/{{ p.file }}" alt="Portrait of {{ p.person }}" width="256" height="320">
<h3 class="name">{{ p.person }}</h3><p class="role">{{ p.role }}</p></article>{% endfor %}
</section>"""
    ).render(people=people, company=company)


def _lazy(people: list[dict[str, str]], company: str) -> str:
    return (
        _env()
        .from_string(
            """<img src="/img/shop-banner.jpg" alt="Our shop" width="1200" height="300">
<ul class="staff">{% for p in people %}
<li class="staff-member"><img class="lazyload" src="/img/placeholder.gif" data-src="/img/{{ company }}/{{ p.file }}" alt="{{ p.person }}">
<noscript><img src="/img/{{ company }}/{{ p.file }}" alt="{{ p.person }}"></noscript>
<span class="name">{{ p.person }}</span> <span class="job-title">{{ p.role }}</span></li>{% endfor %}
</ul>"""
        )
        .render(people=people, company=company)
    )


def _background_cards(people: list[dict[str, str]], company: str) -> tuple[str, str]:
    import json

    graph = {
        "@context": "https://schema.org",
        "@graph": [{"@type": "Person", "name": p["person"], "jobTitle": p["role"], "image": f"/img/{company}/{p['file']}"} for p in people],
    }
    head = '<script type="application/ld+json">' + json.dumps(graph).replace("</", "<\\/") + "</script>"
    body = (
        _env()
        .from_string(
            """<div class="people">{% for p in people %}
<div class="person"><div class="photo" role="img" aria-label="{{ p.person }}" style="background-image: url('/img/{{ company }}/{{ p.file }}')"></div>
<p class="person-name">{{ p.person }}</p><p class="position">{{ p.role }}</p></div>{% endfor %}
</div>"""
        )
        .render(people=people, company=company)
    )
    return head, body


def _figures(people: list[dict[str, str]], company: str) -> str:
    return (
        _env()
        .from_string(
            """{% for p in people %}<figure><img src="/img/{{ company }}/{{ p.file }}" alt="{{ p.person }}"><figcaption>{{ p.person }}, {{ p.role }}</figcaption></figure>
{% endfor %}"""
        )
        .render(people=people, company=company)
    )


def build_demo_site(root: Path, seed: int = 7, night: int = 1) -> dict[str, list[str]]:
    """Write the site as it is on `night` of the demo's story (`pipeline.apps.demo.story`) under `root`,
    over the previous night's; returns company -> its team page paths (site-relative URLs)."""
    from pipeline.apps.demo.story import night_pictures

    root = Path(root)
    img_dir = root / "img"
    manifest = write_pictures(img_dir, night_pictures(night, seed))
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    files: dict[str, list[str]] = {}
    for row in rows:
        files.setdefault(row["company"], []).append(row["image"].split("/", 1)[1])
    _icons(img_dir, list(files))
    env = _env()
    pages: dict[str, list[str]] = {}

    def write(company: str, relative: str, title: str, body: str, head_extra: str = "") -> None:
        from markupsafe import Markup

        path = root / relative.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            env.from_string(_PAGE).render(title=title, slug=company, page_url=relative, body=Markup(body), head_extra=Markup(head_extra)),
            encoding="utf-8",
        )

    for company, names in files.items():
        people = [_person(company, name) for name in names]
        title = company.replace("-", " ").title()
        if company in ("northwind-legal", "alder-architects"):
            pages[company] = [f"/{company}/team.html"]
            write(company, pages[company][0], title, _cards(people, company))
        elif company == "bluebird-bakery":
            half = len(people) // 2
            pages[company] = [f"/{company}/team.html"]
            write(company, f"/{company}/team.html", title, _lazy(people[:half], company) + '<a rel="next" href="team-2.html">Next</a>')
            write(company, f"/{company}/team-2.html", title, _lazy(people[half:], company))
        elif company == "copperleaf-consulting":
            pages[company] = [f"/{company}/about/people.html"]
            head, body = _background_cards(people, company)
            write(company, pages[company][0], title, body, head)
        else:
            pages[company] = [f"/{company}/index.html"]
            write(company, pages[company][0], title, _figures(people, company))
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    links = "".join(f'<li><a href="{urls[0]}">{company}</a></li>' for company, urls in pages.items())
    (root / "index.html").write_text(f"<!doctype html><title>Demo companies</title><ul>{links}</ul>")
    return pages


def write_sites_file(pages: dict[str, list[str]], base_url: str, path: Path) -> Path:
    sites = {
        "companies": [{"name": company, "urls": [base_url + url for url in urls]} for company, urls in pages.items()],
        # The demo site runs on this machine: the private-address guard must let 127.0.0.1 through,
        # and there is no remote server to be polite to.
        "crawl": {"allow_private": ["127.0.0.1"], "min_delay_s": 0, "backoff_s": 0.1},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sites, sort_keys=False))
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(root: Path, port: int = 0) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 (a free port unless given) until the block ends; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, name="demo-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

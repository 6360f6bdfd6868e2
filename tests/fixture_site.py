"""A local website for crawler tests, served on loopback by the tests themselves.

`public` (127.0.0.1) hosts realistic team pages and a hostile part: robots rules, noai headers and
meta, flapping 500s, 429 with Retry-After, slow and stalled responses, redirect loops, huge and
truncated images, wrong content types, links to private addresses, 1,000 images on one page,
`<script>` and odd Unicode in names and alt texts. `internal` (127.0.0.2, also loopback) plays an
internal service: the crawler must never reach it. Both servers log every request they receive.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from pipeline.apps.demo import data as demo_data
from pipeline.features.faces import detect_faces

HOSTILE_NAME = 'Zoë <script>alert("x")</script> \u202eO\u2019Brien'
OPTED_OUT_PERSON = "Pat Optout"


def face_pictures(n: int) -> list[bytes]:
    """`n` distinct drawn portraits in which the face detector finds a face (checked here)."""
    rng = np.random.default_rng(2024)
    found: list[bytes] = []
    seed = 0
    while len(found) < n:
        picture = demo_data.render(demo_data.CORPORATE_TEMPLATE, demo_data.random_sitter(rng), seed)
        seed += 1
        if detect_faces(picture):
            found.append(demo_data.jpeg_bytes(picture))
    return found


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def logo(seed: int) -> bytes:
    image = Image.new("RGB", (160, 120), "white")
    ImageDraw.Draw(image).rectangle([20 + seed * 3, 30, 140, 90], fill=(30 * seed % 255, 90, 160))
    return _png(image)


def office_photo() -> bytes:
    image = Image.new("RGB", (400, 300), (180, 190, 200))
    draw = ImageDraw.Draw(image)
    for x in range(0, 400, 50):
        draw.rectangle([x + 5, 120, x + 40, 280], fill=(120, 90, 60))  # desks, not people
    return demo_data.jpeg_bytes(image)


@dataclass
class Request:
    server: str
    path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


@dataclass
class Site:
    base: str = ""
    internal_base: str = ""
    routes: dict[str, Callable] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    bytes_served: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Companies known only by their domain: one server (origin) each on 127.0.0.1, named like a company.
    domains: dict[str, dict[str, Callable]] = field(default_factory=dict)
    domain_bases: dict[str, str] = field(default_factory=dict)

    def hits(self, path: str, server: str = "public") -> int:
        return sum(1 for r in self.requests if r.path == path and r.server == server)

    def count(self, path: str) -> int:
        with self.lock:
            self.counters[path] = self.counters.get(path, 0) + 1
            return self.counters[path]


def _static(body: bytes, content_type: str, extra: dict[str, str] | None = None) -> Callable:
    etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'

    def handle(request: http.server.BaseHTTPRequestHandler, site: Site) -> None:
        if request.headers.get("If-None-Match") == etag:
            request.send_response(304)
            request.send_header("ETag", etag)
            request.end_headers()
            return
        request.send_response(200)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("ETag", etag)
        for key, value in (extra or {}).items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(body)
        with site.lock:
            site.bytes_served[request.path] = site.bytes_served.get(request.path, 0) + len(body)

    return handle


def _made_per_request(make: Callable[[str, Site], bytes], content_type: str) -> Callable:
    """A body made when asked, from the origin the request was sent to (sitemaps hold absolute URLs)
    and the running site (scripts that name another server's port)."""

    def handle(request: http.server.BaseHTTPRequestHandler, site: Site) -> None:
        _static(make(f"http://{request.headers.get('Host', '')}", site), content_type)(request, site)

    return handle


def _status(code: int, headers: dict[str, str] | None = None) -> Callable:
    def handle(request: http.server.BaseHTTPRequestHandler, site: Site) -> None:
        request.send_response(code)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.send_header("Content-Length", "0")
        request.end_headers()

    return handle


def _fails_first(times: int, code: int, then: Callable, headers: dict[str, str] | None = None) -> Callable:
    def handle(request: http.server.BaseHTTPRequestHandler, site: Site) -> None:
        if site.count(request.path) <= times:
            _status(code, headers)(request, site)
        else:
            then(request, site)

    return handle


def _slow(seconds: float, then: Callable) -> Callable:
    def handle(request: http.server.BaseHTTPRequestHandler, site: Site) -> None:
        time.sleep(seconds)
        then(request, site)

    return handle


def _stalled(body: bytes) -> Callable:
    def handle(request: http.server.BaseHTTPRequestHandler, site: Site) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "image/jpeg")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body[: len(body) // 3])
        request.wfile.flush()
        time.sleep(3)  # then the connection just ends short

    return handle


def _stacked_gzip(decoded_mb: int) -> Callable:
    """`Content-Encoding: gzip, gzip`: a few KB on the wire, `decoded_mb` MB once both layers are undone."""

    import gzip

    body = gzip.compress(gzip.compress(b"\0" * (decoded_mb << 20), compresslevel=1), compresslevel=9)  # made once

    def handle(request: http.server.BaseHTTPRequestHandler, site: Site) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "image/jpeg")
        request.send_header("Content-Encoding", "gzip, gzip")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    return handle


def _trickled_headers(body: bytes, pause_s: float) -> Callable:
    """Status line and headers one byte at a time, each byte well inside the client's read timeout."""

    def handle(request: http.server.BaseHTTPRequestHandler, site: Site) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        for byte in head:
            request.wfile.write(bytes([byte]))
            request.wfile.flush()
            time.sleep(pause_s)
        request.wfile.write(body)

    return handle


def poisoned_tiff() -> bytes:
    """A mutated TIFF on which Pillow raises TypeError (not OSError), found by the intake fuzzer."""
    from bench.fuzz_intake import cases
    from pipeline.config import IntakeConfig
    from pipeline.ingest.intake import IntakeError, _decode

    for fmt, data in cases(600, seed=0):
        if fmt != "TIFF":
            continue
        try:
            _decode(data, "x.tif", IntakeConfig(), None)
        except IntakeError:
            continue
        except Exception:
            return data
    raise AssertionError("no poisoned TIFF among the fuzz cases")


def _cards(people: list[tuple[str, str, str]]) -> str:
    """(image src, name, alt) as staff cards; names and alts are written escaped, as a real CMS would."""
    import html

    return "".join(
        f'<div class="member"><img src="{html.escape(src)}" alt="{html.escape(alt)}">'
        f'<h3 class="name">{html.escape(name)}</h3><p class="role">Staff</p></div>'
        for src, name, alt in people
    )


def _page(body: str, head: str = "") -> bytes:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>" + head + "</head><body>"
        "<header><img src='/img/logo.svg' alt='logo'><img src='/img/header-logo.png' alt='Company'></header>"
        "<main>" + body + "</main>"
        "<footer><img src='/img/icon.png' alt='icon'></footer>"
        "<script>document.title='executed'</script></body></html>"
    ).encode("utf-8")


def build_site(internal_port: int) -> Site:
    site = Site()
    faces = face_pictures(8)
    internal = f"http://127.0.0.2:{internal_port}"
    jpeg, html_type = "image/jpeg", "text/html; charset=utf-8"
    routes = site.routes
    routes["/robots.txt"] = _static(b"User-agent: *\nDisallow: /private/\nDisallow: /img/disallowed/\n", "text/plain")
    routes["/img/logo.svg"] = _static(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")
    routes["/img/header-logo.png"] = _static(logo(1), "image/png")
    routes["/img/icon.png"] = _static(logo(2), "image/png")
    for index, picture in enumerate(faces):
        routes[f"/img/face{index}.jpg"] = _static(picture, jpeg)
    routes["/img/disallowed/face.jpg"] = _static(faces[0], jpeg)
    routes["/img/noai.jpg"] = _static(faces[1], jpeg, {"X-Robots-Tag": "noimageai"})
    routes["/img/other-bot-noai.jpg"] = _static(faces[6], jpeg, {"X-Robots-Tag": "otherbot: noai, noindex"})
    routes["/img/huge.jpg"] = _static(faces[2] + b"\0" * 3_000_000, jpeg)
    routes["/img/truncated.jpg"] = _static(faces[3][: len(faces[3]) // 2], jpeg)
    routes["/img/wrong-type.jpg"] = _static(faces[4], "text/html")
    routes["/img/not-an-image.jpg"] = _static(b"<html><body>Access denied</body></html>", jpeg)
    routes["/img/flaky.jpg"] = _fails_first(1, 500, _static(faces[5], jpeg))
    routes["/img/ratelimited.jpg"] = _fails_first(1, 429, _static(faces[7], jpeg), {"Retry-After": "1"})
    routes["/img/always-503.jpg"] = _status(503)
    routes["/img/slow.jpg"] = _slow(2.0, _static(faces[0], jpeg))
    routes["/img/stalled.jpg"] = _stalled(faces[1])
    routes["/img/gzip-gzip.jpg"] = _stacked_gzip(200)
    routes["/img/trickled.jpg"] = _trickled_headers(faces[2], 0.2)
    routes["/img/poisoned.tif"] = _static(poisoned_tiff(), "image/tiff")
    routes["/hostile.html"] = _static(_page(_cards([
        ("/img/face3.jpg", "Good One", ""), ("/img/gzip-gzip.jpg", "Bomb", ""), ("/img/trickled.jpg", "Trickle", ""),
        ("/img/poisoned.tif", "Poison", ""), ("/img/face4.jpg", "Good Two", ""),
    ])), "text/html; charset=utf-8")  # fmt: skip
    routes["/img/loop-a.jpg"] = _status(302, {"Location": "/img/loop-b.jpg"})
    routes["/img/loop-b.jpg"] = _status(302, {"Location": "/img/loop-a.jpg"})
    routes["/img/to-internal.jpg"] = _status(302, {"Location": f"{internal}/secret.jpg"})
    routes["/img/office.jpg"] = _static(office_photo(), jpeg)
    for index in range(4):
        routes[f"/img/client{index}.png"] = _static(logo(3 + index), "image/png")

    team = [
        ("/img/face0.jpg", "Ada Example", "Ada Example, Partner"),
        ("/img/face1.jpg", HOSTILE_NAME, 'alt with <script>alert(1)</script> and "quotes" \u0000\u200b'),
        ("/img/face2.jpg", "Bo Example", "Bo"),
        ("/img/face3.jpg", OPTED_OUT_PERSON, "Pat"),
        ("/img/disallowed/face.jpg", "Robots Example", "disallowed by robots.txt"),
        ("/img/noai.jpg", "Noai Example", "image with X-Robots-Tag noimageai"),
        ("/img/other-bot-noai.jpg", "Cy Example", "noai for another crawler only"),
        ("http://10.0.0.7/secret.jpg", "Private Example", "private address"),
        ("http://169.254.169.254/latest/meta-data/photo.jpg", "Metadata Example", "cloud metadata address"),
        (f"{internal}/internal.jpg", "Internal Example", "loopback, not allowed"),
        ("/img/to-internal.jpg", "Redirect Example", "redirects to an internal address"),
        ("/img/loop-a.jpg", "Loop Example", "redirect loop"),
        ("/img/huge.jpg", "Huge Example", "too large"),
        ("/img/truncated.jpg", "Truncated Example", "truncated"),
        ("/img/wrong-type.jpg", "Wrongtype Example", "JPEG served as text/html"),
        ("/img/not-an-image.jpg", "Notimage Example", "HTML served as image/jpeg"),
        ("/img/flaky.jpg", "Flaky Example", "500 once, then fine"),
        ("/img/ratelimited.jpg", "Ratelimit Example", "429 with Retry-After once"),
        ("/img/always-503.jpg", "Down Example", "always 503"),
        ("/img/slow.jpg", "Slow Example", "slower than the timeout"),
        ("/img/stalled.jpg", "Stalled Example", "stalls mid-body"),
        ("ftp://files.example.com/photo.jpg", "Ftp Example", "not http"),
        ("/img/face4.jpg", "Dee Example", "Dee"),
        ("/img/face5.jpg", "Eve Example", "Eve"),
    ]
    clients = "".join(f'<div class="client"><img src="/img/client{i}.png" alt="client logo"></div>' for i in range(4))
    team_body = (
        '<section class="team">' + _cards(team) + "</section>"
        '<img src="/img/pixel.gif" width="1" height="1" alt="">'
        '<div class="office"><img src="/img/office.jpg" alt="Our office"></div>'
        '<section class="clients">' + clients + "</section>"
        '<a href="/private/team-2.html" rel="next">Next</a>'
    )
    routes["/team.html"] = _static(_page(team_body), html_type)
    routes["/private/team-2.html"] = _static(_page(_cards([("/img/face6.jpg", "Private Page", "")])), html_type)

    lazy_head = (
        '<script type="application/ld+json">{"@context": "https://schema.org", "@type": "Person", '
        '"name": "Jay Ld", "jobTitle": "CTO", "image": {"@type": "ImageObject", "url": "/img/face3.jpg"}}</script>'
        '<script type="application/ld+json">{ this is broken json </script>'
    )
    lazy_body = (
        '<ul class="people">'
        '<li class="p"><img class="lazy" src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="/img/face0.jpg" alt="Lazy One">'
        '<noscript><img src="/img/face0.jpg"></noscript><span class="name">Lazy One</span></li>'
        '<li class="p"><img src="/img/placeholder.gif" data-srcset="/img/face1-small.jpg 200w, /img/face1.jpg 800w, /img/face1-xl.jpg 2400w" alt="Srcset Two"><span class="name">Srcset Two</span></li>'
        '<li class="p"><picture><source type="image/webp" srcset="/img/face2.webp 800w"><img src="/img/face2.jpg" alt="Picture Three"></picture><span class="name">Picture Three</span></li>'
        '<li class="p"><div class="photo" style="background-image: url(&quot;/img/face5.jpg&quot;)"></div><span class="name">Css Four</span></li>'
        "</ul>"
        '<a class="load-more" href="/lazy-2.html">Load more</a>'
        '<a href="https://elsewhere.example/team-3.html" rel="next">Partner site</a>'
    )
    routes["/lazy.html"] = _static(_page(lazy_body, lazy_head), html_type)
    routes["/lazy-2.html"] = _static(_page('<div class="x"><img src="/img/face7.jpg" alt="Page Two"></div>'), html_type)
    routes["/img/face2.webp"] = _static(_webp(faces[2]), "image/webp")

    routes["/noai-meta.html"] = _static(
        _page(_cards([("/img/face0.jpg", "Meta Noai", "")]), '<meta name="robots" content="noai, noimageai">'), html_type
    )
    routes["/noindex-header.html"] = _static(
        _page(_cards([("/img/face0.jpg", "Header Noindex", "")])), html_type, {"X-Robots-Tag": "noindex"}
    )
    routes["/flapping.html"] = _fails_first(2, 500, _static(_page(_cards([("/img/face6.jpg", "Flap Example", "")])), html_type))
    routes["/redirect-loop.html"] = _status(301, {"Location": "/redirect-loop.html"})
    routes["/not-html.html"] = _static(faces[0], jpeg)

    many = "".join(
        f'<div class="tile"><img src="/img/many/{i}.jpg" alt="Person {i}"><span class="name">Person {i}</span></div>' for i in range(1000)
    )
    routes["/thousand.html"] = _static(_page('<div class="grid">' + many + "</div>"), html_type)
    for i in range(1000):
        routes[f"/img/many/{i}.jpg"] = _static(faces[i % len(faces)], jpeg)
    build_app_pages(routes)
    site.domains = build_domains(faces)
    return site


DISCOVERED = {  # domain -> the staff pages discovery should choose there, and nothing else
    "cedar-finch": ["/company/who-we-are"],
    "harbor-labs": ["/about/the-people", "/leadership"],
    "quiet-co": [],
}


def _sitemap(paths: list[str], index: bool = False) -> Callable[[str, Site], bytes]:
    tag, item = ("sitemapindex", "sitemap") if index else ("urlset", "url")

    def make(origin: str, site: Site) -> bytes:
        entries = "".join(f"<{item}><loc>{origin}{path}</loc></{item}>" for path in paths)
        return (
            f'<?xml version="1.0" encoding="UTF-8"?><{tag} xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</{tag}>'.encode()
        )

    return make


def _site_page(nav: str, body: str, footer: str) -> bytes:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Company</title></head><body>"
        f"<header><nav>{nav}</nav></header><main>{body}</main><footer>{footer}</footer></body></html>"
    ).encode()


def build_domains(faces: list[bytes]) -> dict[str, dict[str, Callable]]:
    """Companies given by their domain only. cedar-finch: the team page is linked from the footer's
    "About us" and listed in a gzipped sitemap behind a sitemap index named in robots.txt; a blog post
    with a grid of named portraits and a services grid must not be chosen. harbor-labs: no sitemap;
    "About" leads to a page that links the team, "Leadership" in the navigation is a second staff page.
    quiet-co: nothing anywhere (discovery must say what it tried)."""
    import gzip

    jpeg, html_type = "image/jpeg", "text/html; charset=utf-8"
    pictures = {f"/img/p{index}.jpg": _static(picture, jpeg) for index, picture in enumerate(faces)}
    people = [(f"/img/p{index}.jpg", f"Person {index}", "") for index in range(len(faces))]
    services = "".join(f'<div class="service"><img src="/img/s{i}.png"><h3>Service {i}</h3></div>' for i in range(3))
    cedar = {
        **pictures,
        "/robots.txt": _made_per_request(
            lambda origin, site: f"User-agent: *\nDisallow: /admin/\nSitemap: {origin}/sitemap_index.xml\n".encode(), "text/plain"
        ),
        "/sitemap_index.xml": _made_per_request(_sitemap(["/sitemaps/pages.xml.gz"], index=True), "application/xml"),
        "/sitemaps/pages.xml.gz": _made_per_request(
            lambda origin, site: gzip.compress(
                _sitemap(["/", "/company/who-we-are", "/services", "/blog/meet-our-new-partners", "/contact", "/admin/team"])(origin, site)
            ),
            "application/gzip",
        ),
        "/": _static(
            _site_page(
                '<a href="/services">Services</a><a href="/insights">Insights</a><a href="/contact">Contact</a>',
                "<h1>Cedar &amp; Finch</h1><p>Advisors since 1990.</p>" + services,
                '<a href="/company/who-we-are">About us</a><a href="/privacy">Privacy</a><a href="/careers">Careers</a>',
            ),
            html_type,
        ),
        "/company/who-we-are": _static(_site_page("", '<section class="team">' + _cards(people[:6]) + "</section>", ""), html_type),
        "/blog/meet-our-new-partners": _static(
            _site_page("", "<article>" + _cards(people[6:8] + people[:1]) + "</article>", ""), html_type
        ),
        "/services": _static(_site_page("", services, ""), html_type),
        **{f"/img/s{i}.png": _static(logo(10 + i), "image/png") for i in range(3)},
    }
    harbor = {
        **pictures,
        "/": _static(
            _site_page(
                '<a href="/about">About</a><a href="/leadership">Leadership</a><a href="/blog">Blog</a>', "<h1>Harbor Labs</h1>", ""
            ),
            html_type,
        ),
        "/about": _static(_site_page("", '<p>We build harbours.</p><a href="/about/the-people">Meet the team</a>', ""), html_type),
        "/about/the-people": _static(_site_page("", '<div class="grid">' + _cards(people[:5]) + "</div>", ""), html_type),
        "/leadership": _static(_site_page("", '<div class="grid">' + _cards(people[5:8]) + "</div>", ""), html_type),
    }
    quiet = {"/": _static(_site_page('<a href="/products">Products</a>', "<h1>Quiet Co</h1><p>We make things.</p>", ""), html_type)}
    return {"cedar-finch": cedar, "harbor-labs": harbor, "quiet-co": quiet}


APP_SHELL = (
    "<!doctype html><html><head><meta charset='utf-8'><title>Our team</title></head>"
    '<body><div id="root">Loading…</div><script src="/app/{script}.js"></script></body></html>'
)
BUILD_CARDS = (
    "fetch('/api/team.json').then(r => r.json()).then(people => { for (const p of people) {"
    " const card = document.createElement('div'); card.className = 'member';"
    " card.innerHTML = '<img src=\"' + p.photo + '\" alt=\"\"><h3 class=\"name\">' + p.name + '</h3>';"
    " document.getElementById('root').appendChild(card); } });"
)
APP_PEOPLE = [("/img/face0.jpg", "Spa Ada"), ("/img/face2.jpg", "Spa Bo"), ("/img/face4.jpg", "Spa Dee"), ("/img/face5.jpg", "Spa Eve")]


def _hostile_script(origin: str, site: Site) -> bytes:
    """Builds the cards, and tries what a page's script must never get through us."""
    other_port = site.domain_bases["cedar-finch"]
    return (
        BUILD_CARDS
        + f"fetch('{site.internal_base}/secret').catch(() => 0);"
        + f"document.head.appendChild(Object.assign(document.createElement('script'), {{src: '{site.internal_base}/evil.js'}}));"
        + f"fetch('{other_port}/admin/team').catch(() => 0);"
        + "fetch('file:///etc/passwd').catch(() => 0);"
        + "try { new WebSocket('ws://127.0.0.1:9/'); } catch (e) {}"
        + "fetch('/api/team.json', {method: 'POST', body: 'x'}).catch(() => 0);"
    ).encode()


def build_app_pages(routes: dict[str, Callable]) -> None:
    """Single-page applications on the public server: cards built from a JSON endpoint; the same with
    a script that tries other hosts, ports and schemes; one that polls forever; one that hangs."""
    import json

    html_type, js = "text/html; charset=utf-8", "application/javascript"
    routes["/api/team.json"] = _static(
        json.dumps([{"photo": photo, "name": name} for photo, name in APP_PEOPLE]).encode(), "application/json"
    )
    for name in ("team", "hostile", "never", "hang", "big"):
        routes[f"/app/{name}.html"] = _static(APP_SHELL.format(script=name).encode(), html_type)
    # A script where robots.txt disallows it, and one over the crawler's byte cap per response.
    routes["/app/robots.html"] = _static(APP_SHELL.replace("/app/{script}.js", "/private/team.js").encode(), html_type)
    routes["/private/team.js"] = _static(BUILD_CARDS.encode(), js)
    routes["/app/big.js"] = _static(BUILD_CARDS.encode() + b"//" + b"x" * 1_500_000, js)
    routes["/app/team.js"] = _static(BUILD_CARDS.encode(), js)
    # The same team served as HTML: what rendering costs over reading a page (bench/render_cost.py).
    routes["/app/team-plain.html"] = _static(
        _page('<div id="root">' + _cards([(photo, name, "") for photo, name in APP_PEOPLE]) + "</div>"), html_type
    )
    routes["/app/hostile.js"] = _made_per_request(_hostile_script, js)
    routes["/app/never.js"] = _static((BUILD_CARDS + "setInterval(() => fetch('/api/poll').catch(() => 0), 100);").encode(), js)
    routes["/app/hang.js"] = _static((BUILD_CARDS + "setTimeout(() => { while (true) {} }, 300);").encode(), js)
    routes["/api/poll"] = _static(b"{}", "application/json")


def _webp(jpeg_bytes: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg_bytes)).save(buffer, format="WEBP")
    return buffer.getvalue()


def handler_for(site: Site, server: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            with site.lock:
                site.requests.append(Request(server, self.path, dict(self.headers.items())))
            route = (site.routes if server == "public" else site.domains.get(server, {})).get(self.path)
            if route is None:
                _status(404)(self, site)
                return
            try:
                route(self, site)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the crawler gave up on a slow response, as it should

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextlib.contextmanager
def served() -> Iterator[Site]:
    """The fixture website, running: public on 127.0.0.1, an "internal" service on 127.0.0.2, and one
    server on 127.0.0.1 per company known only by its domain; all stopped on leaving."""
    running: list[http.server.ThreadingHTTPServer] = []

    def start(host: str, site: Site, name: str) -> http.server.ThreadingHTTPServer:
        server = http.server.ThreadingHTTPServer((host, 0), handler_for(site, name))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        running.append(server)
        return server

    try:
        site = Site()
        internal = start("127.0.0.2", site, "internal")
        built = build_site(internal.server_address[1])
        site.routes, site.domains = built.routes, built.domains
        public = start("127.0.0.1", site, "public")
        site.base = f"http://127.0.0.1:{public.server_address[1]}"
        site.internal_base = f"http://127.0.0.2:{internal.server_address[1]}"
        for name in site.domains:  # each company known by its domain is its own origin
            site.domain_bases[name] = f"http://127.0.0.1:{start('127.0.0.1', site, name).server_address[1]}"
        yield site
    finally:
        for server in running:
            server.shutdown()
            server.server_close()

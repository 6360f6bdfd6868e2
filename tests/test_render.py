"""Rendering pages that build their cards in the browser: headless Chromium whose every request goes
through the crawler's own checks, against the fixture website's single-page applications."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from pipeline.ingest.crawl import SitesError
from pipeline.ingest.crawl.extract import parse_page
from tests.fixture_site import APP_PEOPLE
from tests.test_crawl import crawl

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by `make test`")


def rows_of(result, kind: str) -> list[dict]:  # noqa: ANN001
    return [row for row in result.log if row["kind"] == kind]


def kept_people(result) -> list[str]:  # noqa: ANN001
    return sorted(row["person"] for row in rows_of(result, "image") if row["status"] == "kept")


def test_an_application_shell_is_recognised_and_a_server_rendered_page_is_not() -> None:
    shell = '<html><body><div id="root">Loading…</div><script src="/app.js"></script></body></html>'
    assert parse_page(shell, "https://a.example/team").app_shell
    team = "<html><body><h1>Team</h1>" + "<p>Ada Lovelace, partner, leads the practice on analytical engines.</p>" * 8
    assert not parse_page(team + "<script src='/app.js'></script></body></html>", "https://a.example/team").app_shell
    # Words only in the header and footer, or only JSON-LD data, do not make a page server-rendered or scripted.
    chrome = "<header>" + "Home About Services Careers Contact " * 10 + "</header>"
    assert parse_page(f"<html><body>{chrome}<div id=app></div><script>boot()</script></body></html>", "https://a.example/").app_shell
    assert not parse_page('<html><body><script type="application/ld+json">{}</script></body></html>', "https://a.example/").app_shell


@needs_chromium
def test_cards_built_from_a_json_endpoint_are_rendered_and_crawled(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    before = len(fixture_site.requests)
    result, _ = crawl(fixture_site, ["/app/team.html"], tmp_path, name="spa")
    assert kept_people(result) == sorted(name for _, name in APP_PEOPLE)
    (page,) = rows_of(result, "page")
    assert page["status"] == "crawled" and "4 candidate pictures; rendered in Chromium" in page["reason"] and ", settled;" in page["reason"]
    requested = [r.path for r in fixture_site.requests[before:]]
    # The page once (the browser is given the HTML the crawler fetched), its script and data once each;
    # the pictures only by the crawler, after rendering (4 of them), never by the browser.
    assert requested.count("/app/team.html") == 1 and requested.count("/app/team.js") == 1 and requested.count("/api/team.json") == 1
    assert sorted(p for p in requested if p.startswith("/img/")) == sorted(photo for photo, _ in APP_PEOPLE)
    assert {r.headers.get("User-Agent") for r in fixture_site.requests[before:]} == {
        "profile-homogenization-analytics/0.1 (+https://example.invalid/contact)"
    }


@needs_chromium
def test_a_page_script_reaches_no_other_host_port_or_scheme(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    before = len(fixture_site.requests)
    result, _ = crawl(fixture_site, ["/app/hostile.html"], tmp_path, name="spa-hostile")
    assert kept_people(result) == sorted(name for _, name in APP_PEOPLE)  # the cards still count
    refused = {row["url"]: row["reason"] for row in rows_of(result, "render")}
    assert all(row["status"] == "skipped" for row in rows_of(result, "render"))
    assert refused[f"{fixture_site.internal_base}/secret"].startswith("render_cross_origin")
    # A script may come from another host, through the address guard: not from an internal one.
    assert refused[f"{fixture_site.internal_base}/evil.js"].startswith(
        "private_address: 127.0.0.2 resolves to 127.0.0.2, which is loopback"
    )
    assert refused[f"{fixture_site.domain_bases['cedar-finch']}/admin/team"].startswith("render_cross_origin")
    assert refused["file:///etc/passwd"].startswith("scheme: only http and https")
    assert refused["ws://127.0.0.1:9/"].startswith("render_websocket")
    assert any(url.endswith("/api/team.json") and reason.startswith("render_method") for url, reason in refused.items())
    assert not [r for r in fixture_site.requests[before:] if r.server != "public"]  # nothing reached another server
    assert len(rows_of(result, "render")) == 6


@needs_chromium
def test_the_browser_requests_pass_robots_opt_outs_byte_caps_and_politeness(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    before = len(fixture_site.requests)
    pages = ["/app/robots.html", "/app/big.html", "/app/team.html"]
    result, _ = crawl(fixture_site, pages, tmp_path, name="spa-rules", opt_out={"url_patterns": ["*/api/*"]}, min_delay_s=0.3)
    refused = {row["url"].removeprefix(fixture_site.base): row["reason"] for row in rows_of(result, "render")}
    assert refused["/private/team.js"].startswith("robots_txt")
    assert refused["/app/big.js"].startswith("too_large")
    assert refused["/api/team.json"].startswith("opt_out_url")  # the team page's data: no cards, no pictures
    assert kept_people(result) == []
    requested = [r for r in fixture_site.requests[before:] if r.server == "public"]
    assert "/private/team.js" not in [r.path for r in requested] and "/api/team.json" not in [r.path for r in requested]
    # One request to the host every crawl.min_delay_s (0.3 s), the browser's included: measured where
    # they arrive, so a gap is shortened by how much longer the request before it took to connect.
    gaps = [later.at - earlier.at for earlier, later in zip(requested, requested[1:])]
    assert len(requested) >= 5 and min(gaps) > 0.15 and requested[-1].at - requested[0].at > 0.3 * (len(requested) - 1) * 0.9


@needs_chromium
def test_a_page_that_never_settles_is_read_as_it_stands_at_the_deadline(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    started = time.monotonic()
    result, _ = crawl(fixture_site, ["/app/never.html"], tmp_path, name="spa-never", render_deadline_s=3)
    assert time.monotonic() - started < 3 + 15  # the deadline, then the pictures' downloads
    (page,) = rows_of(result, "page")
    assert "did not settle by the deadline" in page["reason"]
    assert kept_people(result) == sorted(name for _, name in APP_PEOPLE)
    # Requests after the deadline are refused, and say so.
    assert all(row["reason"].startswith("render_deadline") for row in rows_of(result, "render"))


@needs_chromium
def test_a_script_that_hangs_the_browser_is_stopped_and_the_next_page_renders(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    started = time.monotonic()
    result, _ = crawl(fixture_site, ["/app/hang.html", "/app/team.html"], tmp_path, name="spa-hang", render_deadline_s=2)
    assert time.monotonic() - started < 2 + 3 + 20  # deadline, grace to read the DOM, a new browser and the other page
    pages = {row["url"].rsplit("/", 1)[-1]: row for row in rows_of(result, "page")}
    assert "rendering failed" in pages["hang.html"]["reason"] and "Chromium was stopped" in pages["hang.html"]["reason"]
    assert "4 candidate pictures; rendered in Chromium" in pages["team.html"]["reason"]


def test_render_never_leaves_an_application_shell_as_it_is(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    before = len(fixture_site.requests)
    result, _ = crawl(fixture_site, ["/app/team.html"], tmp_path, name="spa", render="never")
    (page,) = rows_of(result, "page")
    assert page["reason"] == "0 candidate pictures"
    assert "/app/team.js" not in [r.path for r in fixture_site.requests[before:]]


def test_without_chromium_auto_renders_nothing_and_says_so_and_always_is_an_error(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    from pipeline.config import load_settings
    from pipeline.ingest.crawl import SitesFile, with_site_overrides

    missing = str(tmp_path / "no-chromium")
    result, _ = crawl(fixture_site, ["/app/team.html"], tmp_path, name="spa", chromium=missing)
    (page,) = rows_of(result, "page")
    assert "an application shell, not rendered: crawl.render=auto renders nothing on this machine" in page["reason"]
    sites = SitesFile.model_validate(
        {"companies": [{"name": "spa", "urls": [fixture_site.base + "/app/team.html"]}], "crawl": {"render": "always", "chromium": missing}}
    )
    with pytest.raises(SitesError, match="crawl.render=always, but crawl.chromium=.* is not an executable file"):
        with_site_overrides(load_settings(None, warehouse=str(tmp_path)), sites)


@needs_chromium
def test_rendering_works_where_an_asyncio_loop_is_running(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    """Playwright's sync API refuses a thread with a running event loop: the browser has a thread of its own."""
    import asyncio

    async def crawl_from_a_coroutine():  # noqa: ANN202
        return crawl(fixture_site, ["/app/team.html"], tmp_path, name="spa-async")

    result, _ = asyncio.run(crawl_from_a_coroutine())
    assert kept_people(result) == sorted(name for _, name in APP_PEOPLE)

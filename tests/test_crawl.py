"""The crawler against the fixture website: what is kept, skipped, rejected and why; what is never requested."""

from __future__ import annotations

import io
import time
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
from PIL import Image

from pipeline.config import CrawlConfig, load_settings
from pipeline.ingest.crawl import (
    CompanyCrawl,
    SiteEntry,
    SitesError,
    crawl_company,
    load_sites,
)
from pipeline.ingest.crawl.extract import clean_text, order_by_preference, parse_page, parse_srcset
from pipeline.ingest.crawl.http import AddressGuard, retry_after_seconds
from pipeline.ingest.crawl.robots import directives
from pipeline.warehouse import Warehouse
from tests.fixture_site import HOSTILE_NAME, OPTED_OUT_PERSON

RUN_DATE = "2026-11-28"
FAST = {
    "allow_private": ["127.0.0.1"], "min_delay_s": 0, "timeout_s": 0.5, "max_retries": 1, "backoff_s": 0.01,
    "max_retry_after_s": 5, "max_bytes_per_response": 1_000_000, "opt_out": {"persons": [OPTED_OUT_PERSON]},
}  # fmt: skip


def crawl(
    site, paths: list[str], warehouse_dir: Path, name: str = "acme", domain: str | None = None, **overrides
) -> tuple[CompanyCrawl, dict[str, dict]]:  # noqa: ANN001
    settings = load_settings(None, warehouse=str(warehouse_dir), crawl=CrawlConfig.model_validate({**FAST, **overrides}))
    entry = SiteEntry(name=name, urls=[site.base + path if path.startswith("/") else path for path in paths], domain=domain)
    result = crawl_company(entry, settings, Warehouse(str(warehouse_dir)), RUN_DATE)
    by_url = {}
    for row in result.log:
        parts = urlsplit(row["url"])
        key = parts.path if parts.netloc == urlsplit(site.base).netloc else row["url"]
        by_url[key] = row
    return result, by_url


def outcome(rows: dict[str, dict], url: str) -> tuple[str, str]:
    return rows[url]["status"], rows[url]["reason"]


@pytest.fixture(scope="module")
def team(fixture_site, tmp_path_factory):  # noqa: ANN001, ANN201
    started = time.monotonic()
    result, rows = crawl(fixture_site, ["/team.html"], tmp_path_factory.mktemp("wh"))
    return result, rows, time.monotonic() - started


EXPECTED_TEAM = {
    "/img/face0.jpg": ("kept", "face found"),
    "/img/face1.jpg": ("kept", "face found"),
    "/img/face2.jpg": ("kept", "face found"),
    "/img/face3.jpg": ("skipped", "opt-out: person"),
    "/img/face4.jpg": ("kept", "face found"),
    "/img/face5.jpg": ("kept", "face found"),
    "/img/disallowed/face.jpg": ("skipped", "robots_txt"),
    "/img/noai.jpg": ("skipped", "X-Robots-Tag on the picture: noimageai"),
    "/img/other-bot-noai.jpg": ("kept", "face found"),
    "http://10.0.0.7/secret.jpg": ("skipped", "private_address: 10.0.0.7 resolves to 10.0.0.7, which is private"),
    "http://169.254.169.254/latest/meta-data/photo.jpg": ("skipped", "link-local (cloud metadata lives here)"),
    "/img/loop-a.jpg": ("error", "redirect_loop"),
    "/img/huge.jpg": ("error", "too_large"),
    "/img/truncated.jpg": ("error", "truncated"),
    "/img/wrong-type.jpg": ("kept", "face found"),
    "/img/not-an-image.jpg": ("rejected", "not an image"),
    "/img/flaky.jpg": ("kept", "face found"),
    "/img/ratelimited.jpg": ("kept", "face found"),
    "/img/always-503.jpg": ("error", "HTTP 503"),
    "/img/slow.jpg": ("error", "network: ReadTimeout"),
    "/img/stalled.jpg": ("error", "network"),
    "ftp://files.example.com/photo.jpg": ("skipped", "scheme: only http and https"),
    "/img/logo.svg": ("rejected", "SVG"),
    "/img/header-logo.png": ("rejected", "header, navigation or footer"),
    "/img/icon.png": ("rejected", "header, navigation or footer"),
    "/img/pixel.gif": ("rejected", "declared 1x1: a tracking pixel"),
    "/img/office.jpg": ("rejected", "no face found (not in a card group of faces)"),
    **{f"/img/client{i}.png": ("rejected", "no face found") for i in range(4)},
}


def test_team_page_every_candidate_has_the_expected_outcome(team, fixture_site) -> None:  # noqa: ANN001
    result, rows, _ = team
    for url, (status, reason) in EXPECTED_TEAM.items():
        assert rows[url]["status"] == status, (url, rows[url])
        assert reason in rows[url]["reason"], (url, rows[url]["reason"])
    internal = [row for url, row in rows.items() if url.startswith(fixture_site.internal_base)]
    assert [row["status"] for row in internal] == ["skipped"] and "127.0.0.2" in internal[0]["reason"]
    assert "127.0.0.2" in rows["/img/to-internal.jpg"]["reason"] and rows["/img/to-internal.jpg"]["status"] == "skipped"
    images = [row for row in result.log if row["kind"] == "image"]
    assert len(images) == len(EXPECTED_TEAM) + 2  # plus the internal link and the redirect to it
    kept = [row for row in result.manifest]
    assert sorted(urlsplit(row["image_url"]).path for row in kept) == sorted(u for u, (s, _) in EXPECTED_TEAM.items() if s == "kept")


def test_nothing_forbidden_was_ever_requested(team, fixture_site) -> None:  # noqa: ANN001
    assert [r.path for r in fixture_site.requests if r.server == "internal"] == []  # not even after a redirect
    for path in ("/img/disallowed/face.jpg", "/private/team-2.html", "/img/face3.jpg", "/img/noai.jpg" + "?never"):
        assert fixture_site.hits(path) == 0, path
    # The robots.txt rule on the pagination link: recorded as a skipped page, not fetched.
    _, rows, _ = team
    assert rows["/private/team-2.html"]["status"] == "skipped" and rows["/private/team-2.html"]["kind"] == "page"
    # Every request named us and how to reach us.
    assert all("profile-homogenization-analytics" in r.headers.get("User-Agent", "") for r in fixture_site.requests if r.server == "public")


def test_retries_honour_retry_after_and_flapping_recovers(team, fixture_site) -> None:  # noqa: ANN001
    assert fixture_site.hits("/img/flaky.jpg") == 2  # 500, then 200
    assert fixture_site.hits("/img/ratelimited.jpg") == 2  # 429 with Retry-After: 1, then 200
    assert fixture_site.hits("/img/always-503.jpg") == 2  # max_retries=1: two attempts, then an error row
    assert team[2] >= 1.0  # the crawl waited for Retry-After


def test_scraped_strings_are_cleaned_and_kept_as_data(team) -> None:  # noqa: ANN001
    _, rows, _ = team
    row = rows["/img/face1.jpg"]
    assert "<script>" in row["person"]  # kept as text (reports escape it), never interpreted
    assert "\u202e" not in row["person"] and "\u0000" not in row["alt"] and "\u200b" not in row["alt"]
    assert row["person"] == clean_text(HOSTILE_NAME)
    assert rows["/img/face0.jpg"]["role"] == "Staff" and rows["/img/face0.jpg"]["alt"] == "Ada Example, Partner"


def test_kept_pictures_are_in_the_warehouse_and_rejected_ones_are_not(team, tmp_path) -> None:  # noqa: ANN001
    result, rows, _ = team
    for row in result.manifest:
        assert Path(row["image"]).is_file(), row
    stored = {p.name for p in Path(result.manifest[0]["image"]).parents[2].rglob("*") if p.is_file()}
    not_kept = [row for row in result.log if row["kind"] == "image" and row["status"] != "kept"]
    assert all(row["image"] == "" for row in not_kept)
    assert len(stored) == len({Path(row["image"]).name for row in result.manifest})


def test_real_world_markup_lazy_srcset_picture_css_jsonld_and_pagination(fixture_site, tmp_path) -> None:  # noqa: ANN001
    result, rows = crawl(fixture_site, ["/lazy.html"], tmp_path)
    kept = {urlsplit(row["image_url"]).path: row["person"] for row in result.manifest}
    assert kept == {
        "/img/face0.jpg": "Lazy One",  # data-src over a data: placeholder; the <noscript> copy merged into it
        "/img/face1.jpg": "Srcset Two",  # the smallest srcset entry at least 800 px wide
        "/img/face2.webp": "Picture Three",  # <picture><source>
        "/img/face5.jpg": "Css Four",  # CSS background-image in an inline style
        "/img/face3.jpg": "Jay Ld",  # JSON-LD Person.image (an ImageObject)
        "/img/face7.jpg": "",  # page 2, reached through the "Load more" link
    }
    assert rows["/img/face3.jpg"]["role"] == "CTO"
    assert fixture_site.hits("/img/face1-xl.jpg") == 0 and fixture_site.hits("/img/face1-small.jpg") == 0
    assert "https://elsewhere.example/team-3.html" not in rows  # pagination never leaves the site
    assert rows["/lazy-2.html"]["status"] == "crawled"


def test_page_level_rules_and_failures(fixture_site, tmp_path) -> None:  # noqa: ANN001
    before = fixture_site.hits("/img/face0.jpg")
    pages = ["/noai-meta.html", "/noindex-header.html", "/flapping.html", "/redirect-loop.html", "/not-html.html", "/missing.html"]
    _, rows = crawl(fixture_site, pages, tmp_path, max_retries=2)
    assert outcome(rows, "/noai-meta.html") == ("skipped", "<meta name=robots>: noai, noimageai")
    assert outcome(rows, "/noindex-header.html") == ("skipped", "X-Robots-Tag: noindex")
    assert fixture_site.hits("/img/face0.jpg") == before  # neither page's pictures were requested
    assert rows["/flapping.html"]["status"] == "crawled" and rows["/img/face6.jpg"]["status"] == "kept"
    assert outcome(rows, "/redirect-loop.html")[0] == "error" and "redirect_loop" in rows["/redirect-loop.html"]["reason"]
    assert "not an HTML page" in rows["/not-html.html"]["reason"]
    assert outcome(rows, "/missing.html") == ("error", "HTTP 404")


@pytest.mark.parametrize(
    "opt_out",
    [{"companies": ["ACME"]}, {"domains": ["127.0.0.1"]}, {"url_patterns": ["*/lazy.html"]}],
    ids=["company", "domain", "url-pattern"],
)
def test_opt_outs_are_honoured_before_any_request(fixture_site, tmp_path, opt_out) -> None:  # noqa: ANN001
    before = len(fixture_site.requests)
    result, rows = crawl(fixture_site, ["/lazy.html"], tmp_path, opt_out=opt_out)
    assert len(fixture_site.requests) == before
    assert result.manifest == [] and rows["/lazy.html"]["status"] == "skipped" and "opt-out" in rows["/lazy.html"]["reason"]


def test_rerun_of_an_unchanged_site_downloads_no_picture_bytes(fixture_site, tmp_path) -> None:  # noqa: ANN001
    first, _ = crawl(fixture_site, ["/lazy.html"], tmp_path)
    served = dict(fixture_site.bytes_served)
    second, rows = crawl(fixture_site, ["/lazy.html"], tmp_path)
    picture_bytes = {p: n - served.get(p, 0) for p, n in fixture_site.bytes_served.items() if p.startswith("/img/")}
    assert sum(picture_bytes.values()) == 0
    assert second.manifest == first.manifest
    assert "conditional GET" in rows["/img/face0.jpg"]["reason"]
    assert any(r.headers.get("If-None-Match") for r in fixture_site.requests if r.path == "/img/face0.jpg")


def test_a_stored_copy_removed_since_is_fetched_again(fixture_site, tmp_path) -> None:  # noqa: ANN001
    first, _ = crawl(fixture_site, ["/lazy.html"], tmp_path)
    removed = Path(first.manifest[0]["image"])
    removed.unlink()
    second, _ = crawl(fixture_site, ["/lazy.html"], tmp_path)
    assert second.manifest == first.manifest and removed.is_file()


def test_one_thousand_images_on_one_page_are_capped_and_logged(fixture_site, tmp_path) -> None:  # noqa: ANN001
    result, rows = crawl(fixture_site, ["/thousand.html"], tmp_path, max_images_per_page=600, workers=8, max_concurrency_per_host=8)
    statuses = pd.Series([row["status"] for row in result.log if row["kind"] == "image"]).value_counts().to_dict()
    assert statuses == {"kept": 600, "skipped": 400, "rejected": 3}  # the 3: the page's logos and icon, never fetched
    assert "page_image_cap" in rows["/img/many/999.jpg"]["reason"] and fixture_site.hits("/img/many/999.jpg") == 0


def test_robots_txt_server_error_means_disallow_all(http_server, tmp_path) -> None:  # noqa: ANN001
    base, routes = http_server
    routes["/robots.txt"] = (503, "text/plain", b"")
    routes["/team.html"] = (200, "text/html", b"<img src='/a.jpg'>")
    settings = load_settings(None, warehouse=str(tmp_path), crawl=CrawlConfig.model_validate({**FAST, "max_retries": 0}))
    result = crawl_company(SiteEntry(name="x", urls=[base + "/team.html"]), settings, Warehouse(str(tmp_path)), RUN_DATE)
    assert result.log[0]["status"] == "skipped" and "robots.txt answered 503" in result.log[0]["reason"]


def test_private_addresses_are_refused_unless_allowed() -> None:
    guard = AddressGuard([])
    for address in (
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
    ):
        assert guard.refusal("host", address), address
    assert guard.refusal("host", "93.184.216.34") is None
    allowing = AddressGuard(["127.0.0.1", "10.0.0.0/8", "intranet.example"])
    assert allowing.refusal("h", "127.0.0.1") is None and allowing.refusal("h", "10.9.9.9") is None
    assert allowing.refusal("h", "127.0.0.2") and allowing.refusal("intranet.example", "192.168.0.5") is None


def test_srcset_parsing_and_choice() -> None:
    options = parse_srcset("https://cdn.example/w_200,h_200/a.jpg 200w, b.jpg 800w,c.jpg 1600w")
    assert [o[0] for o in options] == ["https://cdn.example/w_200,h_200/a.jpg", "b.jpg", "c.jpg"]
    assert order_by_preference(options, 800) == ["b.jpg", "https://cdn.example/w_200,h_200/a.jpg", "c.jpg"]
    assert order_by_preference(parse_srcset("a.jpg 1x, b.jpg 2x"), 800) == ["b.jpg", "a.jpg"]
    assert order_by_preference(parse_srcset("only.jpg"), 800) == ["only.jpg"]


def test_robots_directives_addressed_to_others_do_not_apply() -> None:
    assert directives(["noai, noimageai"], "mybot") == {"noai", "noimageai"}
    assert directives(["otherbot: noindex, nofollow"], "mybot") == set()
    assert directives(["mybot: noindex", "unavailable_after: 25 Jun 2010 15:00:00 PST"], "mybot") == {"noindex"}
    assert retry_after_seconds("7") == 7 and retry_after_seconds("garbage") is None


def test_markup_parsing_never_runs_scripts_and_ignores_broken_json_ld() -> None:
    page = parse_page(
        b"<script>document.write('<img src=/x.jpg>')</script><script type='application/ld+json'>{oops</script>", "http://a.example/"
    )
    assert page.candidates == []


def test_sites_file_errors_are_clear(tmp_path) -> None:  # noqa: ANN001
    cases = {
        "missing.yaml": None,
        "bad.yaml": "companies: [unclosed",
        "empty.yaml": "companies: []",
        "dup.yaml": "companies:\n  - {name: A, urls: ['http://a.example/']}\n  - {name: a, urls: ['http://b.example/']}",
        "typo.yaml": "companies:\n  - {name: A, url: ['http://a.example/']}",
    }
    messages = {}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(SitesError) as error:
            load_sites(tmp_path / name)
        messages[name] = str(error.value)
    assert "not found" in messages["missing.yaml"] and "not valid YAML" in messages["bad.yaml"]
    assert "companies" in messages["empty.yaml"] and "repeated: a" in messages["dup.yaml"]
    assert "url" in messages["typo.yaml"]


def test_homog_run_sites_crawls_the_demo_site_end_to_end(tmp_path) -> None:  # noqa: ANN001
    import json

    import yaml
    from typer.testing import CliRunner

    from pipeline.apps.cli import app
    from pipeline.apps.demo.site import build_demo_site, serve, write_sites_file

    pages = build_demo_site(tmp_path / "site")
    with serve(tmp_path / "site") as base:
        sites_path = write_sites_file(pages, base, tmp_path / "sites.yaml")
        sites = yaml.safe_load(sites_path.read_text())
        sites["companies"].append({"name": "gone-company", "urls": [base + "/gone/team.html"]})
        sites_path.write_text(yaml.safe_dump(sites))
        result = CliRunner().invoke(
            app,
            [
                "run",
                "--sites",
                str(sites_path),
                "--warehouse",
                str(tmp_path / "wh"),
                "--run-date",
                RUN_DATE,
                "--embedder",
                "classic",
                "--json",
                "--no-progress",
            ],
        )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["stages_run"][0] == "crawl" and summary["counts"]["crawl_kept"] == summary["counts"]["rows"]
    log = pd.read_parquet(summary["outputs"]["crawl_log"])
    gone = log[log["company"] == "gone-company"]
    assert gone[["kind", "status", "reason"]].values.tolist() == [["page", "error", "HTTP 404"]]
    images = pd.read_parquet(summary["outputs"]["images"])
    assert set(images["company"]) == {"northwind-legal", "bluebird-bakery", "copperleaf-consulting", "tiny-startup", "alder-architects"}
    assert (images["status"] == "ok").all() and images["image_url"].str.startswith(base).all()
    assert (images["person"] != "").sum() >= len(images) - 2  # names come from the markup
    assert summary["counts"]["cross_company_pairs"] >= 1  # the photo copperleaf shares with northwind


def test_open_graph_image_counts_only_on_a_profile_page() -> None:
    head = "<meta property='og:image' content='/p/jane.jpg'><meta property='og:title' content='Jane Roe'>"
    profile = parse_page(f"<head><meta property='og:type' content='profile'>{head}</head>", "https://a.example/people/jane")
    article = parse_page(f"<head><meta property='og:type' content='article'>{head}</head>", "https://a.example/news")
    assert [(c.url, c.person, c.source) for c in profile.candidates] == [("https://a.example/p/jane.jpg", "Jane Roe", "og")]
    assert article.candidates == []  # a shared-link preview picture is not a staff photo


def test_sites_file_crawl_overrides_are_validated(tmp_path) -> None:  # noqa: ANN001
    from pipeline.ingest.crawl import crawl_settings

    good = tmp_path / "good.yaml"
    good.write_text(
        "companies: [{name: A, urls: ['http://a.example/']}]\ncrawl: {allow_private: ['127.0.0.1'], min_delay_s: 0, opt_out: {persons: [X]}}"
    )
    cfg = crawl_settings(load_settings(None), load_sites(good))
    assert cfg.allow_private == ["127.0.0.1"] and cfg.min_delay_s == 0 and cfg.opt_out.persons == ["X"] and cfg.max_retries == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("companies: [{name: A, urls: ['http://a.example/']}]\ncrawl: {min_delay_s: -1, no_such_key: 1}")
    with pytest.raises(SitesError) as error:
        crawl_settings(load_settings(None), load_sites(bad))
    assert "crawl.min_delay_s" in str(error.value) and "crawl.no_such_key" in str(error.value)


def test_a_sites_file_override_applies_to_the_whole_headshot_filter(http_server, tmp_path: Path) -> None:  # noqa: ANN001
    """`crawl: {min_side: 48}` in sites.yaml reached the final verdict but not the decision to look for
    a face, so a 60 px headshot was rejected as 'no face found'. Now the whole crawl runs on one config."""
    from typer.testing import CliRunner

    from pipeline.apps.cli import app
    from tests.conftest import encode
    from tests.fixture_site import face_pictures

    base, routes = http_server
    face = Image.open(io.BytesIO(face_pictures(1)[0])).convert("RGB").resize((60, 75))
    routes["/team.html"] = (200, "text/html", b"<main><img src='/face.jpg' alt='Jane'></main>")
    routes["/face.jpg"] = (200, "image/jpeg", encode(face, quality=95))
    sites = tmp_path / "sites.yaml"
    sites.write_text(f"companies: [{{name: acme, urls: ['{base}/team.html']}}]\n"
                     "crawl: {allow_private: ['127.0.0.1'], min_delay_s: 0, min_side: 48}\n")  # fmt: skip
    out = CliRunner().invoke(app, ["crawl", "--sites", str(sites), "--out", str(tmp_path / "m.csv"), "--warehouse", str(tmp_path / "wh")])
    assert out.exit_code == 0, out.output
    log = pd.read_csv(tmp_path / "m.crawl-log.csv")
    picture = log[log["kind"] == "image"].iloc[0]
    assert (picture["status"], picture["reason"]) == ("kept", "face found")


def test_hostile_responses_each_fail_alone_and_in_bounded_time(fixture_site, tmp_path) -> None:  # noqa: ANN001
    """Stacked gzip (a few KB on the wire, 200 MB decoded), headers trickled one byte at a time and a
    picture that makes the decoder raise TypeError, beside two good headshots on one page: each bad
    one is an explained row, the good ones are kept, and nothing takes longer than its deadline."""
    started = time.monotonic()
    _, rows = crawl(fixture_site, ["/hostile.html"], tmp_path)
    elapsed = time.monotonic() - started
    assert outcome(rows, "/img/face3.jpg") == ("kept", "face found") and outcome(rows, "/img/face4.jpg") == ("kept", "face found")
    assert rows["/img/gzip-gzip.jpg"]["status"] == "error" and "Content-Encoding gzip, gzip refused" in rows["/img/gzip-gzip.jpg"]["reason"]
    assert rows["/img/gzip-gzip.jpg"]["n_bytes"] == 0  # refused before a byte was decoded
    assert rows["/img/trickled.jpg"]["status"] == "error" and rows["/img/trickled.jpg"]["reason"].startswith("stalled")
    assert rows["/img/poisoned.tif"]["status"] in ("rejected", "error") and "decoder failed" in rows["/img/poisoned.tif"]["reason"]
    # The trickled head takes ~13 s to send; the whole-response deadline is 3 x timeout_s = 1.5 s.
    assert elapsed < 12, elapsed

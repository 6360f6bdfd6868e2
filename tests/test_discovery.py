"""Discovery: from a company's domain to its staff pages, against the fixture website's domain-only companies."""

from __future__ import annotations

import gzip
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pipeline.ingest.crawl import SiteEntry, SitesError
from pipeline.ingest.crawl.discover import MAX_SITEMAP_BYTES, _sitemap_locations, hint
from tests.fixture_site import DISCOVERED
from tests.test_crawl import crawl


def discovered(result) -> dict[str, list[dict]]:  # noqa: ANN001
    rows: dict[str, list[dict]] = {}
    for row in result.log:
        if row["kind"] == "discovery":
            rows.setdefault(row["status"], []).append(row)
    return rows


def chosen_paths(result) -> list[str]:  # noqa: ANN001
    return sorted(urlsplit(row["url"]).path for row in discovered(result).get("chosen", []))


@pytest.fixture(scope="module")
def cedar(fixture_site, tmp_path_factory):  # noqa: ANN001, ANN201
    return crawl(fixture_site, [], tmp_path_factory.mktemp("wh"), name="cedar-finch", domain=fixture_site.domain_bases["cedar-finch"])


def test_the_team_page_is_found_from_the_domain_by_its_footer_link_and_gzipped_sitemap(cedar, fixture_site) -> None:  # noqa: ANN001
    result, rows = cedar
    assert chosen_paths(result) == DISCOVERED["cedar-finch"]
    reason = discovered(result)["chosen"][0]["reason"]
    assert "home page footer link 'About us'" in reason and "sitemaps/pages.xml.gz" in reason and "6 with a name" in reason
    sitemap_rows = {urlsplit(r["url"]).path: r["reason"] for r in discovered(result)["crawled"]}
    assert sitemap_rows["/sitemap_index.xml"] == "sitemap index: 1 sitemap(s)"
    assert "6 URLs, 2 whose path looks like a staff page" in sitemap_rows["/sitemaps/pages.xml.gz"]
    # The six people of the team page are crawled as from any team page.
    kept = [row for row in result.log if row["kind"] == "image" and row["status"] == "kept"]
    assert sorted(row["person"] for row in kept) == [f"Person {i}" for i in range(6)]
    assert {row["source_url"] for row in kept} == {fixture_site.domain_bases["cedar-finch"] + "/company/who-we-are"}


def test_discovery_requests_nothing_it_should_not(cedar, fixture_site) -> None:  # noqa: ANN001
    requested = [r.path for r in fixture_site.requests if r.server == "cedar-finch"]
    assert "/admin/team" not in requested  # in the sitemap, disallowed by robots.txt
    assert "/blog/meet-our-new-partners" not in requested  # a blog post is not a staff page, whatever its grid
    assert "/services" not in requested and "/contact" not in requested  # nothing says staff
    assert requested.count("/robots.txt") == 1 and requested.count("/company/who-we-are") == 1  # chosen page read once
    skipped = {urlsplit(r["url"]).path: r["reason"] for r in discovered(cedar[0])["skipped"]}
    assert skipped["/admin/team"].startswith("found: sitemap") and "robots_txt" in skipped["/admin/team"]


def test_the_home_page_grid_of_services_is_not_a_staff_page_when_a_team_page_exists(cedar) -> None:  # noqa: ANN001
    home = next(r for r in discovered(cedar[0])["not chosen"] if urlsplit(r["url"]).path == "/")
    assert "3 with a name" in home["reason"] and "nothing calls it a staff page" in home["reason"]


def test_an_about_page_leads_to_the_team_and_the_navigation_to_leadership(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    result, _ = crawl(fixture_site, [], tmp_path, name="harbor-labs", domain=fixture_site.domain_bases["harbor-labs"])
    assert chosen_paths(result) == DISCOVERED["harbor-labs"]
    reasons = {urlsplit(r["url"]).path: r["reason"] for r in discovered(result)["chosen"]}
    assert "linked from" in reasons["/about/the-people"] and "'Meet the team'" in reasons["/about/the-people"]
    assert "home page nav link 'Leadership'" in reasons["/leadership"]
    assert "/blog" not in [r.path for r in fixture_site.requests if r.server == "harbor-labs"]
    kept = [row for row in result.log if row["kind"] == "image" and row["status"] == "kept"]
    assert len(kept) == 8


def test_a_domain_without_staff_pages_gets_a_row_that_says_what_was_tried(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    result, _ = crawl(fixture_site, [], tmp_path, name="quiet-co", domain=fixture_site.domain_bases["quiet-co"])
    assert result.manifest == [] and chosen_paths(result) == DISCOVERED["quiet-co"]
    (error,) = discovered(result)["error"][-1:]
    for tried in ("home page (0 link(s) that look like staff pages)", "/sitemap.xml (robots.txt names none)", "common paths (/team"):
        assert tried in error["reason"]
    requested = [r.path for r in fixture_site.requests if r.server == "quiet-co"]
    assert "/team" in requested and "/products" not in requested


def test_max_discovery_pages_bounds_the_pages_read(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    before = len(fixture_site.requests)
    result, _ = crawl(
        fixture_site, [], tmp_path, name="harbor-labs", domain=fixture_site.domain_bases["harbor-labs"], max_discovery_pages=2
    )
    pages = [r.path for r in fixture_site.requests[before:] if r.server == "harbor-labs" and not r.path.startswith("/img/")]
    assert pages.count("/") == 1 and len([p for p in pages if p not in ("/robots.txt", "/sitemap.xml")]) == 2
    assert any("crawl.max_discovery_pages=2" in r["reason"] for r in discovered(result)["skipped"])


def test_an_opted_out_domain_is_not_even_asked_for_its_home_page(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    before = len(fixture_site.requests)
    base = fixture_site.domain_bases["quiet-co"]
    result, _ = crawl(fixture_site, [], tmp_path, name="quiet-co", domain=base, opt_out={"url_patterns": [base + "/*"]})
    assert not [r for r in fixture_site.requests[before:] if r.server == "quiet-co"]
    assert "opt-out: URL pattern" in discovered(result)["skipped"][0]["reason"]


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ("Our team", "/x", 3), ("", "/ueber-uns/", 1), ("Über uns", "/", 1), ("Notre équipe", "/fr/equipe", 6),
        ("Quiénes somos", "/", 1), ("Meet the team", "/about/the-people", 6), ("Blog", "/blog/team-offsite", -1),
        ("Careers", "/careers", -1), ("Services", "/services", 0), ("Steam engines", "/steamboat", 0),
    ],
)  # fmt: skip
def test_link_words_and_paths_in_several_languages(text: str, path: str, expected: int) -> None:
    assert hint(text, path) == expected


def test_sitemaps_are_read_as_untrusted_data() -> None:
    plain = b'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc> https://a.example/team </loc></url></urlset>'
    assert _sitemap_locations(plain) == (False, ["https://a.example/team"])
    assert _sitemap_locations(gzip.compress(plain)) == (False, ["https://a.example/team"])
    # Entities are not expanded (a "billion laughs" stays a few bytes) and never fetched from the network.
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE u [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY ext SYSTEM "http://127.0.0.2/secret">]><urlset><url><loc>https://a.example/&b;&ext;</loc></url></urlset>'
    )
    assert _sitemap_locations(laughs) == (False, ["https://a.example/"])
    with pytest.raises(ValueError, match="decompresses to more than"):
        _sitemap_locations(gzip.compress(b"<urlset>" + b" " * (MAX_SITEMAP_BYTES + 10) + b"</urlset>", compresslevel=1))
    with pytest.raises((ValueError, SyntaxError)):
        _sitemap_locations(b"\x00\x01 not xml at all")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x"}, "needs `urls`"),
        ({"name": "x", "domain": "example.com/team"}, "must be a host name"),
        ({"name": "x", "domain": "ftp://example.com"}, "must be a host name"),
        ({"name": "x", "domain": ""}, "must be a host name"),
    ],
)
def test_a_company_needs_pages_or_a_domain_and_a_domain_is_a_host(entry: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SiteEntry.model_validate(entry)
    assert SiteEntry(name="x", domain="example.com").origins == ["https://example.com", "http://example.com"]
    assert SiteEntry(name="x", domain="http://127.0.0.1:8080/").origins == ["http://127.0.0.1:8080"]


def test_a_sites_file_may_give_domains(tmp_path: Path) -> None:
    from pipeline.ingest.crawl import load_sites

    path = tmp_path / "sites.yaml"
    path.write_text(
        "companies:\n  - name: a\n    domain: a.example\n  - name: b\n    urls: [https://b.example/team]\n    domain: b.example\n"
    )
    assert [c.domain for c in load_sites(path).companies] == ["a.example", "b.example"]
    path.write_text("companies:\n  - name: a\n")
    with pytest.raises(SitesError, match="needs `urls`"):
        load_sites(path)


def test_homog_crawl_finds_pages_from_domains_and_logs_why(fixture_site, tmp_path: Path) -> None:  # noqa: ANN001
    import pandas as pd
    import yaml
    from typer.testing import CliRunner

    from pipeline.apps.cli import app

    sites = {
        "companies": [
            {"name": "cedar-finch", "domain": fixture_site.domain_bases["cedar-finch"]},
            {"name": "quiet-co", "domain": fixture_site.domain_bases["quiet-co"]},
            # Both: the given page, and what discovery adds to it (a given page is not chosen twice).
            {"name": "harbor-labs", "urls": [fixture_site.domain_bases["harbor-labs"] + "/leadership"], "domain": fixture_site.domain_bases["harbor-labs"]},
        ],
        "crawl": {"allow_private": ["127.0.0.1"], "min_delay_s": 0, "render": "never"},
    }  # fmt: skip
    (tmp_path / "sites.yaml").write_text(yaml.safe_dump(sites))
    out = tmp_path / "manifest.csv"
    result = CliRunner().invoke(
        app,
        [
            "crawl",
            "--sites",
            str(tmp_path / "sites.yaml"),
            "--out",
            str(out),
            "--warehouse",
            str(tmp_path / "wh"),
            "--run-date",
            "2026-11-28",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(out)
    assert manifest.groupby("company").size().to_dict() == {"cedar-finch": 6, "harbor-labs": 8}
    log = pd.read_csv(tmp_path / "manifest.crawl-log.csv")
    chosen = log[(log["kind"] == "discovery") & (log["status"] == "chosen")]
    assert sorted(chosen["url"].str.replace(r"^http://[^/]+", "", regex=True)) == [
        "/about/the-people",
        "/company/who-we-are",
        "/leadership",
    ]
    pages = log[log["kind"] == "page"]
    assert pages.groupby("company")["url"].nunique().to_dict() == {"cedar-finch": 1, "harbor-labs": 2}
    nothing = log[(log["company"] == "quiet-co") & log["reason"].str.startswith("no staff page found")]
    assert len(nothing) == 1


def test_a_brand_audit_may_start_from_a_domain(tmp_path: Path) -> None:
    from pipeline.apps.audit import AuditError, _company_source
    from pipeline.config import load_settings
    from pipeline.ingest.crawl import load_sites
    from tests.conftest import encode, photo_like

    settings = load_settings(None, warehouse=str(tmp_path / "wh"))
    rows, sites_file = _company_source("acme.example", "acme", settings)
    assert rows == [] and [(c.name, c.domain, c.urls) for c in load_sites(sites_file).companies] == [("acme", "acme.example", [])]
    _, sites_file = _company_source("https://acme.example/team", "acme", settings)
    assert load_sites(sites_file).companies[0].urls == ["https://acme.example/team"]
    folder = tmp_path / "acme.photos"  # a folder whose name looks like a domain is still the folder
    folder.mkdir()
    (folder / "a.jpg").write_bytes(encode(photo_like()))
    rows, sites_file = _company_source(str(folder), "acme", settings)
    assert sites_file == "" and len(rows) == 1
    with pytest.raises(AuditError, match="neither an http\\(s\\) URL, a domain nor a usable folder"):
        _company_source(str(tmp_path / "missing"), "acme", settings)

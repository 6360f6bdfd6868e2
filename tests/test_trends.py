"""Change over time: the demo's story night by night, what changed on a page since the previous run
(kept, replaced, added, removed photos; newly shared photos and faces; the index's move in words),
and the trends view that `homog trends` prints."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from pipeline.apps.demo import story
from pipeline.metrics.trends import CHANGE_COLUMNS, SHARED_COLUMNS, changes_table, newly_shared_table

PREVIOUS, NOW = "2026-11-27", "2026-11-28"


# ------------------------------------------------------------------ the demo's story
def _digests(files: dict[str, dict[str, bytes]]) -> dict[str, dict[str, str]]:
    return {company: {name: hashlib.sha256(data).hexdigest() for name, data in pictures.items()} for company, pictures in files.items()}


@pytest.fixture(scope="module")
def nights() -> dict[int, dict[str, dict[str, str]]]:
    return {night: _digests(story.night_pictures(night)) for night in range(1, story.NIGHTS + 1)}


def test_the_story_is_the_same_every_time_and_keeps_the_bytes_of_photos_that_stay(nights: dict) -> None:
    assert _digests(story.night_pictures(3)) == nights[3]
    northwind = {night: files["northwind-legal"] for night, files in nights.items()}
    assert all(northwind[night] == northwind[1] for night in nights)  # already templated: never changes
    assert nights[6] == nights[5]  # the quiet night
    with pytest.raises(ValueError, match="counted from 1"):
        story.night_pictures(0)


def test_each_night_changes_what_the_story_says(nights: dict) -> None:
    def changed(company: str, night: int) -> set[str]:
        before, after = nights[night - 1][company], nights[night][company]
        return {name for name in after if before.get(name) != after[name]}

    assert [len(changed("bluebird-bakery", night)) for night in range(2, 7)] == [3, 3, 3, 3, 0]
    assert len(nights[6]["bluebird-bakery"]) == 12  # the same people, every photo now the generator's
    assert [len(changed("alder-architects", night)) for night in range(2, 7)] == [0, 10, 0, 10, 0]
    assert nights[5]["alder-architects"] == nights[1]["alder-architects"]  # it went back to its own photos
    assert [len(nights[night]["copperleaf-consulting"]) for night in range(1, 7)] == [12, 12, 15, 15, 17, 17]
    assert [("founder_2.jpg" in nights[night]["tiny-startup"]) for night in range(1, 7)] == [False] * 3 + [True] * 3
    told = {(event.night, event.company) for event in story.events()}
    assert told == {(2, "bluebird-bakery"), (3, "bluebird-bakery"), (4, "bluebird-bakery"), (5, "bluebird-bakery"),
                    (3, "alder-architects"), (5, "alder-architects"), (3, "copperleaf-consulting"), (5, "copperleaf-consulting"),
                    (4, "tiny-startup")}  # fmt: skip


def test_the_site_follows_the_story_and_leaves_unchanged_files_alone(tmp_path) -> None:  # noqa: ANN001
    from pipeline.apps.demo.site import build_demo_site

    site = tmp_path / "site"
    build_demo_site(site, night=4)
    kept = site / "img" / "northwind-legal" / "staff_03.jpg"
    replaced = site / "img" / "bluebird-bakery" / "team_09.jpg"
    stamps = {path: path.stat().st_mtime_ns for path in (kept, replaced)}
    pages = build_demo_site(site, night=5)
    assert kept.stat().st_mtime_ns == stamps[kept]  # a server answers 304 for it
    assert replaced.stat().st_mtime_ns != stamps[replaced]
    assert (site / "img" / "tiny-startup" / "founder_2.jpg").is_file()
    build_demo_site(site, night=1)
    assert not (site / "img" / "tiny-startup" / "founder_2.jpg").exists()  # taken off the page: gone from the site
    assert "alder-architects" in pages and (site / pages["alder-architects"][0].lstrip("/")).is_file()


# ------------------------------------------------------------------ what changed since the previous run
def _images(rows: list[tuple[str, str, str]], status: str = "ok") -> pd.DataFrame:
    """(company, URL on the page, content) -> an images table as intake writes it."""
    return pd.DataFrame(
        [
            {"company": c, "image": f"raw/{content}.jpg", "image_url": url, "content_sha256": content, "status": status}
            for c, url, content in rows
        ]
    )


def _run(images: pd.DataFrame, reuse: pd.DataFrame | None = None, identities: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    empty = pd.DataFrame(columns=["image_a", "image_b", "company_a", "company_b"])
    return {"images": images, "reuse": empty if reuse is None else reuse, "identities": empty if identities is None else identities}


def _pair(a: tuple[str, str], b: tuple[str, str]) -> dict[str, str]:
    return {"company_a": a[0], "image_a": f"raw/{a[1]}.jpg", "company_b": b[0], "image_b": f"raw/{b[1]}.jpg"}


def _trend(company: str, index: float, previous: float | None, significant: bool, previous_run: str = PREVIOUS) -> dict:
    return {"company": company, "run_date": NOW, "homogeneity_index": index, "previous_index": np.nan if previous is None else previous,
            "change": np.nan if previous is None else index - previous, "significant": significant,
            "previous_run_date": previous_run if previous is not None else None}  # fmt: skip


def test_kept_replaced_added_removed_are_told_apart() -> None:
    before = _images([("acme", "u/1", "c1"), ("acme", "u/2", "c2"), ("acme", "u/3", "c3"), ("acme", "u/4", "c4")])
    now = _images(
        [
            ("acme", "u/1", "c1"),  # kept
            ("acme", "u/2", "c2-new"),  # replaced: same place, another photo
            ("acme", "u/moved", "c3"),  # moved on the page: the same photo, kept
            ("acme", "u/5", "c5"),  # added
        ]
    )  # fmt: skip  (u/4 removed)
    trends = pd.DataFrame([_trend("acme", 0.62, 0.31, True)])
    table = changes_table(_run(now), _run(before), PREVIOUS, trends, newly_shared_table(_run(now), _run(before), NOW), NOW)
    assert list(table.columns) == CHANGE_COLUMNS
    row = table.iloc[0]
    assert (row.n_photos, row.n_kept, row.n_replaced, row.n_added, row.n_removed) == (4, 2, 1, 1, 1)
    assert row.summary == "1 of 4 photos replaced, 1 photo added, 1 photo removed; index 0.31 to 0.62, a significant rise"


@pytest.mark.parametrize(
    ("trend", "words"),
    [
        (_trend("acme", 0.40, 0.38, False), "no photo changed; index 0.38 to 0.40, within its intervals"),
        (_trend("acme", 0.40, 0.40, False), "no photo changed; index 0.40, unchanged"),
        (_trend("acme", 0.20, 0.60, True), "no photo changed; index 0.60 to 0.20, a significant fall"),
        (_trend("acme", 0.40, None, False), "no photo changed; index 0.40, none comparable the run before"),
        # joined with an older run (the one before was measured otherwise): not this night's move
        (_trend("acme", 0.40, 0.10, True, previous_run="2026-11-01"), "no photo changed; index 0.40, none comparable the run before"),
        (None, "no photo changed; too few photos for an index"),
    ],
)
def test_the_index_move_in_words(trend: dict | None, words: str) -> None:
    images = _images([("acme", "u/1", "c1"), ("acme", "u/2", "c2")])
    trends = pd.DataFrame([trend]) if trend else pd.DataFrame(columns=["company", "run_date"])
    table = changes_table(_run(images), _run(images), PREVIOUS, trends, newly_shared_table(_run(images), _run(images), NOW), NOW)
    assert table.iloc[0].summary == words


def test_the_first_run_has_nothing_to_compare_with_and_an_empty_run_no_rows() -> None:
    images = _images([("acme", "u/1", "c1"), ("acme", "u/2", "c2")])
    first = changes_table(
        _run(images), None, "", pd.DataFrame([_trend("acme", 0.4, None, False)]), pd.DataFrame(columns=SHARED_COLUMNS), NOW
    )
    assert first.iloc[0].previous_run_date == "" and first.iloc[0].summary == "first run: 2 photos"
    empty = changes_table(_run(_images([])), _run(images), PREVIOUS, pd.DataFrame(), pd.DataFrame(columns=SHARED_COLUMNS), NOW)
    assert empty.empty and list(empty.columns) == CHANGE_COLUMNS


def test_refused_rows_are_not_photos_of_the_page() -> None:
    before = _images([("acme", "u/1", "c1")])
    now = pd.concat([_images([("acme", "u/1", "c1")]), _images([("acme", "u/2", "broken")], status="error")], ignore_index=True)
    row = changes_table(_run(now), _run(before), PREVIOUS, pd.DataFrame(), pd.DataFrame(columns=SHARED_COLUMNS), NOW).iloc[0]
    assert (row.n_photos, row.n_added, row.n_kept) == (1, 0, 1)


def test_sharing_is_new_only_where_one_of_the_photos_is_new() -> None:
    before = _images([("acme", "u/1", "a1"), ("acme", "u/2", "a2"), ("beta", "v/1", "b1")])
    now = _images([("acme", "u/1", "a1"), ("acme", "u/2", "a2"), ("beta", "v/1", "b1"), ("beta", "v/2", "b2")])
    reuse = pd.DataFrame([_pair(("acme", "a1"), ("beta", "b2"))])  # beta's new photo is a copy of acme's
    # Two faces matched among photos both pages already showed (the matcher's neighbours moved): not new.
    # A face of beta's new photo matched on acme's page: new.
    faces = pd.DataFrame([_pair(("acme", "a2"), ("beta", "b1")), _pair(("acme", "a2"), ("beta", "b2"))])
    same_page = pd.DataFrame([_pair(("beta", "b1"), ("beta", "b2"))])
    current, previous = _run(now, reuse, pd.concat([faces, same_page])), _run(before)
    shared = newly_shared_table(current, previous, NOW)
    assert list(shared.columns) == SHARED_COLUMNS
    assert sorted(map(tuple, shared[["image_a", "image_b", "kind"]].values)) == [
        ("raw/a1.jpg", "raw/b2.jpg", "copy"), ("raw/a2.jpg", "raw/b2.jpg", "face")]  # fmt: skip
    assert set(shared["first_seen"]) == {NOW}
    table = changes_table(current, previous, PREVIOUS, pd.DataFrame(), shared, NOW).set_index("company")
    # A copy concerns both pages; a face only the page whose photo is new.
    assert (table.loc["acme", "n_new_copies"], table.loc["acme", "n_new_faces"]) == (1, 0)
    assert (table.loc["beta", "n_new_copies"], table.loc["beta", "n_new_faces"]) == (1, 1)
    assert "1 photo newly copied across companies" in table.loc["acme", "summary"]
    # Nothing new the night after: the same pairs among the same photos.
    assert newly_shared_table(current, current, "2026-11-29").empty
    # No previous run: every pair across companies is new.
    assert len(newly_shared_table(current, None, NOW)) == 3


# ------------------------------------------------------------------ history in the warehouse: the list of runs, the audit's copy
@pytest.mark.parametrize("root", ["local", "memory"])
def test_the_runs_index_lists_every_report_and_says_which_summary_is_broken(root: str, tmp_path) -> None:  # noqa: ANN001
    import json
    import uuid

    from pipeline.report.render import render_runs_index
    from pipeline.warehouse import Warehouse

    reports = Warehouse(str(tmp_path / "reports") if root == "local" else f"memory://reports-{uuid.uuid4().hex}")
    for date, significant in (
        ("2026-11-27", []),
        ("2026-11-28", [{"company": "acme <b>", "summary": "s", "significant": True, "up": True}]),
    ):
        summary = {"run_date": date, "embedder": "classic-v1", "companies": [{}, {}], "n_ok": 9, "n_rows": 10, "near_dup_rate": 0.1,
                   "n_cross_company_pairs": 1, "n_new_copies": 1, "n_new_faces": 0, "median_index": 0.4, "changes": significant}  # fmt: skip
        reports.write_bytes(f"{date}/summary.json", json.dumps(summary).encode())
    reports.write_bytes("2026-11-29/summary.json", b"{cut short")
    reports.write_bytes(
        "2026-11-24/summary.json", json.dumps({"run_date": "2026-11-24", "embedder": "classic-v1"}).encode()
    )  # older, fewer fields
    reports.write_bytes("2026-11-23/summary.json", b'["not", "a", "summary"]')
    reports.write_bytes("2026-11-26/notes.json", b"{}")  # not a summary: not listed
    assert reports.keys_matching("*/summary.json") == [f"2026-11-{day}/summary.json" for day in (23, 24, 27, 28, 29)]
    render_runs_index(reports)
    page = reports.read_bytes("index.html").decode()
    assert page.index("2026-11-29") < page.index("2026-11-28") < page.index("2026-11-27") < page.index("2026-11-24")  # newest first
    assert page.count("its summary.json cannot be read") == 2  # the one cut short and the one that is not a summary
    assert 'href="2026-11-24/index.html"' in page  # an older summary without the newer figures is still listed
    assert 'href="2026-11-28/index.html"' in page and "acme &lt;b&gt; (rise)" in page  # scraped names are escaped
    assert "2026-11-26" not in page


def test_an_audit_copies_the_history_of_finished_runs_before_its_date(tmp_path) -> None:  # noqa: ANN001
    from pipeline import layout
    from pipeline.apps.audit import copy_history
    from pipeline.warehouse import Warehouse

    nightly, audit = Warehouse(str(tmp_path / "nightly")), Warehouse(str(tmp_path / "audit"))
    frame = pd.DataFrame({"company": ["acme"], "homogeneity_index": [0.4]})
    for date in ("2026-11-25", "2026-11-26", "2026-11-27", "2026-11-28"):
        nightly.write_table("companies", date, frame)
        nightly.write_table("changes", date, frame)
        if date != "2026-11-26":  # killed half-way: no run.json
            nightly.write_json(layout.run_record(date), {"run_date": date})
    assert copy_history(nightly, audit, "2026-11-28") == 2  # the audit's own date is its own
    assert audit.run_dates("companies") == ["2026-11-25", "2026-11-27"] and audit.run_dates("changes") == ["2026-11-25", "2026-11-27"]
    assert copy_history(Warehouse(str(tmp_path / "empty")), audit, "2026-11-28") == 0


def test_runs_measured_with_another_embedder_or_reference_are_named_not_joined(tmp_path) -> None:  # noqa: ANN001
    from pipeline.metrics.trends import trends_table
    from pipeline.report.data import _not_joined
    from pipeline.warehouse import Warehouse

    store = Warehouse(str(tmp_path / "wh"))

    def page(index: float, embedder: str, reference: str) -> pd.DataFrame:
        return pd.DataFrame([{"company": "acme", "n_images": 12, "homogeneity_index": index, "ci_low": index - 0.05, "ci_high": index + 0.05,
                              "near_dup_rate": 0.0, "embedder": embedder, "index_reference": reference, "status": "ok"}])  # fmt: skip

    store.write_table("companies", "2026-11-25", page(0.30, "clip-ViT-B-32", "400@aaaa"))
    store.write_table("companies", "2026-11-26", page(0.31, "classic-v1", "184@old"))
    store.write_table("companies", "2026-11-27", page(0.32, "classic-v1", "184@new"))
    now = page(0.70, "classic-v1", "184@new")
    trends = trends_table(store.read_table("companies"), now, "2026-11-28")
    assert list(trends["run_date"]) == ["2026-11-27", "2026-11-28"]  # no line through other scales
    assert bool(trends.iloc[-1]["significant"]) and trends.iloc[-1]["previous_run_date"] == "2026-11-27"
    named = _not_joined(store, "2026-11-28", "classic-v1", "184@new")
    assert named.to_dict("records") == [
        {"run_date": "2026-11-25", "embedder": "clip-ViT-B-32", "index_reference": "400@aaaa"},
        {"run_date": "2026-11-26", "embedder": "classic-v1", "index_reference": "184@old"},
    ]


def test_a_report_names_the_runs_it_does_not_join_instead_of_drawing_through_them(tmp_path) -> None:  # noqa: ANN001
    """Where the index reference changed between runs (a refit), the later report says which earlier
    run is on another scale, and its charts and 'since' section do not join the two."""
    from pipeline.apps.demo.data import generate_demo_images
    from pipeline.config import load_settings
    from pipeline.features.reference import fit_reference, save_reference
    from pipeline.ingest.sources import read_manifest
    from pipeline.stages import run_pipeline
    from pipeline.warehouse import Warehouse

    rows = read_manifest(str(generate_demo_images(tmp_path / "demo", per_company=4)))
    settings = load_settings(warehouse=str(tmp_path / "wh"), reports=str(tmp_path / "reports"), embedder="classic")
    run_pipeline(rows, settings, run_date="2026-11-27", progress=False)
    refit = fit_reference(np.random.default_rng(0).normal(size=(3, 785)), "classic-v1", "a refit")
    save_reference(Warehouse(str(tmp_path / "wh")), refit)
    run_pipeline(rows, settings, run_date="2026-11-28", progress=False)
    page = (tmp_path / "reports" / "2026-11-28" / "index.html").read_text()
    assert "Not joined: 1 earlier run(s)" in page and "2026-11-27: <code>classic-v1</code>" in page
    assert "Homogeneity over time" not in page  # one run on this scale: no line to draw
    trends = pd.read_parquet(tmp_path / "wh" / "tables" / "trends" / "run_date=2026-11-28" / "part-0.parquet")
    assert set(trends["run_date"]) == {"2026-11-28"}
    changes = pd.read_parquet(tmp_path / "wh" / "tables" / "changes" / "run_date=2026-11-28" / "part-0.parquet")
    rated = changes[changes["homogeneity_index"].notna()]
    assert len(rated) and rated["summary"].str.endswith("none comparable the run before").all()


def test_homog_trends_reads_trends_written_before_the_template_index(tmp_path) -> None:  # noqa: ANN001
    """A warehouse whose last trends table predates the template index: the view has the template
    columns empty, the table prints, and a newer table's template change is shown with its flag."""
    from typer.testing import CliRunner

    from pipeline import layout
    from pipeline.apps.cli import app
    from pipeline.metrics.trends import TREND_COLUMNS
    from pipeline.report.data import trends_view
    from pipeline.warehouse import Warehouse

    store = Warehouse(str(tmp_path / "wh"))
    old = {"company": "acme", "embedder": "classic-v1", "run_date": "2026-11-27", "n_images": 12, "homogeneity_index": 0.3,
           "ci_low": 0.25, "ci_high": 0.35, "near_dup_rate": 0.0, "previous_run_date": None, "previous_index": float("nan"),
           "change": float("nan"), "z": float("nan"), "significant": False, "direction": ""}  # fmt: skip
    store.write_table("trends", "2026-11-27", pd.DataFrame([old]))
    store.write_json(layout.run_record("2026-11-27"), {"run_date": "2026-11-27"})
    view = trends_view(store)
    assert view["template_index"].isna().all() and not view["template_significant"].any()
    out = CliRunner().invoke(app, ["trends", "--warehouse", str(tmp_path / "wh")])
    assert out.exit_code == 0, out.output
    assert "acme" in out.output and "template (change)" in out.output

    new = {
        **old,
        "run_date": "2026-11-28",
        "template_index": 0.12,
        "template_change": 0.08,
        "template_z": 4.0,
        "template_significant": True,
    }
    store.write_table("trends", "2026-11-28", pd.DataFrame([{**old, "template_index": 0.04}, new], columns=TREND_COLUMNS))
    store.write_json(layout.run_record("2026-11-28"), {"run_date": "2026-11-28"})
    out = CliRunner().invoke(app, ["trends", "--warehouse", str(tmp_path / "wh")])
    assert "0.120 (+0.080*)" in out.output and "0.040" in out.output

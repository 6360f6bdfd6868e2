"""Reports: rendered from the warehouse, escaped, script-free, and checked in a real browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline.apps.demo.data import CORPORATE_TEMPLATE, jpeg_bytes, random_sitter, random_template, render
from pipeline.config import load_settings
from pipeline.features.reference import fit_reference, save_reference
from pipeline.ingest.sources import read_manifest
from pipeline.layout import reference_file as reference_key
from pipeline.report.plots import sparkline
from pipeline.stages import run_pipeline
from pipeline.warehouse import Warehouse

RUN_DATE = "2026-11-28"
HOSTILE_COMPANY = 'Acme <script>window.__pwned = 1</script> "Q" \u202etxt.exe \u200b\U0001f600'
HOSTILE_PERSON = '<img src=x onerror="window.__pwned = 1"> O\'Brien \u0301e'
HOSTILE_FILE = "<i>bold 'quote\" &amp; amp.jpg"  # no slash: it is a file name
# What intake keeps of the name: the markup (escaped on every page), not the right-to-left override or
# the zero-width space, which would let a name be displayed as another.
SHOWN_COMPANY = 'Acme <script>window.__pwned = 1</script> "Q" txt.exe \U0001f600'


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import numpy as np

    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(3)
    rows = []
    for company, template_of in ((HOSTILE_COMPANY, lambda: CORPORATE_TEMPLATE), ("plain & simple", lambda: random_template(rng))):
        folder = root / ("hostile" if company == HOSTILE_COMPANY else "plain")
        folder.mkdir()
        for i in range(6):
            name = HOSTILE_FILE.replace(".jpg", f"{i}.jpg") if company == HOSTILE_COMPANY else f"p{i}.jpg"
            (folder / name).write_bytes(jpeg_bytes(render(template_of(), random_sitter(rng), i)))
            rows.append({"company": company, "image": f"{folder.name}/{name}", "person": HOSTILE_PERSON if i == 0 else f"Person {i}"})
    rows.append({"company": "plain & simple", "image": "plain/missing.jpg", "person": ""})  # a failure for data quality
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    settings = load_settings(None, warehouse=str(root / "wh"), reports=str(root / "reports"), embedder="classic")
    result = run_pipeline(read_manifest(str(manifest)), settings, run_date=RUN_DATE, progress=False)
    return {"result": result, "root": root, "settings": settings}


def test_reports_are_written_with_summary_and_audit_pages(hostile_run: dict) -> None:
    result = hostile_run["result"]
    report = Path(result.outputs["report"])
    assert report == hostile_run["root"] / "reports" / RUN_DATE / "index.html" and report.is_file()
    summary = json.loads(Path(result.outputs["summary"]).read_text())
    assert summary["run_date"] == RUN_DATE and summary["embedder"] == "classic-v1" and summary["offline"] is True
    assert {c["company"] for c in summary["companies"]} == {SHOWN_COMPANY, "plain & simple"}
    assert summary["failures"]["n_failed"] == 1
    pages = sorted((report.parent / "companies").glob("*.html"))
    assert len(pages) == 2
    html = report.read_text()
    assert "<script>" not in html and "&lt;script&gt;window.__pwned" in html  # escaped, not dropped
    assert "Offline embedder" in html and "missing.jpg" in html  # banner; data quality lists the failure
    assert "template index (95% CI)" in html
    audit = " ".join(page.read_text() for page in pages)
    # Each audit page gives the template index and its parts, or says why it has none.
    assert audit.count("Template index") == 2 and "share of the index" in audit and "colour grade" in audit


def test_report_regenerates_from_the_warehouse_alone(hostile_run: dict) -> None:
    from typer.testing import CliRunner

    from pipeline.apps.cli import app

    report = Path(hostile_run["result"].outputs["report"])
    before = report.read_bytes()
    report.unlink()
    out = CliRunner().invoke(app, ["report", "--run-date", RUN_DATE, "--warehouse", str(hostile_run["root"] / "wh"),
                                   "--reports", str(hostile_run["root"] / "reports")])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert report.read_bytes() == before  # same inputs, same page: nothing recomputed, nothing random
    missing = CliRunner().invoke(app, ["report", "--run-date", "2020-01-01", "--warehouse", str(hostile_run["root"] / "wh")])
    assert missing.exit_code == 2 and "no finished run" in missing.output


def test_audit_pages_rendered_in_worker_processes_are_the_pages_of_one_process(
    hostile_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 20,000 photos a night writes ~840 audit pages: they are rendered in worker processes, each
    with the run's data, and must come out byte for byte as one process writes them."""
    from pipeline import parallel
    from pipeline.context import RunContext
    from pipeline.layout import run_record
    from pipeline.report.render import render_report

    monkeypatch.setattr(parallel, "MIN_PARALLEL_SECONDS", 0.0)  # two pages are worth workers here
    spread = []
    real_map = parallel.process_map
    monkeypatch.setattr(
        parallel,
        "process_map",
        lambda function, items, workers, seconds: spread.append((len(items), workers)) or real_map(function, items, workers, seconds),
    )
    pages = {}
    for workers in (1, 2):
        settings = hostile_run["settings"].model_copy(update={"reports": str(tmp_path / f"reports-{workers}")})
        settings = settings.model_copy(update={"compute": settings.compute.model_copy(update={"workers": workers})})
        ctx = RunContext(settings, RUN_DATE)
        run = ctx.warehouse.read_json(run_record(RUN_DATE))
        assert render_report(ctx.with_embedder(run["embedder"], 0, run.get("embedder_fallback", "")))["audit_pages"] == 2
        pages[workers] = {
            page.name: page.read_bytes() for page in (tmp_path / f"reports-{workers}" / RUN_DATE / "companies").glob("*.html")
        }
    assert spread == [(1, 1), (2, 2)]  # one job per worker
    assert len(pages[1]) == 2 and pages[2] == pages[1]


def test_a_workers_share_of_the_run_holds_its_pages_vectors_and_the_whole_runs_figures(hostile_run: dict) -> None:
    """What a worker gets (`RunData.for_pages`): the centred vectors of its pages' photos only, as the
    whole run has them, no raw vectors, and the population's figures of the whole run."""
    import numpy as np

    from pipeline.context import RunContext
    from pipeline.layout import run_record
    from pipeline.report.data import load_run

    ctx = RunContext(hostile_run["settings"], RUN_DATE)
    run = ctx.warehouse.read_json(run_record(RUN_DATE))
    whole = load_run(ctx.with_embedder(run["embedder"], 0, run.get("embedder_fallback", "")))
    part = whole.for_pages(["plain & simple"])
    mine = set(whole.ok_images.loc[whole.ok_images["company"] == "plain & simple", "content_sha256"])
    assert set(part.keys) == mine and len(mine) == 6 and len(whole.keys) == 12
    for key in part.keys:
        assert np.array_equal(part.centred[part.row_of[key]], whole.centred[whole.row_of[key]])
    assert len(part.vectors) == 0
    assert np.array_equal(part.centre, whole.centre) and np.array_equal(part.population_similarities, whole.population_similarities)
    assert whole.for_pages(["no such page"]).centred.shape == (0, whole.centred.shape[1])


def test_a_page_larger_than_the_gallery_shows_a_seeded_sample(hostile_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.context import RunContext
    from pipeline.layout import run_record
    from pipeline.report import render

    monkeypatch.setattr(render, "GALLERY_LIMIT", 4)  # each page has 6 photos
    pages = []
    for attempt in range(2):
        settings = hostile_run["settings"].model_copy(update={"reports": str(tmp_path / f"reports-{attempt}")})
        ctx = RunContext(settings, RUN_DATE)
        run = ctx.warehouse.read_json(run_record(RUN_DATE))
        render.render_report(ctx.with_embedder(run["embedder"], 0, run.get("embedder_fallback", "")))
        pages.append(sorted(page.read_text() for page in (tmp_path / f"reports-{attempt}" / RUN_DATE / "companies").glob("*.html")))
    assert len(pages[0]) == 2 and all("6 photos: a seeded sample is shown." in page for page in pages[0])
    assert pages[0] == pages[1]  # the same sample every time


def test_report_similarities_are_the_index_s_centred_ones(hostile_run: dict) -> None:
    """The audit page's histogram and generic/distinctive photos use the vectors the index uses: the
    run's reference taken out (raw cosine cannot tell a templated page from a diverse one)."""
    import numpy as np

    from pipeline.context import RunContext
    from pipeline.features.reference import stored_reference
    from pipeline.report.data import load_run

    ctx = RunContext(hostile_run["settings"], RUN_DATE).with_embedder("classic-v1", 0)
    data = load_run(ctx)
    reference = stored_reference(ctx.warehouse, "classic-v1", data.vectors.shape[1])
    assert reference is not None and data.index_reference == reference.id
    assert np.allclose(data.centred, reference.centre(data.vectors))
    assert not np.allclose(data.centred, data.vectors)  # the reference does take something out
    page = next((hostile_run["root"] / "reports" / RUN_DATE / "companies").glob("*.html")).read_text()
    assert "with the index reference taken out as the homogeneity index does" in page


def test_the_map_projection_is_plain_arrays_and_a_pickle_planted_there_is_never_run(hostile_run: dict, tmp_path: Path) -> None:
    """The UMAP model was stored as a pickle: on a shared bucket, code execution for anyone who can
    write there. The map is now stored as arrays read with allow_pickle=False; a file with object
    arrays (a pickle inside an .npz) is refused unread and a new map is fitted."""
    import io
    import os

    import numpy as np

    from pipeline.context import RunContext
    from pipeline.layout import projection_file
    from pipeline.report.data import load_run
    from pipeline.report.projection import Projection, umap_map

    ctx = RunContext(hostile_run["settings"], RUN_DATE).with_embedder("classic-v1", 0)
    stored = Projection.from_bytes(ctx.warehouse.read_bytes(projection_file("classic-v1")))
    assert stored.fitted_on == RUN_DATE and stored.points.shape == (len(stored.keys), 2) and stored.vectors.dtype == np.float32

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    planted = io.BytesIO()
    np.savez(
        planted, fitted_on=np.array(RUN_DATE), keys=np.array([Payload()], dtype=object), vectors=np.zeros((1, 2)), points=np.zeros((1, 2))
    )
    store = ctx.warehouse
    original = store.read_bytes(projection_file("classic-v1"))
    store.write_bytes(projection_file("classic-v1"), planted.getvalue())
    try:
        picture, _ = umap_map(store, load_run(ctx))
        assert picture is not None and not (tmp_path / "pwned").exists()
        assert Projection.from_bytes(store.read_bytes(projection_file("classic-v1"))).fitted_on == RUN_DATE  # refitted
    finally:
        store.write_bytes(projection_file("classic-v1"), original)


def test_report_of_a_run_without_reference_says_raw_cosine(tmp_path: Path) -> None:
    """A reference the run recorded but the warehouse no longer holds: the report falls back to raw
    cosine and says so in the log, instead of centring with another reference."""
    import numpy as np

    from pipeline.report.data import _reference_centred
    from pipeline.warehouse import Warehouse

    vectors = np.eye(3, dtype=np.float32)
    centred = _reference_centred(Warehouse(str(tmp_path)), "no-such-embedder", vectors, "7@deadbeef0000")
    assert np.allclose(centred, vectors)


def test_sparkline_is_numbers_only() -> None:
    assert sparkline([0.2, None]) == ""
    svg = sparkline([0.2, 0.5, 0.9])
    assert svg.startswith("<svg") and "polyline" in svg


def watch(page) -> list[str]:  # noqa: ANN001
    """Console errors and warnings, page errors and any request leaving the file: every one is a problem."""
    problems: list[str] = []
    page.on(
        "console",
        lambda message: problems.append(f"console {message.type}: {message.text}") if message.type in ("error", "warning") else None,
    )
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "request", lambda request: problems.append(f"network: {request.url}") if not request.url.startswith(("file:", "data:")) else None
    )
    return problems


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by `make test`")
def test_pages_in_headless_chromium_run_no_script_and_show_their_images(hostile_run: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    report = Path(hostile_run["result"].outputs["report"])
    pages = [report, *sorted((report.parent / "companies").glob("*.html"))]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--headless", "--no-sandbox"])
        try:
            for index, page_path in enumerate(pages):
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                problems = watch(page)
                page.goto(page_path.as_uri())
                page.wait_for_load_state("load")
                assert problems == [], (page_path.name, problems)
                assert page.evaluate("window.__pwned") is None  # no injected script or handler ran
                assert page.evaluate("document.scripts.length") == 0
                images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
                assert images and all(ok for _, ok in images), images
                if page_path == report or "acme" in page_path.name:
                    assert HOSTILE_COMPANY.split(" ")[1] in page.inner_text("body")  # the hostile name is shown as text
                shot = tmp_path / f"page-{index}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                print(f"screenshot: {shot}")
                page.close()
        finally:
            browser.close()


def test_audit_of_an_uploaded_folder_against_the_nightly_population(hostile_run: dict, tmp_path: Path) -> None:
    import numpy as np
    from typer.testing import CliRunner

    from pipeline.apps.cli import app

    root = hostile_run["root"]
    upload = tmp_path / "upload"
    upload.mkdir()
    rng = np.random.default_rng(11)
    for i in range(5):
        (upload / f"new{i}.jpg").write_bytes(jpeg_bytes(render(random_template(rng), random_sitter(rng), 100 + i)))
    shutil.copy(root / "plain" / "p1.jpg", upload / "reposted.jpg")  # a photo another company already shows
    before = pd.read_parquet(hostile_run["result"].outputs["images"])
    nightly = Warehouse(str(root / "wh"))
    chosen = fit_reference(np.random.default_rng(0).normal(size=(3, 785)), "classic-v1", "the nightly's own choice")
    save_reference(nightly, chosen)
    args = ["audit", str(upload), "--company", "Brand X", "--warehouse", str(root / "wh"), "--reports", str(root / "reports"), "--json"]
    try:
        out = CliRunner().invoke(app, args)
    finally:
        nightly.remove(reference_key("classic-v1"))
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout.strip().splitlines()[-1])
    audited = pd.read_parquet(result["run"]["outputs"]["companies"])
    assert set(audited["index_reference"]) == {chosen.id}  # measured like the nightly it is compared with
    page = Path(result["page"])
    assert page.is_file() and "Brand audit: Brand X" in page.read_text()
    assert result["population_run_date"] == RUN_DATE and result["population_rows"] == 12
    assert result["run"]["counts"]["cross_company_pairs"] >= 1 and result["run"]["counts"]["embedded"] == 5  # population vectors reused
    assert result["run"]["counts"]["faces_measured"] == 5  # and its face signals
    pd.testing.assert_frame_equal(pd.read_parquet(hostile_run["result"].outputs["images"]), before)  # the nightly is untouched
    missing = CliRunner().invoke(app, ["audit", str(tmp_path / "nope"), "--company", "X", "--warehouse", str(root / "wh")])
    assert missing.exit_code == 2 and "neither an http(s) URL, a domain nor a usable folder" in missing.output


def test_failures_count_photos_and_list_pages_and_empty_discoveries_apart() -> None:
    """`n_failed` counts unusable photos, never crawl-log rows; page errors and a discovery that found
    nothing are listed per company."""
    from types import SimpleNamespace

    from pipeline.report.render import _failures

    images = pd.DataFrame({"company": ["a", "a", "b"], "image": ["1", "2", "3"], "status": ["ok", "error", "ok"],
                           "error_kind": ["", "decode", ""], "error": ["", "truncated", ""]})  # fmt: skip
    crawl = pd.DataFrame({
        "company": ["a", "a", "b", "c", "c"], "kind": ["image", "page", "page", "discovery", "discovery"],
        "url": ["u1", "p1", "p2", "https://c.example/sitemap.xml", "https://c.example"],
        "status": ["kept", "error", "crawled", "not found", "error"],
        "reason": ["face found", "HTTP 500", "3 candidate pictures", "sitemap: HTTP 404", "no staff page found on c.example: tried ..."],
    })  # fmt: skip
    failures = _failures(SimpleNamespace(images=images, crawl_log=crawl))
    assert failures["n_failed"] == 1
    assert [row["page_error"] for row in failures["crawl"] if "page_error" in row] == [
        "p1: HTTP 500", "https://c.example: no staff page found on c.example: tried ...",
    ]  # fmt: skip


def test_audit_page_charts_are_inline_svg_with_escaped_text_and_no_missing_numbers() -> None:
    """The per-page charts are drawn as SVG (milliseconds each, one page per company and night): round
    ticks, labels escaped, gaps (NaN) left out rather than written as "nan", the same bytes every time."""
    import pandas as pd

    from pipeline.report.plots import RatedPages, population_plot, trend_plot
    from pipeline.report.svg import Chart, nice_ticks

    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0] and nice_ticks(-0.33, 1, 8) == [-0.2, 0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(3, 3) == [3] and nice_ticks(float("nan"), 1) == []
    chart = Chart((0, 1), (0, 2), "x <b>", 'y "label"', "a <script> chart")
    chart.line([0, 0.5, 1], [1, float("nan"), 2], "#000", label="<i>page</i>")
    svg = str(chart.svg())
    assert "<b>" not in svg and "<script>" not in svg and "<i>" not in svg and "&lt;i&gt;page&lt;/i&gt;" in svg
    assert "nan" not in svg.lower() and svg.startswith("<svg") and 'role="img"' in svg
    companies = pd.DataFrame({"company": ["a", "b"], "status": ["ok", "ok"], "homogeneity_index": [0.3, 0.5],
                              "ci_low": [0.2, float("nan")], "ci_high": [0.4, float("nan")]})  # fmt: skip
    rated = RatedPages.of(companies)
    assert population_plot(rated, "b") == population_plot(RatedPages.of(companies), "b") and "nan" not in str(population_plot(rated, "b"))
    trends = pd.DataFrame({"company": ["a", "a", "b", "b"], "run_date": ["2026-01-01", "2026-01-03"] * 2,
                           "homogeneity_index": [0.3, 0.6, 0.5, 0.5], "ci_low": [0.2, 0.5, 0.4, 0.4], "ci_high": [0.4, 0.7, 0.6, 0.6],
                           "significant": [False, True, False, False], "change": [float("nan"), 0.3, float("nan"), 0.0]})  # fmt: skip
    trend = str(trend_plot(trends, "a"))
    assert "2026-01-01" in trend and "2026-01-03" in trend and trend.count('<polygon fill="#bc4b51"') == 1  # one significant rise
    assert trend_plot(trends[trends["run_date"] == "2026-01-01"], "a") is None  # one run is not a trend


def test_an_audit_page_names_and_counts_its_photos_copied_onto_other_pages(tmp_path: Path) -> None:
    """Two photos of page "a" are copied (same bytes) onto page "b": a's page counts two photos shared
    with other pages, and its duplicate groups name the files (pages without person names)."""
    import numpy as np

    rng = np.random.default_rng(5)
    photos = [jpeg_bytes(render(random_template(rng), random_sitter(rng), i)) for i in range(6)]
    for company, chosen in (("a", (0, 1, 2)), ("b", (0, 1, 3, 4, 5))):
        (tmp_path / "pages" / company).mkdir(parents=True)
        for i in chosen:
            (tmp_path / "pages" / company / f"{company}-photo{i}.jpg").write_bytes(photos[i])
    from pipeline.ingest.sources import scan_folder

    settings = load_settings(None, warehouse=str(tmp_path / "wh"), reports=str(tmp_path / "reports"), embedder="classic")
    result = run_pipeline(scan_folder(str(tmp_path / "pages")), settings, run_date=RUN_DATE, progress=False)
    page_a = next((Path(result.outputs["report"]).parent / "companies").glob("a-*.html")).read_text()
    assert "2 of its photos are copies or near-copies of photos on other companies" in page_a
    assert "a-photo0.jpg" in page_a and "b-photo0.jpg" in page_a and "a-photo1.jpg" in page_a


def test_the_map_is_fitted_on_a_bounded_sample_and_places_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    """UMAP is fitted on at most MAX_FIT_PHOTOS photos (a seeded sample, the same each time); every
    other photo is placed among them."""
    from types import SimpleNamespace

    import numpy as np

    from pipeline.report import projection

    monkeypatch.setattr(projection, "MAX_FIT_PHOTOS", 12)
    vectors = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    data = SimpleNamespace(run_date=RUN_DATE, keys=[f"k{i:02d}" for i in range(30)], vectors=vectors)
    fitted = projection.fit_projection(data)  # type: ignore[arg-type]
    assert len(fitted.keys) == 12 and fitted.keys == projection.fit_projection(data).keys  # type: ignore[arg-type]
    rows = [data.keys.index(key) for key in fitted.keys]
    assert np.array_equal(fitted.vectors, vectors[rows]) and fitted.points.shape == (12, 2)
    assert np.isfinite(fitted.place(vectors)).all()


def test_the_map_is_fitted_on_exact_neighbours_handed_to_umap(monkeypatch: pytest.MonkeyPatch) -> None:
    """UMAP is given each photo's exact cosine neighbours (itself first, even where another photo has
    the very same vector) and never runs its own neighbour search, whose numba compilation cost
    seconds of every run that fits a map."""
    from types import SimpleNamespace

    import numpy as np
    import umap.umap_

    from pipeline.report import projection

    vectors = np.random.default_rng(2).normal(size=(40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[7] = vectors[3]  # one vector twice: either may come first in the search
    rows, distances = projection.cosine_knn(vectors, 5)
    similarity = vectors @ vectors.T
    for row in range(len(vectors)):
        assert rows[row, 0] == row and distances[row, 0] == 0.0
        others = np.delete(np.arange(len(vectors)), row)
        expected = np.sort(1.0 - similarity[row, others])[:4]
        assert np.allclose(distances[row, 1:], expected, atol=1e-5)
        assert np.allclose(distances[row, 1:], 1.0 - similarity[row, rows[row, 1:]], atol=1e-5)
    assert 3 in rows[7] and 7 in rows[3]

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("UMAP searched for neighbours itself")

    monkeypatch.setattr(umap.umap_, "nearest_neighbors", refuse)
    data = SimpleNamespace(run_date=RUN_DATE, keys=[f"k{i:02d}" for i in range(40)], vectors=vectors)
    fitted = projection.fit_projection(data)  # type: ignore[arg-type]
    assert fitted.points.shape == (40, 2) and np.isfinite(fitted.points).all()


def test_run_report_plots_stay_bounded_however_many_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 4,000 pages a chart with a row, a panel or a legend line per page would be unreadable (and
    the forest plot a picture 160,000 px tall): the forest plot draws the most homogeneous pages, the
    small multiples the pages that moved most (each its audit page's SVG chart), the changed-pages
    chart the largest significant moves; a grid of one run is no trend and draws nothing."""
    from types import SimpleNamespace

    import numpy as np

    from pipeline.report import plots

    monkeypatch.setattr(plots, "MAX_FOREST_ROWS", 3)
    monkeypatch.setattr(plots, "MAX_PANELS", 2)
    monkeypatch.setattr(plots, "MAX_CHANGED_LINES", 1)
    drawn: list = []
    monkeypatch.setattr(plots, "png", lambda figure: drawn.append(figure.axes[0]) or "png")
    names = [f"page{i}" for i in range(6)]
    companies = pd.DataFrame({"company": names, "status": ["ok"] * 5 + ["too_few_photos"],
                              "homogeneity_index": [0.1, 0.9, 0.5, 0.7, 0.3, np.nan], "ci_low": [0.0, 0.8, 0.4, 0.6, 0.2, np.nan],
                              "ci_high": [0.2, 1.0, 0.6, 0.8, 0.4, np.nan]})  # fmt: skip
    assert plots.forest_plot(companies) == "png"
    assert [label.get_text() for label in drawn[-1].get_yticklabels()] == [
        "page2",
        "page3",
        "page1",
    ]  # the three highest, the highest on top
    moves = {"page0": 0.05, "page1": 0.4, "page2": -0.3, "page3": 0.0, "page4": 0.2}
    trends = pd.DataFrame([{"company": c, "run_date": d, "homogeneity_index": 0.5 + (moves[c] if d == "2026-01-02" else 0), "ci_low": 0.45,
                            "ci_high": 0.55, "change": moves[c] if d == "2026-01-02" else np.nan,
                            "significant": d == "2026-01-02" and abs(moves[c]) > 0.1} for c in moves for d in ("2026-01-01", "2026-01-02")])  # fmt: skip
    assert plots.changed_plot(trends) == "png" and [text.get_text() for text in drawn[-1].get_legend().texts] == [
        "page1"
    ]  # the largest of three significant moves
    data = SimpleNamespace(trends=trends, population_band=plots.population_band(trends),
                           trends_of_company={c: rows for c, rows in trends.groupby("company")})  # fmt: skip
    grid = plots.trend_grid(data)  # type: ignore[arg-type]
    assert [panel["company"] for panel in grid] == ["page1", "page2"]  # moved most
    assert all(str(panel["chart"]).startswith("<svg") and 'width="260"' in str(panel["chart"]) for panel in grid)
    one_run = SimpleNamespace(trends=trends[trends["run_date"] == "2026-01-01"], population_band=data.population_band, trends_of_company={})
    assert plots.trend_grid(one_run) == []  # type: ignore[arg-type]
    # A page rated in one run only has no trend: it takes no panel, and the heading counts it out.
    newcomer = pd.concat([trends, pd.DataFrame([{"company": "a-newcomer", "run_date": "2026-01-02", "homogeneity_index": 0.5,
                                                 "ci_low": 0.45, "ci_high": 0.55, "change": np.nan, "significant": False}])])  # fmt: skip
    monkeypatch.setattr(plots, "MAX_PANELS", 5)
    with_newcomer = SimpleNamespace(trends=newcomer, population_band=plots.population_band(newcomer),
                                    trends_of_company={c: rows for c, rows in newcomer.groupby("company")})  # fmt: skip
    grid = plots.trend_grid(with_newcomer)  # type: ignore[arg-type]
    assert [panel["company"] for panel in grid] == ["page1", "page2", "page4", "page0", "page3"]
    assert list(plots.pages_with_trend(newcomer).index) == ["page1", "page2", "page4", "page0", "page3"]
    assert list(plots.pages_moved_significantly(newcomer).index) == ["page1", "page2", "page4"]


@pytest.mark.parametrize("n_pages", [3, 25])
def test_the_map_colours_each_photo_by_its_page_and_names_the_pages_only_where_few(
    n_pages: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to 20 pages: a layer per page, named in the legend. More (834 at 20,000 photos): one layer,
    each photo in its page's colour (a layer and a mask per page cost ~7 s a night there)."""
    from types import SimpleNamespace

    import numpy as np

    from pipeline import layout
    from pipeline.report import projection

    drawn: list = []
    monkeypatch.setattr(projection, "png", lambda figure: drawn.append(figure.axes[0]) or "png")
    keys = [f"k{i:02d}" for i in range(30)]
    pages = [f"page{i % n_pages:02d}" for i in range(30)]
    points = np.random.default_rng(2).normal(size=(30, 2))
    vectors = np.eye(30, 8, dtype=np.float32)
    store = Warehouse(str(tmp_path / "wh"))
    store.write_bytes(layout.projection_file("classic-v1"), projection.Projection(RUN_DATE, keys, vectors, points).to_bytes())
    data = SimpleNamespace(run_date=RUN_DATE, keys=keys, vectors=vectors, embedder="classic-v1",
                           ok_pictures=pd.DataFrame({"content_sha256": keys, "company": pages}))  # fmt: skip
    assert projection.umap_map(store, data)[0] == "png"  # type: ignore[arg-type]
    layers = drawn[-1].collections
    if n_pages <= 20:
        assert len(layers) == n_pages and [t.get_text() for t in drawn[-1].get_legend().texts] == sorted(set(pages))
        for layer, page in zip(layers, sorted(set(pages))):
            assert np.allclose(layer.get_offsets(), points[[p == page for p in pages]])
    else:
        assert len(layers) == 1 and drawn[-1].get_legend() is None
        colours = layers[0].get_facecolors()
        assert np.allclose(layers[0].get_offsets(), points) and len(colours) == 30
        for i in range(30):  # one colour per page; pages 20 apart share one of the palette's 20
            for j in range(30):
                same_colour = np.allclose(colours[i], colours[j])
                assert same_colour == (pages[i] == pages[j] or (i % n_pages) % 20 == (j % n_pages) % 20)


def test_each_pages_comparisons_with_the_others_come_from_one_sort_a_run() -> None:
    """An audit page compares its page with every other page (its rank, the other pages' median of each
    template signal): from one sorted copy a run, the same numbers as filtering the others out."""
    import numpy as np
    import pandas as pd

    from pipeline.report.plots import RatedPages, median_without

    rng = np.random.default_rng(3)
    values = np.round(rng.uniform(0, 1, 41), 2)  # rounded: ties occur
    values[[3, 9]] = np.nan  # pages without the signal
    companies = pd.DataFrame({"company": [f"c{i}" for i in range(41)], "homogeneity_index": values, "signal": values[::-1],
                              "status": ["ok" if np.isfinite(v) else "too_few_images" for v in values]})  # fmt: skip
    rated = RatedPages.of(companies)
    ascending = np.sort(companies["signal"].dropna().to_numpy())
    for row in companies.to_dict("records"):
        others = companies[companies["company"] != row["company"]]
        assert median_without(ascending, row["signal"]) == others["signal"].median()
        if row["status"] == "ok":
            ok_others = others[others["status"] == "ok"]
            assert rated.below(row["homogeneity_index"]) == (ok_others["homogeneity_index"] < row["homogeneity_index"]).sum()
    assert median_without(np.array([]), 0.5) is None and median_without(np.array([0.5]), 0.5) is None


def test_a_thumbnail_shows_where_it_is_stored_and_a_purged_or_unkept_one_is_left_out(warehouse_root: str) -> None:
    import base64

    from pipeline.report.data import thumbnail

    store = Warehouse(warehouse_root)
    store.write_bytes("objects/thumbnails/kept.jpg", b"\xff\xd8 a thumbnail")
    assert thumbnail(store, "objects/thumbnails/kept.jpg") == "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8 a thumbnail").decode()
    assert thumbnail(store, "objects/thumbnails/purged.jpg") is None  # listed in the images table, removed by retention since
    for not_kept in (None, float("nan"), ""):  # keep_thumbnails off: no key at all
        assert thumbnail(store, not_kept) is None


def test_a_run_places_only_photos_the_last_run_did_not_place_on_the_same_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A photo's place on the map depends on it and the map alone: a night keeps the last run's places
    and places its new photos; another map, or a damaged or planted places file, places every photo."""
    import io

    import numpy as np

    from pipeline.layout import projection_places_file
    from pipeline.report.projection import Projection, placed

    rng = np.random.default_rng(0)
    unit = lambda n: (v := rng.normal(size=(n, 8)).astype(np.float32)) / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    projection = Projection("2026-01-01", [f"f{i}" for i in range(30)], unit(30), rng.normal(size=(30, 2)))
    store = Warehouse(str(tmp_path / "wh"))
    vectors = unit(12)
    keys = [f"p{i}" for i in range(12)]
    placed_rows = []
    place = Projection.place
    monkeypatch.setattr(Projection, "place", lambda self, v: placed_rows.append(len(v)) or place(self, v))

    first = placed(store, projection, "classic-v1", keys[:10], vectors[:10])
    night = placed(store, projection, "classic-v1", keys[2:], vectors[2:])  # two left, two came
    assert placed_rows == [10, 2]
    assert np.allclose(night, place(projection, vectors[2:])) and np.array_equal(night[:8], first[2:])
    placed_rows.clear()
    refitted = Projection("2026-01-05", projection.keys, projection.vectors, projection.points + 1.0)
    assert np.allclose(placed(store, refitted, "classic-v1", keys[2:], vectors[2:]), night + 1.0) and placed_rows == [10]

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("never run",))

    for damaged in (
        b"not an npz",
        _npz(projection=np.array(refitted.id), keys=np.array([Payload()], dtype=object), points=np.zeros((1, 2))),
    ):
        store.write_bytes(projection_places_file("classic-v1"), damaged)
        placed_rows.clear()
        assert np.allclose(placed(store, refitted, "classic-v1", keys, vectors), place(refitted, vectors)) and placed_rows == [12]
    stored = np.load(io.BytesIO(store.read_bytes(projection_places_file("classic-v1"))), allow_pickle=False)
    assert list(stored["keys"]) == keys and str(stored["projection"]) == refitted.id  # this run's photos, no vector


def _npz(**arrays: object) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_audit_pages_of_pages_whose_photos_are_shared_are_the_same_in_a_worker_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker holds its pages' rows only (`RunData.for_pages`), yet a page shows photos of other
    companies (a copy on another page, a duplicate group across pages) and the page's history: on the
    demo's second night, with a worker per page, every page comes out byte for byte as one process
    writes it, and no worker holds another page's rows or the run's tables."""
    from pipeline import parallel
    from pipeline.apps.demo.data import write_pictures
    from pipeline.apps.demo.story import night_pictures
    from pipeline.context import RunContext
    from pipeline.layout import run_record
    from pipeline.report.data import load_run
    from pipeline.report.render import render_audit_pages

    settings = load_settings(None, warehouse=str(tmp_path / "wh"), reports=str(tmp_path / "reports"), embedder="classic")
    for night, run_date in ((1, "2026-03-01"), (2, "2026-03-02")):
        manifest = write_pictures(tmp_path / "site", night_pictures(night, per_company=4))
        run_pipeline(read_manifest(str(manifest)), settings, run_date=run_date, progress=False)
    ctx = RunContext(settings, "2026-03-02")
    data = load_run(ctx.with_embedder(ctx.warehouse.read_json(run_record("2026-03-02"))["embedder"], 0, ""))
    assert len(data.reuse) and data.groups["company"].nunique() > 1 and data.trends["run_date"].nunique() == 2  # what is to be cut

    part = data.for_pages(["copperleaf-consulting"])
    assert part.images.empty and part.trends.empty and part.change_history.empty
    assert set(part.ok_records_of_company) == {"copperleaf-consulting"} and len(data.ok_records_of_company) == 5
    assert set(part.trends_of_company) == set(data.trends_of_company) & {"copperleaf-consulting"} and len(data.trends_of_company) > 1
    assert {company for company, _ in part.ok_rows} == {"copperleaf-consulting", "northwind-legal"}  # the shared photo's other page
    assert len(part.ok_rows) < len(data.ok_rows)

    monkeypatch.setattr(parallel, "MIN_PARALLEL_SECONDS", 0.0)
    pages = {}
    for workers in (1, len(data.companies)):
        reports = Warehouse(str(tmp_path / f"reports-{workers}"))
        assert render_audit_pages(data, ctx.warehouse, reports, workers) == len(data.companies) == 5
        pages[workers] = {page.name: page.read_bytes() for page in (tmp_path / f"reports-{workers}").rglob("*.html")}
    assert len(pages[1]) == 5 and pages[5] == pages[1]
    shared = pages[1][next(name for name in pages[1] if "copperleaf" in name)].decode()
    assert "northwind-legal" in shared  # the page shows its photo's copy on the other company's page

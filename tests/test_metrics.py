"""Analytics on constructed cases with known answers, verification on generated edits, and the
tables `homog run` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.apps.demo.data import CORPORATE_TEMPLATE, generate_demo_images, random_sitter, render
from pipeline.config import load_settings
from pipeline.features.calibration import EDITS
from pipeline.features.face_signals import PAGE_COLUMNS
from pipeline.features.verify import features, verify
from pipeline.features.zero_shot import PAGE_COLUMNS as ZERO_SHOT_COLUMNS
from pipeline.ingest.sources import read_manifest
from pipeline.metrics.homogeneity import COMPANY_COLUMNS, homogeneity, pair_kernel, vendi_score
from pipeline.metrics.template_index import COMPONENTS
from pipeline.metrics.template_index import PAGE_COLUMNS as TEMPLATE_COLUMNS
from pipeline.stages import run_pipeline
from tests.conftest import photo_like


def unit_rows(n: int, dim: int = 16) -> np.ndarray:
    return np.eye(dim, dtype=np.float32)[:n]


# ------------------------------------------------------------- the index
def test_identical_photos_are_perfectly_homogeneous() -> None:
    vectors = np.repeat(unit_rows(1), 6, axis=0)
    index, low, high = homogeneity(pair_kernel(vectors @ vectors.T, np.zeros((6, 6), bool)), 200, seed=1)
    assert index == pytest.approx(1.0) and low == pytest.approx(1.0) and high == pytest.approx(1.0)
    assert vendi_score(vectors) == pytest.approx(1.0)


def test_orthogonal_photos_are_not_homogeneous_at_all() -> None:
    vectors = unit_rows(8)
    index, low, high = homogeneity(pair_kernel(vectors @ vectors.T, np.zeros((8, 8), bool)), 200, seed=1)
    assert index == pytest.approx(0.0) and high == pytest.approx(0.0)
    assert vendi_score(vectors) == pytest.approx(8.0)


def test_planted_duplicates_raise_the_index_by_the_known_amount() -> None:
    vectors = unit_rows(6)
    duplicate = np.zeros((6, 6), bool)
    duplicate[0, 1] = duplicate[1, 0] = True  # one verified near-duplicate pair of 15 pairs
    index, _, _ = homogeneity(pair_kernel(vectors @ vectors.T, duplicate), 200, seed=1)
    assert index == pytest.approx(1 / 15)


def test_index_does_not_depend_on_page_size_and_ci_narrows() -> None:
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    population = centre + 1.2 * rng.normal(size=(4000, 64))
    population /= np.linalg.norm(population, axis=1, keepdims=True)
    widths, indexes = [], []
    for n in (10, 40, 160):
        page = population[rng.choice(len(population), n, replace=False)]
        index, low, high = homogeneity(pair_kernel(page @ page.T, np.zeros((n, n), bool)), 400, seed=n)
        assert low <= index <= high
        indexes.append(index)
        widths.append(high - low)
    assert max(indexes) - min(indexes) < 0.05
    assert widths[0] > widths[1] > widths[2]


def test_a_page_listing_one_image_name_twice_keeps_one_row_per_photo() -> None:
    """Crawled pages can list one file name under two rows (a picture on two pages): the duplicate
    matrix follows the rows, so both indexes see a square matrix of the page's size."""
    from pipeline.metrics.homogeneity import duplicate_matrix

    pairs = pd.DataFrame({"image_a": ["a", "b"], "image_b": ["b", "z"]})
    matrix = duplicate_matrix(pd.Series(["a", "b", "a"]), pairs)
    assert matrix.shape == (3, 3) and matrix.sum() == 2  # a-b counted once (on a's last row), b-z not on the page
    assert matrix[1, 2] and matrix[2, 1] and not matrix[0].any()


def test_vendi_counts_groups() -> None:
    vectors = np.concatenate([np.repeat(unit_rows(3)[[i]], 4, axis=0) for i in range(3)])
    assert vendi_score(vectors) == pytest.approx(3.0)


# ------------------------------------------------------------- verification
@pytest.fixture(scope="module")
def sitters() -> list:
    rng = np.random.default_rng(21)
    return [render(CORPORATE_TEMPLATE, random_sitter(rng), seed) for seed in range(4)]


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_copies_verify_as_the_same_photo(edit: str) -> None:
    original = photo_like(320, 400, seed=4)
    assert verify(features(original), features(EDITS[edit](original))).same_photo


def test_different_sitters_of_one_template_are_not_the_same_photo(sitters: list) -> None:
    feats = [features(picture) for picture in sitters]
    for i in range(len(feats)):
        for j in range(i + 1, len(feats)):
            assert not verify(feats[i], feats[j]).same_photo


# ------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("analyze")
    manifest = generate_demo_images(root / "demo", per_company=8)
    result = run_pipeline(
        read_manifest(str(manifest)), load_settings(warehouse=str(root / "wh"), embedder="classic"), "2026-02-01", progress=False
    )
    return {name: pd.read_parquet(path) for name, path in result.outputs.items() if path and path.endswith(".parquet")}


def test_every_table_a_run_writes_has_the_documented_columns(demo_run: dict) -> None:
    from pipeline.tables import BY_NAME

    written = {name for name in demo_run if name in BY_NAME}
    assert written >= {"images", "faces", "zero_shot", "pairs", "clusters", "reuse", "identities", "companies", "trends"}
    for name in written:
        assert list(demo_run[name].columns) == BY_NAME[name].columns(), name


def test_pairs_find_the_planted_copies(demo_run: dict) -> None:
    pairs = demo_run["pairs"]
    as_set = {(a, b, kind) for a, b, kind in zip(pairs["image_a"], pairs["image_b"], pairs["kind"])}
    assert ("northwind-legal/staff_00.jpg", "northwind-legal/staff_00_copy.jpg", "exact") in as_set
    assert ("copperleaf-consulting/people_shared.jpg", "northwind-legal/staff_01.jpg", "exact") in as_set
    reposted = [kind for a, b, kind in as_set if "staff_00_reposted" in a + b]
    assert reposted and set(reposted) == {"near_duplicate"}  # cropped + recompressed copy found
    assert list(pairs.columns) == ["image_a", "image_b", "company_a", "company_b", "similarity", "kind", "link", "group_id"]


def test_companies_table(demo_run: dict) -> None:
    companies = demo_run["companies"].set_index("company")
    assert list(demo_run["companies"].columns) == [
        *COMPANY_COLUMNS, *PAGE_COLUMNS, *TEMPLATE_COLUMNS, *ZERO_SHOT_COLUMNS, "n_face_repeated", "n_face_shared", "inputs_digest"
    ]  # fmt: skip
    assert companies.loc["tiny-startup", "status"] == "too_few_images"
    assert np.isnan(companies.loc["tiny-startup", "homogeneity_index"])
    templated, varied = companies.loc["northwind-legal"], companies.loc["bluebird-bakery"]
    assert templated["homogeneity_index"] > varied["homogeneity_index"]
    assert templated["ci_low"] > varied["ci_high"]  # clearly apart, not just by chance
    assert templated["near_dup_rate"] > 0 and varied["near_dup_rate"] == 0
    # The template index beside it, from the shipped classic model, its parts adding up to it.
    assert templated["template_index"] > varied["template_index"]
    assert templated["template_ci_low"] <= templated["template_index"] <= templated["template_ci_high"]
    parts = [f"template_from_{part}" for part in COMPONENTS]
    assert templated[parts].sum() == pytest.approx(templated["template_index"])
    assert templated["template_model"].startswith("classic-v1@")
    assert np.isnan(companies.loc["tiny-startup", "template_index"]) and companies.loc["tiny-startup", "template_model"] == "none"
    assert companies.loc["copperleaf-consulting", "n_reused_images"] == 1
    assert companies.loc["copperleaf-consulting", "n_partner_companies"] == 1
    assert (companies["embedder"] == "classic-v1").all()


# ------------------------------------------------------------- rows kept from an earlier run
def _page_inputs(images: pd.DataFrame, tables: dict[str, pd.DataFrame], **thresholds: object):  # noqa: ANN202
    """What the pages stage hands the page metrics, for classic vectors drawn from the content hashes."""
    from pipeline.features.embed import Embeddings
    from pipeline.features.reference import fit_reference
    from pipeline.metrics.pages import PageInputs
    from pipeline.metrics.template_index import load_model

    dim = load_model("classic-v1").reference_whole.shape[1]

    def vectors_of(contents: list[str]) -> np.ndarray:
        vectors = np.stack([np.random.default_rng(int(c[1:])).normal(size=dim) for c in contents]).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    contents = sorted(set(images["content_sha256"]))
    reference = fit_reference(vectors_of([f"c{i}" for i in range(10)]), "classic-v1", "ten photos")  # fixed, as the run's is
    return PageInputs(
        settings=load_settings(thresholds=thresholds) if thresholds else load_settings(),
        images=images, embeddings=Embeddings("classic-v1", contents, vectors_of(contents), n_embedded=0),
        reference=reference, read=lambda table: tables.get(table, pd.DataFrame()),
    )  # fmt: skip


def _pairs(*pairs: tuple[str, str], **columns: object) -> pd.DataFrame:
    """Pairs of images ("page-0/1.jpg", ...) with the companies their names give."""
    return pd.DataFrame({"image_a": [a for a, _ in pairs], "image_b": [b for _, b in pairs], "company_a": [a.split("/")[0] for a, _ in pairs],
                         "company_b": [b.split("/")[0] for _, b in pairs], **columns})  # fmt: skip


def _pages(n_pages: int = 5, per_page: int = 6) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    companies = [f"page-{p}" for p in range(n_pages) for _ in range(per_page)]
    images = pd.DataFrame({
        "company": companies, "image": [f"{c}/{i % per_page}.jpg" for i, c in enumerate(companies)],
        "content_sha256": [f"c{i}" for i in range(len(companies))], "status": "ok", "uri": "elsewhere",
    })  # fmt: skip
    clusters = images[["image", "company"]].assign(cluster_id=-1)
    clusters.loc[[0, 1, 2], "cluster_id"] = 0  # three photos of page-0 in the run's largest cluster
    clusters.loc[[6, 7], "cluster_id"] = 1
    styles = {column: np.nan for column in ZERO_SHOT_COLUMNS}
    tables = {
        "zero_shot": pd.DataFrame({"company": [f"page-{p}" for p in range(n_pages)], **styles, "zero_shot_status": "no text tower"}),
        "pairs": _pairs(("page-0/0.jpg", "page-0/1.jpg"), ("page-1/0.jpg", "page-2/0.jpg"), similarity=1.0),
        "clusters": clusters,
        "identities": _pairs(("page-0/2.jpg", "page-3/2.jpg"), distance=0.3, same_page=False),
    }
    return images, tables


def test_page_metrics_whose_inputs_are_unchanged_keep_their_values_and_changed_ones_are_computed_as_afresh() -> None:
    from pipeline.metrics.pages import PAGE_METRICS, companies_table

    images, tables = _pages()
    first, computed_first = companies_table(_page_inputs(images, tables))
    again, computed_again = companies_table(_page_inputs(images, tables), first)
    twice = companies_table(_page_inputs(images, tables), pd.concat([first, first.iloc[[2]]], ignore_index=True))[0]  # a page listed twice
    pd.testing.assert_frame_equal(twice, first)
    assert computed_first == {metric.name: 5 for metric in PAGE_METRICS}
    assert computed_again == {metric.name: 0 for metric in PAGE_METRICS}
    pd.testing.assert_frame_equal(again, first)
    assert first["template_index"].notna().all() and first["inputs_digest"].is_unique
    assert first.set_index("company").loc[["page-0", "page-3"], "n_face_shared"].tolist() == [1, 1]

    # What a night changes. page-3: a photo replaced by another (new content); page-4: a photo's
    # status (refused now); page-2: another company's photo now copies one of its own (a pair that
    # names it, and page-1's); page-4's face is now found in page-1's photo too. A cluster found
    # elsewhere renumbers every cluster id of the run: pages 0 and 1 are grouped as before, so that
    # alone changes nothing.
    changed = images.copy()
    changed.loc[18, "content_sha256"] = "c99"
    changed.loc[24, "status"] = "error"
    night = {
        "pairs": pd.concat([tables["pairs"], _pairs(("page-1/1.jpg", "page-2/1.jpg"), similarity=1.0)], ignore_index=True),
        "clusters": tables["clusters"].assign(cluster_id=tables["clusters"]["cluster_id"].map({-1: -1, 0: 1, 1: 2})),
        "identities": pd.concat([tables["identities"], _pairs(("page-1/3.jpg", "page-4/3.jpg"), distance=0.3, same_page=False)]),
        "zero_shot": tables["zero_shot"].assign(ai_share=[np.nan, 0.5, np.nan, np.nan, np.nan]),  # page-1's styles measured anew
    }
    kept, computed = companies_table(_page_inputs(changed, night), first)
    pd.testing.assert_frame_equal(kept, companies_table(_page_inputs(changed, night))[0])
    # pages 1 and 2 (the new pair), 3 and 4 (their photos); the face counts of pages 1 and 4; page-1's
    # styles (the one metric computed for page-1 alone, from a table of every page); no faces table to change
    assert computed == {"homogeneity": 4, "template_signals": 0, "template_index": 4, "zero_shot": 1, "face_identity": 2}
    assert list(kept["inputs_digest"] != first["inputs_digest"]) == [False, True, True, True, True]
    assert kept.loc[3, "homogeneity_index"] != first.loc[3, "homogeneity_index"] and kept.loc[4, "n_errors"] == 1
    assert kept.loc[[1, 4], "n_face_shared"].tolist() == [1, 1]
    assert kept["ai_share"].fillna(-1).tolist() == [-1, 0.5, -1, -1, -1]

    # Each of these changes a page's values although its set of rows is the same.
    reordered = images.iloc[[1, 0, *range(2, len(images))]].reset_index(drop=True)  # its sample and bootstrap follow the order
    clusters = tables["clusters"]
    regrouped = clusters.assign(cluster_id=clusters["cluster_id"].where(clusters.index != 2, -1))  # one photo leaves its cluster
    for inputs, metrics in ((_page_inputs(reordered, tables), ("homogeneity", "template_index")),
                            (_page_inputs(images, {**tables, "clusters": regrouped}), ("homogeneity",))):  # fmt: skip
        table, computed = companies_table(inputs, first)
        assert computed == {metric.name: int(metric.name in metrics) for metric in PAGE_METRICS}
        assert list(table["inputs_digest"] != first["inputs_digest"]) == [True, False, False, False, False]
        pd.testing.assert_frame_equal(table, companies_table(inputs)[0])


def test_page_digests_name_photos_relative_to_their_warehouse() -> None:
    """Crawled photos are named by where the warehouse stores them: a run's digests are the same in
    any warehouse (a distributed run's equal a local one's), and only the part inside it counts."""
    from dataclasses import replace

    from pipeline.metrics.pages import page_digests

    images, tables = _pages(n_pages=3)

    def stored_in(root: str, frame: pd.DataFrame) -> pd.DataFrame:
        columns = [column for column in ("image", "image_a", "image_b") if column in frame]
        return frame.assign(**{column: root.rstrip("/") + "/objects/" + frame[column] for column in columns})

    def digests(root: str, renamed: str = "") -> dict[str, list[str]]:
        named = stored_in(renamed or root, images)
        inputs = replace(_page_inputs(named, {name: stored_in(renamed or root, t) for name, t in tables.items()}), warehouse_uri=root)
        return page_digests(inputs, ["page-0", "page-1", "page-2"])

    local = digests("/srv/warehouse")
    assert digests("s3://bucket/warehouse") == local == digests("s3://bucket/warehouse/")
    assert digests("/srv/warehouse", renamed="/srv/elsewhere") != local  # names outside it are taken whole


def test_page_metrics_of_other_settings_or_another_version_are_computed_again() -> None:
    from pipeline.metrics.pages import companies_table

    images, tables = _pages(n_pages=3)
    first, _ = companies_table(_page_inputs(images, tables))
    for earlier, inputs in (
        (first, _page_inputs(images, tables, bootstrap_samples=500)),  # other thresholds
        (first.drop(columns="inputs_digest"), _page_inputs(images, tables)),  # an older version's table
        (first.drop(columns="vendi_score"), _page_inputs(images, tables)),
        (first.assign(inputs_digest="homogeneity:0 template_index:0"), _page_inputs(images, tables)),  # digests of other inputs
        (first.assign(inputs_digest=["not a digest", None, ""]), _page_inputs(images, tables)),  # damaged
    ):
        computed = companies_table(inputs, earlier)[1]
        assert computed["homogeneity"] == computed["template_index"] == 3


def test_clusters_table(demo_run: dict) -> None:
    clusters = demo_run["clusters"]
    assert len(clusters) == len(demo_run["images"])
    northwind = clusters[clusters["company"] == "northwind-legal"]
    assert (northwind["cluster_id"] >= 0).mean() >= 0.8  # one template: clustered together
    assert northwind["cluster_id"].value_counts().iloc[0] / len(northwind) >= 0.8


def test_reuse_table_lists_only_cross_company_pairs(demo_run: dict) -> None:
    reuse = demo_run["reuse"]
    assert len(reuse) >= 1 and (reuse["company_a"] != reuse["company_b"]).all()


def company_row(company: str, index: float, half_width: float, embedder: str = "classic-v1", status: str = "ok") -> dict:
    return {"company": company, "embedder": embedder, "n_images": 20, "homogeneity_index": index,
            "ci_low": index - half_width, "ci_high": index + half_width, "near_dup_rate": 0.0, "status": status,
            "index_reference": "184@test"}  # fmt: skip


def test_trends_flag_only_changes_beyond_the_intervals() -> None:
    from pipeline.metrics.trends import trends_table

    history = pd.DataFrame(
        [
            {**company_row("a", 0.50, 0.02), "run_date": "2026-01-01"},
            {**company_row("b", 0.50, 0.10), "run_date": "2026-01-01"},
            {**company_row("a", 0.90, 0.02, embedder="clip-ViT-B-32-x"), "run_date": "2026-01-02"},  # other embedder
            {**company_row("a", 0.99, 0.01), "run_date": "2026-02-01"},  # a later run: not history
        ]
    )
    current = pd.DataFrame([company_row("a", 0.60, 0.02), company_row("b", 0.55, 0.10), company_row("c", 0.5, 0.1)])
    trends = trends_table(history, current, "2026-01-03").set_index(["company", "run_date"])
    assert len(trends) == 5  # a twice, b twice, c once; never the clip row or the later run
    a_now = trends.loc[("a", "2026-01-03")]
    assert a_now["previous_run_date"] == "2026-01-01" and a_now["change"] == pytest.approx(0.10)
    assert a_now["significant"] and a_now["direction"] == "more homogeneous"
    b_now = trends.loc[("b", "2026-01-03")]
    assert not b_now["significant"] and b_now["direction"] == ""  # 0.05 inside wide intervals
    assert not trends.loc[("c", "2026-01-03")]["significant"]  # no previous run


def test_trends_follow_the_template_index_only_between_runs_of_one_template_model() -> None:
    from pipeline.metrics.trends import trends_table

    def run(date: str, index: float, model: str | None) -> dict:
        template = {} if model is None else {"template_index": index, "template_ci_low": index - 0.01, "template_ci_high": index + 0.01,
                                             "template_model": model}  # fmt: skip
        return {**company_row("a", 0.5, 0.05), "run_date": date, **template}

    history = pd.DataFrame(
        [run("2026-01-01", 0.0, None), run("2026-01-02", 0.02, "classic-v1@old"), run("2026-01-03", 0.03, "classic-v1@new")]
    )
    trends = trends_table(history, pd.DataFrame([run("x", 0.10, "classic-v1@new")]).drop(columns="run_date"), "2026-01-04")
    trends = trends.set_index("run_date")
    assert np.isnan(trends.loc["2026-01-01", "template_index"])  # written before the template index existed
    assert np.isnan(trends.loc["2026-01-03", "template_change"])  # another model before it: not joined
    assert trends.loc["2026-01-04", "template_change"] == pytest.approx(0.07)
    assert trends.loc["2026-01-04", "template_significant"]  # 0.07 against intervals of +-0.01
    assert not trends.loc["2026-01-03", "template_significant"]


def test_trends_skip_pages_with_too_few_images() -> None:
    from pipeline.metrics.trends import trends_table

    current = pd.DataFrame([company_row("a", float("nan"), float("nan"), status="too_few_images")])
    assert trends_table(pd.DataFrame(), current, "2026-01-01").empty


def test_verdicts_are_cached_per_content_pair_and_thresholds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.metrics.near_duplicates as analyze_module

    calls: list[int] = []
    real_verify = analyze_module.verify
    monkeypatch.setattr(analyze_module, "verify", lambda *args: calls.append(1) or real_verify(*args))
    rows = read_manifest(str(generate_demo_images(tmp_path / "demo", per_company=6)))
    settings = load_settings(warehouse=str(tmp_path / "wh"), embedder="classic")
    first = run_pipeline(rows, settings, "2026-03-01", progress=False)
    n_first = len(calls)
    second = run_pipeline(rows, settings, "2026-03-02", progress=False)
    assert n_first == first.counts["near_duplicate_candidates"] > 0
    assert len(calls) == n_first  # nothing verified again
    assert pd.read_parquet(second.outputs["pairs"]).equals(pd.read_parquet(first.outputs["pairs"]))
    stricter = load_settings(warehouse=str(tmp_path / "wh"), embedder="classic", thresholds={"verify_min_face_correlation": 0.95})
    run_pipeline(rows, stricter, "2026-03-03", progress=False)
    assert len(calls) == 2 * n_first  # other thresholds: a fresh cache


def test_verification_is_deterministic_across_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    original = photo_like(320, 400, seed=8)
    a, b = features(original), features(EDITS["combo_crop_jpeg_small"](original))
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = list(pool.map(lambda _: verify(a, b), range(12)))
    assert len(set(verdicts)) == 1


def test_every_pair_lies_within_its_duplicate_group(demo_run: dict) -> None:
    pairs, groups = demo_run["pairs"], demo_run["groups"]
    assert len(groups) and set(pairs["link"]) <= {"direct", "implied"}
    group_of = {(r.company, r.image): r.group_id for r in groups.itertuples()}
    for pair in pairs.itertuples():
        assert group_of[(pair.company_a, pair.image_a)] == group_of[(pair.company_b, pair.image_b)] == pair.group_id
    sizes = groups.groupby("group_id").size()
    assert (groups["group_size"] == groups["group_id"].map(sizes)).all()
    assert (pairs.groupby("group_id").size() == sizes * (sizes - 1) // 2).all()  # every pair of a group is listed


@pytest.mark.parametrize(("n", "dim"), [(6, 40), (60, 8)])
def test_vendi_score_is_the_same_from_the_photos_side_and_the_dimensions_side(n: int, dim: int) -> None:
    """Whichever of the n x n and d x d matrices is decomposed (the smaller), the eigenvalues that
    count are the same."""
    vectors = np.random.default_rng(n).normal(size=(n, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for gram in (vectors @ vectors.T, vectors.T @ vectors):
        eigenvalues = np.linalg.eigvalsh(gram / n)
        eigenvalues = eigenvalues[eigenvalues > 1e-12] / eigenvalues[eigenvalues > 1e-12].sum()
        assert vendi_score(vectors) == pytest.approx(float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum())))


def test_rows_by_splits_a_table_in_one_pass_keeping_its_order() -> None:
    """Page metrics take each page's rows from one split of a table, not a filter per page (pages x
    rows): the same rows, in the table's order; a row without a page belongs to none."""
    from pipeline.tables import rows_by

    table = pd.DataFrame({"company": ["b", "a", "b", None, "a"], "image": ["1", "2", "3", "4", "5"]})
    split = rows_by(table, "company")
    assert sorted(split) == ["a", "b"]
    for company, rows in split.items():
        assert rows.equals(table[table["company"] == company])
    assert rows_by(table.iloc[:0], "company") == {} and rows_by(table, "missing") == {}

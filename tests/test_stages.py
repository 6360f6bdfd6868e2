"""The stage registry, the warehouse layout and the generated docs hold together: every stage reads
what an earlier stage (or the run's source) provides, the DAG lays out exactly the registry, no
module but `pipeline.layout` spells a warehouse key, and docs/ is what the code generates."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline import layout
from pipeline.apps.orchestration import dag_stages
from pipeline.metrics.pages import PAGE_METRICS, PAGE_READS, page_columns
from pipeline.stages import BY_NAME, STAGES, needs
from pipeline.tables import TABLES

ROOT = Path(__file__).resolve().parents[1]
RUN_INPUTS = {"sites"}  # what a run is given rather than what a stage writes


def test_every_stage_reads_only_what_earlier_stages_write_or_the_run_is_given() -> None:
    written: set[str] = set()
    for stage in STAGES:
        missing = set(stage.reads) - written - RUN_INPUTS - set(stage.writes)
        assert not missing, f"{stage.name} reads {missing}, which no earlier stage writes"
        written |= set(stage.writes)


def test_stage_names_are_unique_and_every_stage_says_what_it_does() -> None:
    assert len(BY_NAME) == len(STAGES)
    assert all(stage.doc for stage in STAGES)


def test_needs_are_the_last_earlier_writers() -> None:
    assert needs(BY_NAME["crawl"]) == []
    assert needs(BY_NAME["index"]) == ["intake", "embed"]
    assert needs(BY_NAME["identity"]) == ["intake", "faces", "near_duplicates"]
    assert set(needs(BY_NAME["report"])) >= {"pages", "near_duplicates", "embed"}


def test_the_pages_stage_reads_what_its_page_metrics_read() -> None:
    metric_reads = {table for metric in PAGE_METRICS for table in metric.reads}
    assert metric_reads <= set(BY_NAME["pages"].reads)
    assert metric_reads <= set(PAGE_READS)  # and says what of each table a page's digest covers


def test_page_metrics_register_disjoint_columns() -> None:
    columns = page_columns()
    assert len(columns) == len(set(columns)) and columns[0] == "company"


def test_every_column_of_every_table_says_what_it_holds() -> None:
    for table in TABLES:
        columns = table.columns()
        assert set(columns) == set(table.meaning), f"{table.name}: {set(columns) ^ set(table.meaning)}"


def test_every_table_is_written_by_a_stage_that_declares_it() -> None:
    for table in TABLES:
        if table.written_by in BY_NAME:
            assert table.name in BY_NAME[table.written_by].writes, table.name


def test_the_nightly_dag_lays_out_the_registry() -> None:
    laid_out = [spec["name"] for spec in dag_stages()]
    assert laid_out == [stage.name for stage in STAGES if stage.company_part is None]
    assert [spec["name"] for spec in dag_stages() if spec["sharded"]] == ["embed"]
    assert {spec["name"] for spec in dag_stages() if spec["uses_embedder"]} == {"embed", "zero_shot"}


# Key shapes that only pipeline/layout.py may spell (a module building its own keys would move data
# behind the layout's back).
KEY_PATTERNS = re.compile(
    r"^(objects|staging|tables|runs|crawl|intake|embeddings|indexes|verifications|face_signals|face_identity|"
    r"zero_shot|references|projections|audits)/|run_date=|run\.json$"
)


def _string_constants(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(part.value for part in node.values if isinstance(part, ast.Constant) and isinstance(part.value, str))
            found.append((node.lineno, text))
    return found


def test_no_module_but_layout_spells_a_warehouse_key() -> None:
    offenders = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if path.name == "layout.py":
            continue
        for line, text in _string_constants(path):
            if KEY_PATTERNS.search(text) and "\n" not in text and " " not in text.strip():
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not offenders, "warehouse keys outside pipeline/layout.py:\n" + "\n".join(offenders)


def test_the_library_never_imports_its_apps() -> None:
    """pipeline.apps (CLI, Airflow glue, audit, retention, demo, docs) builds on the library, never the reverse."""
    offenders = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if "apps" in path.relative_to(ROOT / "pipeline").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in getattr(node, "names", [])]
            if isinstance(node, ast.Import | ast.ImportFrom) and any(name.startswith("pipeline.apps") for name in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_layout_keys_validate_their_run_dates() -> None:
    assert layout.table_file("images", "2026-01-02") == "tables/images/run_date=2026-01-02/part-0.parquet"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        layout.run_record("2026-1-2")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        layout.crawl_folder("../../etc")


def test_company_slugs_are_safe_and_keep_names_apart() -> None:
    slugs = {layout.company_slug(name) for name in ("Acme", "acme", "ACME!", "../../acme", "Ä cme")}
    assert len(slugs) == 5 and all(re.fullmatch(r"[a-z0-9-]+", slug) for slug in slugs)


def test_generated_docs_are_current() -> None:
    from pipeline.apps.docs import PAGES, benchmarks_md

    for name, render in PAGES.items():
        committed = (ROOT / "docs" / name).read_text()
        assert committed == render(), f"docs/{name} is stale: run `make docs`"
    assert (ROOT / "docs" / "benchmarks.md").read_text() == benchmarks_md(ROOT / "bench" / "results"), "run `make docs`"

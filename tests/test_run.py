"""`homog run` end to end: the JSON contract, idempotent reruns, a killed run, CLI errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.apps.cli import app
from pipeline.apps.demo.data import generate_demo_images
from pipeline.config import load_settings
from pipeline.ingest.sources import read_manifest
from pipeline.stages import run_pipeline
from pipeline.warehouse import Warehouse

CONTRACT_IMAGE_COLUMNS = ["company", "image", "content_sha256", "status", "error", "width", "height"]
RUN_DATE = "2026-03-01"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_images(tmp_path_factory.mktemp("demo"), per_company=6)


def homog(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: str) -> dict:
    code, out, err = homog("run", *args, "--json", "--no-progress")
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".tmp" not in p.parts and p.name != "run.json"
    }


def test_run_follows_the_json_contract(demo: Path, tmp_path: Path) -> None:
    result = run_json("--manifest", str(demo), "--warehouse", str(tmp_path / "wh"), "--run-date", RUN_DATE)
    assert result["run_date"] == RUN_DATE
    assert "embedder" in result
    assert {"images", "pairs", "companies", "clusters", "report"} <= set(result["outputs"])
    assert result["embedder"] == "classic-v1" and "classic" in result["embedder_fallback"]
    images = pd.read_parquet(result["outputs"]["images"])
    assert list(images.columns[:7]) == CONTRACT_IMAGE_COLUMNS
    assert len(images) == len(read_manifest(str(demo))) == result["counts"]["rows"]
    assert (images["status"] == "ok").all() and (images["error"] == "").all()
    run_record = json.loads((tmp_path / "wh" / "runs" / f"run_date={RUN_DATE}" / "run.json").read_text())
    assert run_record["embedder_requested"] == "auto" and run_record["source"] == str(demo)
    assert set(run_record["stage_seconds"]) == set(result["stages_run"]) and min(run_record["stage_seconds"].values()) >= 0
    peaks = run_record["stage_peak_rss_mb"]  # and which stage needed the memory (none where it cannot be measured: tests/test_memory.py)
    assert set(peaks) == set(result["stages_run"]) and all(peak is None or peak > 0 for peak in peaks.values())
    costs = run_record["unit_costs"]  # a slow night explains itself: ms per unit each costly stage computed
    assert set(costs) == {"faces_ms_per_photo", "embed_ms_per_photo", "near_duplicates_ms_per_verified_pair", "identity_ms_per_face"}
    assert costs["faces_ms_per_photo"] > 0 and costs["embed_ms_per_photo"] > 0
    assert (costs["near_duplicates_ms_per_verified_pair"] or 0) > 0 and result["counts"]["verifications_computed"] > 0


def test_folder_input_gives_one_row_per_file(demo: Path, tmp_path: Path) -> None:
    result = run_json("--input", str(demo.parent), "--warehouse", str(tmp_path / "wh"), "--run-date", RUN_DATE)
    images = pd.read_parquet(result["outputs"]["images"])
    assert len(images) == len(list(demo.parent.glob("*/*.jpg")))
    assert images["company"].nunique() == 4


def test_rerun_of_a_run_date_replaces_it(demo: Path, tmp_path: Path) -> None:
    args = ("--manifest", str(demo), "--warehouse", str(tmp_path / "wh"), "--run-date", RUN_DATE)
    first = run_json(*args)
    before = files_under(tmp_path / "wh")
    second = run_json(*args)
    assert second["counts"]["embedded"] == 0  # every vector came from the cache
    assert second["counts"]["embedding_cache_hits"] == first["counts"]["embedded"] > 0
    assert second["counts"]["faces_measured"] == 0  # face signals too
    assert second["counts"]["face_descriptors_computed"] == 0 < first["counts"]["face_descriptors_computed"]  # same faces: pairs reused
    assert second["counts"]["face_search_photos"] == 0 < first["counts"]["face_search_photos"]  # nothing searched for them either
    assert second["counts"]["verifications_computed"] == 0 < first["counts"]["verifications_computed"]  # verdicts from the cache
    assert second["counts"]["region_views_computed"] == 0 < first["counts"]["region_views_computed"]  # region views too
    assert second["counts"]["keypoints_computed"] == 0 < first["counts"]["keypoints_computed"]  # and verification's keypoints
    assert (
        second["counts"]["page_metrics_computed"] == 0 < first["counts"]["page_metrics_computed"] == second["counts"]["page_metrics_kept"]
    )
    searched = [key for key in first["counts"] if key.startswith("candidate_search_")]  # the candidate search's kept lists too
    assert searched and all(second["counts"][key] == 0 < first["counts"][key] for key in searched)
    for counts in (first["counts"], second["counts"]):
        del counts["embedded"], counts["embedding_cache_hits"], counts["faces_measured"], counts["face_descriptors_computed"]
        del counts["face_search_photos"]
        del counts["verifications_computed"], counts["region_views_computed"], counts["keypoints_computed"]
        del counts["page_metrics_computed"], counts["page_metrics_kept"]  # the page rows
        for key in searched:
            del counts[key]
    assert first == second
    assert files_under(tmp_path / "wh") == before  # same files, byte for byte, none added
    assert Warehouse(str(tmp_path / "wh")).run_dates() == [RUN_DATE]


KILL_SCRIPT = """
import os, signal, sys
import pipeline.warehouse as wh
from pipeline.config import load_settings
from pipeline.stages import run_pipeline
from pipeline.ingest.sources import read_manifest

calls = 0
real_replace = os.replace
def replace_then_die(src, dst):
    global calls
    calls += 1
    if calls == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # killed between writing the temp file and publishing it
    real_replace(src, dst)
wh.os.replace = replace_then_die
run_pipeline(read_manifest(sys.argv[1]), load_settings(warehouse=sys.argv[2]), run_date="2026-03-01", progress=False)
"""


def test_killed_run_leaves_no_half_file_and_a_rerun_completes_it(demo: Path, tmp_path: Path) -> None:
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "HOMOG_INTAKE__WORKERS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(demo), str(killed), "9"], env=env)
    assert proc.returncode == -9

    # Whatever the killed run left visible is whole: each object's bytes hash to its name.
    raw = list((killed / "objects" / "raw").rglob("*.jpg"))
    assert 0 < len(raw) < len(read_manifest(str(demo)))
    for path in raw:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
    assert not (killed / "tables").exists() and not list((killed / "runs").rglob("run.json"))
    assert list((killed / "runs").rglob("lease.json"))  # the dead run's lease: stale, taken over by the rerun below
    assert len(os.listdir(killed / ".tmp")) == 1  # the interrupted write, outside every data folder

    settings = load_settings(warehouse=str(killed))
    rerun = run_pipeline(read_manifest(str(demo)), settings, run_date=RUN_DATE, progress=False)
    reference = run_pipeline(read_manifest(str(demo)), load_settings(warehouse=str(clean)), run_date=RUN_DATE, progress=False)
    assert rerun.counts == reference.counts
    assert files_under(killed) == files_under(clean)


def test_a_rerun_that_dies_midway_takes_the_finished_mark_away_and_a_replaced_date_keeps_no_stale_page(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rerunning a finished date with other input and dying half-way left the old run.json over
    tables that were half new: now the mark goes before the first stage writes, and readers refuse
    the date with a clear message until a run of it finishes."""
    import pipeline.features.index

    warehouse = tmp_path / "wh"
    settings = load_settings(warehouse=str(warehouse), reports=str(tmp_path / "reports"), embedder="classic")
    run_pipeline(read_manifest(str(demo)), settings, run_date=RUN_DATE, progress=False)
    mark = warehouse / "runs" / f"run_date={RUN_DATE}" / "run.json"
    assert mark.is_file()

    def dies(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(pipeline.features.index, "build_index", dies)
    fewer = [row for row in read_manifest(str(demo)) if row.company != "tiny-startup"]
    with pytest.raises(RuntimeError, match="killed half-way"):
        run_pipeline(fewer, settings, run_date=RUN_DATE, progress=False)
    assert not mark.exists()  # the images table is the new one, pairs and companies still the old ones
    code, _, err = homog("report", "--run-date", RUN_DATE, "--warehouse", str(warehouse), "--reports", str(tmp_path / "reports"))
    assert code == 2 and "no finished run" in err
    monkeypatch.undo()
    run_pipeline(fewer, settings, run_date=RUN_DATE, progress=False)
    assert mark.is_file()
    # The replaced date's report has no page left over for the company the rerun no longer has.
    pages = {p.name.rsplit("-", 1)[0] for p in (tmp_path / "reports" / RUN_DATE / "companies").glob("*.html")}
    assert pages == {"northwind-legal", "bluebird-bakery", "copperleaf-consulting"}


def test_no_raw_images_mode_end_to_end(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMOG_PRIVACY__KEEP_RAW_IMAGES", "false")
    result = run_json("--manifest", str(demo), "--warehouse", str(tmp_path / "wh"), "--run-date", RUN_DATE)
    assert result["counts"]["error"] == 0
    stored = [p.relative_to(tmp_path / "wh") for p in (tmp_path / "wh").rglob("*") if p.is_file()]
    assert not [p for p in stored if p.parts[:2] == ("objects", "raw") or p.parts[0] == "staging"]
    assert [p for p in stored if p.parts[:2] == ("objects", "thumbs")]


def test_manifest_and_warehouse_on_a_non_local_filesystem(demo: Path) -> None:
    for path in demo.parent.rglob("*.jpg"):
        with fsspec.open(f"memory://src/{path.relative_to(demo.parent)}", "wb") as handle:
            handle.write(path.read_bytes())
    with fsspec.open("memory://src/manifest.csv", "wb") as handle:
        handle.write(demo.read_bytes())
    rows = read_manifest("memory://src/manifest.csv")
    result = run_pipeline(rows, load_settings(warehouse="memory://wh-run"), run_date=RUN_DATE, progress=False)
    assert result.counts["error"] == 0
    with fsspec.open(result.outputs["images"], "rb") as handle:
        assert len(pd.read_parquet(handle)) == len(rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--manifest", "a.csv", "--input", "dir"], "exactly one of --manifest"),
        ([], "exactly one of --manifest"),
        (["--manifest", "/nonexistent/m.csv"], "manifest not found"),
        (["--input", "/nonexistent/dir"], "input folder not found"),
        (["--input", ".", "--run-date", "01/03/2026"], "YYYY-MM-DD"),
        (["--input", ".", "--embedder", "bert"], "bert"),
    ],
)
def test_cli_usage_errors_exit_2_with_a_message(args: list[str], message: str) -> None:
    code, _, err = homog("run", *args)
    assert code == 2
    assert message in err


def test_help_and_config_commands(tmp_path: Path) -> None:
    code, out, _ = homog("--help")
    assert code == 0 and all(name in out for name in ("run", "demo-data", "config"))
    config = tmp_path / "c.yaml"
    config.write_text("embedder: classic\n")
    code, out, _ = homog("config", "--config", str(config))
    assert code == 0 and "embedder: classic" in out
    config.write_text("embedder: nope\n")
    code, _, err = homog("config", "--config", str(config))
    assert code == 2 and "invalid configuration" in err


def test_plain_output_ranks_companies_and_neutralises_control_characters(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    rows = read_manifest(str(generate_demo_images(tmp_path / "demo", per_company=5)))
    lines = ["company,image"] + [f"{'evil' + chr(27) + '[31m' if r.company == 'bluebird-bakery' else r.company},{r.uri}" for r in rows]
    manifest.write_text("\n".join(lines) + "\n")
    code, out, err = homog("run", "--manifest", str(manifest), "--warehouse", str(tmp_path / "wh"), "--no-progress")
    assert code == 0, err
    ranking = [line for line in out.splitlines() if "photos  homogeneity" in line]
    assert ranking[0].lstrip().startswith("northwind-legal")  # the templated page is the most homogeneous
    assert "template 0." in ranking[0]  # the template index beside it
    assert any("too_few_images" in line for line in ranking)
    assert "\x1b" not in out and "evil[31m" in out  # the escape left with the manifest; nothing reaches the terminal


def test_repeated_manifest_rows_agree_across_tables(tmp_path: Path) -> None:
    """A photo listed three times on one page is one photo in every table: no pair with itself, one
    ok row, two explained error rows, and the page's metrics count it once."""
    from tests.conftest import encode, photo_like

    rows = []
    for i in range(5):
        path = tmp_path / f"p{i}.jpg"
        path.write_bytes(encode(photo_like(seed=10 + i)))
        rows.append({"company": "acme", "image": path.name})
    rows += [rows[0], rows[0]]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    settings = load_settings(warehouse=str(tmp_path / "wh"), reports=str(tmp_path / "reports"), embedder="classic")
    result = run_pipeline(read_manifest(str(manifest)), settings, run_date=RUN_DATE, progress=False)
    images = pd.read_parquet(result.outputs["images"])
    assert list(images["error_kind"]) == [""] * 5 + ["duplicate_row"] * 2
    assert pd.read_parquet(result.outputs["pairs"]).empty
    page = pd.read_parquet(result.outputs["companies"]).iloc[0]
    assert (page["n_images"], page["n_rows"], page["n_errors"], page["near_dup_rate"]) == (5, 7, 2, 0.0)


def test_an_unusable_warehouse_path_is_one_line_and_exit_2(demo: Path, tmp_path: Path) -> None:
    """OS errors (a warehouse path below a file, a read-only mount, a full disk) ended in 50-line
    tracebacks and exit 1: now one line names the cause and the path."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = homog("run", "--manifest", str(demo), "--warehouse", str(blocker / "wh"), "--no-progress")
    assert code == 2 and "Traceback" not in err
    assert f"error: Not a directory: {blocker / 'wh'}" in err
    assert blocker.read_text() == "not a folder"  # nothing that was there is touched


def test_one_writer_per_run_date(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs of one date on one warehouse interleaved their partitions (a KeyError, or the last
    writer silently won): the second now stops at once, naming the first and how to clear a stale
    lease; a lease whose process is gone is taken over; a finished or failed run leaves none."""
    import datetime as dt
    import socket

    from pipeline.lease import MAX_HOLD, Lease, LeaseHeld, read_lease, take_lease

    warehouse = tmp_path / "wh"
    store = Warehouse(str(warehouse))
    live = take_lease(store, RUN_DATE, "a nightly run elsewhere")
    code, _, err = homog("run", "--manifest", str(demo), "--warehouse", str(warehouse), "--run-date", RUN_DATE, "--no-progress")
    assert code == 2 and "is being written by a nightly run elsewhere" in err and f"homog lease clear --run-date {RUN_DATE}" in err
    assert not (warehouse / "tables").exists()  # it stopped before writing anything
    code, out, _ = homog("lease", "show", "--run-date", RUN_DATE, "--warehouse", str(warehouse))
    assert code == 0 and "held by a nightly run elsewhere" in out
    code, out, _ = homog("lease", "clear", "--run-date", RUN_DATE, "--warehouse", str(warehouse))
    assert code == 0 and read_lease(store, RUN_DATE) is None and live.holder in out

    # A lease left by a process that died on this host is stale: the next run takes it over.
    now = dt.datetime.now(dt.UTC)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = Lease(RUN_DATE, "a killed run", socket.gethostname(), int(dead), "t", now.isoformat(), (now + MAX_HOLD).isoformat())
    store.write_json(f"runs/run_date={RUN_DATE}/lease.json", stale.__dict__)
    settings = load_settings(warehouse=str(warehouse), embedder="classic")
    run_pipeline(read_manifest(str(demo)), settings, run_date=RUN_DATE, progress=False)
    assert read_lease(store, RUN_DATE) is None and (warehouse / "runs" / f"run_date={RUN_DATE}" / "run.json").is_file()

    def dies(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed half-way")

    import pipeline.features.index

    monkeypatch.setattr(pipeline.features.index, "build_index", dies)
    with pytest.raises(RuntimeError):
        run_pipeline(read_manifest(str(demo)), settings, run_date=RUN_DATE, progress=False)
    assert read_lease(store, RUN_DATE) is None
    with pytest.raises(LeaseHeld):  # and a live holder elsewhere is never taken over
        take_lease(store, RUN_DATE, "first")
        take_lease(store, RUN_DATE, "second")


def test_the_nightly_and_a_cli_run_of_one_date_exclude_each_other(demo: Path, tmp_path: Path) -> None:
    """The nightly's plan task takes the date's lease for the whole DAG run (its finish task gives it
    back): a CLI run of that date stops, naming the nightly; the nightly's next run of the date takes
    its own DAG's lease over (Airflow keeps its runs apart); a live CLI run stops the nightly."""
    from pipeline.apps.orchestration import plan_run
    from pipeline.lease import LeaseHeld, read_lease, take_lease

    sites = tmp_path / "sites.yaml"
    sites.write_text("companies: [{name: acme, urls: ['http://acme.example/team']}]\n")
    warehouse = tmp_path / "wh"
    params = {"sites_file": str(sites), "run_date": RUN_DATE, "warehouse": str(warehouse), "reports": str(tmp_path / "reports")}
    plan_run(params, None)
    code, _, err = homog("run", "--manifest", str(demo), "--warehouse", str(warehouse), "--run-date", RUN_DATE, "--no-progress")
    assert code == 2 and "is being written by the nightly DAG (profile_homogenization_nightly)" in err
    again = plan_run(params, None)  # e.g. a rerun of a failed night
    store = Warehouse(str(warehouse))
    assert read_lease(store, RUN_DATE).owner == again["lease_owner"] == "airflow:profile_homogenization_nightly"
    store.remove(f"runs/run_date={RUN_DATE}/lease.json")
    take_lease(store, RUN_DATE, "a CLI run")  # held by this (live) process
    with pytest.raises(LeaseHeld, match="a CLI run"):
        plan_run(params, None)

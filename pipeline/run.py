"""One run, stage after stage: (`crawl_stage`), `intake_stage`, `faces_stage`, `embed_stage`, `index_stage`,
`analyze_stage`, `report_stage`, `finish_run`. Each takes the settings and the run date, reads what the previous stage stored in the
warehouse and returns only URIs and counts, so the CLI (`run_pipeline`) and Airflow tasks call the
same functions and pass nothing heavier than a path between them.

`report_stage` renders the HTML from what the other stages stored, so `homog report` can redo it alone.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec

import numpy as np

from pipeline import __version__
from pipeline.analyze import analyze, trends_table
from pipeline.config import Settings
from pipeline.embed import EmbedderChoice, Embeddings, embed_images, embed_shard, resolve_embedder, vectors_for
from pipeline.face_signals import add_page_columns
from pipeline.identity import page_counts
from pipeline.index import build_index, load_index, save_index
from pipeline.intake import distinct_ok, ingest, write_images_table
from pipeline.reference import run_reference
from pipeline.sources import ManifestRow
from pipeline.warehouse import Warehouse, validate_run_date
from pipeline.zero_shot import cached_prompt_vectors
from pipeline.zero_shot import page_table as zero_shot_pages

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

OUTPUT_KEYS = ("images", "pairs", "companies", "clusters", "report")  # DESIGN.md contract; more are added
NOT_COUNTS = frozenset({"dim"})  # integers stages return that are not counts
StageArgs = ParamSpec("StageArgs")


def timed(stage: Callable[StageArgs, dict[str, Any]]) -> Callable[StageArgs, dict[str, Any]]:
    """Add the stage's wall time to what it returns (`seconds`), so run.json says where a run spent it."""

    @functools.wraps(stage)
    def run(*args: StageArgs.args, **kwargs: StageArgs.kwargs) -> dict[str, Any]:
        start = time.perf_counter()
        returned = stage(*args, **kwargs)
        return {**returned, "seconds": round(time.perf_counter() - start, 3)}

    return run


@dataclass
class RunResult:
    run_date: str
    embedder: str | None
    outputs: dict[str, str | None]
    counts: dict[str, int]
    stages_run: list[str]
    warnings: list[str] = field(default_factory=list)
    embedder_fallback: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "run_date": self.run_date,
            "embedder": self.embedder,
            "embedder_fallback": self.embedder_fallback,
            "outputs": self.outputs,
            "counts": self.counts,
            "stages_run": self.stages_run,
            "warnings": self.warnings,
        }


def today() -> str:
    return dt.date.today().isoformat()


def crawl_folder(run_date: str, company: str | None = None) -> str:
    from pipeline.crawl import company_slug

    folder = f"crawl/runs/run_date={run_date}"
    return f"{folder}/{company_slug(company)}" if company is not None else folder


def crawl_company_stage(sites_file: str, company: str, settings: Settings, run_date: str) -> dict[str, Any]:
    """Crawl one company of the sites file; writes its manifest and log under `crawl/runs/run_date=D/`.

    One company per call, so Airflow maps it per company and one failing site fails alone."""
    import pandas as pd

    from pipeline.crawl import LOG_COLUMNS, crawl_company, crawl_settings, load_sites, manifest_csv

    warehouse = Warehouse(settings.warehouse)
    sites = load_sites(sites_file)
    folder = crawl_folder(run_date, company)
    warehouse.remove(folder, recursive=True)  # an interrupted earlier attempt must not pass for this one
    result = crawl_company(sites.company(company), settings, crawl_settings(settings, sites), warehouse, run_date)
    log = pd.DataFrame(result.log, columns=LOG_COLUMNS)
    warehouse.write_frame(f"{folder}/log.parquet", log)
    manifest = warehouse.write_bytes(f"{folder}/manifest.csv", manifest_csv(result.manifest))  # written last: the mark of a finished crawl
    return {
        "company": company, "manifest": manifest, **_crawl_counts(log),
        "pages_failed": int(((log["kind"] == "page") & (log["status"] != "crawled")).sum()),
    }  # fmt: skip


def _crawl_counts(log: "pd.DataFrame") -> dict[str, int]:
    """Candidate pictures of a crawl log, and how many were kept, skipped, rejected or failed."""
    images = log[log["kind"] == "image"]["status"].value_counts()
    return {"candidates": int(images.sum()), **{status: int(images.get(status, 0)) for status in ("kept", "skipped", "rejected", "error")}}


def collect_crawl_stage(sites_file: str, settings: Settings, run_date: str) -> dict[str, Any]:
    """Join the companies' crawl results into one manifest and the `crawl_log` table.

    A company whose crawl did not finish gets a log row saying so; the others go on."""
    import pandas as pd

    from pipeline.crawl import LOG_COLUMNS, MANIFEST_COLUMNS, load_sites, manifest_csv

    warehouse = Warehouse(settings.warehouse)
    manifests, logs, failed = [], [], []
    for site in load_sites(sites_file).companies:
        folder = crawl_folder(run_date, site.name)
        if not warehouse.exists(f"{folder}/manifest.csv"):
            failed.append(site.name)
            logs.append(pd.DataFrame([{
                "company": site.name, "kind": "page", "url": url, "source_url": "", "status": "error",
                "reason": "the crawl of this company did not finish (see its task log)", "image": "", "n_bytes": 0,
            } for url in site.urls], columns=LOG_COLUMNS))  # fmt: skip
            continue
        manifests.append(pd.read_csv(io.BytesIO(warehouse.read_bytes(f"{folder}/manifest.csv")), dtype=str, keep_default_na=False))
        logs.append(warehouse.read_frame(f"{folder}/log.parquet"))
    manifest = pd.concat(manifests, ignore_index=True) if manifests else pd.DataFrame(columns=MANIFEST_COLUMNS)
    log = pd.concat(logs, ignore_index=True) if logs else pd.DataFrame(columns=LOG_COLUMNS)
    manifest_uri = warehouse.write_bytes(f"{crawl_folder(run_date)}/manifest.csv", manifest_csv(manifest.to_dict("records")))
    if failed:
        logger.warning("crawl did not finish for %d company(ies): %s", len(failed), ", ".join(failed))
    return {
        "manifest": manifest_uri, "crawl_log": warehouse.write_table("crawl_log", run_date, log), **_crawl_counts(log),
        "companies_failed": len(failed), "failed_companies": failed,
    }  # fmt: skip


@timed
def crawl_stage(sites_file: str, settings: Settings, run_date: str) -> dict[str, Any]:
    """Every company of the sites file, one after another, then the joined manifest."""
    from pipeline.crawl import load_sites

    for site in load_sites(sites_file).companies:
        try:
            crawl_company_stage(sites_file, site.name, settings, run_date)
        except Exception:  # one broken site must not stop the others; collect records it
            logger.exception("crawl of %s failed", site.name)
    return collect_crawl_stage(sites_file, settings, run_date)


def _previous_images(warehouse: Warehouse) -> "pd.DataFrame | None":
    """The latest stored `images` table: rows whose source is unchanged are carried over from it."""
    earlier_dates = warehouse.run_dates("images")
    return warehouse.read_table("images", earlier_dates[-1]) if earlier_dates else None


def _intake_counts(images: "pd.DataFrame") -> dict[str, int]:
    n_ok = int((images["status"] == "ok").sum())
    return {"rows": len(images), "ok": n_ok, "error": len(images) - n_ok, "companies": int(images["company"].nunique())}


@timed
def intake_stage(rows: list[ManifestRow], settings: Settings, run_date: str, progress: bool = True) -> dict[str, Any]:
    """Fetch, check and store every row; writes the `images` table. Returns its URI and counts."""
    warehouse = Warehouse(settings.warehouse)
    warehouse.sweep_stale_temp(settings.retention.staging_grace_hours)
    images = ingest(rows, warehouse, run_date, settings.intake, settings.privacy, progress=progress, previous=_previous_images(warehouse))
    return {"images": write_images_table(images, warehouse, run_date), **_intake_counts(images)}


def intake_folder(run_date: str, company: str) -> str:
    from pipeline.crawl import company_slug

    return f"intake/runs/run_date={run_date}/{company_slug(company)}.parquet"


def intake_company_stage(manifest: str, company: str, settings: Settings, run_date: str) -> dict[str, Any]:
    """Intake of one company's rows of a manifest into a per-company part of the run's `images`
    table (joined by `collect_intake_stage`): how Airflow fans intake out per company."""
    from pipeline.sources import read_manifest

    warehouse = Warehouse(settings.warehouse)
    rows = [row for row in read_manifest(manifest) if row.company == company]
    images = ingest(rows, warehouse, run_date, settings.intake, settings.privacy, progress=False, previous=_previous_images(warehouse))
    part = warehouse.write_frame(intake_folder(run_date, company), images)
    return {"company": company, "part": part, **_intake_counts(images)}


def collect_intake_stage(settings: Settings, run_date: str, companies: list[str]) -> dict[str, Any]:
    """Join the companies' intake parts (in the given order) into the run's `images` table.

    A company without a part (its task failed) is absent from the table and listed in the result."""
    import pandas as pd

    from pipeline.intake import IMAGE_COLUMNS

    warehouse = Warehouse(settings.warehouse)
    warehouse.sweep_stale_temp(settings.retention.staging_grace_hours)
    parts, missing = [], []
    for company in companies:
        key = intake_folder(run_date, company)
        if not warehouse.exists(key):
            missing.append(company)
            continue
        parts.append(warehouse.read_frame(key))
    images = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=IMAGE_COLUMNS)
    if missing:
        logger.warning("intake did not finish for %d company(ies): %s", len(missing), ", ".join(missing))
    return {
        "images": write_images_table(images, warehouse, run_date), **_intake_counts(images),
        "companies_missing": len(missing), "missing_companies": missing,
    }  # fmt: skip


@timed
def faces_stage(settings: Settings, run_date: str) -> dict[str, Any]:
    """Face detection and template signals for the run's `ok` images; writes the `faces` table."""
    from pipeline.face_signals import measure_images

    warehouse = Warehouse(settings.warehouse)
    faces, n_measured = measure_images(warehouse.read_table("images", run_date), warehouse, settings.crawl.face_score_floor)
    return {
        "faces": warehouse.write_table("faces", run_date, faces),
        "faces_measured": n_measured, "photos_with_face": int((faces["n_faces"] > 0).sum()),
    }  # fmt: skip


@timed
def embed_shard_stage(settings: Settings, run_date: str, shard: int, n_shards: int) -> dict[str, Any]:
    """One mapped embedding task: the run's uncached pictures whose hash falls in `shard`."""
    warehouse = Warehouse(settings.warehouse)
    embedder = resolve_embedder(settings).embedder
    embedded = embed_shard(warehouse.read_table("images", run_date), warehouse, embedder, shard, n_shards)
    return {"shard": shard, "embedder": embedder.id, "embedded": embedded}


@timed
def embed_stage(settings: Settings, run_date: str, choice: EmbedderChoice | None = None, progress: bool = True) -> dict[str, Any]:
    """Embed the run's distinct `ok` images into the embedding cache (cache hits cost nothing)."""
    warehouse = Warehouse(settings.warehouse)
    choice = choice or resolve_embedder(settings)
    images = warehouse.read_table("images", run_date)
    embeddings = embed_images(images, warehouse, choice.embedder, progress=progress)
    styles = zero_shot_pages(images, embeddings.content_sha256, embeddings.vectors, cached_prompt_vectors(warehouse, choice.embedder), embeddings.embedder_id)
    return {
        "zero_shot": warehouse.write_table("zero_shot", run_date, styles),
        "embedder": embeddings.embedder_id, "embedder_fallback": choice.fallback_reason, "dim": choice.embedder.dim,
        "distinct_images": len(embeddings.content_sha256), "embedded": embeddings.n_embedded,
        "embedding_cache_hits": len(embeddings.content_sha256) - embeddings.n_embedded,
    }  # fmt: skip


@timed
def index_stage(settings: Settings, run_date: str, embedder_id: str, dim: int) -> dict[str, Any]:
    """Build and save the run's FAISS index from the cached vectors of its distinct `ok` images."""
    warehouse = Warehouse(settings.warehouse)
    images = warehouse.read_table("images", run_date)
    keys = list(distinct_ok(images)["content_sha256"])
    vector_index = build_index(vectors_for(warehouse, embedder_id, keys, dim), keys)
    return {"index": save_index(warehouse, vector_index, embedder_id, run_date), "index_kind": vector_index.kind}


@timed
def report_stage(settings: Settings, run_date: str, embedder_id: str, embedder_fallback: str = "") -> dict[str, Any]:
    """The HTML run report, the companies' audit pages and summary.json, from the warehouse."""
    from pipeline.report import report_stage as render

    return render(settings, run_date, embedder_id, embedder_fallback)


@timed
def analyze_stage(settings: Settings, run_date: str, embedder_id: str) -> dict[str, Any]:
    """Near-duplicates, clusters, per-company metrics, reuse and trends from what the earlier
    stages stored for `run_date`; writes those tables. Returns their URIs and counts."""
    warehouse = Warehouse(settings.warehouse)
    vector_index = load_index(warehouse, embedder_id, run_date)
    vectors = vectors_for(warehouse, embedder_id, vector_index.ids, vector_index.dim)
    embeddings = Embeddings(embedder_id, vector_index.ids, vectors, n_embedded=0)
    images = warehouse.read_table("images", run_date)
    reference = run_reference(warehouse, embedder_id, vectors, settings.thresholds.reference_min_photos, run_date)
    analysis = analyze(images, embeddings, vector_index, warehouse, settings.thresholds, reference)
    faces = warehouse.read_table("faces", run_date)  # empty where the faces stage did not run
    analysis.companies = add_page_columns(analysis.companies, faces)
    styles = warehouse.read_table("zero_shot", run_date)
    if len(styles):
        analysis.companies = analysis.companies.merge(styles, on="company", how="left")
    identities, n_descriptors = _identities(warehouse, settings, images, faces, analysis.pairs)
    face_counts = page_counts(identities, list(analysis.companies["company"]))
    if not settings.privacy.face_identity:  # not measured, which is not the same as none found
        face_counts[["n_face_repeated", "n_face_shared"]] = np.nan
    analysis.companies = analysis.companies.merge(face_counts, on="company", how="left")
    outputs = {table: warehouse.write_table(table, run_date, getattr(analysis, table)) for table in ("pairs", "clusters", "companies", "reuse")}
    outputs["identities"] = warehouse.write_table("identities", run_date, identities)
    trends = trends_table(warehouse.read_table("companies"), analysis.companies, run_date)
    outputs["trends"] = warehouse.write_table("trends", run_date, trends)
    return {
        **outputs,
        "near_duplicate_candidates": analysis.n_candidates, "near_duplicates_verified": analysis.n_verified,
        "pairs_found": len(analysis.pairs), "cross_company_pairs": len(analysis.reuse),
        "significant_changes": int(trends.loc[trends["run_date"] == run_date, "significant"].sum()),
        "same_face_pairs": len(identities), "face_descriptors_computed": n_descriptors,
    }  # fmt: skip


def _identities(
    warehouse: Warehouse, settings: Settings, images: "pd.DataFrame", faces: "pd.DataFrame", pairs: "pd.DataFrame"
) -> tuple["pd.DataFrame", int]:
    """Same face, different photographs: descriptors of the run's faces (in memory unless
    privacy.keep_face_descriptors), paired, minus pairs that are copies of one photograph."""
    import pandas as pd

    from pipeline.identity import PAIR_COLUMNS, content_pairs, face_descriptors, faces_key, identity_table, remember_pairs, reused_pairs

    if not settings.privacy.face_identity or faces.empty or not (faces["n_faces"] > 0).any():
        return pd.DataFrame(columns=PAIR_COLUMNS), 0
    ok = images[images["status"] == "ok"]
    contents = sorted(faces.loc[faces["n_faces"] > 0, "content_sha256"].drop_duplicates())
    key = faces_key(contents, settings.crawl.face_score_floor)
    same_faces, n_computed = reused_pairs(warehouse, key), 0
    if same_faces is None:
        descriptors, n_computed = face_descriptors(warehouse, distinct_ok(ok), contents, settings.privacy.keep_face_descriptors,
                                                   settings.crawl.face_score_floor)  # fmt: skip
        found = ~np.isnan(descriptors).any(axis=1)
        same_faces = content_pairs([c for c, f in zip(contents, found) if f], descriptors[found])
        remember_pairs(warehouse, key, same_faces)
    content_of = dict(zip(zip(ok["company"], ok["image"]), ok["content_sha256"]))
    same_photo = {frozenset((content_of[(r.company_a, r.image_a)], content_of[(r.company_b, r.image_b)])) for r in pairs.itertuples()}
    return identity_table(images, same_faces, same_photo), n_computed


def finish_run(
    settings: Settings, run_date: str, stages: dict[str, dict[str, Any]], source: str = "", started: str = ""
) -> RunResult:
    """Drop the run's staging (no-raw-images mode) and write run.json, the mark of a finished run.

    `stages`: what each stage returned, by name, in the order the stages ran."""
    warehouse = Warehouse(settings.warehouse)
    if not settings.privacy.keep_raw_images:
        # No-raw-images mode: originals lived in staging only for the stages of this run.
        warehouse.drop_staging(run_date)
    intake, embed, index, analysis = stages["intake"], stages["embed"], stages["index"], stages["analyze"]
    outputs: dict[str, str | None] = dict.fromkeys(OUTPUT_KEYS)
    outputs.update(images=intake["images"], index=index["index"])
    if "faces" in stages:
        outputs["faces"] = stages["faces"]["faces"]
    report = stages.get("report")
    if report is not None:
        outputs.update(report=report["report"], summary=report["summary"])
    crawl = stages.get("crawl")
    if crawl is not None:
        outputs.update(manifest=crawl["manifest"], crawl_log=crawl["crawl_log"])
    outputs.update({table: analysis[table] for table in ("pairs", "clusters", "companies", "reuse", "trends", "identities")})
    counts = {
        (f"crawl_{key}" if name == "crawl" else key): value
        for name, stage in stages.items()
        for key, value in stage.items()
        if isinstance(value, int) and not isinstance(value, bool) and key not in NOT_COUNTS
    }
    counts["pairs"] = counts.pop("pairs_found")
    result = RunResult(
        run_date=run_date,
        embedder=embed["embedder"],
        embedder_fallback=embed["embedder_fallback"],
        outputs=outputs,
        counts=counts,
        stages_run=list(stages),
    )
    if intake.get("missing_companies"):
        result.warnings.append(f"intake did not finish for: {', '.join(intake['missing_companies'])} (see the task logs)")
    if crawl is not None and crawl["companies_failed"]:
        result.warnings.append(f"the crawl did not finish for: {', '.join(crawl['failed_companies'])} (see the crawl_log table)")
    if intake["ok"] == 0:
        result.warnings.append("no image passed intake: see the images table's error column")
        logger.warning(result.warnings[-1])
    if embed["embedder_fallback"]:
        result.warnings.append(embed["embedder_fallback"])
    warehouse.write_json(
        f"runs/run_date={run_date}/run.json",
        {
            **result.as_json(),
            "source": source,
            "started_at": started,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "stage_seconds": {name: stage["seconds"] for name, stage in stages.items() if stage and "seconds" in stage},
            "embedder_requested": settings.embedder,
            "index_kind": index["index_kind"],
            "settings": settings.model_dump(mode="json"),
            "pipeline_version": __version__,
            "python": platform.python_version(),
        },
    )
    return result


def run_pipeline(
    rows: list[ManifestRow],
    settings: Settings,
    run_date: str | None = None,
    source: str = "",
    progress: bool = True,
    crawl: dict[str, Any] | None = None,
) -> RunResult:
    """Run every stage for `rows` into the warehouse; rerunning a run date replaces it. The stages
    pass each other nothing but the warehouse and the run date, as Airflow tasks do."""
    run_date = validate_run_date(run_date or today())
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    # Chosen before any work, so that `--embedder clip` without weights fails in a second, not after intake.
    choice = resolve_embedder(settings)
    stages: dict[str, dict[str, Any]] = {"crawl": crawl} if crawl is not None else {}
    stages["intake"] = intake_stage(rows, settings, run_date, progress)
    stages["faces"] = faces_stage(settings, run_date)
    stages["embed"] = embed_stage(settings, run_date, choice, progress)
    stages["index"] = index_stage(settings, run_date, stages["embed"]["embedder"], stages["embed"]["dim"])
    stages["analyze"] = analyze_stage(settings, run_date, stages["embed"]["embedder"])
    stages["report"] = report_stage(settings, run_date, stages["embed"]["embedder"], stages["embed"]["embedder_fallback"])
    return finish_run(settings, run_date, stages, source, started)

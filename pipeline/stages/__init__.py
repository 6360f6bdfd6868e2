"""The stages of a run, as one registry that the CLI runner, the nightly DAG and the brand audit iterate.

    crawl ─► intake ─► faces ───────────────────────────────┐
                   └─► embed ─► zero_shot ──────────────────┤
                             └─► index ─► near_duplicates ─► identity ─► pages ─► changes ─► report

Each `Stage` declares what it reads and writes (run tables by name, and the warehouse areas of
`pipeline.layout`); which stage waits for which follows from that (`needs`). A stage is a function
of a `RunContext` that reads what earlier stages stored for the run date, writes its own outputs
and returns `{"outputs": {name: URI}, "counts": {name: int}, ...}`: nothing heavier than a path, so
an Airflow task on another worker can run it. Crawl and intake also have per-company parts
(Airflow maps them, `collect` joins them); embed has per-shard parts for several embedding workers.

`run_pipeline` runs them all in one process; `finish_run` writes run.json, the mark of a finished run.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline import __version__, layout
from pipeline.config import Settings
from pipeline.context import RunContext, today
from pipeline.stages import acquire, measure

if TYPE_CHECKING:
    from pipeline.ingest.sources import ManifestRow

logger = logging.getLogger(__name__)

StageResult = dict[str, Any]
OUTPUT_KEYS = ("images", "pairs", "companies", "clusters", "report")  # the interface contract; more are added


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], StageResult]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    # Runs only where the run has this source (crawl: a sites file).
    applies: Callable[[RunContext], bool] = lambda ctx: True
    # Airflow fan-out per company: one part per company, then `collect` joins them (the CLI runs `run`, all companies at once).
    company_part: Callable[[RunContext, str], StageResult] | None = None
    collect: Callable[[RunContext, list[str]], StageResult] | None = None
    # Airflow fan-out over embedding workers: `shard_part` per shard, `combine` folds their counts in.
    shard_part: Callable[[RunContext, int, int], StageResult] | None = None
    combine: Callable[[StageResult, list[StageResult]], StageResult] | None = None
    uses_embedder: bool = False  # loads the model: Airflow runs it in the embedding pool and queue

    @property
    def doc(self) -> str:
        """The first paragraph of the stage function's docstring, on one line."""
        return " ".join((self.run.__doc__ or "").strip().split("\n\n")[0].split())


STAGES: tuple[Stage, ...] = (
    Stage("crawl", acquire.crawl, reads=("sites",), writes=("crawl_state", "crawl_manifest", "crawl_log", "objects"),
          applies=lambda ctx: bool(ctx.sites_file), company_part=acquire.crawl_company_part, collect=acquire.collect_crawl),
    Stage("intake", acquire.intake, reads=("crawl_manifest",), writes=("objects", "images"),
          company_part=acquire.intake_company_part, collect=acquire.collect_intake),
    Stage("faces", measure.faces, reads=("images", "objects"), writes=("face_signals", "faces")),
    Stage("embed", measure.embed, reads=("images", "objects"), writes=("embeddings",),
          shard_part=measure.embed_shard, combine=measure.combine_embed_parts, uses_embedder=True),
    Stage("zero_shot", measure.zero_shot, reads=("images", "embeddings"), writes=("zero_shot_prompts", "zero_shot"), uses_embedder=True),
    Stage("index", measure.index, reads=("images", "embeddings"), writes=("index",)),
    Stage("near_duplicates", measure.near_duplicates, reads=("images", "embeddings", "index", "objects", "face_signals"),
          writes=("verifications", "pairs", "groups", "clusters", "reuse")),
    Stage("identity", measure.identity, reads=("images", "faces", "pairs", "objects"), writes=("face_descriptors", "face_pairs", "identities")),
    # Reads what its page metrics read (pipeline.metrics.pages.PAGE_METRICS; a test holds the two together).
    Stage("pages", measure.pages, reads=("images", "embeddings", "reference", "pairs", "clusters", "faces", "zero_shot", "identities"),
          writes=("reference", "companies", "trends")),
    # Also reads the previous finished run's images, reuse and identities.
    Stage("changes", measure.changes, reads=("images", "reuse", "identities", "trends"), writes=("changes", "newly_shared")),
    Stage("report", measure.report, reads=("images", "embeddings", "companies", "pairs", "clusters", "reuse", "trends", "crawl_log",
                                           "changes", "newly_shared"),
          writes=("projection", "report")),
)  # fmt: skip
BY_NAME = {stage.name: stage for stage in STAGES}


def needs(stage: Stage) -> list[str]:
    """The earlier stages that write what `stage` reads: the ones it waits for (the last writer of each thing)."""
    earlier = STAGES[: STAGES.index(stage)]
    found: list[str] = []
    for thing in stage.reads:
        writers = [other.name for other in earlier if thing in other.writes]
        if writers and writers[-1] not in found:
            found.append(writers[-1])
    return found


def timed(run: Callable[..., StageResult]) -> Callable[..., StageResult]:
    """Add the stage's wall time (`seconds`) and peak memory (`peak_rss_mb`, pipeline/memory.py) to
    what it returns, so run.json says where a run spent them."""

    @functools.wraps(run)
    def timed_run(*args: Any, **kwargs: Any) -> StageResult:
        from pipeline import memory

        measuring = memory.reset_peaks()
        start = time.perf_counter()
        returned = run(*args, **kwargs)
        return {**returned, "seconds": round(time.perf_counter() - start, 3), "peak_rss_mb": memory.peak_mb(measuring)}

    return timed_run


def advance(ctx: RunContext, result: StageResult) -> RunContext:
    """The context after a stage: the embed stage's result names the run's embedder."""
    if "embedder" in result and "dim" in result:
        return ctx.with_embedder(result["embedder"], result["dim"], result.get("embedder_fallback", ""))
    return ctx


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


def begin_run(ctx: RunContext) -> None:
    """Take away the run date's finished mark before the first stage writes: a rerun killed half-way
    must not leave an old run.json vouching for tables that are half new, half old."""
    ctx.warehouse.remove(layout.run_record(ctx.run_date))


def run_stages(ctx: RunContext) -> dict[str, StageResult]:
    """Every stage that applies to the run, in registry order, in this process."""
    if not ctx.embedder_id:
        # Chosen before any work, so that `--embedder clip` without weights fails in a second, not after intake.
        ctx.embedder()
    begin_run(ctx)
    results: dict[str, StageResult] = {}
    for stage in STAGES:
        if not stage.applies(ctx):
            continue
        results[stage.name] = timed(stage.run)(ctx)
        ctx = advance(ctx, results[stage.name])
        release_stage_memory()
    return results


def release_stage_memory() -> None:
    """What a stage held is not the next one's: its idle worker processes and the memory it freed.
    At 2,000 photos, the report's peak 1,336 -> 1,018 MB cold, pages' 1,092 -> 447; on a night,
    2-3 s more, as the later stages' workers start anew (docs/limits.md). An Airflow task is a
    process of its own, which gives all of it back when it ends."""
    from pipeline import memory
    from pipeline.parallel import stop_workers

    stop_workers()
    memory.release_freed()


def run_pipeline(
    rows: list[ManifestRow] | None,
    settings: Settings,
    run_date: str | None = None,
    source: str = "",
    progress: bool = True,
    sites_file: str = "",
) -> RunResult:
    """Run every stage for `rows` (or for the crawl of `sites_file`) into the warehouse; rerunning a
    run date replaces it. The stages pass each other nothing but the warehouse and the run date, as
    Airflow tasks do."""
    from pipeline.lease import release_lease, take_lease

    ctx = RunContext(settings, run_date or today(), progress=progress, rows=rows, sites_file=sites_file)
    started = dt.datetime.now(dt.UTC).isoformat()
    # One writer per run date: a second run of the date fails here, naming the first (LeaseHeld).
    lease = take_lease(ctx.warehouse, ctx.run_date, f"a run of {source or sites_file or 'given rows'}")
    try:
        results = run_stages(ctx)
        return finish_run(ctx, results, source or sites_file, started)
    finally:
        release_lease(ctx.warehouse, lease)


# What each costly stage spends its time on: (name in run.json, stage, the counts of units it worked on).
# Identity's faces are those whose descriptor it computed or read back sealed (kept): on a night
# with few new faces the unsealing is most of its time, and dividing by the new faces alone would
# make one face look like seconds.
UNIT_COSTS = (
    ("faces_ms_per_photo", "faces", ("faces_measured",)),
    ("embed_ms_per_photo", "embed", ("embedded",)),
    ("near_duplicates_ms_per_verified_pair", "near_duplicates", ("verifications_computed",)),
    ("identity_ms_per_face", "identity", ("face_descriptors_computed", "face_descriptors_unsealed")),
)


def unit_costs(results: dict[str, StageResult]) -> dict[str, float | None]:
    """Milliseconds of each costly stage per unit it computed this run (cache hits cost nothing and
    are not counted), so that a slow night explains itself; None where the stage computed nothing."""
    costs: dict[str, float | None] = {}
    for name, stage, counted in UNIT_COSTS:
        result = results.get(stage, {})
        units = sum(result.get("counts", {}).get(count, 0) for count in counted)
        costs[name] = round(1000 * result["seconds"] / units, 2) if units and "seconds" in result else None
    return costs


def finish_run(ctx: RunContext, results: dict[str, StageResult], source: str = "", started: str = "") -> RunResult:
    """Drop the run's staging (no-raw-images mode) and write run.json, the mark of a finished run.

    `results`: what each stage returned, by name, in the order the stages ran."""
    settings, warehouse = ctx.settings, ctx.warehouse
    if not settings.privacy.keep_raw_images:
        # No-raw-images mode: originals lived in staging only for the stages of this run.
        warehouse.drop_staging(ctx.run_date)
    outputs: dict[str, str | None] = dict.fromkeys(OUTPUT_KEYS)
    counts: dict[str, int] = {}
    for name, result in results.items():
        outputs.update(result.get("outputs", {}))
        prefix = "crawl_" if name == "crawl" else ""  # the crawl's counts name candidates, intake's name rows
        counts.update({prefix + key: value for key, value in result.get("counts", {}).items()})
    embed = results["embed"]
    result = RunResult(
        run_date=ctx.run_date,
        embedder=embed["embedder"],
        embedder_fallback=embed["embedder_fallback"],
        outputs=outputs,
        counts=counts,
        stages_run=list(results),
    )
    intake, crawl = results["intake"], results.get("crawl")
    if intake.get("missing_companies"):
        result.warnings.append(f"intake did not finish for: {', '.join(intake['missing_companies'])} (see the task logs)")
    if crawl is not None and crawl.get("failed_companies"):
        result.warnings.append(f"the crawl did not finish for: {', '.join(crawl['failed_companies'])} (see the crawl_log table)")
    if intake["counts"]["ok"] == 0:
        result.warnings.append("no image passed intake: see the images table's error column")
        logger.warning(result.warnings[-1])
    if embed["embedder_fallback"]:
        result.warnings.append(embed["embedder_fallback"])
    warehouse.write_json(
        layout.run_record(ctx.run_date),
        {
            **result.as_json(),
            "source": source,
            "started_at": started,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            "stage_seconds": {name: stage["seconds"] for name, stage in results.items() if "seconds" in stage},
            "stage_peak_rss_mb": {name: stage["peak_rss_mb"] for name, stage in results.items() if "peak_rss_mb" in stage},
            "unit_costs": unit_costs(results),
            "embedder_requested": settings.embedder,
            "index_kind": results["index"]["index_kind"],
            "index_choice": results["index"].get("index_choice", ""),
            "settings": settings.model_dump(mode="json"),
            "pipeline_version": __version__,
            "python": platform.python_version(),
        },
    )
    return result

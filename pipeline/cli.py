"""`homog`: the command line. Thin: it parses, validates, calls the same functions as the DAGs."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from pipeline.config import ConfigError, EmbedderChoice, load_settings
from pipeline.sources import SourceError, read_manifest, scan_folder

if TYPE_CHECKING:
    from pipeline.run import RunResult

app = typer.Typer(
    help=(
        "Profile homogenization analytics: measure how indistinguishable companies' staff headshots "
        "are becoming (near-duplicates, style clusters, a homogeneity index, cross-company reuse, trends)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="YAML settings file (also HOMOG_CONFIG). Flags and HOMOG_* env vars win."),
]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the run's own log


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _print_summary(result: "RunResult") -> None:
    import pandas as pd

    counts = result.counts
    typer.echo(f"run {result.run_date} with embedder {result.embedder}: {counts['ok']} of {counts['rows']} images ok, "
               f"{counts['error']} refused; {counts['pairs']} duplicate pair(s), {counts['cross_company_pairs']} across companies")
    companies = pd.read_parquet(result.outputs["companies"]) if result.outputs.get("companies") else pd.DataFrame()
    for row in companies.sort_values("homogeneity_index", ascending=False, na_position="last").itertuples():
        index = (f"{row.homogeneity_index:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]" if row.status == "ok" else row.status)
        name = "".join(ch if ch.isprintable() else "?" for ch in row.company)[:40]  # scraped: no terminal escapes
        typer.echo(f"  {name:40s} {row.n_images:4d} photos  homogeneity {index}  near-dup rate {row.near_dup_rate:.2f}")
    for name, path in result.outputs.items():
        if path:
            typer.echo(f"  {name}: {path}")


@app.command()
def run(
    manifest: Annotated[
        Optional[str],
        typer.Option(help="CSV with columns company, image [, person, source_url]; paths relative to the CSV."),
    ] = None,
    input_dir: Annotated[
        Optional[str], typer.Option("--input", help="Folder whose sub-folders are companies (local or fsspec URL).")
    ] = None,
    sites: Annotated[Optional[Path], typer.Option(help="sites.yaml: crawl these companies' team pages first.")] = None,
    warehouse: Annotated[Optional[str], typer.Option(help="Warehouse root (path or fsspec URL). Default ./warehouse.")] = None,
    reports: Annotated[Optional[str], typer.Option(help="Reports root (path or fsspec URL). Default ./reports.")] = None,
    run_date: Annotated[Optional[str], typer.Option(help="Run date YYYY-MM-DD (default: today). Reruns replace it.")] = None,
    embedder: Annotated[Optional[EmbedderChoice], typer.Option(help="auto (clip if its weights exist, else classic), clip or classic.")] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object describing the run as the last stdout line.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars on stderr.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Ingest a manifest, a folder or crawled team pages into the warehouse and compute the run's tables."""
    from pipeline.crawl import SitesError, load_sites
    from pipeline.embedders.clip import UnknownModel, WeightsNotFound
    from pipeline.run import crawl_stage, run_pipeline, today
    from pipeline.warehouse import validate_run_date

    _setup_logging(verbose)
    if sum(option is not None for option in (manifest, input_dir, sites)) != 1:
        _fail("give exactly one of --manifest M.csv, --input DIR or --sites sites.yaml")
    crawled = None
    try:
        settings = load_settings(config, warehouse=warehouse, embedder=embedder, reports=reports)
        run_date = validate_run_date(run_date or today())
        if sites is not None:
            load_sites(sites)  # a broken sites file fails here, before any request
            crawled = crawl_stage(str(sites), settings, run_date)
            manifest = crawled["manifest"]
        rows = read_manifest(manifest) if manifest else scan_folder(input_dir)  # type: ignore[arg-type]
    except (ConfigError, SourceError, SitesError, ValueError) as exc:
        _fail(str(exc))
    try:
        source = str(sites) if sites is not None else manifest or input_dir or ""
        result = run_pipeline(rows, settings, run_date=run_date, source=source, progress=progress, crawl=crawled)
    except (WeightsNotFound, UnknownModel) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.as_json()))
    else:
        _print_summary(result)


models_app = typer.Typer(help="CLIP weights: fetch them on a connected machine, list what this machine has.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("pull")
def models_pull(
    model: Annotated[Optional[str], typer.Argument(help="open_clip model name (default: clip.model).")] = None,
    pretrained: Annotated[Optional[str], typer.Argument(help="open_clip pretrained tag (default: clip.pretrained).")] = None,
    config: ConfigOption = None,
) -> None:
    """Download CLIP weights into the Hugging Face cache (needs access to the Hub)."""
    from pipeline.embedders.clip import ClipEmbedder, UnknownModel, WeightsNotFound

    _setup_logging(False)
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc))
    model, pretrained = model or settings.clip.model, pretrained or settings.clip.pretrained
    try:
        embedder = ClipEmbedder(model, pretrained, device="cpu", precision="fp32", allow_download=True)
        embedder.load()  # loading is what fetches the weights into the cache
    except (WeightsNotFound, UnknownModel) as exc:
        _fail(f"could not download {model} / {pretrained}: {exc}", code=1)
    typer.echo(f"{embedder.id}: weights are in the cache; `homog run --embedder clip` will find them")


@models_app.command("list")
def models_list(
    all_tags: Annotated[bool, typer.Option("--all", help="Also list known tags whose weights are not here.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show which open_clip model/tag weights this machine has (HF cache, ~/.cache/clip, clip.checkpoint)."""
    from pipeline.embedders.clip import find_local_weights, known_pretrained

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc))
    if settings.clip.checkpoint is not None:
        found = find_local_weights(settings.clip.model, settings.clip.pretrained, settings.clip.checkpoint)
        typer.echo(f"{settings.clip.model}\tcheckpoint\t{found or 'MISSING: ' + str(settings.clip.checkpoint)}")
    n_found = 0
    for model, tag in known_pretrained():
        path = find_local_weights(model, tag)
        n_found += path is not None
        if path or all_tags:
            typer.echo(f"{model}\t{tag}\t{path or '-'}")
    if not n_found:
        typer.echo("no open_clip weights in the caches of this machine (see `homog models pull`)", err=True)


reference_app = typer.Typer(
    help="The index reference of an embedder: the mean of diverse headshots, taken out before the homogeneity index.",
    no_args_is_help=True,
)
app.add_typer(reference_app, name="reference")


@reference_app.command("fit")
def reference_fit(
    folders: Annotated[list[str], typer.Argument(help="Folders of diverse, unrelated headshots (local or fsspec URLs), searched recursively.")],
    warehouse: Annotated[Optional[str], typer.Option(help="Warehouse to store it in (default ./warehouse).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the reference to this file instead of the warehouse.")] = None,
    embedder: Annotated[Optional[EmbedderChoice], typer.Option(help="auto, clip or classic (default: settings).")] = None,
    force: Annotated[bool, typer.Option(help="Replace the warehouse's existing reference (earlier indexes stop being comparable).")] = False,
    config: ConfigOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Fit the embedder's index reference on chosen headshots; later runs measure against it."""
    from pipeline.embed import resolve_embedder
    from pipeline.embedders.clip import UnknownModel, WeightsNotFound
    from pipeline.reference import ReferenceError, fit_from_folders, reference_key, save_reference, to_bytes
    from pipeline.warehouse import Warehouse

    _setup_logging(verbose)
    try:
        settings = load_settings(config, warehouse=warehouse, embedder=embedder)
        choice = resolve_embedder(settings)
        store = Warehouse(settings.warehouse)
        if out is None and store.exists(reference_key(choice.embedder.id)) and not force:
            _fail(f"{store.uri(reference_key(choice.embedder.id))} exists: indexes already measured against it would stop "
                  "being comparable with new ones; pass --force to replace it anyway")  # fmt: skip
        reference, skipped = fit_from_folders(folders, choice.embedder, settings.intake, progress=True)
    except (ConfigError, SourceError, ReferenceError, WeightsNotFound, UnknownModel) as exc:
        _fail(str(exc))
    for uri, reason in skipped:
        typer.echo(f"skipped {uri}: {reason}", err=True)
    try:
        if out is None:
            where = save_reference(store, reference)
        else:
            out.write_bytes(to_bytes(reference))
            where = str(out)
    except OSError as exc:
        _fail(f"could not write the reference: {exc}")
    typer.echo(f"{reference.embedder_id} reference {reference.id} ({reference.source}) -> {where}")


@reference_app.command("show")
def reference_show(
    warehouse: Annotated[Optional[str], typer.Option(help="Warehouse root (default ./warehouse).")] = None,
    embedder: Annotated[Optional[EmbedderChoice], typer.Option(help="auto, clip or classic (default: settings).")] = None,
    config: ConfigOption = None,
) -> None:
    """Which reference the next run's index will be measured against."""
    from pipeline.embed import resolve_embedder
    from pipeline.reference import ReferenceError, stored_reference
    from pipeline.warehouse import Warehouse

    try:
        settings = load_settings(config, warehouse=warehouse, embedder=embedder)
        chosen = resolve_embedder(settings).embedder
        reference = stored_reference(Warehouse(settings.warehouse), chosen.id, chosen.dim)
    except (ConfigError, ReferenceError) as exc:
        _fail(str(exc))
    if reference is None:
        typer.echo(f"{chosen.id}: no reference yet; the first run with >= {settings.thresholds.reference_min_photos} photos fits and freezes one")
    else:
        typer.echo(f"{chosen.id}: reference {reference.id}, fitted on {reference.source}")


@app.command()
def retention(
    warehouse: Annotated[Optional[str], typer.Option(help="Warehouse root (path or fsspec URL).")] = None,
    today: Annotated[Optional[str], typer.Option(help="Date to measure ages from, YYYY-MM-DD (default: today).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and log, delete nothing.")] = False,
    config: ConfigOption = None,
) -> None:
    """Purge originals and thumbnails not seen by any run for longer than the configured retention."""
    from pipeline.retention import purge_expired
    from pipeline.run import today as current_date
    from pipeline.warehouse import Warehouse

    _setup_logging(False)
    try:
        settings = load_settings(config, warehouse=warehouse)
        log = purge_expired(Warehouse(settings.warehouse), settings.retention, today or current_date(), dry_run=dry_run)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
    counts = log["action"].value_counts().to_dict() if len(log) else {}
    typer.echo(f"retention: {len(log)} stored picture(s) checked; " + (", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "nothing stored"))


@app.command()
def report(
    run_date: Annotated[str, typer.Option(help="The run date whose report to (re)generate, YYYY-MM-DD.")],
    warehouse: Annotated[Optional[str], typer.Option(help="Warehouse root (path or fsspec URL).")] = None,
    reports: Annotated[Optional[str], typer.Option(help="Reports root (default ./reports).")] = None,
    config: ConfigOption = None,
) -> None:
    """Regenerate a run's HTML report, audit pages and summary.json from the warehouse (no metric is recomputed)."""
    from pipeline.run import report_stage
    from pipeline.warehouse import Warehouse, validate_run_date

    _setup_logging(False)
    try:
        settings = load_settings(config, warehouse=warehouse, reports=reports)
        run_date = validate_run_date(run_date)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
    store = Warehouse(settings.warehouse)
    run_json = f"runs/run_date={run_date}/run.json"
    if not store.exists(run_json):
        _fail(f"no finished run {run_date} in {settings.warehouse} (runs/run_date={run_date}/run.json is missing)")
    run = store.read_json(run_json)
    written = report_stage(settings, run_date, run["embedder"], run.get("embedder_fallback", ""))
    typer.echo(f"report: {written['report']}\nsummary: {written['summary']}\naudit pages: {written['audit_pages']}")


@app.command()
def audit(
    source: Annotated[str, typer.Argument(help="The company's team-page URL, or a folder of its photos.")],
    company: Annotated[str, typer.Option(help="Company name (as in sites.yaml, if it is crawled nightly).")],
    warehouse: Annotated[Optional[str], typer.Option(help="Warehouse with the nightly runs to compare against.")] = None,
    reports: Annotated[Optional[str], typer.Option(help="Reports root; the page goes under audits/.")] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the audit's result as one JSON line.")] = False,
) -> None:
    """One-off brand audit of a page or folder against the latest nightly population; prints the page's path."""
    from pipeline.audit import AuditError
    from pipeline.audit import audit as run_audit
    from pipeline.crawl import SitesError

    _setup_logging(False)
    try:
        settings = load_settings(config, warehouse=warehouse, reports=reports)
        result = run_audit(source, company, settings)
    except (ConfigError, AuditError, SitesError, SourceError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    population = f"{result['population_rows']} photos of nightly run {result['population_run_date']}" if result["population_run_date"] else "no nightly run (page compared with itself)"
    typer.echo(f"audit of {company} against {population}")
    typer.echo(str(result["page"]))


@app.command()
def crawl(
    sites: Annotated[Path, typer.Option(help="sites.yaml: companies and their team-page URLs, optional crawl overrides.")],
    out: Annotated[Path, typer.Option(help="Manifest CSV to write; the crawl log is written beside it (*.crawl-log.csv).")],
    warehouse: Annotated[Optional[str], typer.Option(help="Warehouse root where the pictures are downloaded to.")] = None,
    run_date: Annotated[Optional[str], typer.Option(help="Run date YYYY-MM-DD (default: today).")] = None,
    config: ConfigOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Crawl team pages politely into the warehouse and write a manifest for `homog run --manifest`."""
    import pandas as pd

    from pipeline.crawl import SitesError, load_sites, log_csv, log_path_for
    from pipeline.run import crawl_stage, today
    from pipeline.warehouse import Warehouse, validate_run_date

    _setup_logging(verbose)
    try:
        settings = load_settings(config, warehouse=warehouse)
        run_date = validate_run_date(run_date or today())
        load_sites(sites)
        result = crawl_stage(str(sites), settings, run_date)
    except (ConfigError, SitesError, ValueError) as exc:
        _fail(str(exc))
    store = Warehouse(settings.warehouse)
    out.parent.mkdir(parents=True, exist_ok=True)
    with store.fs.open(result["manifest"], "rb") as handle:
        out.write_bytes(handle.read())
    log_path = log_path_for(out)
    log_path.write_bytes(log_csv(pd.read_parquet(result["crawl_log"])))
    typer.echo(f"{result['kept']} picture(s) kept, {result['skipped']} skipped, {result['rejected']} rejected, "
               f"{result['error']} error(s) of {result['candidates']} candidates; {result['companies_failed']} company crawl(s) failed")
    typer.echo(f"manifest: {out}\ncrawl log: {log_path}")


@app.command()
def demo(
    root: Annotated[Path, typer.Option(help="Folder for the demo site and sites.yaml.")] = Path("var/demo"),
    warehouse: Annotated[Path, typer.Option(help="Warehouse root for the demo run.")] = Path("var/demo/warehouse"),
    run_date: Annotated[Optional[str], typer.Option(help="Run date YYYY-MM-DD (default: today).")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 for the demo site (a free one if taken).")] = 8765,
    as_json: Annotated[bool, typer.Option("--json", help="Print the DAG's task states and run.json as one JSON line.")] = False,
    log_file: Annotated[Optional[Path], typer.Option(help="Write the DAG run's task logs here instead of stdout.")] = None,
    use_executor: Annotated[bool, typer.Option(help="Run the tasks through the configured executor (Celery, ...) instead of in this process.")] = False,
) -> None:
    """Serve the demo website on 127.0.0.1 and run the nightly Airflow DAG over it once (needs $AIRFLOW_HOME migrated)."""
    from pipeline.demo import run_demo
    from pipeline.run import today
    from pipeline.warehouse import validate_run_date

    _setup_logging(False)
    try:
        run_date = validate_run_date(run_date or today())
    except ValueError as exc:
        _fail(str(exc))
    outcome = run_demo(root, warehouse, run_date, port, log_file, use_executor)
    if as_json:
        typer.echo(json.dumps(outcome, default=str))
        return
    failed = [t for t in outcome["tasks"] if t["state"] != "success"]
    typer.echo(f"nightly DAG run {outcome['run_id']}: {outcome['state']} ({len(outcome['tasks'])} task instances, {len(failed)} not successful)")
    for task in failed:
        typer.echo(f"  {task['task_id']}[{task['map_index']}]: {task['state']}")
    if outcome["run"] is None or outcome["state"] != "success":
        _fail("the nightly DAG did not finish; see the log above", code=1)
    from pipeline.run import RunResult

    run = outcome["run"]
    _print_summary(RunResult(run["run_date"], run["embedder"], run["outputs"], run["counts"], run["stages_run"], run["warnings"], run["embedder_fallback"]))
    typer.secho(f"\nThe run report: {run['outputs']['report']}", bold=True)


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write <company>/*.jpg and manifest.csv into.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 7,
) -> None:
    """Write the synthetic demo companies (drawings, not photos) used by `make demo` and the tests."""
    from pipeline.demo_data import generate_demo_images

    manifest = generate_demo_images(out, seed=seed)
    typer.echo(str(manifest))


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the effective settings (defaults, YAML file and HOMOG_* env vars merged) as YAML."""
    import yaml

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        _fail(str(exc))
    typer.echo(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))


if __name__ == "__main__":
    app()

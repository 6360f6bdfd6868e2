"""`homog`: the command line. Thin: it parses, validates, calls the same functions as the DAGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from pipeline.apps.cli_common import ConfigOption, WarehouseOption, command_group, fail, os_errors_end_cleanly, setup_logging
from pipeline.apps.cli_models import models_app, reference_app
from pipeline.choices import EmbedderChoice
from pipeline.ingest.text import printable

if TYPE_CHECKING:
    from pipeline.stages import RunResult
    from pipeline.warehouse import Warehouse

app = command_group(
    "Profile homogenization analytics: measure how indistinguishable companies' staff headshots "
    "are becoming (near-duplicates, style clusters, a homogeneity index, cross-company reuse, trends).",
    add_completion=False,
)
app.add_typer(models_app, name="models")
app.add_typer(reference_app, name="reference")


def _print_summary(result: RunResult) -> None:
    import pandas as pd

    counts = result.counts
    typer.echo(
        f"run {result.run_date} with embedder {result.embedder}: {counts['ok']} of {counts['rows']} images ok, "
        f"{counts['error']} refused; {counts['pairs']} duplicate pair(s), {counts['cross_company_pairs']} across companies"
    )
    companies = pd.read_parquet(result.outputs["companies"]) if result.outputs.get("companies") else pd.DataFrame()
    for row in companies.sort_values("homogeneity_index", ascending=False, na_position="last").itertuples():
        index = f"{row.homogeneity_index:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]" if row.status == "ok" else row.status
        template = (
            f"  template {row.template_index:.3f} [{row.template_ci_low:.3f}, {row.template_ci_high:.3f}]"
            if pd.notna(row.template_index)
            else ""
        )
        typer.echo(
            f"  {printable(row.company, 40):40s} {row.n_images:4d} photos  homogeneity {index}{template}  near-dup rate {row.near_dup_rate:.2f}"
        )
    for name, path in result.outputs.items():
        if path:
            typer.echo(f"  {name}: {path}")


@app.command()
@os_errors_end_cleanly
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
    embedder: Annotated[
        Optional[EmbedderChoice], typer.Option(help="auto (clip if its weights exist, else classic), clip or classic.")
    ] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object describing the run as the last stdout line.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars on stderr.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Ingest a manifest, a folder or crawled team pages into the warehouse and compute the run's tables."""
    from pipeline.config import ConfigError, load_settings
    from pipeline.context import today
    from pipeline.features.embedders.clip import UnknownModel, WeightsNotFound
    from pipeline.ingest.crawl import SitesError, load_sites, with_site_overrides
    from pipeline.ingest.sources import SourceError, read_manifest, scan_folder
    from pipeline.layout import validate_run_date
    from pipeline.lease import LeaseHeld
    from pipeline.stages import run_pipeline

    setup_logging(verbose)
    if sum(option is not None for option in (manifest, input_dir, sites)) != 1:
        fail("give exactly one of --manifest M.csv, --input DIR or --sites sites.yaml")
    rows = None
    try:
        settings = load_settings(config, warehouse=warehouse, embedder=embedder, reports=reports)
        run_date = validate_run_date(run_date or today())
        if sites is not None:
            with_site_overrides(settings, load_sites(sites))  # a broken sites file fails here, before any request
        else:
            rows = read_manifest(manifest) if manifest else scan_folder(input_dir)  # type: ignore[arg-type]
    except (ConfigError, SourceError, SitesError, ValueError) as exc:
        fail(str(exc))
    try:
        source = str(sites) if sites is not None else manifest or input_dir or ""
        result = run_pipeline(rows, settings, run_date=run_date, source=source, progress=progress, sites_file=str(sites or ""))
    except (WeightsNotFound, UnknownModel, LeaseHeld, SitesError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.as_json()))
    else:
        _print_summary(result)


lease_app = command_group("Who is writing a run date: show or clear a run's lease.")
app.add_typer(lease_app, name="lease")


def _lease_target(config: Path | None, warehouse: str | None, run_date: str) -> tuple[Warehouse, str]:
    """The warehouse and validated run date a `homog lease` command is about (exit 2 on bad input)."""
    from pipeline.config import ConfigError, load_settings
    from pipeline.layout import validate_run_date
    from pipeline.warehouse import Warehouse

    try:
        return Warehouse(load_settings(config, warehouse=warehouse).warehouse), validate_run_date(run_date)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))  # exits


@lease_app.command("show")
@os_errors_end_cleanly
def lease_show(
    run_date: Annotated[str, typer.Option(help="Run date YYYY-MM-DD.")],
    warehouse: WarehouseOption = None,
    config: ConfigOption = None,
) -> None:
    """Which run holds the date's lease, if any."""
    from pipeline.lease import read_lease

    held = read_lease(*_lease_target(config, warehouse, run_date))
    typer.echo(f"{run_date}: no lease (nobody is writing it)" if held is None else
               f"{run_date}: held by {held.holder} (host {held.host}, pid {held.pid}) since {held.taken_at}, until {held.expires_at}")  # fmt: skip


@lease_app.command("clear")
@os_errors_end_cleanly
def lease_clear(
    run_date: Annotated[str, typer.Option(help="Run date YYYY-MM-DD.")],
    warehouse: WarehouseOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove a stale lease: only once the run that held it is known to be gone (a live run would then
    share the date with the next one)."""
    from pipeline.lease import clear_lease

    held = clear_lease(*_lease_target(config, warehouse, run_date))
    typer.echo(f"{run_date}: " + ("there was no lease" if held is None else f"cleared the lease of {held.holder} (pid {held.pid})"))


@app.command()
@os_errors_end_cleanly
def retention(
    warehouse: WarehouseOption = None,
    today: Annotated[Optional[str], typer.Option(help="Date to measure ages from, YYYY-MM-DD (default: today).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and log, delete nothing.")] = False,
    config: ConfigOption = None,
) -> None:
    """Purge originals and thumbnails not seen by any run for longer than the configured retention."""
    from pipeline.apps.retention import purge_expired
    from pipeline.config import ConfigError, load_settings
    from pipeline.context import today as current_date
    from pipeline.warehouse import Warehouse

    setup_logging(False)
    try:
        settings = load_settings(config, warehouse=warehouse)
        log = purge_expired(Warehouse(settings.warehouse), settings.retention, today or current_date(), dry_run=dry_run)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    counts = log["action"].value_counts().to_dict() if len(log) else {}
    typer.echo(
        f"retention: {len(log)} stored picture(s) checked; "
        + (", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "nothing stored")
    )


@app.command()
@os_errors_end_cleanly
def report(
    run_date: Annotated[str, typer.Option(help="The run date whose report to (re)generate, YYYY-MM-DD.")],
    warehouse: WarehouseOption = None,
    reports: Annotated[Optional[str], typer.Option(help="Reports root (default ./reports).")] = None,
    config: ConfigOption = None,
) -> None:
    """Regenerate a run's HTML report, audit pages and summary.json from the warehouse (no metric is recomputed)."""
    from pipeline.config import ConfigError, load_settings
    from pipeline.context import RunContext
    from pipeline.layout import run_record, validate_run_date
    from pipeline.report.render import render_report

    setup_logging(False)
    try:
        settings = load_settings(config, warehouse=warehouse, reports=reports)
        run_date = validate_run_date(run_date)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    ctx = RunContext(settings, run_date)
    if not ctx.warehouse.exists(run_record(run_date)):
        fail(f"no finished run {run_date} in {settings.warehouse} ({run_record(run_date)} is missing)")
    run = ctx.warehouse.read_json(run_record(run_date))
    written = render_report(ctx.with_embedder(run["embedder"], 0, run.get("embedder_fallback", "")))
    typer.echo(f"report: {written['report']}\nsummary: {written['summary']}\naudit pages: {written['audit_pages']}")


@app.command()
@os_errors_end_cleanly
def trends(
    company: Annotated[Optional[str], typer.Option(help="Only this company.")] = None,
    since: Annotated[Optional[str], typer.Option(help="Only runs on or after this date, YYYY-MM-DD.")] = None,
    run_date: Annotated[Optional[str], typer.Option(help="Read the trends as of this run (default: the latest finished run).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of the table.")] = False,
    warehouse: WarehouseOption = None,
    config: ConfigOption = None,
) -> None:
    """Each page's homogeneity index (and template index) over runs, with its intervals and what changed, as the run report leads with it."""
    import pandas as pd

    from pipeline.config import ConfigError, load_settings
    from pipeline.layout import validate_run_date
    from pipeline.report.data import NoRunError, trends_view
    from pipeline.warehouse import Warehouse

    try:
        settings = load_settings(config, warehouse=warehouse)
        run_date, since = (validate_run_date(d) if d else None for d in (run_date, since))
        view = trends_view(Warehouse(settings.warehouse), run_date, company, since)
    except (ConfigError, ValueError, NoRunError) as exc:
        fail(str(exc))
    if as_json:
        for record in json.loads(view.to_json(orient="records")):
            typer.echo(json.dumps(record))
        return
    if view.empty:
        typer.echo("no run of " + (f"company {company!r}" if company else "any company") + (f" since {since}" if since else ""))
        return
    typer.echo(f"{'company':32s} {'run':10s} {'photos':>6s}  {'index [95% CI]':22s} {'change':>7s}  {'template (change)':18s} what changed")
    for row in view.itertuples():
        index = f"{row.homogeneity_index:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]"
        change = f"{row.change:+.3f}" if pd.notna(row.change) else ""
        flag = "*" if row.significant else " "
        template = f"{row.template_index:.3f}" if pd.notna(row.template_index) else ""
        if pd.notna(row.template_change):
            template += f" ({row.template_change:+.3f}{'*' if row.template_significant else ''})"
        typer.echo(f"{printable(row.company, 32):32s} {row.run_date:10s} {row.n_images:6d}  {index:22s} {change:>7s}{flag} "
                   f"{template:18s} {printable(row.summary, 200)}")  # fmt: skip
    typer.echo("* a change larger than the two runs' 95% intervals explain (|z| > 1.96)")


@app.command()
@os_errors_end_cleanly
def audit(
    source: Annotated[str, typer.Argument(help="The company's team-page URL, its domain (acme.example), or a folder of its photos.")],
    company: Annotated[str, typer.Option(help="Company name (as in sites.yaml, if it is crawled nightly).")],
    warehouse: Annotated[Optional[str], typer.Option(help="Warehouse with the nightly runs to compare against.")] = None,
    reports: Annotated[Optional[str], typer.Option(help="Reports root; the page goes under audits/.")] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the audit's result as one JSON line.")] = False,
) -> None:
    """One-off brand audit of a page or folder against the latest nightly population; prints the page's path."""
    from pipeline.apps.audit import AuditError
    from pipeline.apps.audit import audit as run_audit
    from pipeline.config import ConfigError, load_settings
    from pipeline.ingest.crawl import SitesError
    from pipeline.ingest.sources import SourceError
    from pipeline.lease import LeaseHeld

    setup_logging(False)
    try:
        settings = load_settings(config, warehouse=warehouse, reports=reports)
        result = run_audit(source, company, settings)
    except (ConfigError, AuditError, SitesError, SourceError, LeaseHeld) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    population = (
        f"{result['population_rows']} photos of nightly run {result['population_run_date']}"
        if result["population_run_date"]
        else "no nightly run (page compared with itself)"
    )
    typer.echo(f"audit of {company} against {population}")
    typer.echo(str(result["page"]))


@app.command()
@os_errors_end_cleanly
def crawl(
    sites: Annotated[Path, typer.Option(help="sites.yaml: companies with their team-page URLs or domains, optional crawl overrides.")],
    out: Annotated[Path, typer.Option(help="Manifest CSV to write; the crawl log is written beside it (*.crawl-log.csv).")],
    warehouse: Annotated[Optional[str], typer.Option(help="Warehouse root where the pictures are downloaded to.")] = None,
    run_date: Annotated[Optional[str], typer.Option(help="Run date YYYY-MM-DD (default: today).")] = None,
    config: ConfigOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Crawl team pages (found from a domain where asked) politely into the warehouse; write a manifest for `homog run --manifest`."""
    import pandas as pd

    from pipeline.config import ConfigError, load_settings
    from pipeline.context import RunContext, today
    from pipeline.ingest.crawl import SitesError, load_sites, log_csv, log_path_for, with_site_overrides
    from pipeline.layout import crawl_manifest, validate_run_date
    from pipeline.stages.acquire import crawl as crawl_sites

    setup_logging(verbose)
    try:
        settings = load_settings(config, warehouse=warehouse)
        run_date = validate_run_date(run_date or today())
        with_site_overrides(settings, load_sites(sites))
        ctx = RunContext(settings, run_date, sites_file=str(sites))
        result = crawl_sites(ctx)
    except (ConfigError, SitesError, ValueError) as exc:
        fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(ctx.warehouse.read_bytes(crawl_manifest(run_date)))
    log_path = log_path_for(out)
    log_path.write_bytes(log_csv(pd.read_parquet(result["outputs"]["crawl_log"])))
    n = result["counts"]
    typer.echo(
        f"{n['kept']} picture(s) kept, {n['skipped']} skipped, {n['rejected']} rejected, "
        f"{n['error']} error(s) of {n['candidates']} candidates; {n['companies_failed']} company crawl(s) failed"
    )
    typer.echo(f"manifest: {out}\ncrawl log: {log_path}")


@app.command()
@os_errors_end_cleanly
def demo(
    root: Annotated[Path, typer.Option(help="Folder for the demo site and sites.yaml.")] = Path("var/demo"),
    warehouse: Annotated[str, typer.Option(help="Warehouse root for the demo run (a path or an fsspec URL such as s3://...).")] = (
        "var/demo/warehouse"
    ),
    reports: Annotated[Optional[str], typer.Option(help="Reports root (default: <root>/reports; a path or an fsspec URL).")] = None,
    run_date: Annotated[Optional[str], typer.Option(help="The last night's run date YYYY-MM-DD (default: today).")] = None,
    nights: Annotated[int, typer.Option(min=1, help="Nights of the demo's story to run, one DAG run per date, ending on --run-date.")] = 6,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 for the demo site (a free one if taken).")] = 8765,
    as_json: Annotated[bool, typer.Option("--json", help="Print the DAG's task states and run.json as one JSON line.")] = False,
    log_file: Annotated[Optional[Path], typer.Option(help="Write the DAG run's task logs here instead of stdout.")] = None,
    use_executor: Annotated[
        bool, typer.Option(help="Run the tasks through the configured executor (Celery, ...) instead of in this process.")
    ] = False,
    dags_folder: Annotated[Optional[Path], typer.Option(help="The project's dags/ (default: Airflow's [core] dags_folder).")] = None,
) -> None:
    """Serve the demo website on 127.0.0.1 and run the nightly Airflow DAG over it night after night while
    the site changes (needs $AIRFLOW_HOME migrated)."""
    from pipeline.apps.demo.runner import DemoError, run_demo
    from pipeline.context import today
    from pipeline.layout import validate_run_date

    setup_logging(False)
    try:
        run_date = validate_run_date(run_date or today())
    except ValueError as exc:
        fail(str(exc))
    try:
        outcome = run_demo(root, warehouse, run_date, port, log_file, use_executor, dags_folder, nights, reports)
    except DemoError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(outcome, default=str))
        return
    for night in outcome["nights"][:-1]:
        typer.echo(f"night {night['night']} ({night['run_date']}): nightly DAG run {night['run_id']}: {night['state']}")
    failed = [t for t in outcome["tasks"] if t["state"] != "success"]
    last = outcome["nights"][-1]
    typer.echo(
        f"night {last['night']} ({last['run_date']}): nightly DAG run {outcome['run_id']}: {outcome['state']} "
        f"({len(outcome['tasks'])} task instances, {len(failed)} not successful)"
    )
    for task in failed:
        typer.echo(f"  {task['task_id']}[{task['map_index']}]: {task['state']}")
    if outcome["run"] is None or outcome["state"] != "success":
        fail("the nightly DAG did not finish; see the log above", code=1)
    from pipeline.stages import RunResult

    run = outcome["run"]
    _print_summary(
        RunResult(
            run["run_date"], run["embedder"], run["outputs"], run["counts"], run["stages_run"], run["warnings"], run["embedder_fallback"]
        )
    )
    from pipeline import layout
    from pipeline.report.data import trends_view
    from pipeline.warehouse import Warehouse

    moved = trends_view(Warehouse(str(warehouse)))
    moved = moved[moved["significant"]]
    if len(moved):
        typer.echo(f"\nSignificant changes over the {len(outcome['nights'])} nights:")
        for row in moved.sort_values(["run_date", "company"]).itertuples():
            typer.echo(f"  {row.run_date}  {printable(row.company, 40)}: {printable(row.summary, 200)}")
    every_run = Warehouse(str(reports or root / "reports"))
    typer.secho(f"\nThe run report: {run['outputs']['report']}", bold=True)
    typer.secho(f"Every night's report: {every_run.uri(layout.REPORTS_INDEX)}", bold=True)


@app.command("demo-data")
@os_errors_end_cleanly
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write <company>/*.jpg and manifest.csv into.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 7,
) -> None:
    """Write the synthetic demo companies (drawings, not photos) used by `make demo` and the tests."""
    from pipeline.apps.demo.data import generate_demo_images

    manifest = generate_demo_images(out, seed=seed)
    typer.echo(str(manifest))


@app.command("config")
@os_errors_end_cleanly
def show_config(config: ConfigOption = None) -> None:
    """Print the effective settings (defaults, YAML file and HOMOG_* env vars merged) as YAML."""
    import yaml

    from pipeline.config import ConfigError, load_settings

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(str(exc))
    typer.echo(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))


if __name__ == "__main__":
    app()

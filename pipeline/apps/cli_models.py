"""`homog models` (CLIP weights on this machine) and `homog reference` (the homogeneity index's reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.apps.cli_common import ConfigOption, command_group, fail, os_errors_end_cleanly, setup_logging
from pipeline.choices import EmbedderChoice

models_app = command_group("CLIP weights: fetch them on a connected machine, list what this machine has.")


@models_app.command("pull")
@os_errors_end_cleanly
def models_pull(
    model: Annotated[Optional[str], typer.Argument(help="open_clip model name (default: clip.model).")] = None,
    pretrained: Annotated[Optional[str], typer.Argument(help="open_clip pretrained tag (default: clip.pretrained).")] = None,
    config: ConfigOption = None,
) -> None:
    """Download CLIP weights into the Hugging Face cache (needs access to the Hub)."""
    from pipeline.config import ConfigError, load_settings
    from pipeline.features.embedders.clip import ClipEmbedder, UnknownModel, WeightsNotFound

    setup_logging(False)
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(str(exc))
    model, pretrained = model or settings.clip.model, pretrained or settings.clip.pretrained
    try:
        embedder = ClipEmbedder(model, pretrained, device="cpu", precision="fp32", allow_download=True)
        embedder.load()  # loading is what fetches the weights into the cache
    except (WeightsNotFound, UnknownModel) as exc:
        fail(f"could not download {model} / {pretrained}: {exc}", code=1)
    typer.echo(f"{embedder.id}: weights are in the cache; `homog run --embedder clip` will find them")


@models_app.command("list")
@os_errors_end_cleanly
def models_list(
    all_tags: Annotated[bool, typer.Option("--all", help="Also list known tags whose weights are not here.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show which open_clip model/tag weights this machine has (HF cache, ~/.cache/clip, clip.checkpoint)."""
    from pipeline.config import ConfigError, load_settings
    from pipeline.features.embedders.clip import find_local_weights, known_pretrained

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(str(exc))
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


reference_app = command_group("The index reference of an embedder: the mean of diverse headshots, taken out before the homogeneity index.")


@reference_app.command("fit")
@os_errors_end_cleanly
def reference_fit(
    folders: Annotated[
        list[str], typer.Argument(help="Folders of diverse, unrelated headshots (local or fsspec URLs), searched recursively.")
    ],
    warehouse: Annotated[Optional[str], typer.Option(help="Warehouse to store it in (default ./warehouse).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the reference to this file instead of the warehouse.")] = None,
    embedder: Annotated[Optional[EmbedderChoice], typer.Option(help="auto, clip or classic (default: settings).")] = None,
    force: Annotated[
        bool, typer.Option(help="Replace the warehouse's existing reference (earlier indexes stop being comparable).")
    ] = False,
    config: ConfigOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Fit the embedder's index reference on chosen headshots; later runs measure against it."""
    from pipeline.config import ConfigError, load_settings
    from pipeline.features.embed import resolve_embedder
    from pipeline.features.embedders.clip import UnknownModel, WeightsNotFound
    from pipeline.features.reference import ReferenceError, fit_from_folders, save_reference, to_bytes
    from pipeline.ingest.sources import SourceError
    from pipeline.layout import reference_file as reference_key
    from pipeline.warehouse import Warehouse

    setup_logging(verbose)
    try:
        settings = load_settings(config, warehouse=warehouse, embedder=embedder)
        choice = resolve_embedder(settings)
        store = Warehouse(settings.warehouse)
        if out is None and store.exists(reference_key(choice.embedder.id)) and not force:
            fail(f"{store.uri(reference_key(choice.embedder.id))} exists: indexes already measured against it would stop "
                  "being comparable with new ones; pass --force to replace it anyway")  # fmt: skip
        reference, skipped = fit_from_folders(folders, choice.embedder, settings.intake, progress=True)
    except (ConfigError, SourceError, ReferenceError, WeightsNotFound, UnknownModel) as exc:
        fail(str(exc))
    for uri, reason in skipped:
        typer.echo(f"skipped {uri}: {reason}", err=True)
    try:
        if out is None:
            where = save_reference(store, reference)
        else:
            out.write_bytes(to_bytes(reference))
            where = str(out)
    except OSError as exc:
        fail(f"could not write the reference: {exc}")
    typer.echo(f"{reference.embedder_id} reference {reference.id} ({reference.source}) -> {where}")


@reference_app.command("show")
@os_errors_end_cleanly
def reference_show(
    warehouse: Annotated[Optional[str], typer.Option(help="Warehouse root (default ./warehouse).")] = None,
    embedder: Annotated[Optional[EmbedderChoice], typer.Option(help="auto, clip or classic (default: settings).")] = None,
    config: ConfigOption = None,
) -> None:
    """Which reference the next run's index will be measured against."""
    from pipeline.config import ConfigError, load_settings
    from pipeline.features.embed import resolve_embedder
    from pipeline.features.reference import ReferenceError, stored_reference
    from pipeline.warehouse import Warehouse

    try:
        settings = load_settings(config, warehouse=warehouse, embedder=embedder)
        chosen = resolve_embedder(settings).embedder
        reference = stored_reference(Warehouse(settings.warehouse), chosen.id, chosen.dim)
    except (ConfigError, ReferenceError) as exc:
        fail(str(exc))
    if reference is None:
        typer.echo(
            f"{chosen.id}: no reference yet; the first run with >= {settings.thresholds.reference_min_photos} photos fits and freezes one"
        )
    else:
        typer.echo(f"{chosen.id}: reference {reference.id}, fitted on {reference.source}")

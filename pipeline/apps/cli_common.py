"""What every `homog` command shares: the --config and --warehouse options, logging set-up and how a usage error ends."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="YAML settings file (also HOMOG_CONFIG). Flags and HOMOG_* env vars win."),
]

# The commands that read an existing warehouse (run and audit say more about theirs).
WarehouseOption = Annotated[Optional[str], typer.Option(help="Warehouse root (path or fsspec URL).")]


def command_group(help: str, **options: Any) -> typer.Typer:
    """A `homog` command group. Help and usage errors are plain click text, not rich's renderer: rich
    costs ~0.3 s on every start, more than the rest of `homog --help` together."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False, **options)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the run's own log


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


Command = TypeVar("Command", bound=Callable[..., Any])


def os_errors_end_cleanly(command: Command) -> Command:
    """A warehouse path that is a file, a read-only mount, a full disk: one line naming the path and
    the cause, exit 2, instead of a traceback. (Writes are atomic, so nothing already good is lost.)"""

    @functools.wraps(command)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OSError as exc:
            where = exc.filename or ""
            fail(f"{exc.strerror or exc}{': ' + str(where) if where else ''}")

    return guarded  # type: ignore[return-value]

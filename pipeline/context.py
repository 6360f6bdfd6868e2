"""RunContext: what every stage of one run shares (settings, warehouse, run date, embedder).

Built once per process: by the CLI runner for a whole run, by each Airflow task for its own stage
(from the small `plan` dict tasks pass each other). Nothing in it is heavier than the settings: the
warehouse is opened and the embedder resolved on first use, so a task that needs neither pays for
neither.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.config import Settings
from pipeline.layout import validate_run_date

if TYPE_CHECKING:
    from pipeline.features.embed import EmbedderChoice
    from pipeline.ingest.sources import ManifestRow
    from pipeline.warehouse import Warehouse


def today() -> str:
    return dt.date.today().isoformat()


@dataclass
class RunContext:
    settings: Settings
    run_date: str
    # The embedder the run's vectors carry: chosen by the embed stage, read by every stage after it
    # (an Airflow task on another worker must not re-resolve `auto` and maybe get another answer).
    embedder_id: str = ""
    embedder_dim: int = 0
    embedder_fallback: str = ""
    # Where the run's pictures come from: the crawl of a sites file, and/or manifest rows given to the run.
    rows: list[ManifestRow] | None = field(default=None, repr=False)
    sites_file: str = ""
    progress: bool = False
    _warehouse: Warehouse | None = field(default=None, repr=False, compare=False)
    _choice: EmbedderChoice | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.run_date = validate_run_date(self.run_date)

    @property
    def warehouse(self) -> Warehouse:
        if self._warehouse is None:
            from pipeline.warehouse import Warehouse

            self._warehouse = Warehouse(self.settings.warehouse)
        return self._warehouse

    @property
    def reports(self) -> Warehouse:
        """The reports root, with the same atomic writes as the warehouse."""
        from pipeline.warehouse import Warehouse

        return Warehouse(self.settings.reports)

    def embedder(self) -> EmbedderChoice:
        """The run's embedder, resolved from the settings once (`clip` without weights raises here)."""
        if self._choice is None:
            from pipeline.features.embed import resolve_embedder

            self._choice = resolve_embedder(self.settings)
        return self._choice

    def with_embedder(self, embedder_id: str, dim: int, fallback: str = "") -> RunContext:
        """This context once the embed stage has chosen the run's embedder."""
        return dataclasses.replace(self, embedder_id=embedder_id, embedder_dim=dim, embedder_fallback=fallback)

    def require_embedder_id(self) -> str:
        if not self.embedder_id:
            raise RuntimeError("this stage reads the run's vectors: run the embed stage first (the context has no embedder id)")
        return self.embedder_id

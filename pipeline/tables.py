"""The warehouse's tables: who writes each, what one row is, and its columns (from the code that writes it).

`docs/warehouse.md` is generated from this list (`make docs`), and a test checks every table a run
writes against it, so the documented schema cannot drift from the one on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    name: str
    written_by: str  # a stage of pipeline.stages.STAGES, or an app
    row: str  # what one row is
    columns: Callable[[], list[str]]  # read lazily: the defining modules import pandas and friends
    contract: bool = False  # in the interface contract: change only with a note in docs/changelog.md


def _images() -> list[str]:
    from pipeline.ingest.intake import IMAGE_COLUMNS

    return list(IMAGE_COLUMNS)


def _crawl_log() -> list[str]:
    from pipeline.ingest.crawl.files import LOG_COLUMNS

    return list(LOG_COLUMNS)


def _faces() -> list[str]:
    from pipeline.features.face_signals import SIGNAL_COLUMNS

    return ["company", "image", "content_sha256", *SIGNAL_COLUMNS]


def _zero_shot() -> list[str]:
    from pipeline.features.zero_shot import PAGE_COLUMNS

    return ["company", *PAGE_COLUMNS]


def _pairs() -> list[str]:
    from pipeline.metrics.near_duplicates import PAIR_COLUMNS

    return list(PAIR_COLUMNS)


def _clusters() -> list[str]:
    from pipeline.metrics.near_duplicates import CLUSTER_COLUMNS

    return list(CLUSTER_COLUMNS)


def _identities() -> list[str]:
    from pipeline.features.identity import PAIR_COLUMNS

    return list(PAIR_COLUMNS)


def _companies() -> list[str]:
    from pipeline.metrics.pages import page_columns

    return page_columns()


def _trends() -> list[str]:
    from pipeline.metrics.trends import TREND_COLUMNS

    return list(TREND_COLUMNS)


def _retention() -> list[str]:
    from pipeline.apps.retention import LOG_COLUMNS

    return list(LOG_COLUMNS)


TABLES: tuple[Table, ...] = (
    Table("crawl_log", "crawl", "a team page, or a candidate picture found on one, with what the crawler decided and why", _crawl_log),
    Table("images", "intake", "a manifest row (ok or error, with the reason)", _images, contract=True),
    Table("faces", "faces", "an ok images row: its largest face and the template signals of the photo", _faces),
    Table("zero_shot", "zero_shot", "a company: zero-shot style attributes and the AI-likely share (clip only)", _zero_shot),
    Table("pairs", "near_duplicates", "an unordered pair of rows that are the same photograph (exact or verified)", _pairs, contract=True),
    Table("clusters", "near_duplicates", "an images row and its style cluster (-1 = none)", _clusters, contract=True),
    Table("reuse", "near_duplicates", "a pair of the `pairs` table whose rows belong to different companies", _pairs),
    Table("identities", "identity", "an unordered pair of rows showing the same face in different photographs", _identities),
    Table("companies", "pages", "a company's staff page: every registered page metric", _companies, contract=True),
    Table("trends", "pages", "a company in a run comparable with this one, with the change since its previous run", _trends),
    Table("retention", "homog retention", "a stored picture checked by the retention purge, and what was done", _retention),
)
BY_NAME = {table.name: table for table in TABLES}

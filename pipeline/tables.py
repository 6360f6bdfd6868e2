"""The warehouse's tables: who writes each, what one row is, and its columns (from the code that writes it).

`docs/warehouse.md` is generated from this list (`make docs`), and a test checks every table a run
writes against it, so the documented schema cannot drift from the one on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Table:
    name: str
    written_by: str  # a stage of pipeline.stages.STAGES, or an app
    row: str  # what one row is
    columns: Callable[[], list[str]]  # read lazily: the defining modules import pandas and friends
    meaning: dict[str, str]  # column -> what it holds (a test holds every column to one)
    contract: bool = False  # in the interface contract: change only with a note in docs/changelog.md


def rows_by(table: pd.DataFrame, column: str) -> dict[str, pd.DataFrame]:
    """A table's rows per value of `column`, in the table's order, in one pass: filtering the whole
    table once per page costs pages x rows (834 x 20,000 at 20,000 photos, 25 times that at 100,000)."""
    if table.empty or column not in table.columns:
        return {}
    return {str(value): rows for value, rows in table.groupby(column, sort=False)}


def records_by(table: pd.DataFrame, column: str) -> dict[Any, list[dict]]:
    """`rows_by` as plain records (keyed by the column's own values), from one conversion of the
    whole table: a small frame's records or rows cost ~1-3 ms each, seconds a night when converted
    once per page or group."""
    records: dict[Any, list[dict]] = {}
    if column in table.columns:
        for row in table.to_dict("records"):
            records.setdefault(row[column], []).append(row)
    return records


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


def _groups() -> list[str]:
    from pipeline.metrics.near_duplicates import GROUP_COLUMNS

    return list(GROUP_COLUMNS)


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


def _changes() -> list[str]:
    from pipeline.metrics.trends import CHANGE_COLUMNS

    return list(CHANGE_COLUMNS)


def _newly_shared() -> list[str]:
    from pipeline.metrics.trends import SHARED_COLUMNS

    return list(SHARED_COLUMNS)


# Written by the retention app (pipeline/apps/retention.py), which takes its columns from here.
RETENTION_COLUMNS = ["object", "kind", "last_seen", "age_days", "limit_days", "action"]


def _retention() -> list[str]:
    return list(RETENTION_COLUMNS)


PAIR_MEANING = {
    "image_a": "one row's `image`, as given (pairs are ordered by company, then image)",
    "image_b": "the other row's `image`",
    "company_a": "`company` of `image_a`",
    "company_b": "`company` of `image_b`",
    "similarity": "embedder cosine of the two (1.0 for exact copies)",
    "kind": "`exact` (same bytes, or the same decoded pixels) or `near_duplicate` (an edited copy)",
    "link": "`direct` (the pair itself passed verification, or is exact) or `implied` (both rows are in one duplicate group)",
    "group_id": "the duplicate group of both rows (`groups`)",
}
FACE_SIGNAL_MEANING = {
    "face_share": "share of the page's photos with a face found",
    "multi_face_share": "share with more than one face",
    "framing_spread": "how much face position and size vary over the page (lower = one framing)",
    "symmetry_mean": "mean left-right symmetry of the faces",
    "skin_detail_mean": "mean fine texture on the skin (lower = smoother, as retouching or generation leaves it)",
    "background_std_mean": "mean busyness of the backdrops",
    "background_spread": "how much backdrop colour and brightness vary over the page",
    "colour_spread": "how much the colour grade varies over the page",
}

TABLES: tuple[Table, ...] = (
    Table("crawl_log", "crawl", "a team page, or a candidate picture found on one, with what the crawler decided and why", _crawl_log, {
        "company": "as in sites.yaml",
        "kind": "`page` or `image`",
        "url": "the page, or the picture's URL as fetched",
        "source_url": "for a picture: the page it was found on",
        "status": "pages: `crawled`, `skipped`, `error`; pictures: `kept`, `skipped`, `rejected`, `error`",
        "reason": "in words, naming the rule that decided (robots.txt, noai, opt-out, size, no face, ...)",
        "person": "name from the card, as scraped and cleaned (untrusted text)",
        "role": "role from the card, as scraped and cleaned",
        "alt": "the picture's alt text, cleaned",
        "image": "where a kept picture was stored in the warehouse",
        "n_bytes": "bytes downloaded for it",
    }),
    Table("images", "intake", "a manifest row (ok or error, with the reason)", _images, {
        "company": "as given by the manifest or folder",
        "image": "as given by the manifest or folder",
        "content_sha256": "SHA-256 of the bytes as fetched (empty if nothing could be fetched)",
        "status": "`ok` or `error`",
        "error": "why the picture was refused, for people; empty if ok",
        "width": "after EXIF orientation, as a viewer sees it",
        "height": "after EXIF orientation",
        "error_kind": "stable code: `bad_row`, `duplicate_row`, `fetch_failed`, `fetch_refused`, `empty`, `too_large`, `not_an_image`, `decompression_bomb`, "
        "`corrupt`, `truncated`, `too_small`",
        "warnings": "accepted oddities: extension vs real format, animated (first frame used), unreadable ICC profile",
        "person": "from the manifest or the crawler, where given",
        "source_url": "the page the picture was on, where given",
        "image_url": "where a crawled picture was found",
        "format": "the payload's real format",
        "source_mode": "its colour mode before normalisation to 8-bit sRGB",
        "n_frames": "frames in the file (animations: the first is used)",
        "n_bytes": "payload size",
        "pixel_sha256": "SHA-256 of the normalised RGB pixels: equal for one picture re-encoded losslessly",
        "phash": "64-bit perceptual hash (imagehash phash), hex",
        "raw_object": "warehouse key of the stored original (staging in no-raw-images mode)",
        "thumbnail_object": "warehouse key of the thumbnail (empty with privacy.keep_thumbnails false)",
        "uri": "where it was read from",
        "source_fingerprint": "size and mtime or ETag when read: a rerun skips unchanged sources",
    }, contract=True),
    Table("faces", "faces", "an ok images row: its largest face and the template signals of the photo", _faces, {
        "company": "as in `images`",
        "image": "as in `images`",
        "content_sha256": "as in `images` (signals are measured once per content and signal version)",
        "n_faces": "faces with a detector score of at least crawl.face_score_floor",
        "face_score": "detector score of the largest face",
        "face_x": "centre of the largest face, share of the width",
        "face_y": "centre of the largest face, share of the height",
        "face_scale": "face height as a share of the picture's",
        "symmetry": "left-right symmetry of the face",
        "skin_detail": "fine texture inside the face",
        "background_std": "busyness of the backdrop",
        "background_blur": "sharpness of the backdrop (variance of the Laplacian)",
        "background_l": "backdrop lightness (CIELAB L)",
        "background_a": "backdrop colour (CIELAB a)",
        "background_b": "backdrop colour (CIELAB b)",
        "colour_a": "colour grade of the whole picture (mean CIELAB a)",
        "colour_b": "colour grade of the whole picture (mean CIELAB b)",
        "saturation": "mean saturation",
    }),
    Table("zero_shot", "zero_shot", "a company: zero-shot style attributes and the AI-likely share (clip only)", _zero_shot, {
        "company": "as in `images`",
        "zero_shot_status": "`ok`, or why not (the classic embedder has no text tower)",
        "backdrop_top": "the page's most common backdrop prompt",
        "backdrop_share": "its share of the page",
        "attire_top": "the most common attire prompt",
        "attire_share": "its share",
        "framing_top": "the most common framing prompt",
        "framing_share": "its share",
        "ai_share": "share of the page's photos closer to 'AI-generated portrait' than to 'real photograph' (never per photo)",
        "ai_ci_low": "95% Wilson interval, low end",
        "ai_ci_high": "95% Wilson interval, high end",
    }),
    Table("pairs", "near_duplicates", "an unordered pair of rows that are the same photograph (exact or verified)", _pairs, PAIR_MEANING,
          contract=True),
    Table("groups", "near_duplicates", "an images row that is one of several copies of one photograph (a duplicate group)", _groups, {
        "image": "as in `images`",
        "company": "as in `images`",
        "group_id": "the group: 0 is the largest; its pairs are in `pairs`",
        "group_size": "rows in the group",
        "anchor": "the row's photo is the group's anchor (verified against most of the others); exact copies share it",
    }),
    Table("clusters", "near_duplicates", "an images row and its style cluster", _clusters, {
        "image": "as in `images`",
        "company": "as in `images`",
        "cluster_id": "style cluster (same template or look); -1 = in none, and for refused rows",
    }, contract=True),
    Table("reuse", "near_duplicates", "a pair of the `pairs` table whose rows belong to different companies", _pairs, PAIR_MEANING),
    Table("identities", "identity", "an unordered pair of rows showing the same face in different photographs", _identities, {
        "image_a": "one row's `image` (copies of one photograph are in `pairs`, not here)",
        "image_b": "the other row's `image`",
        "company_a": "`company` of `image_a`",
        "company_b": "`company` of `image_b`",
        "distance": "face descriptor distance (dlib; same face below 0.45)",
        "same_page": "both rows on one company's page",
    }),
    Table("companies", "pages", "a company's staff page: every registered page metric", _companies, {
        "company": "as in `images`",
        "n_images": "ok photos on the page (measured on a seeded sample above thresholds.max_page_sample)",
        "near_dup_rate": "share of those photos with an exact or near-duplicate copy on the same page",
        "mean_pairwise_similarity": "mean raw embedder cosine over pairs of different photos (no reference taken out)",
        "vendi_score": "effective number of distinct photos, on the reference-centred vectors",
        "homogeneity_index": "0..1, higher = more alike: see docs/methodology.md; comparable across runs with one embedder and reference",
        "ci_low": "95% bootstrap interval of the index, low end",
        "ci_high": "95% bootstrap interval, high end",
        "n_clusters": "style clusters on the page",
        "largest_cluster_share": "share of its photos in the largest",
        "embedder": "id of the embedder every number comes from",
        "status": "`ok` or `too_few_images` (fewer than thresholds.min_images: no index, no interval)",
        "n_rows": "manifest rows of the company",
        "n_errors": "of them refused",
        "n_reused_images": "photos that also appear, exact or edited, on other companies' pages",
        "n_partner_companies": "how many other companies",
        "index_reference": "the reference the index was measured against (`<photos>@<digest>`, or `none`); trends join only equal ones",
        **FACE_SIGNAL_MEANING,
        "template_index": "0..1: how likely two different photos on the page are to share one template (framing, backdrop, "
                          "grade, skin finish) even when every face differs; see docs/methodology.md",
        "template_ci_low": "95% bootstrap interval of the template index, low end",
        "template_ci_high": "95% bootstrap interval of the template index, high end",
        **{f"template_from_{part}": f"what the {part} part ({what}) adds to the template index: its weight times its mean over the "
           "page's pairs (the parts add up to the index; > 0 raises it)" for part, what in (
            ("whole", "the whole picture"), ("framing", "face position and size"), ("backdrop", "backdrop colour"),
            ("backdrop_texture", "backdrop plainness and blur"), ("grade", "colour grade"), ("skin", "skin detail, symmetry"),
            ("departure", "each photo's distance from real staff photos, averaged"))},
        "template_model": "the template model the index was measured with (`<embedder>@<digest>`), or `none` where the embedder has none",
        **{column: f"zero-shot: as `{column}` in the `zero_shot` table" for column in (
            "zero_shot_status", "backdrop_top", "backdrop_share", "attire_top", "attire_share", "framing_top", "framing_share",
            "ai_share", "ai_ci_low", "ai_ci_high")},
        "n_face_repeated": "photos whose face appears in another photo on the page (empty where privacy.face_identity is off)",
        "n_face_shared": "photos whose face appears in another company's photo",
        "inputs_digest": "per page metric, a digest of all its values are computed from (the page's rows of the tables it reads, "
                         "embedder, reference, thresholds, code): a later run keeps values whose inputs are unchanged",
    }, contract=True),
    Table("trends", "pages", "a company in a run comparable with this one, with the change since its previous run", _trends, {
        "company": "as in `images`",
        "embedder": "only runs of one embedder are joined",
        "run_date": "the run",
        "n_images": "ok photos then",
        "homogeneity_index": "the index then",
        "ci_low": "its interval, low end",
        "ci_high": "its interval, high end",
        "near_dup_rate": "the near-duplicate rate then",
        "previous_run_date": "the company's previous comparable run",
        "previous_index": "its index",
        "change": "index minus previous index",
        "z": "change / sqrt(se1^2 + se2^2), each se read off a 95% interval as (high - low) / 3.92",
        "significant": "|z| > 1.96",
        "direction": "`more homogeneous`, `less homogeneous`, or empty",
        "template_index": "the template index then (empty for runs before it, or without a template model)",
        "template_change": "template index minus the previous run's, where both used one template model",
        "template_z": "as `z`, for the template index",
        "template_significant": "|template_z| > 1.96",
    }),
    Table("changes", "changes", "a company of this run: what changed on its page since the previous finished run", _changes, {
        "company": "as in `images`",
        "run_date": "this run",
        "previous_run_date": "the latest finished run before it (empty on the first)",
        "n_photos": "distinct ok photos on the page now",
        "n_kept": "of them, also on the page then",
        "n_replaced": "places on the page (the picture's URL) that show another photo now",
        "n_added": "new places with a photo not on the page then",
        "n_removed": "places gone, their photo with them",
        "n_new_copies": "photos of the page in a `newly_shared` copy pair (either side)",
        "n_new_faces": "photos new on the page this run in a `newly_shared` face pair",
        "homogeneity_index": "the index now (empty: too few photos)",
        "previous_index": "the index then, where the trends table joins the two runs (same embedder and reference)",
        "change": "index minus previous index",
        "significant": "as in `trends`",
        "summary": "the change in words, as the report and `homog trends` say it",
    }),
    Table("newly_shared", "changes", "a photo or face two companies show, one of the two photos new on its page since the previous run",
          _newly_shared, {
        "company_a": "one company",
        "image_a": "its row's `image`",
        "company_b": "the other company",
        "image_b": "its row's `image`",
        "kind": "`copy` (the same photograph, as in `reuse`) or `face` (the same person in another photograph, as in `identities`)",
        "first_seen": "this run's date",
    }),
    Table("retention", "homog retention", "a stored picture, or a cache row derived from one, checked by the retention purge, and what was done", _retention, {
        "object": "warehouse key of the picture; for a face descriptor, its folder and the photo's content hash",
        "kind": "`raw` (original), `thumbs`, `keypoints`, `face_descriptor`, `face_signals`, `embedding` or `region_views` "
        "(all but `thumbs` go with the original's limit)",
        "last_seen": "latest run date that referenced it, or its photo (or its modification date)",
        "age_days": "days since",
        "limit_days": "the retention setting that applies",
        "action": "`keep`, `deleted` or `would delete` (dry run)",
    }),
)  # fmt: skip
BY_NAME = {table.name: table for table in TABLES}


def read_dataset(
    warehouse: str, table: str, columns: list[str] | None = None, filters: list[tuple[str, str, object]] | None = None
) -> pd.DataFrame:
    """Every run of `table` as one frame, `run_date` a column read off the Hive partition folders,
    locally or on any fsspec store (s3://...): what analysts query the warehouse with.

    `columns` selects columns (run_date is always added); `filters` are pandas-style
    `[("run_date", ">=", "2026-11-01"), ...]`, applied by pyarrow before anything is read. Partitions
    written by different versions of the pipeline may hold different columns: the schemas are unified,
    and a column a partition lacks reads as null there."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from pipeline import layout
    from pipeline.warehouse import Warehouse

    store = Warehouse(warehouse)
    folder = store.path(layout.tables_folder(table))
    if not store.fs.exists(folder):
        raise FileNotFoundError(f"no table {table!r} in {store.uri()} (no folder {folder})")
    partitioning = ds.partitioning(pa.schema([("run_date", pa.string())]), flavor="hive")
    found = ds.dataset(folder, format="parquet", partitioning=partitioning, filesystem=store.fs)
    schema = pa.unify_schemas([fragment.physical_schema for fragment in found.get_fragments()] + [partitioning.schema])
    dataset = ds.dataset(folder, format="parquet", partitioning=partitioning, filesystem=store.fs, schema=schema)
    selected = None if columns is None else [c for c in columns if c != "run_date"] + ["run_date"]
    expression = pq.filters_to_expression(filters) if filters else None
    return dataset.to_table(columns=selected, filter=expression).to_pandas()

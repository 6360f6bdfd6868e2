"""Retention: purge stored pictures that no run has referenced for longer than configured.

An object's age is the latest run date whose `images` table references it, so a photo that is still
on a company's page keeps being refreshed by the nightly run, and one that disappeared is purged
`retention.raw_images_days` (originals) or `retention.thumbnails_days` (thumbnails) after it was last
seen. Objects no table references (left by an interrupted run) age by their modification time.
What the caches derive from a photo goes with it: kept face descriptors (biometric, sealed to the
photo), the face signals (template signals and `face_window`, a coarse descriptor of the face), the
embedding vectors of every embedder and the region views are deleted `retention.raw_images_days`
after the last run that saw the photo (rows no run references age by their shard's modification
time), and so are verification's ORB keypoints of the photo (`objects/keypoints/`); a photo seen
again is measured again. A photo whose face signals or vectors go also leaves the near-duplicate
search's kept neighbour lists (`pipeline.features.neighbours`), and verification's verdicts of its
pairs go. Without this the caches would keep every photo ever seen, and every night would read them
whole. A cache that loses rows, or holds more than `COMPACT_ABOVE_SHARDS` shards (one a night), is
rewritten as one shard, so that a night reads it in one request. Tables and metrics stay: they are not pictures. Brand audits keep their own
copies of the population's photos (each audit is a warehouse of its own under `audits/`): they are
purged by the same rule, against the audit's own tables. Every decision is logged in a `retention`
table, and a dry run decides and logs without deleting.
"""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd

from pipeline import layout
from pipeline.config import RetentionConfig
from pipeline.features import neighbours
from pipeline.layout import validate_run_date
from pipeline.tables import RETENTION_COLUMNS
from pipeline.warehouse import Warehouse

logger = logging.getLogger(__name__)

LOG_COLUMNS = RETENTION_COLUMNS


def last_seen(warehouse: Warehouse) -> dict[str, str]:
    """object key -> latest run date that referenced it."""
    images = warehouse.read_table("images")
    if images.empty:
        return {}
    from pipeline.features.verify import KEYPOINTS_VERSION

    seen: dict[str, str] = {}
    for column in ("raw_object", "thumbnail_object"):
        referenced = images.loc[images[column].fillna("") != "", [column, "run_date"]]
        for key, date in referenced.groupby(column)["run_date"].max().items():
            seen[key] = max(date, seen.get(key, ""))
    # A photo's verification keypoints are seen whenever the photo is (by content hash).
    with_content = images.loc[images["content_sha256"].fillna("") != "", ["content_sha256", "run_date"]]
    for content, date in with_content.groupby("content_sha256")["run_date"].max().items():
        seen[layout.keypoints_key(content, KEYPOINTS_VERSION)] = date
    return seen


def _modified(warehouse: Warehouse, path: str) -> dt.date | None:
    info = warehouse.fs.info(path)
    stamp = info.get("mtime") or info.get("LastModified") or info.get("last_modified")  # a date, not an ETag
    if stamp is None:
        return None
    if isinstance(stamp, (int, float)):
        return dt.datetime.fromtimestamp(stamp, dt.UTC).date()
    return pd.Timestamp(stamp).date()


def picture_stores(warehouse: Warehouse) -> list[tuple[str, Warehouse]]:
    """Every place below the warehouse that stores pictures, as (key prefix, warehouse): the warehouse
    itself and each brand audit's own warehouse, which holds copies of the population's photos."""
    stores = [("", warehouse)]
    for path in sorted(warehouse.fs.glob(warehouse.path(layout.AUDIT_ROOTS_GLOB))):
        if warehouse.fs.isdir(path):
            prefix = path[len(warehouse.root) + 1 :]
            stores.append((prefix + "/", Warehouse(warehouse.uri(prefix))))
    return stores


def purge_expired(warehouse: Warehouse, retention: RetentionConfig, today: str, dry_run: bool = False) -> pd.DataFrame:
    """Delete (or, dry run, only list) expired originals and thumbnails, in the warehouse and in every
    brand audit kept in it; returns the decision log (object keys relative to `warehouse`)."""
    today_date = dt.date.fromisoformat(validate_run_date(today))
    records = []
    for prefix, store in picture_stores(warehouse):
        found = _purge_store(store, retention, today_date, dry_run) + _purge_photo_caches(store, retention, today_date, dry_run)
        records += [{**record, "object": prefix + record["object"]} for record in found]
    log = pd.DataFrame(records, columns=LOG_COLUMNS)
    removed = int((log["action"] != "keep").sum()) if len(log) else 0
    verb = "would be deleted" if dry_run else "deleted"
    logger.info("retention %s: %d of %d stored picture(s) and photo-derived cache row(s) %s", today, removed, len(log), verb)
    warehouse.write_table("retention", today, log)
    return log


def _purge_store(warehouse: Warehouse, retention: RetentionConfig, today_date: dt.date, dry_run: bool) -> list[dict]:
    seen = last_seen(warehouse)
    # Keypoints are derived from the original and go with it.
    limits = {"raw": retention.raw_images_days, "thumbs": retention.thumbnails_days, "keypoints": retention.raw_images_days}
    records = []
    for kind, limit in limits.items():
        base = warehouse.path(layout.objects_folder(kind))
        if not warehouse.fs.exists(base):
            continue
        for path in sorted(warehouse.fs.find(base)):
            key = path[len(warehouse.root) + 1 :]
            reference = seen.get(key)
            when = dt.date.fromisoformat(reference) if reference else _modified(warehouse, path)
            if when is None:
                continue  # no way to tell its age: keep it, never guess in favour of deleting
            age = (today_date - when).days
            action = "keep"
            if age > limit:
                action = "would delete" if dry_run else "deleted"
                if not dry_run:
                    warehouse.remove(key)
            records.append({"object": key, "kind": kind, "last_seen": reference or f"unreferenced, modified {when}",
                            "age_days": age, "limit_days": limit, "action": action})  # fmt: skip
    return records


def _photo_caches(warehouse: Warehouse) -> tuple[tuple[str, str], ...]:
    """The content-keyed caches derived from a photo, deleted with it: (kind in the retention table, folder)."""
    from pipeline.features import face_signals, identity, regions

    return (
        ("face_descriptor", layout.face_descriptors_folder(identity.VERSION)),  # biometric, sealed to the photo
        ("face_signals", layout.face_signals_folder(face_signals.VERSION)),  # holds face_window, a coarse face descriptor
        *(
            ("embedding", folder) for folder in warehouse.cache_folders(layout.EMBEDDINGS_ROOT)
        ),  # a CLIP vector of a face photo can link the person across sites
        ("region_views", layout.regions_folder(regions.VERSION)),  # coarse layouts of the picture and its windows
    )


# The kept nearest-neighbour lists (near-duplicate candidates, same faces) name these photos.
_SEARCHED = ("face_signals", "embedding", "region_views", "face_descriptor")


def _purge_photo_caches(warehouse: Warehouse, retention: RetentionConfig, today_date: dt.date, dry_run: bool) -> list[dict]:
    """Rows of the photo-derived caches whose photo was last seen more than `raw_images_days` ago:
    deleted with it (rows no run references age by their shard's modification time)."""
    images = warehouse.read_table("images")
    seen = images.groupby("content_sha256")["run_date"].max().to_dict() if len(images) else {}
    records = []
    gone: set[str] = set()
    for kind, folder in _photo_caches(warehouse):
        shard_of = warehouse.shards_by_content(folder)
        modified: dict[str, dt.date | None] = {}
        expired_here = set()
        for content, shard in sorted(shard_of.items()):
            reference = seen.get(content)
            if reference is None and shard not in modified:
                modified[shard] = _modified(warehouse, warehouse.path(shard))
            when = dt.date.fromisoformat(reference) if reference else modified[shard]
            age = (today_date - when).days if when else None
            expired = age is not None and age > retention.raw_images_days
            if expired:
                expired_here.add(content)
            records.append({"object": f"{folder}/{content}", "kind": kind, "last_seen": reference or f"unreferenced, modified {when}",
                            "age_days": age, "limit_days": retention.raw_images_days,
                            "action": ("would delete" if dry_run else "deleted") if expired else "keep"})  # fmt: skip
        if not dry_run and shard_of:
            warehouse.drop_contents(folder, expired_here)  # and compacts the folder (COMPACT_ABOVE_SHARDS)
            if kind in _SEARCHED:
                gone |= expired_here
    if gone:  # one pass over the lists, whichever caches the photos left
        neighbours.forget(warehouse, gone)
    expired = {content for content, date in seen.items() if (today_date - dt.date.fromisoformat(date)).days > retention.raw_images_days}
    if not dry_run:
        _forget_verdicts(warehouse, expired)
    return records


def _forget_verdicts(warehouse: Warehouse, expired: set[str]) -> None:
    """Verification's verdicts of pairs with a photo whose vectors and keypoints went: no run can ask
    for them again (a photo seen again is verified again), and every night reads the cache whole.
    Measures of a pair, not of a person: not listed row by row in the retention table. The folder is
    compacted as the photo caches are, also on a night when nothing expired."""
    for folder in warehouse.cache_folders(layout.VERIFICATIONS_ROOT):
        deleted = warehouse.drop_contents(folder, expired, ("content_a", "content_b"))
        logger.info("retention: %d verdict row(s) deleted from %s (pairs with an expired photo, or rows held twice)", deleted, folder)

"""Atomic I/O under one warehouse root (a local path or any fsspec URL); `pipeline.layout` says where things go.

Every write is atomic: on a local disk the bytes go to `.tmp/` and are renamed into place (rename is
atomic within one filesystem); object stores (s3, gcs, ...) publish a PUT only when it is complete.
So a killed run never leaves a half-written file where a reader looks, and rewriting a partition
replaces it in one step, which makes a rerun of the same run date idempotent.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import fsspec
import pandas as pd

from pipeline import layout

if TYPE_CHECKING:
    import pyarrow

logger = logging.getLogger(__name__)

# Photos per chunk of a stage that caches per photo (embeddings, face signals, region views, face
# descriptors): a chunk is seconds to a minute of work (25-100 ms a photo on a CPU), so a run killed
# half-way loses at most that, while the pause at the end of each chunk (its slowest photo, ~0.1 s)
# and its shard write stay under 1% of the chunk. The run's chunks are merged when it ends.
CHECKPOINT_PHOTOS = 500
# A cache folder gains a shard per run that computed something, and a killed run's chunks: past this
# many, retention rewrites it as one, so that a night reads each cache in one request (on an object
# store, ~50 ms each) instead of one per night it has run.
COMPACT_ABOVE_SHARDS = 16


class Warehouse:
    """Paths and atomic I/O under one warehouse root."""

    def __init__(self, root: str) -> None:
        self.fs, path = fsspec.core.url_to_fs(root)
        self.root = path.rstrip("/") or "/"
        self.is_local = is_local_fs(self.fs)
        if self.is_local:
            # Nothing is created here: folders appear with the first write, so opening a warehouse to
            # read it (a report, `reference show`, an audit's population) leaves no trace.
            self.root = os.path.abspath(self.root)

    # ----------------------------------------------------------------- paths
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def uri(self, *parts: str) -> str:
        """A path that other tools can open: plain for local disks, protocol-qualified otherwise."""
        path = self.path(*parts)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    # ------------------------------------------------------------ primitives
    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def write_bytes(self, key: str, data: bytes) -> str:
        """Atomically create or replace `key`; returns its full path."""
        target = self.path(key)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return target
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp_dir = self.path(layout.TMP_DIR)
        os.makedirs(tmp_dir, exist_ok=True)
        tmp = os.path.join(tmp_dir, f"{uuid.uuid4().hex}-{os.path.basename(target)}")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create `key` only if nothing is there; False if something is. Atomic on a local disk
        (O_EXCL) and on stores with conditional writes (fsspec's exclusive `mode="create"`: AWS S3's
        If-None-Match, memory://). Others get check, write, read back, which a writer racing within
        the same moment can still slip past (docs/limits.md)."""
        target = self.path(key)
        if not self.is_local:
            try:
                self.fs.pipe_file(target, data, mode="create")
                return True
            except FileExistsError:
                return False
            except (TypeError, NotImplementedError, ValueError):
                pass  # no exclusive create here
            if self.exists(key):
                return False
            self.fs.pipe_file(target, data)
            return self.read_bytes(key) == data
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            descriptor = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def put_object(self, key: str, data: bytes) -> bool:
        """Store content-addressed bytes once; returns False when they were already there."""
        if self.exists(key):
            return False
        self.write_bytes(key, data)
        return True

    def remove(self, key: str, recursive: bool = False) -> None:
        path = self.path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=recursive)

    def keys_matching(self, pattern: str) -> list[str]:
        """The keys under the root that match a glob pattern (`*/summary.json`), relative to the root."""
        prefix = self.root.rstrip("/") + "/"
        return sorted(path[len(prefix) :] for path in self.fs.glob(self.path(pattern)) if path.startswith(prefix))

    def write_json(self, key: str, payload: dict[str, Any]) -> str:
        return self.write_bytes(key, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, key: str) -> dict[str, Any]:
        return json.loads(self.read_bytes(key))

    # ---------------------------------------------------------------- tables
    def write_table(self, table: str, run_date: str, frame: pd.DataFrame) -> str:
        """Replace the `run_date` partition of `table` with `frame`; returns the file's URI."""
        return self.write_frame(layout.table_file(table, run_date), frame)

    def write_frame(self, key: str, frame: pd.DataFrame) -> str:
        """Atomically write a data frame as one Parquet file at `key`; returns its URI."""
        import pyarrow as pa

        self.write_table_file(key, pa.Table.from_pandas(frame, preserve_index=False))
        return self.uri(key)

    def read_frame(self, key: str) -> pd.DataFrame:
        """One Parquet file of the warehouse as a data frame."""

        return self._read_parquet(self.path(key)).to_pandas()

    def write_table_file(self, key: str, table: pyarrow.Table) -> str:
        """Atomically write one Parquet file at `key`."""
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return self.write_bytes(key, buffer.getvalue())

    def write_shard(self, folder: str, keys: list[str], table: pyarrow.Table) -> str:
        """Add an immutable cache shard to `folder`, named by the keys it holds: writing the same
        keys again is a no-op, and concurrent writers of different keys never collide."""
        import hashlib

        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
        key = f"{folder}/shard-{digest}.parquet"
        if not self.exists(key):
            self.write_table_file(key, table)
        return key

    @contextlib.contextmanager
    def checkpoints(self, folder: str) -> Iterator[Callable[[list[str], pyarrow.Table], None]]:
        """A writer of a long computation's results to a cache, chunk by chunk: each chunk's shard is
        written as soon as the chunk is done, so a run killed half-way (a lost worker, an Airflow task
        timeout) keeps what it finished, and its retry finds those rows cached and computes only the
        rest. When the block ends without an error, this computation's chunks are merged into one
        shard, the one a single write at the end would have left (a cache of one shard per run reads
        in one request instead of one per chunk). The merged shard is written before the chunks are
        removed: an interruption leaves at worst a row twice, which every cache reader takes once."""
        import pyarrow as pa

        keys: list[str] = []
        shards: list[str] = []

        def write(chunk_keys: list[str], table: pyarrow.Table) -> None:
            if table.num_rows:
                shards.append(self.write_shard(folder, chunk_keys, table))
                keys.extend(chunk_keys)

        yield write
        if len(shards) > 1:
            # Read back rather than held: the chunks' results are in the caller's hands already (the
            # vectors of 100,000 photos are 314 MB), and a second copy would be held for the whole stage.
            tables = [self._read_parquet(self.path(shard)) for shard in shards]
            merged = self.write_shard(folder, keys, pa.concat_tables(tables, promote_options="default"))
            for shard in shards:
                if shard != merged:
                    self.remove(shard)

    def cache_folders(self, root: str) -> list[str]:
        """The cache folders directly below `root` that hold shards (one per embedder, per set of
        verification parameters, ...)."""
        return sorted({key.rsplit("/", 1)[0] for key in self.keys_matching(f"{root}/*/shard-*.parquet")})

    def shards_by_content(self, folder: str) -> dict[str, str]:
        """content hash -> the key of the shard of a content-keyed cache (`content_sha256` column)
        that holds it; retention ages rows no run references by their shard."""

        where: dict[str, str] = {}
        for shard in self.keys_matching(f"{folder}/shard-*.parquet"):
            keys = self._read_parquet(self.path(shard), ["content_sha256"]).column(
                "content_sha256"
            )  # the key column only: the rest can be wide
            where.update(dict.fromkeys(keys.to_pylist(), shard))
        return where

    def drop_contents(self, folder: str, contents: set[str], columns: tuple[str, ...] = ("content_sha256",)) -> int:
        """Rewrite a content-keyed cache as one shard without the rows whose content hash (in any of
        `columns`: either of a pair) is in `contents` (retention), and without a row held twice (an
        interrupted merge leaves one: `checkpoints`); rewritten also where nothing goes but the folder
        holds more than `COMPACT_ABOVE_SHARDS` shards. Returns how many rows were deleted. The kept rows
        go to a new shard before the old shards are removed, so an interruption leaves at worst a row
        twice, never one lost; a shard a run adds meanwhile is not among those removed."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        old_shards = self.keys_matching(f"{folder}/shard-*.parquet")
        if not old_shards:
            return 0
        # Which rows stay is decided on the key columns alone: the rest (vectors) is read only to rewrite.
        keys = pa.concat_tables([self._read_parquet(self.path(shard), list(columns)) for shard in old_shards])
        dropped = pa.array(sorted(contents), pa.string())
        gone = functools.reduce(pc.or_, [pc.is_in(keys.column(column), value_set=dropped) for column in columns])
        rows = pa.table({**{column: keys.column(column) for column in columns}, "row": np.arange(keys.num_rows)}).filter(pc.invert(gone))
        # The first row of each key: a row held twice is the same computation's result twice.
        kept_rows = np.sort(rows.group_by(list(columns), use_threads=False).aggregate([("row", "min")]).column("row_min").to_numpy())
        if len(kept_rows) == keys.num_rows and len(old_shards) <= COMPACT_ABOVE_SHARDS:
            return 0
        every = pa.concat_tables([self._read_parquet(self.path(shard)) for shard in old_shards], promote_options="default")
        kept = every.take(kept_rows)
        names = [
            ":".join(row) for row in zip(*(kept.column(column).to_pylist() for column in columns))
        ]  # the shard's name follows its rows
        new_shard = self.write_shard(folder, names, kept) if kept.num_rows else None
        for shard in old_shards:
            if shard != new_shard:
                self.remove(shard)
        return every.num_rows - kept.num_rows

    def read_shards(self, folder: str, columns: list[str] | None = None) -> list[pyarrow.Table]:
        """Every shard of a cache folder (only `columns`, where given), in a stable order; [] if there is none."""
        return [self._read_parquet(path, columns) for path in self._shard_paths(folder)]

    def _read_parquet(self, path: str, columns: list[str] | None = None) -> pyarrow.Table:
        """One Parquet file at a filesystem path of this warehouse (only `columns`, where given)."""
        import pyarrow.parquet as pq

        with self.fs.open(path, "rb") as handle:
            return pq.read_table(handle, columns=columns)

    def _shard_paths(self, folder: str) -> list[str]:
        return sorted(self.fs.glob(self.path(folder, "shard-*.parquet"))) if self.exists(folder) else []

    def copy_shards(self, source: Warehouse, folder: str) -> int:
        """Add every cache shard of `source`'s `folder` that this warehouse lacks (shards are immutable
        and named by the keys they hold, so a shard of the same name is the same shard). Returns how
        many were copied."""
        copied = 0
        for path in source._shard_paths(folder):
            key = f"{folder}/{path.rsplit('/', 1)[-1]}"
            if not self.exists(key):
                self.write_bytes(key, source.fs.cat_file(path))
                copied += 1
        return copied

    def read_table(self, table: str, run_date: str | None = None) -> pd.DataFrame:
        """One partition, or all of them with a `run_date` column; empty frame if there is none."""
        if run_date is not None:
            key = layout.table_file(table, run_date)
            return self.read_frame(key) if self.exists(key) else pd.DataFrame()
        frames = [self.read_table(table, date).assign(run_date=date) for date in self.run_dates(table)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def run_dates(self, table: str = "images") -> list[str]:
        base = self.path(layout.tables_folder(table))
        if not self.fs.exists(base):
            return []
        dates = []
        for entry in self.fs.ls(base, detail=False):
            date = layout.partition_date(entry.rstrip("/").rsplit("/", 1)[-1])
            if date is not None and self.exists(layout.table_file(table, date)):
                dates.append(date)
        return sorted(dates)

    def finished_run_dates(self, table: str = "images") -> list[str]:
        """The run dates with a `table` partition whose run finished (its run.json, written last, is there)."""
        return [date for date in self.run_dates(table) if self.exists(layout.run_record(date))]

    # ------------------------------------------------------------- hygiene
    def drop_staging(self, run_date: str) -> None:
        self.remove(layout.staging_folder(run_date), recursive=True)

    def sweep_stale_temp(self, older_than_hours: float) -> int:
        """Delete in-flight files that a killed process left behind; returns how many."""
        if not self.is_local:
            return 0  # object stores have no half-written objects to sweep
        tmp_dir = self.path(layout.TMP_DIR)
        if not os.path.isdir(tmp_dir):
            return 0
        cutoff = time.time() - older_than_hours * 3600
        removed = 0
        for name in os.listdir(tmp_dir):
            path = os.path.join(tmp_dir, name)
            try:
                if os.path.getmtime(path) < cutoff:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                continue  # another process finished or removed it meanwhile
        if removed:
            logger.info("swept %d stale temp file(s) from %s", removed, tmp_dir)
        return removed


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol
    return "file" in ((protocol,) if isinstance(protocol, str) else protocol)

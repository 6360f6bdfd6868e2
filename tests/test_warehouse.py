"""Warehouse: layout, atomic writes, partition replacement, stale temp sweeping, non-local roots."""

from __future__ import annotations

import os
import time
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from pipeline.layout import object_key, validate_run_date
from pipeline.warehouse import Warehouse


def test_run_date_validation() -> None:
    assert validate_run_date("2026-02-28") == "2026-02-28"
    for bad in ("2026-2-28", "2026-02-30", "yesterday", "2026-02-28T00:00"):
        with pytest.raises(ValueError, match="YYYY-MM-DD"):
            validate_run_date(bad)


def test_tables_are_hive_partitioned_and_a_rewrite_replaces_the_partition(tmp_path: Path) -> None:
    warehouse = Warehouse(str(tmp_path))
    uri = warehouse.write_table("images", "2026-01-01", pd.DataFrame({"company": ["a", "b"]}))
    assert uri == str(tmp_path / "tables" / "images" / "run_date=2026-01-01" / "part-0.parquet")
    warehouse.write_table("images", "2026-01-02", pd.DataFrame({"company": ["c"]}))
    warehouse.write_table("images", "2026-01-01", pd.DataFrame({"company": ["z"]}))

    assert warehouse.run_dates("images") == ["2026-01-01", "2026-01-02"]
    assert list(warehouse.read_table("images", "2026-01-01")["company"]) == ["z"]
    every = warehouse.read_table("images")
    assert list(zip(every["run_date"], every["company"])) == [("2026-01-01", "z"), ("2026-01-02", "c")]
    # pandas/pyarrow read the same folder as one Hive-partitioned dataset.
    assert sorted(pd.read_parquet(tmp_path / "tables" / "images")["company"]) == ["c", "z"]
    assert warehouse.read_table("pairs").empty and warehouse.read_table("pairs", "2026-01-01").empty


def test_write_leaves_no_temp_file_and_objects_are_written_once(tmp_path: Path) -> None:
    warehouse = Warehouse(str(tmp_path))
    key = object_key("raw", "ab" * 32, "jpg")
    assert key == f"objects/raw/ab/{'ab' * 32}.jpg"
    assert warehouse.put_object(key, b"first") is True
    assert warehouse.put_object(key, b"second") is False
    assert warehouse.read_bytes(key) == b"first"
    assert os.listdir(tmp_path / ".tmp") == []


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    warehouse = Warehouse(str(tmp_path))
    warehouse.write_bytes("runs/x.json", b"old and complete")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        warehouse.write_bytes("runs/x.json", b"new")
    assert warehouse.read_bytes("runs/x.json") == b"old and complete"
    assert os.listdir(tmp_path / ".tmp") == []


def test_stale_temp_files_are_swept_fresh_ones_kept(tmp_path: Path) -> None:
    warehouse = Warehouse(str(tmp_path))
    (tmp_path / ".tmp").mkdir()
    stale, fresh = tmp_path / ".tmp" / "stale", tmp_path / ".tmp" / "fresh"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"in flight")
    two_days_ago = time.time() - 48 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))
    assert warehouse.sweep_stale_temp(older_than_hours=24) == 1
    assert not stale.exists() and fresh.exists()


def test_every_kind_of_warehouse_root(warehouse_root: str) -> None:
    warehouse = Warehouse(warehouse_root)
    uri = warehouse.write_table("images", "2026-01-01", pd.DataFrame({"company": ["a"]}))
    assert uri.endswith(warehouse_root.split("://")[-1] + "/tables/images/run_date=2026-01-01/part-0.parquet")
    assert uri.split("://")[0] == warehouse_root.split("://")[0] if "://" in warehouse_root else "://" not in uri
    with fsspec.open(uri, "rb") as handle:  # the URI handed to other tools opens as it is
        assert list(pd.read_parquet(handle)["company"]) == ["a"]
    assert list(warehouse.read_table("images")["company"]) == ["a"]
    warehouse.write_json("runs/run_date=2026-01-01/run.json", {"ok": True})
    assert warehouse.read_json("runs/run_date=2026-01-01/run.json") == {"ok": True}
    warehouse.write_table("images", "2026-01-02", pd.DataFrame({"company": ["b"]}))
    warehouse.write_table("images", "2026-01-01", pd.DataFrame({"company": ["z"]}))  # a rerun replaces its partition
    assert warehouse.run_dates("images") == ["2026-01-01", "2026-01-02"]
    assert list(zip(*warehouse.read_table("images")[["run_date", "company"]].T.values)) == [("2026-01-01", "z"), ("2026-01-02", "b")]
    assert warehouse.put_object("objects/raw/ab/ab.jpg", b"first") and not warehouse.put_object("objects/raw/ab/ab.jpg", b"second")
    assert warehouse.read_bytes("objects/raw/ab/ab.jpg") == b"first"
    assert warehouse.keys_matching("runs/*/run.json") == ["runs/run_date=2026-01-01/run.json"]
    warehouse.remove("tables/images/run_date=2026-01-02", recursive=True)
    assert warehouse.run_dates("images") == ["2026-01-01"]


def test_cache_shards_copy_between_warehouses_once(tmp_path: Path) -> None:
    import pyarrow as pa

    source, target = Warehouse(str(tmp_path / "a")), Warehouse(str(tmp_path / "b"))
    for keys in (["k1", "k2"], ["k3"]):
        source.write_shard("cache/v1", keys, pa.table({"content_sha256": keys, "value": [1.0] * len(keys)}))
    assert target.copy_shards(source, "cache/v1") == 2
    assert target.copy_shards(source, "cache/v1") == 0  # immutable, named by their keys: nothing new
    assert [t.to_pylist() for t in target.read_shards("cache/v1")] == [t.to_pylist() for t in source.read_shards("cache/v1")]
    assert target.copy_shards(source, "cache/absent") == 0


def test_exclusive_create_lets_exactly_one_writer_in(warehouse_root: str) -> None:
    warehouse = Warehouse(warehouse_root)
    assert warehouse.create_exclusive("runs/run_date=2026-01-01/lease.json", b"first")
    assert not warehouse.create_exclusive("runs/run_date=2026-01-01/lease.json", b"second")
    assert warehouse.read_bytes("runs/run_date=2026-01-01/lease.json") == b"first"


def test_checkpointed_chunks_merge_into_the_shard_one_write_would_leave(tmp_path: Path) -> None:
    import pyarrow as pa

    chunks = [["k1", "k2"], ["k3"], ["k4", "k5"]]
    checkpointed, whole = Warehouse(str(tmp_path / "a")), Warehouse(str(tmp_path / "b"))
    with checkpointed.checkpoints("cache/v1") as write:
        for keys in chunks:
            write(keys, pa.table({"content_sha256": keys, "value": [float(len(k)) for k in keys]}))
            write([], pa.table({"content_sha256": pa.array([], pa.string()), "value": pa.array([], pa.float64())}))  # nothing: no shard
        assert len(checkpointed.keys_matching("cache/v1/shard-*.parquet")) == 3  # each chunk on disk as soon as it is done
    every = [k for keys in chunks for k in keys]
    whole.write_shard("cache/v1", every, pa.table({"content_sha256": every, "value": [2.0] * 5}))
    assert [k.rsplit("/", 1)[1] for k in checkpointed.keys_matching("cache/v1/shard-*.parquet")] == [
        k.rsplit("/", 1)[1] for k in whole.keys_matching("cache/v1/shard-*.parquet")
    ]
    assert checkpointed.read_shards("cache/v1")[0].to_pylist() == whole.read_shards("cache/v1")[0].to_pylist()
    with checkpointed.checkpoints("cache/v2"):
        pass  # nothing computed: nothing written
    assert not checkpointed.exists("cache/v2")


def test_an_interrupted_computation_keeps_its_finished_chunks(tmp_path: Path) -> None:
    """A chunk whose computation failed writes nothing; the chunks before it stay, unmerged, for the
    retry to find; the error reaches the caller."""
    import pyarrow as pa

    warehouse = Warehouse(str(tmp_path / "w"))
    with pytest.raises(RuntimeError, match="worker lost"), warehouse.checkpoints("cache/v1") as write:
        write(["a"], pa.table({"content_sha256": ["a"], "face_window": [None]}))  # a column of nulls in one chunk ...
        write(["b"], pa.table({"content_sha256": ["b"], "face_window": [[0.5, 0.25]]}))
        raise RuntimeError("worker lost")
    shards = warehouse.read_shards("cache/v1")
    assert sorted(row["content_sha256"] for table in shards for row in table.to_pylist()) == ["a", "b"]
    with warehouse.checkpoints("cache/v1") as write:  # ... merges with a chunk that has the type
        write(["c"], pa.table({"content_sha256": ["c"], "face_window": [None]}))
        write(["d"], pa.table({"content_sha256": ["d"], "face_window": [[1.0]]}))
    assert len(warehouse.read_shards("cache/v1")) == 3  # the retry's two chunks merged; the earlier run's left as they were

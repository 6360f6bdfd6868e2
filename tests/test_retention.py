"""Retention: pictures unseen for longer than configured are purged; metrics and recent ones stay."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.apps.demo.data import generate_demo_images
from pipeline.apps.retention import purge_expired
from pipeline.config import RetentionConfig, load_settings
from pipeline.features.embed import vectors_for
from pipeline.ingest.sources import read_manifest
from pipeline.layout import neighbour_lists_file, object_key
from pipeline.stages import run_pipeline
from pipeline.warehouse import Warehouse
from tests.conftest import photo_like


def test_purge_follows_last_run_that_saw_each_picture(tmp_path: Path) -> None:
    rows = read_manifest(str(generate_demo_images(tmp_path / "demo", per_company=3)))
    settings = load_settings(warehouse=str(tmp_path / "wh"), embedder="classic")
    run_pipeline(rows, settings, "2026-01-01", progress=False)
    still_listed = [r for r in rows if r.company != "bluebird-bakery"]  # bluebird's page went away
    run_pipeline(still_listed, settings, "2026-03-01", progress=False)
    warehouse = Warehouse(str(tmp_path / "wh"))
    images = warehouse.read_table("images", "2026-01-01")
    gone = set(images.loc[images["company"] == "bluebird-bakery", "raw_object"])
    kept = set(warehouse.read_table("images", "2026-03-01")["raw_object"])
    orphan = object_key("raw", "f" * 64, "jpg")
    warehouse.write_bytes(orphan, b"left by an interrupted run")
    week_ago = time.time() - 7 * 86400
    os.utime(warehouse.path(orphan), (week_ago, week_ago))

    # Verification's keypoints of a photo that went and of one still listed.
    from pipeline.features.verify import KEYPOINTS_VERSION
    from pipeline.layout import keypoints_key

    gone_keypoints = keypoints_key(images.loc[images["company"] == "bluebird-bakery", "content_sha256"].iloc[0], KEYPOINTS_VERSION)
    kept_keypoints = keypoints_key(warehouse.read_table("images", "2026-03-01")["content_sha256"].iloc[0], KEYPOINTS_VERSION)
    for key in (gone_keypoints, kept_keypoints):
        warehouse.write_bytes(key, b"keypoints")

    from pipeline.features.verify import VerifyParams
    from pipeline.layout import verifications_folder

    def verdicts() -> set[tuple[str, str]]:
        tables = warehouse.read_shards(verifications_folder(VerifyParams.from_thresholds(settings.thresholds).cache_id))
        return {pair for table in tables for pair in zip(table.column("content_a").to_pylist(), table.column("content_b").to_pylist())}

    before = verdicts()

    policy = RetentionConfig(raw_images_days=30, thumbnails_days=365)
    dry = purge_expired(warehouse, policy, "2026-03-10", dry_run=True)
    pictures = dry["kind"].isin(["raw", "thumbs"])
    assert set(dry.loc[pictures & (dry["action"] == "would delete"), "object"]) == gone
    assert all(warehouse.exists(key) for key in gone)  # a dry run deletes nothing
    # What the caches derive from the photos that went (kept descriptors, face signals, embedding
    # vectors, region views), and only that, goes with them.
    gone_contents = set(images.loc[images["company"] == "bluebird-bakery", "content_sha256"])
    for kind in ("face_descriptor", "face_signals", "embedding", "region_views"):
        derived = dry[dry["kind"] == kind]
        assert {key.rsplit("/", 1)[1] for key in derived.loc[derived["action"] == "would delete", "object"]} <= gone_contents
        assert {key.rsplit("/", 1)[1] for key in derived.loc[derived["action"] == "keep", "object"]}.isdisjoint(gone_contents)
        assert (derived["action"] == "would delete").any(), kind

    log = purge_expired(warehouse, policy, "2026-03-10")
    assert set(log.loc[log["kind"].isin(["raw", "thumbs"]) & (log["action"] == "deleted"), "object"]) == gone
    assert not any(warehouse.exists(key) for key in gone)
    assert all(warehouse.exists(key) for key in kept)
    assert (log.loc[log["kind"] == "thumbs", "action"] == "keep").all()
    assert warehouse.exists(orphan)  # unreferenced, but only a week old
    assert not warehouse.exists(gone_keypoints) and warehouse.exists(kept_keypoints)  # keypoints go with their photo
    from pipeline.features.embed import cached_keys
    from pipeline.features.regions import VERSION as REGIONS_VERSION
    from pipeline.layout import regions_folder

    kept_contents = set(warehouse.read_table("images", "2026-03-01")["content_sha256"])
    assert cached_keys(warehouse, "classic-v1") == kept_contents  # the vectors of the photos that went, and only those, are gone
    assert set(warehouse.shards_by_content(regions_folder(REGIONS_VERSION))) == kept_contents
    # Verdicts of pairs with a photo that went go too; the others stay.
    assert any(set(pair) & gone_contents for pair in before) and any(set(pair) <= kept_contents for pair in before)
    assert verdicts() == {pair for pair in before if not set(pair) & gone_contents}
    with pytest.raises(RuntimeError, match="retention deleted them"):  # an old run's vectors: a clear error, not a wrong figure
        vectors_for(warehouse, "classic-v1", sorted(gone_contents), 0)
    # Metrics stay, and the decisions are on record.
    assert not warehouse.read_table("companies", "2026-01-01").empty
    assert len(pd.read_parquet(warehouse.path("tables/retention/run_date=2026-03-10/part-0.parquet"))) == len(log)


def test_a_purged_original_is_fetched_again_by_the_next_run(tmp_path: Path) -> None:
    picture = tmp_path / "a.jpg"
    photo_like(seed=9).save(picture, format="JPEG")
    copies = [tmp_path / f"{name}.jpg" for name in "bc"]  # one stored object, three rows
    for copy in copies:
        copy.write_bytes(picture.read_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text("company,image\n" + "".join(f"acme,{path}\n" for path in (picture, *copies)))
    settings = load_settings(warehouse=str(tmp_path / "wh"), embedder="classic")
    first = run_pipeline(read_manifest(str(manifest)), settings, "2026-01-01", progress=False)
    warehouse = Warehouse(str(tmp_path / "wh"))
    purge_expired(warehouse, RetentionConfig(raw_images_days=0, thumbnails_days=0), "2026-01-05")
    second = run_pipeline(read_manifest(str(manifest)), settings, "2026-01-06", progress=False)
    assert second.counts["ok"] == first.counts["ok"] == 3
    assert second.counts["embedded"] == first.counts["embedded"] == 1  # its vector went with it, and is computed again
    raw = warehouse.read_table("images", "2026-01-06")["raw_object"].iloc[0]
    assert warehouse.exists(raw)


def test_no_expired_picture_is_left_anywhere_not_even_in_a_brand_audit(tmp_path: Path) -> None:
    """A brand audit stores its own copies of the population's photos under audits/<company>/<date>:
    retention used to purge W/objects only, so those copies of personal photos stayed forever."""
    rows = read_manifest(str(generate_demo_images(tmp_path / "demo", per_company=3)))
    warehouse = Warehouse(str(tmp_path / "wh"))
    nightly = load_settings(warehouse=warehouse.uri(), reports=str(tmp_path / "reports"), embedder="classic")
    run_pipeline(rows, nightly, "2026-01-01", progress=False)
    audit = nightly.model_copy(update={"warehouse": warehouse.uri("audits", "acme-0000", "2026-01-02")})
    run_pipeline(rows[:4], audit, "2026-01-02", progress=False)  # as `homog audit` does, in its own warehouse
    audit_raw = list((tmp_path / "wh" / "audits").rglob("objects/raw/*/*"))
    assert audit_raw

    log = purge_expired(warehouse, RetentionConfig(raw_images_days=30, thumbnails_days=30), "2026-03-15")
    deleted = set(log.loc[log["action"] == "deleted", "object"])
    assert {str(p.relative_to(tmp_path / "wh")) for p in audit_raw} <= deleted
    left = [p for p in (tmp_path / "wh").rglob("objects/*/*/*") if p.is_file()]
    assert left == [], left  # every picture was last seen more than 30 days before
    assert not warehouse.read_table("companies", "2026-01-01").empty  # metrics stay
    # The photos whose face signals went leave the near-duplicate search's kept neighbour lists too.
    purged = {key.rsplit("/", 1)[1] for key in log.loc[(log["kind"] == "face_signals") & (log["action"] == "deleted"), "object"]}
    kept_lists = warehouse.keys_matching(neighbour_lists_file("*"))
    assert purged and kept_lists
    for key in kept_lists:
        with np.load(io.BytesIO(warehouse.read_bytes(key)), allow_pickle=False) as stored:
            assert purged.isdisjoint(stored["contents"].tolist()), key


def test_a_content_keyed_cache_drops_only_the_contents_asked_for(tmp_path: Path) -> None:
    import pyarrow as pa

    store = Warehouse(str(tmp_path / "wh"))
    folder = "face_signals/v9"
    for contents in (["a", "b"], ["c"]):
        store.write_shard(folder, contents, pa.table({"content_sha256": contents, "value": [float(len(c)) for c in contents]}))
    assert store.shards_by_content(folder).keys() == {"a", "b", "c"}
    assert store.drop_contents(folder, {"z"}) == 0  # nothing to delete: nothing rewritten
    assert len(store.keys_matching(f"{folder}/shard-*.parquet")) == 2
    assert store.drop_contents(folder, {"b"}) == 1
    assert sorted(store.shards_by_content(folder)) == ["a", "c"] and len(store.keys_matching(f"{folder}/shard-*.parquet")) == 1
    assert store.read_shards(folder)[0].column("value").to_pylist() == [1.0, 1.0]  # rows kept whole
    assert store.drop_contents(folder, {"a", "c"}) == 2 and store.shards_by_content(folder) == {}
    assert store.drop_contents("nothing/here", {"a"}) == 0  # a cache never written: nothing to do
    pairs = "verifications/v9"  # keyed by two contents: a row goes where either photo does
    store.write_shard(pairs, ["a:b", "a:c"], pa.table({"content_a": ["a", "a"], "content_b": ["b", "c"], "same_photo": [True, False]}))
    assert store.drop_contents(pairs, {"b"}, ("content_a", "content_b")) == 1
    assert store.read_shards(pairs)[0].to_pydict() == {"content_a": ["a"], "content_b": ["c"], "same_photo": [False]}


def test_a_cache_of_many_shards_is_compacted_into_one_and_a_row_held_twice_kept_once(tmp_path: Path) -> None:
    """A shard per night (and a killed run's chunks) would make every night read a cache in one request
    per night it has run: past COMPACT_ABOVE_SHARDS, retention rewrites it as one shard, with every row
    that was there, a row that an interrupted merge left twice once, and nothing else changed."""
    import pyarrow as pa

    from pipeline.warehouse import COMPACT_ABOVE_SHARDS

    store = Warehouse(str(tmp_path / "wh"))
    folder = "embeddings/classic-v1"
    nights = [[f"photo-{night}"] for night in range(COMPACT_ABOVE_SHARDS)]
    for contents in nights:
        store.write_shard(folder, contents, pa.table({"content_sha256": contents, "vector": [[float(c[-1]), 1.0] for c in contents]}))
    assert store.drop_contents(folder, set()) == 0  # as many shards as allowed: left as they are
    assert len(store.keys_matching(f"{folder}/shard-*.parquet")) == COMPACT_ABOVE_SHARDS
    merged_twice = ["photo-0", "photo-1"]  # an interrupted merge: the merged shard and its chunks both there
    store.write_shard(folder, merged_twice, pa.table({"content_sha256": merged_twice, "vector": [[0.0, 1.0], [1.0, 1.0]]}))
    assert store.drop_contents(folder, set()) == 2  # the two rows held twice
    (shard,) = store.keys_matching(f"{folder}/shard-*.parquet")
    table = store.read_shards(folder)[0]
    vectors = dict(zip(table.column("content_sha256").to_pylist(), table.column("vector").to_pylist()))
    assert len(vectors) == table.num_rows == COMPACT_ABOVE_SHARDS
    assert vectors == {f"photo-{night}": [float(str(night)[-1]), 1.0] for night in range(COMPACT_ABOVE_SHARDS)}
    assert store.drop_contents(folder, set()) == 0 and store.keys_matching(f"{folder}/shard-*.parquet") == [shard]


def test_retention_compacts_the_verdict_cache_on_a_night_when_nothing_expired(tmp_path: Path) -> None:
    import pyarrow as pa

    from pipeline.apps.retention import purge_expired
    from pipeline.warehouse import COMPACT_ABOVE_SHARDS

    store = Warehouse(str(tmp_path / "wh"))
    folder = "verifications/v9"
    for night in range(COMPACT_ABOVE_SHARDS + 1):
        pair = (f"a{night}", f"b{night}")
        store.write_shard(folder, [":".join(pair)], pa.table({"content_a": [pair[0]], "content_b": [pair[1]], "same_photo": [True]}))
    purge_expired(store, RetentionConfig(), "2026-01-01")
    assert len(store.keys_matching(f"{folder}/shard-*.parquet")) == 1
    assert store.read_shards(folder)[0].num_rows == COMPACT_ABOVE_SHARDS + 1

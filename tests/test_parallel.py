"""Worker processes (pipeline/parallel.py): results in order and equal to one process's, a job's error
raised to the caller, small jobs kept in this process; verification and face identity give the same
answers in worker processes as in one."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import parallel
from pipeline.config import ConfigError, load_settings
from tests.conftest import photo_like


def doubled_with_worker(value: int) -> tuple[int, int]:
    if value < 0:
        raise ValueError(f"negative value {value}")
    return 2 * value, os.getpid()


@pytest.fixture
def always_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes even for the few seconds of work a test has."""
    monkeypatch.setattr(parallel, "MIN_PARALLEL_SECONDS", 0.0)


def test_results_keep_the_items_order_and_come_from_worker_processes(always_parallel: None) -> None:
    results = parallel.process_map(doubled_with_worker, list(range(20)), workers=2, estimated_seconds=1.0)
    assert [value for value, _ in results] == [2 * i for i in range(20)]
    assert os.getpid() not in {pid for _, pid in results}


def test_a_jobs_error_is_raised_to_the_caller(always_parallel: None) -> None:
    with pytest.raises(ValueError, match="negative value -3"):
        parallel.process_map(doubled_with_worker, [1, 2, -3, 4], workers=2, estimated_seconds=1.0)


def doubled_unless_in_a_worker(value: int, parent: int) -> int:
    if os.getpid() != parent:
        os._exit(1)  # a worker dies, as one killed for memory does
    return 2 * value


def test_work_of_workers_that_die_is_done_in_this_process(always_parallel: None, caplog: pytest.LogCaptureFixture) -> None:
    import functools

    function = functools.partial(doubled_unless_in_a_worker, parent=os.getpid())
    assert parallel.process_map(function, [1, 2, 3], workers=2, estimated_seconds=1.0) == [2, 4, 6]
    assert "worker processes failed" in caplog.text


def doubled_unless_a_worker_reaches(value: int, parent: int, dying_from: int) -> tuple[int, int]:
    if os.getpid() != parent and value >= dying_from:
        time.sleep(0.5)  # the results before it are taken first
        os._exit(1)
    return 2 * value, os.getpid()


def test_what_workers_gave_back_before_one_died_is_kept(always_parallel: None) -> None:
    """Results come one by one, in order (`process_imap`): those a caller took before a worker died are
    not done again; the rest are done in this process."""
    import functools

    function = functools.partial(doubled_unless_a_worker_reaches, parent=os.getpid(), dying_from=6)
    results = list(parallel.process_imap(function, list(range(8)), workers=2, estimated_seconds=1.0))
    assert [value for value, _ in results] == [2 * i for i in range(8)]
    assert results[0][1] != os.getpid() and all(pid == os.getpid() for _, pid in results[6:])


def _ended_pid() -> int:
    """The pid of a process that has ended."""
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(ended.stdout)


def test_a_pool_start_deletes_what_killed_processes_pools_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, always_parallel: None
) -> None:
    """A process killed with its pool up leaves joblib's memmapping folder and loky's semaphores in
    shared memory: the next pool's start deletes them. A live process's entries, names without a pid,
    and other files stay."""
    shared, temporary = tmp_path / "shm", tmp_path / "tmp"
    shared.mkdir(), temporary.mkdir()
    monkeypatch.setattr(parallel, "POOL_FOLDERS", (str(shared),))
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", str(temporary))
    ended, live = _ended_pid(), os.getpid()
    left = [
        shared / f"joblib_memmapping_folder_{ended}_0f3a_1",
        shared / f"sem.loky-{ended}-7",
        temporary / f"joblib_memmapping_folder_{ended}_9c_2",
    ]
    kept = [
        shared / f"joblib_memmapping_folder_{live}_11_1",
        shared / f"sem.loky-{live}-3",
        shared / "sem.loky-x-1",
        shared / f"{ended}-notes",
    ]
    for entry in (*left, *kept):
        if "folder" in entry.name:
            entry.mkdir()
            (entry / "array.pkl").write_bytes(b"vectors")
        else:
            entry.write_bytes(b"semaphore")
    results = parallel.process_map(doubled_with_worker, list(range(4)), workers=2, estimated_seconds=1.0)
    assert [value for value, _ in results] == [0, 2, 4, 6]
    assert not any(entry.exists() for entry in left)
    assert all(entry.exists() for entry in kept)
    assert parallel.remove_abandoned_pools() == 0


def test_stopped_workers_are_gone_and_the_next_call_starts_fresh_ones(always_parallel: None) -> None:
    """A run stops its workers after each stage, so that idle ones hold no memory through the next;
    stopping where there are none starts none."""
    import psutil

    first = {pid for _, pid in parallel.process_map(doubled_with_worker, list(range(8)), workers=2, estimated_seconds=1.0)}
    parallel.stop_workers()
    assert not any(psutil.pid_exists(pid) for pid in first)
    children = {child.pid for child in psutil.Process().children(recursive=True)}
    parallel.stop_workers()
    assert {child.pid for child in psutil.Process().children(recursive=True)} <= children
    again = parallel.process_map(doubled_with_worker, list(range(8)), workers=2, estimated_seconds=1.0)
    assert [value for value, _ in again] == [2 * i for i in range(8)] and first.isdisjoint(pid for _, pid in again)


def test_small_work_and_a_single_worker_stay_in_this_process() -> None:
    for workers, seconds in ((2, 0.1), (1, 100.0)):
        results = parallel.process_map(doubled_with_worker, [1, 2, 3], workers=workers, estimated_seconds=seconds)
        assert results == [(2, os.getpid()), (4, os.getpid()), (6, os.getpid())]
    assert parallel.process_map(doubled_with_worker, [], workers=4, estimated_seconds=100.0) == []


def test_workers_default_to_the_cpus_this_process_may_use() -> None:
    assert parallel.worker_count(0) == parallel.usable_cpus() >= 1
    assert parallel.worker_count(3) == 3
    assert load_settings(compute={"workers": 0}).compute.workers == 0
    with pytest.raises((ConfigError, ValueError)):
        load_settings(compute={"workers": -1})


# ------------------------------------------------------------------ verification
def _stored_pictures(tmp_path: Path) -> tuple[object, dict[str, str], list[tuple[str, str]]]:
    """A warehouse with two photos, a resized and a recompressed copy of each, and the pairs between them all."""
    from pipeline.warehouse import Warehouse

    warehouse = Warehouse(str(tmp_path / "warehouse"))
    pictures = {}
    for seed in (1, 2):
        original = photo_like(240, 300, seed=seed)
        buffer = io.BytesIO()
        original.save(buffer, "JPEG", quality=40)
        pictures[f"o{seed}"] = original
        pictures[f"s{seed}"] = original.resize((120, 150))
        pictures[f"j{seed}"] = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    object_of = {}
    for name, picture in pictures.items():
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        warehouse.write_bytes(f"objects/raw/{name}.png", buffer.getvalue())
        object_of[name] = f"objects/raw/{name}.png"
    names = sorted(object_of)
    return warehouse, object_of, [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def verified_pairs(pairs: list[tuple[str, str]], *args: object, **kwargs: object) -> tuple[list, int]:
    """`verify_pairs`' verdicts, in the pairs' order, and its count of photos whose keypoints were found now."""
    from pipeline.metrics import near_duplicates

    found: dict = {}
    n_keypoints = near_duplicates.verify_pairs(pairs, *args, verified=lambda done, verdicts: found.update(zip(done, verdicts)), **kwargs)
    return [found[pair] for pair in pairs], n_keypoints


def test_verification_in_worker_processes_gives_one_process_verdicts(tmp_path: Path, always_parallel: None) -> None:
    from pipeline.features.verify import VerifyParams

    warehouse, object_of, pairs = _stored_pictures(tmp_path)
    params = VerifyParams.from_thresholds()
    alone, found_alone = verified_pairs(pairs, warehouse, object_of, {}, params, workers=1)
    # The second time, in worker processes, every photo's keypoints are those the first one kept.
    spread, found_spread = verified_pairs(pairs, warehouse, object_of, {}, params, workers=2)
    assert spread == alone and (found_alone, found_spread) == (6, 0)
    # The copies of one photo verify; photos of different seeds do not.
    assert {pair for pair, verdict in zip(pairs, alone) if verdict.same_photo} == {pair for pair in pairs if pair[0][1] == pair[1][1]}


def test_stored_features_read_back_equal(tmp_path: Path) -> None:
    from pipeline.features.verify import features, load_features, save_features

    for picture, face in ((photo_like(200, 260, seed=5), (20, 30, 60, 70)), (Image.new("RGB", (64, 64), "grey"), None)):
        views = features(picture, face)
        save_features(str(tmp_path / "f.pickle"), views)
        for saved, loaded in zip(views, load_features(str(tmp_path / "f.pickle"))):
            assert np.array_equal(saved.grey, loaded.grey) and np.array_equal(saved.keypoints, loaded.keypoints)
            assert saved.face == loaded.face and saved.native_side == loaded.native_side
            assert (saved.descriptors is None and loaded.descriptors is None) or np.array_equal(saved.descriptors, loaded.descriptors)
    assert views[0].descriptors is None  # a flat picture has no keypoints: stored and read back as none


@pytest.mark.parametrize("in_memory", [True, False])
def test_verification_scratch_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool) -> None:
    import tempfile

    from pipeline.features.verify import VerifyParams
    from pipeline.metrics import near_duplicates

    (tmp_path / "scratch").mkdir()
    (tmp_path / "memory").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    monkeypatch.setattr(near_duplicates, "MEMORY_FOLDERS", (str(tmp_path / ("memory" if in_memory else "no such folder")),))
    real_mkdtemp, made = tempfile.mkdtemp, []

    def recorded_mkdtemp(**where: str) -> str:
        made.append(real_mkdtemp(**where))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recorded_mkdtemp)
    warehouse, object_of, pairs = _stored_pictures(tmp_path)
    verified_pairs(pairs[:3], warehouse, object_of, {}, VerifyParams.from_thresholds(), workers=1)
    assert [Path(folder).parent.name for folder in made] == ["memory" if in_memory else "scratch"]
    assert list((tmp_path / "scratch").iterdir()) == list((tmp_path / "memory").iterdir()) == []


def test_scratch_goes_to_memory_only_where_it_has_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first memory folder with room for twice the photos' features; the temporary folder where
    none has room, is missing or cannot be written, or where the machine has not that much memory."""
    import shutil
    import tempfile

    from pipeline.metrics import near_duplicates

    full, roomy, read_only = tmp_path / "full", tmp_path / "roomy", tmp_path / "read-only"
    for folder in (full, roomy, read_only):
        folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=0) if Path(path) == full else real_usage(path))
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only)
    monkeypatch.setattr(near_duplicates, "MEMORY_FOLDERS", (str(tmp_path / "missing"), str(read_only), str(full), str(roomy)))
    assert near_duplicates.scratch_parent(100) == str(roomy)
    too_many = real_usage(roomy).free // 300_000 + 1  # more than half of what the folder holds
    assert near_duplicates.scratch_parent(too_many) == str(tmp_path)
    monkeypatch.setattr(near_duplicates, "MEMORY_FOLDERS", (str(full),))
    assert near_duplicates.scratch_parent(1) == str(tmp_path)
    monkeypatch.setattr(near_duplicates, "MEMORY_FOLDERS", (str(roomy),))
    monkeypatch.setattr(near_duplicates, "_available_memory", lambda: 2 * 100 * 300_000 - 1)  # the machine is short of memory
    assert near_duplicates.scratch_parent(100) == str(tmp_path)


# ------------------------------------------------------------------ identity
def test_face_descriptors_in_worker_processes_equal_one_process(tmp_path: Path, always_parallel: None) -> None:
    import pandas as pd

    from pipeline.features.identity import face_descriptors, kept_descriptors, unseal
    from pipeline.warehouse import Warehouse
    from tests.fixture_site import face_pictures

    warehouse = Warehouse(str(tmp_path / "warehouse"))
    pictures = face_pictures(3)
    contents = [f"c{i}" for i in range(len(pictures))]
    for content, data in zip(contents, pictures):
        warehouse.write_bytes(f"objects/raw/{content}.jpg", data)
    images = pd.DataFrame({"content_sha256": contents, "raw_object": [f"objects/raw/{c}.jpg" for c in contents]})
    alone, computed = face_descriptors(warehouse, images, contents, keep=False, workers=1)
    spread, computed_spread = face_descriptors(warehouse, images, contents, keep=True, workers=2)
    assert computed == computed_spread == 3 and not np.isnan(alone).any()
    assert np.array_equal(alone, spread)
    kept = kept_descriptors(warehouse)
    for content, descriptor in zip(contents, spread):
        assert np.array_equal(unseal(kept[content], warehouse.read_bytes(f"objects/raw/{content}.jpg"), content), descriptor)


def test_scratch_of_a_killed_run_is_deleted_by_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verification killed before its clean-up leaves grey copies of photos behind: the next
    verification deletes them, and leaves a live process's folder alone."""
    import tempfile

    from pipeline.features.verify import VerifyParams
    from pipeline.metrics import near_duplicates

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    monkeypatch.setattr(near_duplicates, "MEMORY_FOLDERS", (str(tmp_path / "memory"),))
    abandoned = [tmp_path / parent / f"homog-verify-{_ended_pid()}-abc" for parent in ("scratch", "memory")]
    live = tmp_path / "scratch" / f"homog-verify-{os.getpid()}-def"
    for folder in (*abandoned, live):
        folder.mkdir(parents=True)
        (folder / "photo.pickle").write_bytes(b"grey picture")
    warehouse, object_of, pairs = _stored_pictures(tmp_path)
    verified_pairs(pairs[:1], warehouse, object_of, {}, VerifyParams.from_thresholds(), workers=1)
    assert not any(folder.exists() for folder in abandoned) and (live / "photo.pickle").exists()


def _sizes(warehouse: object, object_of: dict[str, str]) -> dict[str, tuple[int, int]]:
    """(width, height) of each stored photo, as the images table has them."""
    return {name: Image.open(io.BytesIO(warehouse.read_bytes(key))).size for name, key in object_of.items()}


@pytest.mark.parametrize("with_sizes", [False, True])
def test_kept_keypoints_are_reused_and_unusable_ones_found_again(tmp_path: Path, with_sizes: bool) -> None:
    """Verification keeps each photo's ORB keypoints (no picture) in the warehouse: the next run reads
    them instead of finding them again, with the same verdicts. A kept file that is unreadable or was
    found on a plane of another size is not trusted: found again and replaced (also where the photos'
    sizes let verification leave photos undecoded)."""
    from pipeline import layout
    from pipeline.features.verify import KEYPOINTS_VERSION, VerifyParams, features, keypoint_bytes, keypoints_fit, read_keypoints

    warehouse, object_of, pairs = _stored_pictures(tmp_path)
    params = VerifyParams.from_thresholds()
    first, found = verified_pairs(pairs, warehouse, object_of, {}, params, workers=1)
    assert found == 6 and all(warehouse.exists(layout.keypoints_key(name, KEYPOINTS_VERSION)) for name in object_of)
    assert "PNG" not in warehouse.read_bytes(layout.keypoints_key("o1", KEYPOINTS_VERSION)).decode("latin-1")  # no picture inside
    warehouse.write_bytes(layout.keypoints_key("o1", KEYPOINTS_VERSION), b"not an npz")
    other_size = keypoint_bytes(features(photo_like(100, 100, seed=9), None))
    warehouse.write_bytes(layout.keypoints_key("s1", KEYPOINTS_VERSION), other_size)
    sizes = _sizes(warehouse, object_of) if with_sizes else None
    again, found_again = verified_pairs(pairs, warehouse, object_of, {}, params, workers=1, sizes=sizes)
    assert again == first and found_again == 2
    from pipeline.ingest.intake import load_rgb

    for name in ("o1", "s1"):  # replaced by keypoints of the photo's own plane
        plane = features(load_rgb(warehouse.uri(object_of[name])), None)[0].grey.shape
        assert keypoints_fit(read_keypoints(warehouse.read_bytes(layout.keypoints_key(name, KEYPOINTS_VERSION))), plane)


def test_verification_in_blocks_computes_each_photos_features_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Pairs are verified in blocks so that the scratch folder holds only what is still needed: the
    verdicts are those of one block, and no photo's features are computed twice."""
    import logging

    from pipeline.features.verify import VerifyParams
    from pipeline.metrics import near_duplicates

    warehouse, object_of, pairs = _stored_pictures(tmp_path)
    params = VerifyParams.from_thresholds()
    whole, _ = verified_pairs(pairs, warehouse, object_of, {}, params, workers=1)
    monkeypatch.setattr(near_duplicates, "_BLOCK_PAIRS", 4)
    with caplog.at_level(logging.INFO, logger="pipeline.metrics.near_duplicates"):
        blocks, _ = verified_pairs(pairs, warehouse, object_of, {}, params, workers=1)
    assert blocks == whole
    assert "features of 6 photo(s)" in caplog.text and f"{len(pairs)} pair(s)" in caplog.text


def test_photos_with_kept_keypoints_are_decoded_only_for_a_pair_that_aligns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, always_parallel: None
) -> None:
    """A night's candidates are mostly photos verified before, whose keypoints are kept: where the
    images table gives their size, verification reads the keypoints alone and decodes a photo only
    when one of its pairs aligns, with the verdicts that decoding every photo gives."""
    from pipeline.features.verify import VerifyParams
    from pipeline.metrics import near_duplicates

    warehouse, object_of, pairs = _stored_pictures(tmp_path)
    buffer = io.BytesIO()
    photo_like(260, 240, seed=7).save(buffer, "PNG")
    warehouse.write_bytes("objects/raw/u.png", buffer.getvalue())
    object_of["u"] = "objects/raw/u.png"
    pairs += [("o1", "u"), ("s2", "u")]  # unrelated: they do not align
    params, sizes = VerifyParams.from_thresholds(), _sizes(warehouse, object_of)
    eager, found = verified_pairs(pairs, warehouse, object_of, {}, params, workers=1)
    assert found == 7
    for workers in (1, 2):
        lazy, found_lazy = verified_pairs(pairs, warehouse, object_of, {}, params, workers, sizes=sizes)
        assert lazy == eager and found_lazy == 0

    # In one job: the features step decodes nothing; the pairs decode the copies (they align), never u.
    decoded = []
    photo_features = near_duplicates._photo_features
    monkeypatch.setattr(
        near_duplicates, "_photo_features", lambda job, content, known: decoded.append(content) or photo_features(job, content, known)
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    planes = {name: near_duplicates.plane_shape(*size) for name, size in sizes.items()}
    assert near_duplicates.compute_features(
        near_duplicates.FeatureJob(sorted(object_of), warehouse, object_of, {}, str(scratch), planes)
    ) == (0, 7)
    assert decoded == []
    verdicts, n_decoded = near_duplicates.verify_job(near_duplicates.VerifyJob(pairs, str(scratch), params, warehouse, object_of, {}))
    assert verdicts == eager and n_decoded == 6 and sorted(decoded) == ["j1", "j2", "o1", "o2", "s1", "s2"]


def test_an_interrupted_verification_keeps_the_blocks_it_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verdicts reach the cache as each job's come back: a run killed in its third block keeps the
    first two, and the retry verifies only the rest, with the pairs a run that was never interrupted
    finds; its jobs' shards are merged into one."""
    from pipeline import layout
    from pipeline.features.embed import Embeddings
    from pipeline.features.verify import VerifyParams
    from pipeline.metrics import near_duplicates

    warehouse, object_of, pairs = _stored_pictures(tmp_path)
    names = sorted(object_of)
    embeddings = Embeddings("test", names, np.zeros((len(names), 2), np.float32), 0)
    candidates = [(names.index(a), names.index(b), 0.9) for a, b in pairs]
    params = VerifyParams.from_thresholds()
    folder = layout.verifications_folder(params.cache_id)
    monkeypatch.setattr(near_duplicates, "_BLOCK_PAIRS", 4)
    verified = near_duplicates.verify_job
    done: list[int] = []

    def killed_in_the_third_block(job: near_duplicates.VerifyJob) -> tuple[list, int]:
        if sum(done) >= 8:
            raise MemoryError("worker killed")
        done.append(len(job.pairs))
        return verified(job)

    monkeypatch.setattr(near_duplicates, "verify_job", killed_in_the_third_block)
    with pytest.raises(MemoryError):
        near_duplicates.verified_content_pairs(candidates, embeddings, object_of, warehouse, params, {})
    assert sum(table.num_rows for table in warehouse.read_shards(folder)) == 8
    monkeypatch.setattr(near_duplicates, "verify_job", verified)
    resumed, n_verified, _ = near_duplicates.verified_content_pairs(candidates, embeddings, object_of, warehouse, params, {})
    assert n_verified == len(pairs) - 8 == 7
    assert len(warehouse.read_shards(folder)) == len(done) + 1  # the killed run's jobs' shards, and the retry's merged into one
    fresh, object_of_fresh, _ = _stored_pictures(tmp_path / "fresh")
    whole, n_whole, _ = near_duplicates.verified_content_pairs(candidates, embeddings, object_of_fresh, fresh, params, {})
    assert n_whole == len(pairs) and sorted(resumed) == sorted(whole) and len(whole) == 6

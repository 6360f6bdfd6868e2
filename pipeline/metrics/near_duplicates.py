"""Near-duplicates and style clusters of a run.

Near-duplicates, in two stages so that cost grows ~N log N and no N x N matrix is ever built:
1. exact: same bytes (`content_sha256`) or same pixels in another encoding (`pixel_sha256`);
2. near: each photo's nearest neighbours in the FAISS index (at most
   `thresholds.max_candidates_per_image`) above the embedder's generous *candidate* threshold, and
   its nearest neighbours by the aligned face's coarse descriptor (`face_window`, kept by the faces
   stage: a crop of up to 30% or an overlay of a quarter of the picture moves the whole-picture
   embedding, not the face), and the photos whose whole picture matches one of its windows (region
   views, pipeline/features/regions.py: crops that cut the face, bordered copies), then
   verification of each candidate (pipeline/features/verify.py),
   which keeps edited copies of one photograph and drops different photos of one sitter or
   template. Bounding candidates per photo keeps a uniform studio page, where every pair looks
   "similar", from costing N^2 verifications. The three searches keep their nearest-neighbour lists
   from run to run (pipeline/features/neighbours.py): a night searches what changed, not everyone.

Duplicate groups ("these five pictures are one photograph") are the connected components of the
verified pairs, with a guard against chaining unrelated photos through a series of small steps:
each group is anchored on its best-connected photo, and holds that photo's verified neighbours and
their verified neighbours whose embedding still reaches the *candidate* threshold against the anchor;
what is left over forms groups of its own. `pairs` lists every pair within a group: `direct` where
the pair itself was verified (or is an exact copy), `implied` where the group joins it.

Style clusters are the connected components of the graph whose edges are exact and verified pairs
plus nearest-neighbour pairs at or above the embedder's *style* threshold: deterministic,
parameter-light and built from the same sparse neighbour search (HDBSCAN would need a dense or
tree index over 512-d vectors and gives run-to-run label changes for borderline points).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline import layout
from pipeline.config import ThresholdsConfig
from pipeline.features.embed import Embeddings
from pipeline.features.index import VectorIndex, neighbour_pairs
from pipeline.features.neighbours import SearchCount
from pipeline.features.verify import Features, Verdict, VerifyParams, features, plane_shape, verify
from pipeline.warehouse import Warehouse

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ["image_a", "image_b", "company_a", "company_b", "similarity", "kind", "link", "group_id"]
CLUSTER_COLUMNS = ["image", "company", "cluster_id"]
GROUP_COLUMNS = ["image", "company", "group_id", "group_size", "anchor"]


def embedder_family(embedder_id: str) -> str:
    return "clip" if embedder_id.startswith("clip") else "classic"


def _kept_pairs(
    warehouse: Warehouse, source: str, basis: str, contents: list[str], vectors: np.ndarray, thresholds: ThresholdsConfig,
    threshold: float, vindex: VectorIndex | None = None,
) -> tuple[list[tuple[int, int, float]], SearchCount]:  # fmt: skip
    """Pairs (i < j, rows of `vectors`) where one is among the other's nearest neighbours (at most
    `max_candidates_per_image`) at or above `threshold`, from the source's kept lists."""
    from pipeline.features.neighbours import kept_lists

    need = thresholds.max_candidates_per_image + 1  # the photo itself comes first
    lists, count = kept_lists(warehouse, source, basis, contents, vectors, vectors[:, None], need, vindex)
    rows, sims = lists.first(need)
    return neighbour_pairs(rows[:, 0], sims[:, 0], threshold), count


def embedding_pairs(
    embeddings: Embeddings, vector_index: VectorIndex, warehouse: Warehouse, thresholds: ThresholdsConfig
) -> tuple[list[tuple[int, int, float]], SearchCount | None]:
    """Pairs (i < j, rows of `embeddings`) by the whole-picture embedding, at or above the embedder's candidate threshold."""
    if len(embeddings.content_sha256) < 2:
        return [], None
    return _kept_pairs(warehouse, f"embedding-{layout.embedder_slug(embeddings.embedder_id)}", embeddings.embedder_id,
                       embeddings.content_sha256, embeddings.vectors, thresholds,
                       thresholds.candidate[embedder_family(embeddings.embedder_id)], vector_index)  # fmt: skip


def face_window_pairs(
    contents: list[str], warehouse: Warehouse, thresholds: ThresholdsConfig
) -> tuple[list[tuple[int, int]], SearchCount | None]:
    """Pairs (i < j, positions in `contents`) whose face windows are among each other's nearest
    neighbours (at most `max_candidates_per_image`) at or above `face_window_candidate`."""
    from pipeline.features import face_signals

    windows = face_signals.face_windows(warehouse, contents)
    with_face = [i for i, content in enumerate(contents) if content in windows]
    if len(with_face) < 2:
        return [], None
    found, count = _kept_pairs(warehouse, "face-window", f"face_signals-v{face_signals.VERSION}", [contents[i] for i in with_face],
                               np.stack([windows[contents[i]] for i in with_face]), thresholds, thresholds.face_window_candidate)  # fmt: skip
    return [tuple(sorted((with_face[a], with_face[b]))) for a, b, _ in found], count


def region_candidate_pairs(
    contents: list[str], object_of: dict[str, str], warehouse: Warehouse, thresholds: ThresholdsConfig
) -> tuple[list[tuple[int, int]], int, SearchCount | None]:
    """Pairs (i < j, positions in `contents`) where one photo's whole picture matches a window of the
    other's (`thresholds.region_candidate`, at most `region_candidates_per_image` a photo), and how
    many photos' region views were computed now (the rest came from their cache)."""
    from pipeline.features import regions
    from pipeline.features.neighbours import kept_lists

    k = thresholds.region_candidates_per_image
    if k == 0:
        return [], 0, None
    all_views, n_computed = regions.cached_views(warehouse, contents, object_of)
    if len(contents) < 2:
        return [], n_computed, None
    lists, count = kept_lists(warehouse, "region-views", f"regions-v{regions.VERSION}", contents, all_views[:, 0], all_views[:, 1:], k + 1)
    found = regions.window_pairs(*lists.first(k + 1), thresholds.region_candidate, k)
    return [(i, j) for i, j, _ in found], n_computed, count


def _exact_groups(ok: pd.DataFrame) -> dict[str, str]:
    """content hash -> representative of its exact group (same bytes or same decoded pixels)."""
    # Vectorised: a groupby that makes a frame per group costs ~0.15 ms a group, seconds at 100,000 photos.
    distinct = ok[["pixel_sha256", "content_sha256"]].drop_duplicates()
    first = distinct.groupby("pixel_sha256")["content_sha256"].transform("min")
    return dict(zip(distinct["content_sha256"], first))


# Verification features of at most this many photos are held at once by one worker (~0.25 MB each:
# the grey picture and ORB keypoints of both views; ~64 MB a worker, whatever the CPU count). A
# miss costs a read from the scratch folder (the page cache), not a recomputation.
FEATURE_CACHE_PHOTOS = 256
# Seconds per photo (features) and per pair (verification) on the machines measured, for
# `process_map`'s choice between worker processes and this one: orders of magnitude, not tunings.
_SECONDS_PER_PHOTO, _SECONDS_PER_PAIR = 0.01, 0.005
_JOBS_PER_WORKER = 4  # so that one slow job does not leave the other workers idle


def cache_friendly_order(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs in an order that keeps each photo's pairs close together: the candidate graph's
    reverse Cuthill-McKee ordering, pairs taken as both their photos have come. Sorted by content hash
    instead, a photo's pairs are spread over the whole list, and once the photos outnumber
    `FEATURE_CACHE_PHOTOS` its features would be read again for most of its pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    if len(pairs) < 2:
        return list(pairs)
    photos = sorted({photo for pair in pairs for photo in pair})
    position = {photo: i for i, photo in enumerate(photos)}
    rows, cols = [position[a] for a, _ in pairs], [position[b] for _, b in pairs]
    graph = coo_matrix((np.ones(2 * len(pairs)), (rows + cols, cols + rows)), shape=(len(photos), len(photos))).tocsr()
    rank = np.empty(len(photos), np.int64)
    rank[reverse_cuthill_mckee(graph, symmetric_mode=True)] = np.arange(len(photos))
    return sorted(pairs, key=lambda pair: sorted((rank[position[pair[0]]], rank[position[pair[1]]]), reverse=True))


def _features_path(scratch: str, content: str) -> str:
    return f"{scratch}/{content}.pickle"


@dataclass(frozen=True)
class FeatureJob:
    """Photos whose verification features a worker computes into the run's scratch folder."""

    contents: list[str]
    warehouse: Warehouse
    object_of: dict[str, str]  # content hash -> raw object key
    faces: dict[str, tuple[int, int, int, int] | None]  # the faces stage's largest face, where it measured the photo
    scratch: str
    planes: dict[str, tuple[int, int]] = field(default_factory=dict)  # content hash -> its `plane_shape`, where known


def _photo_features(job: FeatureJob | VerifyJob, content: str, known: dict[str, np.ndarray] | None) -> tuple[Features, Features]:
    from pipeline.ingest.intake import load_rgb

    return features(load_rgb(job.warehouse.uri(job.object_of[content])), job.faces.get(content, "detect"), known)


def _kept_keypoints(warehouse: Warehouse, content: str) -> dict[str, np.ndarray] | None:
    from pipeline.features.verify import KEYPOINTS_VERSION, read_keypoints

    key = layout.keypoints_key(content, KEYPOINTS_VERSION)
    try:
        return read_keypoints(warehouse.read_bytes(key))
    except FileNotFoundError:
        return None


def compute_features(job: FeatureJob) -> tuple[int, int]:
    """Each photo's features into the scratch folder, its keypoints from the warehouse where an
    earlier run kept them (a night's candidates are mostly unchanged photos): (photos whose keypoints
    were found now, photos left undecoded). A photo whose kept keypoints fit its plane (`planes`) is
    not decoded here: its keypoints alone go to the scratch folder (`keypoint_views`), and its plane
    is made by the verification of a pair that aligns (`verify_job`); most of a night's do not."""
    from pipeline.features.verify import KEYPOINTS_VERSION, keypoint_bytes, keypoint_views, keypoints_fit, save_features

    found_now = undecoded = 0
    for content in job.contents:
        known = _kept_keypoints(job.warehouse, content)
        if content in job.planes and keypoints_fit(known, job.planes[content]):
            save_features(_features_path(job.scratch, content), keypoint_views(known))
            undecoded += 1
            continue
        views = _photo_features(job, content, known)
        if not keypoints_fit(known, views[0].grey.shape):  # none kept, unreadable or of another plane: found now
            job.warehouse.write_bytes(layout.keypoints_key(content, KEYPOINTS_VERSION), keypoint_bytes(views))
            found_now += 1
        save_features(_features_path(job.scratch, content), views)
    return found_now, undecoded


@dataclass(frozen=True)
class VerifyJob:
    """Consecutive pairs of the cache-friendly order, whose photos' features are in `scratch`; where
    those are keypoints alone, the photos' planes are made from the warehouse when a pair needs them."""

    pairs: list[tuple[str, str]]
    scratch: str
    params: VerifyParams
    warehouse: Warehouse
    object_of: dict[str, str]  # of the job's photos
    faces: dict[str, tuple[int, int, int, int] | None]


def verify_job(job: VerifyJob) -> tuple[list[Verdict], int]:
    """The verdicts of a job's pairs, in order, and how many photos it decoded (each once per job)."""
    from functools import lru_cache

    from pipeline.features.verify import has_plane, load_features

    stored = lru_cache(maxsize=FEATURE_CACHE_PHOTOS)(lambda content: load_features(_features_path(job.scratch, content)))
    decoded = lru_cache(maxsize=FEATURE_CACHE_PHOTOS)(
        lambda content: _photo_features(job, content, _kept_keypoints(job.warehouse, content))
    )

    def full(content: str) -> tuple[Features, Features]:
        return stored(content) if has_plane(stored(content)) else decoded(content)

    verdicts = []
    for a, b in job.pairs:
        views_a, views_b = stored(a), stored(b)
        with_planes = None if has_plane(views_a) and has_plane(views_b) else lambda a=a, b=b: (full(a), full(b))
        verdicts.append(verify(views_a, views_b, job.params, with_planes))
    return verdicts, decoded.cache_info().misses


_SCRATCH_PREFIX = "homog-verify-"
# Memory-backed folders the scratch goes to first, where they have room (Linux's shared-memory tmpfs).
MEMORY_FOLDERS: tuple[str, ...] = ("/dev/shm",)
# What one photo's features take in the scratch folder, at most (~0.2 MB measured: a 400 px grey
# plane and both views' keypoints), for the room a run needs there.
_SCRATCH_BYTES_PER_PHOTO = 300_000


def scratch_parent(n_photos: int) -> str:
    """Where verification's scratch folder goes: the first memory-backed folder with room for twice
    the features of `n_photos` photos (more than it ever holds at once), where the machine also has
    that much memory available, else the temporary folder. Written and read back from memory, a
    night's ~8,000 features cost about half what they do on a virtual machine's disk (measured at
    20,000 photos), and the grey copies of photos never reach a disk. What sits there is memory
    that no process's RSS counts: at 20,000 photos cold, up to ~16,000 photos' features (~3 GB)
    at once. A memory folder is its own size limit (a tmpfs takes half the machine's memory by
    default, a container's 64 MB), so a run too large for it writes to the disk instead of failing."""
    import shutil
    import tempfile

    needed = 2 * n_photos * _SCRATCH_BYTES_PER_PHOTO
    if needed <= _available_memory():
        for folder in MEMORY_FOLDERS:
            try:
                if os.access(folder, os.W_OK) and shutil.disk_usage(folder).free >= needed:
                    return folder
            except OSError:  # gone, or not a folder: the next place
                continue
    return tempfile.gettempdir()


def _available_memory() -> int:
    """Bytes of memory the machine can give without swapping (psutil's estimate)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _sweep_abandoned_scratch() -> None:
    """Delete verification scratch folders whose process is gone (killed before its `finally` ran):
    they hold grey copies of photos, which must not outlive the run that made them."""
    import tempfile

    from pipeline.parallel import remove_abandoned

    remove_abandoned((*MEMORY_FOLDERS, tempfile.gettempdir()), (_SCRATCH_PREFIX,))


# Pairs verified per block: the scratch folder holds the features of one block's photos (and those a
# later block still needs), ~0.25 MB each, whatever the population; a block is minutes of work.
_BLOCK_PAIRS = 20_000


def verify_pairs(
    pairs: list[tuple[str, str]],
    warehouse: Warehouse,
    object_of: dict[str, str],
    faces: dict,
    params: VerifyParams,
    workers: int,
    verified: Callable[[list[tuple[str, str]], list[Verdict]], None],
    sizes: dict[str, tuple[int, int]] | None = None,
) -> int:
    """Verify content pairs in `workers` processes (pipeline/parallel.py), handing each job's pairs
    and verdicts to `verified` as soon as they are known (what caches them as the work goes; nothing
    is held here: 1.4 million verdicts at 100,000 photos), and return for how many photos ORB
    keypoints were found now (the rest were kept by earlier runs). `sizes`: content hash -> (width,
    height) as the images table has them, where known: a photo with kept keypoints is then decoded
    only for a pair that aligns (`compute_features`).

    Pairs go in the cache-friendly order, in blocks, each in two steps: the features of the block's
    photos not yet at hand, once each, into a scratch folder on this machine (in memory where there
    is room: `scratch_parent`; ~0.2 MB a photo), then the block's pairs, in jobs that read the
    features they need from there. A photo's features leave the scratch folder after its last pair, and the
    folder goes at the end (or, where this process was killed first, at the next verification).
    Cutting the pairs alone into jobs would compute a photo's features again in every job with one
    of its pairs: 2.7x as often with 8 jobs on 414 photos."""
    import shutil
    import tempfile

    from pipeline.parallel import process_imap, process_map, split

    ordered = cache_friendly_order(pairs)
    last_use = {photo: position for position, pair in enumerate(ordered) for photo in pair}
    _sweep_abandoned_scratch()
    scratch = tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=scratch_parent(len(last_use)))
    at_hand: set[str] = set()
    n_photos = n_keypoints = n_undecoded = n_decoded_later = 0
    feature_seconds = pair_seconds = 0.0
    planes = {content: plane_shape(*size) for content, size in (sizes or {}).items()}
    try:
        for start in range(0, len(ordered), _BLOCK_PAIRS):
            block = ordered[start : start + _BLOCK_PAIRS]
            photos = sorted({photo for pair in block for photo in pair} - at_hand)
            began = time.perf_counter()
            feature_jobs = [FeatureJob(chunk, warehouse, *_photos_of(chunk, object_of, faces), scratch, {c: planes[c] for c in chunk if c in planes})
                            for chunk in split(photos, _JOBS_PER_WORKER * workers)]  # fmt: skip
            for found_now, undecoded in process_map(compute_features, feature_jobs, workers, _SECONDS_PER_PHOTO * len(photos)):
                n_keypoints, n_undecoded = n_keypoints + found_now, n_undecoded + undecoded
            featured = time.perf_counter()
            jobs = [VerifyJob(chunk, scratch, params, warehouse, *_photos_of({photo for pair in chunk for photo in pair}, object_of, faces))
                    for chunk in split(block, _JOBS_PER_WORKER * workers)]  # fmt: skip
            for job, (verdicts, decoded) in zip(jobs, process_imap(verify_job, jobs, workers, _SECONDS_PER_PAIR * len(block))):
                n_decoded_later += decoded
                verified(job.pairs, verdicts)
            feature_seconds, pair_seconds = feature_seconds + featured - began, pair_seconds + time.perf_counter() - featured
            n_photos += len(photos)
            at_hand |= set(photos)
            for photo in [photo for photo in at_hand if last_use[photo] < start + len(block)]:
                os.unlink(_features_path(scratch, photo))
                at_hand.discard(photo)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if pairs:
        logger.info("verification: features of %d photo(s) in %.1f s (keypoints found now for %d, kept for the rest; keypoints alone "
                    "for %d, decoded later %d time(s) for a pair that aligned), %d pair(s) in %.1f s, %d worker(s)", n_photos, feature_seconds,
                    n_keypoints, n_undecoded, n_decoded_later, len(pairs), pair_seconds, workers)  # fmt: skip
    return n_keypoints


def _photos_of(
    contents: Iterable[str], object_of: dict[str, str], faces: dict
) -> tuple[dict[str, str], dict[str, tuple[int, int, int, int] | None]]:
    """The objects and faces of these photos: what a worker needs to decode them."""
    return {c: object_of[c] for c in contents}, {c: faces[c] for c in contents if c in faces}


def verified_content_pairs(
    candidates: list[tuple[int, int, float]],
    embeddings: Embeddings,
    object_of: dict[str, str],
    warehouse: Warehouse,
    params: VerifyParams,
    faces: dict[str, tuple[int, int, int, int] | None],
    workers: int = 1,
    sizes: dict[str, tuple[int, int]] | None = None,
) -> tuple[list[tuple[str, str, float]], int, int]:
    """The candidate pairs (rows of the index) that verify as the same photograph, how many content
    pairs were verified now (the rest came from the cache) and for how many photos ORB keypoints
    were found now (`verify_pairs`). `faces`: the faces stage's
    largest face per content (`face_signals.largest_faces`); photos it did not measure are detected here.
    `workers`: processes to verify in (pipeline/parallel.py). `sizes`: as `verify_pairs` takes them.

    Verdicts are cached in the warehouse per (content pair, verification parameters): a nightly
    rerun over unchanged pages verifies nothing again, and changed thresholds start a fresh cache.
    Verdicts are cached as they come back from the workers (a job's pairs at a time): a run killed
    half-way through a long verification keeps what it verified.
    """
    import pyarrow as pa

    folder = layout.verifications_folder(params.cache_id)
    pairs = _PairKeys(embeddings.content_sha256)
    wanted = pairs.of_rows(np.array([c[0] for c in candidates], np.int64), np.array([c[1] for c in candidates], np.int64))
    known_keys, known_same = [np.zeros(0, np.int64)], [np.zeros(0, bool)]
    for table in warehouse.read_shards(folder, columns=["content_a", "content_b", "same_photo"]):
        keys = pairs.of_contents(table.column("content_a"), table.column("content_b"))
        known_keys.append(keys[keys >= 0])  # a verdict of a photo this run does not show is not held
        known_same.append(table.column("same_photo").to_numpy(zero_copy_only=False)[keys >= 0])
    todo = pairs.contents(np.setdiff1d(wanted, np.concatenate(known_keys)))  # sorted, as the content pairs sort
    with warehouse.checkpoints(folder) as write:

        def cache(done: list[tuple[str, str]], verdicts: list[Verdict]) -> None:
            table = pa.table({
                "content_a": [a for a, _ in done], "content_b": [b for _, b in done],
                "same_photo": [v.same_photo for v in verdicts], "inlier_ratio": [v.inlier_ratio for v in verdicts],
                "block_correlation": [v.block_correlation for v in verdicts],
                "face_correlation": pa.array([v.face_correlation for v in verdicts], pa.float64()),
            })  # fmt: skip
            write([f"{a}:{b}" for a, b in done], table)
            known_keys.append(pairs.of_contents(table.column("content_a"), table.column("content_b")))
            known_same.append(table.column("same_photo").to_numpy(zero_copy_only=False))

        n_keypoints = verify_pairs(todo, warehouse, object_of, faces, params, workers, cache, sizes)
    logger.info("verification: %d candidate pair(s), %d from the cache", len(candidates), len(candidates) - len(todo))
    accepted = np.flatnonzero(pairs.same_photo(wanted, np.concatenate(known_keys), np.concatenate(known_same)))
    return [(*pair, candidates[i][2]) for i, pair in zip(accepted, pairs.contents(wanted[accepted]))], len(todo), n_keypoints


class _PairKeys:
    """The content pairs of one run's photos as integers, so that a verdict cache of millions of pairs
    is held as arrays rather than as a dict of string tuples (247 MB for the 340,000 verdicts of five
    nights at 20,000 photos): a content's rank among the run's sorted content hashes, and a pair as
    lower rank x n + higher rank. Keys sort as the canonical content pairs (a < b) do."""

    def __init__(self, contents: Sequence[str]) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        self.names = sorted(set(contents))
        self._sorted = pa.array(self.names, pa.string())
        self._rank_of_row = (
            pc.index_in(pa.array(list(contents), pa.string()), value_set=self._sorted).to_numpy(zero_copy_only=False).astype(np.int64)
        )

    def of_rows(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        """Keys of pairs given as rows of the run's content list."""
        return self._key(self._rank_of_row[rows_a], self._rank_of_row[rows_b])

    def of_contents(self, a, b) -> np.ndarray:  # noqa: ANN001 - pyarrow string arrays
        """Keys of pairs given as content hashes (pyarrow columns); -1 where a photo is not the run's."""
        import pyarrow.compute as pc

        rank_a, rank_b = (
            pc.index_in(column, value_set=self._sorted).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) for column in (a, b)
        )
        return np.where((rank_a < 0) | (rank_b < 0), -1, self._key(rank_a, rank_b))

    def contents(self, keys: np.ndarray) -> list[tuple[str, str]]:
        """The canonical content pairs (a < b) of keys."""
        n = len(self.names)
        return [(self.names[key // n], self.names[key % n]) for key in keys.tolist()]

    def same_photo(self, wanted: np.ndarray, keys: np.ndarray, same: np.ndarray) -> np.ndarray:
        """Each wanted pair's verdict among (keys, same) (a pair listed twice has one verdict)."""
        order = np.argsort(keys, kind="stable")
        keys, same = keys[order], same[order]
        at = np.minimum(np.searchsorted(keys, wanted), max(0, len(keys) - 1))
        if len(wanted) and (not len(keys) or not np.array_equal(keys[at], wanted)):
            raise RuntimeError("a candidate pair has no verdict: the verdict cache changed while the run read it")
        return same[at] if len(wanted) else np.zeros(0, bool)

    def _key(self, rank_a: np.ndarray, rank_b: np.ndarray) -> np.ndarray:
        return np.minimum(rank_a, rank_b) * len(self.names) + np.maximum(rank_a, rank_b)


def duplicate_groups(
    nodes: list[str], links: set[tuple[str, str]], similarity: Callable[[str, str], float], guard: float
) -> list[list[str]]:
    """Groups of `nodes` (exact-copy representatives) joined by verified `links`, anchored so that no
    chain of small steps joins unrelated photos (module docstring). Deterministic: anchors by degree,
    then by the smallest hash; groups of one are dropped."""
    neighbours: dict[str, set[str]] = {node: set() for node in nodes}
    for a, b in links:
        neighbours[a].add(b)
        neighbours[b].add(a)
    remaining = {node for node in nodes if neighbours[node]}
    groups: list[list[str]] = []
    while remaining:
        anchor = min(remaining, key=lambda node: (-len(neighbours[node] & remaining), node))
        members = {anchor} | (neighbours[anchor] & remaining)
        two_steps = set().union(*(neighbours[m] & remaining for m in members)) - members
        members |= {node for node in two_steps if similarity(node, anchor) >= guard}
        remaining -= members
        if len(members) > 1:
            groups.append([anchor, *sorted(members - {anchor})])
    return groups


def _row_pair(first: dict, second: dict, similarity: float, kind: str, link: str, group_id: int) -> dict:
    first, second = sorted((first, second), key=lambda r: (r["company"], r["image"]))
    return {"image_a": first["image"], "image_b": second["image"], "company_a": first["company"], "company_b": second["company"],
            "similarity": similarity, "kind": kind, "link": link, "group_id": group_id}  # fmt: skip


def group_tables(
    ok: pd.DataFrame,
    representative: dict[str, str],
    near: list[tuple[str, str, float]],
    similarity: Callable[[str, str], float],
    guard: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `pairs` and `groups` tables: duplicate groups over exact copies and verified pairs."""
    verified = {tuple(sorted((representative[a], representative[b]))): s for a, b, s in near}
    verified = {pair: s for pair, s in verified.items() if pair[0] != pair[1]}
    nodes = sorted(set(representative.values()))
    groups = duplicate_groups(nodes, set(verified), similarity, guard)
    # One pass over the rows (a groupby with a frame per group costs ~2 ms a group: seconds a night at scale).
    exact_rows: dict[str, list[dict]] = {}
    for row in ok.to_dict("records"):
        exact_rows.setdefault(representative[row["content_sha256"]], []).append(row)
    # Exact copies of one photograph with no edited copy are groups too.
    grouped = {node for group in groups for node in group}
    groups += [[rep] for rep in nodes if rep not in grouped and len(exact_rows[rep]) > 1]
    groups.sort(key=lambda group: (-sum(len(exact_rows[n]) for n in group), group[0]))

    pairs: list[dict] = []
    members: list[dict] = []
    for group_id, group in enumerate(groups):
        size = sum(len(exact_rows[node]) for node in group)
        for position, node in enumerate(group):
            rows = exact_rows[node]
            members += [{"image": r["image"], "company": r["company"], "group_id": group_id, "group_size": size, "anchor": position == 0}
                        for r in rows]  # fmt: skip
            pairs += [
                _row_pair(rows[x], rows[y], 1.0, "exact", "direct", group_id) for x in range(len(rows)) for y in range(x + 1, len(rows))
            ]
            for other in group[position + 1 :]:
                key = (node, other) if node < other else (other, node)
                link = "direct" if key in verified else "implied"
                score = round(float(verified[key] if key in verified else similarity(node, other)), 6)
                pairs += [_row_pair(a, b, score, "near_duplicate", link, group_id) for a in rows for b in exact_rows[other]]
    pair_frame = pd.DataFrame(pairs, columns=PAIR_COLUMNS).sort_values(["company_a", "image_a", "company_b", "image_b"], ignore_index=True)
    group_frame = pd.DataFrame(members, columns=GROUP_COLUMNS)
    group_frame = group_frame.sort_values(["group_id", "company", "image"], ignore_index=True)
    return pair_frame, group_frame


# ------------------------------------------------------------------- clusters
def style_clusters(ok: pd.DataFrame, embeddings: Embeddings, edges: Iterable[tuple[str, str]], all_rows: pd.DataFrame) -> pd.DataFrame:
    """Connected components over contents; rows of a component with >= 2 rows share a cluster id."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    position = {content: i for i, content in enumerate(embeddings.content_sha256)}
    pairs = [(position[a], position[b]) for a, b in edges if a in position and b in position]
    n = len(position)
    rows = [p[0] for p in pairs]
    cols = [p[1] for p in pairs]
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    row_component = ok["content_sha256"].map(lambda c: int(component[position[c]]))
    sizes = row_component.value_counts()
    big = sizes[sizes >= 2]
    # Deterministic ids: biggest first, ties by the smallest content hash in the component.
    first_content = ok["content_sha256"].groupby(row_component.to_numpy()).min()  # one pass, not a mask per cluster
    ordered = sorted(big.index, key=lambda comp: (-big[comp], first_content[comp]))
    cluster_of = {comp: cluster_id for cluster_id, comp in enumerate(ordered)}
    clusters = all_rows[["image", "company"]].copy()
    clusters["cluster_id"] = -1
    clusters.loc[ok.index, "cluster_id"] = [cluster_of.get(comp, -1) for comp in row_component]
    return clusters[CLUSTER_COLUMNS].reset_index(drop=True)


@dataclass
class NearDuplicates:
    pairs: pd.DataFrame  # every pair of rows within a duplicate group
    groups: pd.DataFrame  # every row that belongs to a duplicate group
    clusters: pd.DataFrame
    reuse: pd.DataFrame  # the pairs across companies
    n_candidates: int
    n_verified: int
    n_verifications_computed: int  # candidate content pairs verified by this run (not from the cache)
    candidates_by_source: dict[str, int]  # how candidates were found, before exact copies are set aside: each pair under its first source
    n_region_views_computed: int  # photos whose region views this run computed (not from the cache)
    n_keypoints_computed: int  # photos whose verification keypoints this run found (not kept from an earlier run)
    candidate_search: dict[str, SearchCount]  # per candidate source: what its kept neighbour lists needed searched


def find_near_duplicates(
    images: pd.DataFrame,
    embeddings: Embeddings,
    vector_index: VectorIndex,
    warehouse: Warehouse,
    thresholds: ThresholdsConfig,
    face_score_floor: float = 0.9,
    workers: int = 1,
) -> NearDuplicates:
    """Exact and verified near-duplicate pairs, style clusters and cross-company reuse of a run.
    Verification takes each photo's face from the faces stage (found at `face_score_floor`) and runs
    in `workers` processes."""
    from pipeline.features.face_signals import largest_faces

    family = embedder_family(embeddings.embedder_id)
    candidate_threshold = thresholds.candidate[family]
    style_threshold = max(thresholds.style[family], candidate_threshold)
    ok = images[images["status"] == "ok"]
    representative = _exact_groups(ok)
    object_of = dict(zip(ok["content_sha256"], ok["raw_object"]))

    position = {content: i for i, content in enumerate(embeddings.content_sha256)}

    def cosine(i: int, j: int) -> float:
        return float(embeddings.vectors[i].astype(np.float32) @ embeddings.vectors[j].astype(np.float32))

    def similarity(a: str, b: str) -> float:
        return cosine(position[a], position[b])

    found, by_embedding_search = embedding_pairs(embeddings, vector_index, warehouse, thresholds)
    by_embedding = {(i, j) for i, j, _ in found}
    face_found, by_face_search = face_window_pairs(embeddings.content_sha256, warehouse, thresholds)
    by_face = [(i, j, cosine(i, j)) for i, j in face_found if (i, j) not in by_embedding]
    seen = by_embedding | {(i, j) for i, j, _ in by_face}
    region_found, n_region_views, by_region_search = region_candidate_pairs(embeddings.content_sha256, object_of, warehouse, thresholds)
    by_region = [(i, j, cosine(i, j)) for i, j in region_found if (i, j) not in seen]
    searches = {"embedding": by_embedding_search, "face_window": by_face_search, "region_views": by_region_search}
    searches = {source: count for source, count in searches.items() if count is not None}
    logger.info("candidate search: %s", "; ".join(f"{source}: {count.describe()}" for source, count in searches.items()))
    candidates = [
        (i, j, s) for i, j, s in found + by_face + by_region
        if representative[embeddings.content_sha256[i]] != representative[embeddings.content_sha256[j]]
    ]  # fmt: skip
    logger.info(
        "near-duplicate candidates: %d by the embedding, %d more by the face window, %d more by region views",
        len(found),
        len(by_face),
        len(by_region),
    )
    params, faces = VerifyParams.from_thresholds(thresholds), largest_faces(warehouse, face_score_floor)
    # A photo's size gives its plane's, so verification can leave photos with kept keypoints undecoded.
    sized = ok.dropna(subset=["width", "height"]) if {"width", "height"} <= set(ok) else ok.iloc[:0]
    sizes = dict(zip(sized["content_sha256"], zip(sized["width"].astype(int), sized["height"].astype(int))))
    near, n_computed, n_keypoints = verified_content_pairs(candidates, embeddings, object_of, warehouse, params, faces, workers, sizes)
    logger.info("near-duplicates: %d candidate pair(s) at >= %.2f, %d verified", len(candidates), candidate_threshold, len(near))

    pairs, groups = group_tables(ok, representative, near, similarity, candidate_threshold)
    edges = [(a, b) for a, b, _ in near]
    edges += [(embeddings.content_sha256[i], embeddings.content_sha256[j]) for i, j, s in candidates if s >= style_threshold]
    edges += [(content, rep) for content, rep in representative.items() if content != rep]
    clusters = style_clusters(ok, embeddings, edges, images)
    reuse = pairs[pairs["company_a"] != pairs["company_b"]].reset_index(drop=True)
    by_source = {"embedding": len(found), "face_window": len(by_face), "region_views": len(by_region)}
    return NearDuplicates(
        pairs, groups, clusters, reuse, len(candidates), len(near), n_computed, by_source, n_region_views, n_keypoints, searches
    )

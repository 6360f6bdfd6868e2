"""Region views: near-duplicate candidates for crops and framed copies.

A crop of up to 30% of each side, or a copy with a border, moves the whole-picture embedding (every
spatial block shifts) and, where the crop cuts through the face or no face was found, the face
window too. But a crop is what a window inside the original shows, and an original is what a
window inside its bordered copy shows. So each photo gets small descriptors of ten views: the whole
picture and nine windows of 80% of each side (anchored at the start, middle and end of each axis),
and a pair becomes a candidate where one photo's whole view is among the nearest neighbours of one
of the other's windows. Verification (pipeline/features/verify.py) then decides, as for every
candidate: the views only decide which pairs are worth verifying.

The descriptor is the classic embedder's layout (low-frequency DCT of the contrast-stretched
luminance, mirror-invariant) and its chroma grid, at 127 dimensions: ten views cost about 5 ms a
photo, and the search over them is a tenth of the whole-picture embedding's per vector. It is as
coarse as the classic embedding's own layout block (an 8x8 DCT of 32x32 pixels, nothing a face can
be recognised from), and is cached by content hash like the embeddings
(`layout.regions_folder(VERSION)`). docs/methodology.md has what they find on bench.neardup_eval's set.

Change the computation, change `VERSION`: cached views are keyed by it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image

from pipeline import layout
from pipeline.warehouse import Warehouse

logger = logging.getLogger(__name__)

VERSION = 1
WINDOW_SHARE = 0.8  # of each side: a window of 80% matches crops that keep 70-90% of a side
ANCHORS = (0.0, 0.5, 1.0)  # where a window sits along each axis: start, middle, end
N_VIEWS = 1 + len(ANCHORS) ** 2  # the whole picture, then the windows
_WORKING_SIDE = 128  # views are cut from the picture at this long side (the descriptor reads 32 px)
_LUMA_SIDE = 32
_CHROMA_SIDE = 16
_CHROMA_WEIGHT = 0.6  # the chroma grid's length against the layout's (1): layout decides, colour helps


def describe_view(rgb: Image.Image) -> np.ndarray:
    """One view's descriptor (L2-normalised float32)."""
    from pipeline.features.embedders.classic import chroma_grid, layout_coefficients, scaled_chroma, stretch_contrast, unit_length

    luma = stretch_contrast(np.asarray(rgb.convert("L").resize((_LUMA_SIDE, _LUMA_SIDE), Image.Resampling.BILINEAR)))
    chroma = chroma_grid(np.asarray(rgb.resize((_CHROMA_SIDE, _CHROMA_SIDE), Image.Resampling.BILINEAR), float) / 255.0)
    return unit_length(np.concatenate([unit_length(layout_coefficients(luma)), _CHROMA_WEIGHT * scaled_chroma(chroma)])).astype(np.float32)


def windows(picture: Image.Image) -> list[Image.Image]:
    """The whole picture, then the windows of `WINDOW_SHARE` of each side at every pair of anchors."""
    width, height = picture.size
    spare_x, spare_y = width * (1 - WINDOW_SHARE), height * (1 - WINDOW_SHARE)
    boxes = [
        (round(spare_x * ax), round(spare_y * ay), round(spare_x * ax + width * WINDOW_SHARE), round(spare_y * ay + height * WINDOW_SHARE))
        for ay in ANCHORS
        for ax in ANCHORS
    ]
    return [picture, *(picture.crop(box) for box in boxes)]


def views(rgb: Image.Image) -> np.ndarray:
    """(N_VIEWS, DIM) descriptors of one picture: row 0 the whole picture, then the windows. An
    editor's solid border is trimmed first (as the classic embedder does)."""
    from pipeline.features.embedders.classic import trim_solid_border
    from pipeline.features.faces import downscaled

    picture = downscaled(trim_solid_border(rgb.convert("RGB")), _WORKING_SIDE)
    return np.stack([describe_view(view) for view in windows(picture)])


DIM = int(views(Image.new("RGB", (8, 8), (128, 128, 128))).shape[1])


def cached_views(warehouse: Warehouse, contents: Sequence[str], object_of: dict[str, str], workers: int = 2) -> tuple[np.ndarray, int]:
    """(len(contents), N_VIEWS, DIM) float16 views of `contents`, in that order, and how many were
    computed now: views are cached by content hash, so a night computes only new photos'.
    `object_of`: content hash -> its picture's object key in the warehouse."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    from pipeline.ingest.intake import load_rgb
    from pipeline.parallel import chunked
    from pipeline.warehouse import CHECKPOINT_PHOTOS

    folder = layout.regions_folder(VERSION)
    wanted, known = set(contents), {}
    for table in warehouse.read_shards(folder):
        flat = np.asarray(table.column("views").combine_chunks().flatten(), np.float16).reshape(table.num_rows, N_VIEWS, DIM)
        for row, content in enumerate(table.column("content_sha256").to_pylist()):
            if content in wanted:
                known[content] = flat[row]
    todo = sorted(wanted - known.keys())
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="regions") as pool, warehouse.checkpoints(folder) as write:
        for chunk in chunked(todo, CHECKPOINT_PHOTOS):
            computed = list(pool.map(lambda content: views(load_rgb(warehouse.uri(object_of[content]))).astype(np.float16), chunk))
            write(chunk, pa.table({
                "content_sha256": pa.array(chunk, pa.string()),
                "views": pa.FixedSizeListArray.from_arrays(pa.array(np.stack(computed).ravel()), N_VIEWS * DIM),
            }))  # fmt: skip
            known.update(zip(chunk, computed))
    logger.info("region views: %d photo(s), %d computed now", len(contents), len(todo))
    stacked = np.stack([known[content] for content in contents]) if len(contents) else np.zeros((0, N_VIEWS, DIM), np.float16)
    return stacked, len(todo)


def region_pairs(all_views: np.ndarray, threshold: float, k: int, warehouse: Warehouse | None = None) -> list[tuple[int, int, float]]:
    """`window_pairs` of a fresh search of every photo's windows against every photo's whole view
    (a night keeps the lists instead: pipeline/features/neighbours.py)."""
    from pipeline.features.index import choose_kind
    from pipeline.features.neighbours import search_lists

    n = len(all_views)
    if n < 2:
        return []
    lists = search_lists([str(i) for i in range(n)], all_views[:, 0], all_views[:, 1:], k + 1, choose_kind(n, DIM, warehouse)[0])  # type: ignore[arg-type]
    return window_pairs(lists.rows, lists.sims, threshold, k)


def window_pairs(rows: np.ndarray, sims: np.ndarray, threshold: float, k: int) -> list[tuple[int, int, float]]:
    """Unordered pairs (i < j), each once, where photo j's whole view is among the `k` + 1 nearest
    whole views to any of photo i's windows (`rows[i]`, `sims[i]`: (windows, at least k + 1), best
    first, -1 for none) and not i's own, at or above `threshold`; the similarity is the best
    window's. At most k pairs per photo: the windows of a uniform page cannot flood verification."""
    n, n_windows = rows.shape[:2]
    rows, sims = rows[:, :, : k + 1], sims[:, :, : k + 1]
    query = np.repeat(np.arange(n), n_windows * rows.shape[2])
    rows, sims = rows.ravel().astype(np.int64), sims.ravel()
    keep = (rows >= 0) & (rows != query) & (sims >= threshold)
    query, rows, sims = _best_of_each(query[keep], rows[keep], sims[keep])  # each neighbour at its best window
    order = np.lexsort((-sims, query))
    query, rows, sims = query[order], rows[order], sims[order]
    keep = np.arange(len(query)) - np.searchsorted(query, query, side="left") < k  # a photo's k best neighbours
    # A pair found from both sides keeps its better similarity.
    low, high, sims = _best_of_each(np.minimum(query[keep], rows[keep]), np.maximum(query[keep], rows[keep]), sims[keep])
    return [(int(a), int(b), float(s)) for a, b, s in zip(low, high, sims)]


def _best_of_each(first: np.ndarray, second: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each (first, second) key once, with its highest similarity; sorted by the keys."""
    order = np.lexsort((-sims, second, first))
    first, second, sims = first[order], second[order], sims[order]
    new = np.ones(len(first), bool)
    new[1:] = (first[1:] != first[:-1]) | (second[1:] != second[:-1])
    return first[new], second[new], sims[new]

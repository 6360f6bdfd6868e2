"""The report's map: the run's photos on one fixed 2-d layout per embedder.

The layout is fitted by UMAP on the first run that has enough photos (on a seeded sample of
`MAX_FIT_PHOTOS` where it has more) and stored as plain arrays (the fitted photos' vectors and their
places, `pipeline.layout.projection_file`, read without pickle).
Later runs place each photo at the similarity-weighted mean place of its nearest fitted photos (how
UMAP's own transform starts), so the maps of different runs can be laid side by side. A photo's place
depends on it and the map alone, so a run keeps the places of the last run's photos
(`layout.projection_places_file`) and places only its new ones: at 20,000 photos, searching every
photo's nearest fitted photos was ~4 s of every night's report.
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np

from pipeline import layout
from pipeline.ingest.text import printable
from pipeline.report.data import RunData
from pipeline.report.plots import figure_and_axes, png
from pipeline.warehouse import Warehouse

logger = logging.getLogger(__name__)

MIN_MAP_POINTS = 10  # UMAP needs a neighbourhood; fewer photos get no map, with a note
NEIGHBOURS = 15  # fitted photos a new photo is placed among


@dataclass(frozen=True)
class Projection:
    fitted_on: str
    keys: list[str]  # content hashes of the fitted photos
    vectors: np.ndarray  # their unit vectors (float32)
    points: np.ndarray  # their places on the map

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, fitted_on=np.array(self.fitted_on), keys=np.array(self.keys), vectors=self.vectors, points=self.points)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Projection:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            return cls(str(stored["fitted_on"]), [str(k) for k in stored["keys"]], stored["vectors"], stored["points"])

    @functools.cached_property
    def id(self) -> str:
        """Equal ids, equal maps: what kept places are valid for."""
        import hashlib

        digest = hashlib.sha256(self.fitted_on.encode() + "\n".join(self.keys).encode())
        digest.update(np.ascontiguousarray(self.vectors, np.float32).tobytes() + np.ascontiguousarray(self.points, np.float64).tobytes())
        return digest.hexdigest()[:32]

    def place(self, vectors: np.ndarray) -> np.ndarray:
        """Each photo at the similarity-weighted mean place of its nearest fitted photos."""
        import faiss

        from pipeline.features.index import chunks

        index = faiss.IndexFlatIP(self.vectors.shape[1])
        index.add(np.ascontiguousarray(self.vectors, np.float32))
        k = min(NEIGHBOURS, len(self.keys))
        places = []
        for _, chunk in chunks(vectors):
            similarity, rows = index.search(chunk, k)
            weights = np.clip(similarity, 0.0, None) + 1e-6
            places.append((weights[..., None] * self.points[rows]).sum(axis=1) / weights.sum(axis=1, keepdims=True))
        return np.concatenate(places) if places else np.zeros((0, 2))


def placed(store: Warehouse, projection: Projection, embedder_id: str, keys: list[str], vectors: np.ndarray) -> np.ndarray:
    """The places of these photos (content hashes, their vectors) on `projection`: the last run's
    where it placed the photo on this same map, the others placed now; then these become the kept
    places (so a photo that left the run leaves them)."""
    key = layout.projection_places_file(embedder_id)
    kept: dict[str, np.ndarray] = {}
    try:
        with np.load(io.BytesIO(store.read_bytes(key)), allow_pickle=False) as stored:
            if str(stored["projection"]) == projection.id:
                kept = dict(zip((str(k) for k in stored["keys"]), np.asarray(stored["points"], np.float64)))
    except FileNotFoundError:
        pass
    except (ValueError, OSError, KeyError) as exc:  # not ours, cut short, or object arrays (refused unread): placed anew
        logger.warning("report: the kept map places %s are unreadable (%s); placing every photo", store.uri(key), exc)
    points = np.zeros((len(keys), 2))
    todo = [row for row, content in enumerate(keys) if content not in kept]
    for row, content in enumerate(keys):
        if content in kept:
            points[row] = kept[content]
    if todo:
        points[todo] = projection.place(np.ascontiguousarray(vectors[todo], np.float32))
    buffer = io.BytesIO()
    np.savez(buffer, projection=np.array(projection.id), keys=np.array(keys, dtype=str), points=points)
    store.write_bytes(key, buffer.getvalue())
    return points


# UMAP is fitted on at most this many photos (a seeded sample), the rest placed on it: its cost and
# memory grow faster than linearly with the photos, and a map of 100,000 points shows no more.
MAX_FIT_PHOTOS = 5000


def fit_projection(data: RunData) -> Projection:
    import umap

    rows = np.arange(len(data.keys))
    if len(rows) > MAX_FIT_PHOTOS:
        rows = np.sort(np.random.default_rng(0).choice(rows, MAX_FIT_PHOTOS, replace=False))
    vectors = np.ascontiguousarray(data.vectors[rows], np.float32)
    neighbours = min(15, len(rows) - 1)
    _compile_once()
    model = umap.UMAP(
        n_neighbors=neighbours, metric="cosine", random_state=0, n_epochs=200, precomputed_knn=cosine_knn(vectors, neighbours)
    )
    with warnings.catch_warnings():
        # Neither is news: the seed makes UMAP single-threaded, and the map places later photos
        # itself (Projection.place), never with UMAP's transform, which needs UMAP's own search index.
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        points = model.fit_transform(vectors)
    return Projection(data.run_date, [data.keys[r] for r in rows], vectors, np.asarray(points, np.float64))


def cosine_knn(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosine distances) of each unit vector's k nearest, itself first, as UMAP's own search
    gives them: FAISS's exact search instead, because UMAP's compiles a parallel numba argsort on
    every fitting run (~6 s of the run, on any number of photos)."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    similarity, rows = index.search(vectors, k + 1)
    # Itself first, then its k - 1 nearest others: where another photo has the very same vector, the
    # search may put that one first.
    own = np.arange(len(vectors))[:, None]
    others = np.argsort(rows == own, axis=1, kind="stable")[:, : k - 1]
    rows = np.hstack([own, np.take_along_axis(rows, others, axis=1)])
    similarity = np.hstack([np.ones_like(own, np.float32), np.take_along_axis(similarity, others, axis=1)])
    return rows.astype(np.int32), np.clip(1.0 - similarity, 0.0, 2.0).astype(np.float32)


@functools.cache
def _compile_once() -> None:
    """UMAP's fitting functions compiled once per installation instead of once per process (~6 s of
    every run that fits a map): umap-learn does not ask numba to cache them, so this does. numba keeps
    the compiled code beside the package, or in the user's cache folder where that is read-only; with
    neither writable it compiles in memory, as before."""
    import umap.layouts
    import umap.umap_

    for module, name in ((umap.umap_, "smooth_knn_dist"), (umap.umap_, "compute_membership_strengths"),
                         (umap.layouts, "_nb_optimize_layout_euclidean_single_epoch")):  # fmt: skip
        function = getattr(module, name, None)  # private to umap-learn: a version without it compiles as before
        try:
            if function is not None:
                function.enable_caching()
        except (AttributeError, RuntimeError) as exc:  # not a numba function, or no cache location numba can write to
            logger.info("report: UMAP's %s is compiled in memory only (%s)", name, exc)


def umap_map(store: Warehouse, data: RunData) -> tuple[str | None, str]:
    """The run's photos on the embedder's fixed UMAP projection; (PNG, note)."""
    if len(data.keys) < MIN_MAP_POINTS:
        return None, f"no map: UMAP needs at least {MIN_MAP_POINTS} distinct photos, this run has {len(data.keys)}"
    key = layout.projection_file(data.embedder)
    projection = None
    if store.exists(key):
        try:
            projection = Projection.from_bytes(store.read_bytes(key))
        except (ValueError, OSError, KeyError) as exc:  # not ours (or object arrays, refused unread): fit anew
            logger.warning("report: the map projection %s is unreadable (%s); fitting a new one", store.uri(key), exc)
    if projection is None:
        projection = fit_projection(data)
        store.write_bytes(key, projection.to_bytes())
    if projection.fitted_on == data.run_date and projection.keys == data.keys:
        points = projection.points  # the fitting run itself: its own layout, so a regenerated report is identical
    else:
        points = placed(store, projection, data.embedder, data.keys, data.vectors)
        if projection.fitted_on == data.run_date:  # the fitting run, fitted on a sample: the sample keeps its own places
            fitted = {key: row for row, key in enumerate(projection.keys)}
            for row, key in enumerate(data.keys):
                if key in fitted:
                    points[row] = projection.points[fitted[key]]
    fitted_on = projection.fitted_on
    if fitted_on == data.run_date:
        note = f"fixed projection fitted on this run ({data.run_date}); later runs with {data.embedder} are placed on it, so their maps compare"
    else:
        note = f"fixed projection fitted on run {fitted_on}; this run's photos are placed on it, so maps of different runs compare"
    ok = data.ok_pictures
    company_of = dict(zip(ok["content_sha256"], ok["company"]))
    companies = sorted({company_of[k] for k in data.keys})
    # Each photo's page as a number, in one pass: a mask per page was pages x photos comparisons
    # (17 million, ~3 s, at 20,000 photos on 834 pages), and a scatter layer per page another ~2 s.
    number = {company: index for index, company in enumerate(companies)}
    page_of = np.array([number[company_of[k]] for k in data.keys])
    figure, axes = figure_and_axes(7, 5)
    colours = __import__("matplotlib").colormaps["tab20"]
    if len(companies) <= 20:  # few enough pages to name: a layer per page, for the legend
        for index, company in enumerate(companies):
            mask = page_of == index
            axes.scatter(points[mask, 0], points[mask, 1], s=14, color=colours(index), label=printable(company, 30), alpha=0.8)
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    else:
        axes.scatter(points[:, 0], points[:, 1], s=14, color=colours(page_of % 20), alpha=0.8)
    axes.set_xticks([])
    axes.set_yticks([])
    return png(figure), note

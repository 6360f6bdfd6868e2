"""Index: a FAISS inner-product index over one run's vectors (one per run and embedder).

Vectors are L2-normalised, so inner product = cosine similarity. The index is exact
(`IndexFlatIP`) or IVF (fp16 vectors, nprobe 16, whose queries scan a small share of the
collection), whichever is faster for the run's size *on the machine that runs it*: the cost of
exact search grows with N^2 and IVF's with ~N^1.5, but where they cross depends on the CPU and its
BLAS by a factor of five (100,000 vectors took 74 s exact on one of our machines and 400 s on
another). So above `CALIBRATE_ABOVE` vectors (below it both take seconds) the stage times both
kinds once per machine on `CALIBRATION_SIZE` random vectors, keeps the figures in the warehouse
(`indexes/calibration/`, keyed by CPU model, cores, threads and faiss version) and predicts from
them; `EXACT_MAX_VECTORS` is the choice where no warehouse is given. HNSW is available as an
explicit kind; its build is too slow at 10^6 vectors on small machines to be the default. Saved beside its id map (row -> content hash)
so that it reloads without the run that made it. Searches go in chunks: faiss 1.15.1's
`IndexHNSW.range_search` aborts the process on large query batches, and chunks keep memory flat.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipeline import layout
from pipeline.warehouse import Warehouse

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

# All near-duplicate pairs of N 512-d vectors on 2 cores (bench/index_crossover.py): exact search
# took 0.4/3.5/21/64 s at 5k/20k/50k/100k, HNSW build + search 0.8/8.9/30/60 s. They cross at ~100k.
EXACT_MAX_VECTORS = 100_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
# faiss 1.15.1's HNSW range_search aborted the process at 1024 queries of dim 512 with results and
# worked at 512 (measured); 256 leaves a margin and costs nothing measurable on the flat index.
SEARCH_CHUNK = 256

IVF_NPROBE = 16
# Below this many vectors exact search takes seconds on any of our machines: not worth calibrating.
CALIBRATE_ABOVE = 20_000
# Large enough that IVF runs in its large-collection regime (lists of ~sqrt(N)/4 vectors) and both
# kinds take long enough to time; small enough to cost seconds, once per machine.
CALIBRATION_SIZE = 16_384
CALIBRATION_NEIGHBOURS = 11  # what the near-duplicate search asks for (max_candidates_per_image + 1)

IndexKind = Literal["auto", "flat", "hnsw", "ivf"]


@dataclass
class VectorIndex:
    index: faiss.Index
    ids: list[str]  # row -> content_sha256
    kind: str

    @property
    def dim(self) -> int:
        return int(self.index.d)


def build_index(vectors: np.ndarray, ids: Sequence[str], kind: IndexKind = "auto") -> VectorIndex:
    """Index unit vectors (float32, or float16 to halve the caller's memory) under their ids."""
    import faiss

    if len(vectors) != len(ids):
        raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
    dim = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] else 1
    if kind == "auto":
        kind = choose_kind(len(vectors), dim)[0]  # type: ignore[assignment]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        index = _trained_ivf(vectors, dim)
    # Added in blocks: faiss encodes a whole add() call at once, so one call would hold a second,
    # temporary copy of every code (about 1 GB more at a million 512-d vectors).
    for start in range(0, len(vectors), 65_536):
        index.add(np.ascontiguousarray(vectors[start : start + 65_536], dtype=np.float32))
    return VectorIndex(index, list(ids), kind)


@dataclass(frozen=True)
class SearchCalibration:
    """Seconds to index `size` random unit vectors of `dim` and find every one's nearest neighbours,
    exact and IVF, on one machine."""

    machine: str
    dim: int
    size: int
    flat_s: float
    ivf_s: float
    measured_at: str

    def predicted_s(self, kind: str, n: int) -> float:
        ratio = n / self.size
        return self.flat_s * ratio**2 if kind == "flat" else self.ivf_s * ratio**1.5

    def choose(self, n: int) -> str:
        return "flat" if self.predicted_s("flat", n) <= self.predicted_s("ivf", n) else "ivf"


def machine_id() -> str:
    """What decides search speed here: CPU model, cores, faiss threads and version (a short digest)."""
    import hashlib
    import os
    import platform

    import faiss

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    described = f"{cpu}|{os.cpu_count()}|{faiss.omp_get_max_threads()}|{faiss.__version__}"
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def measure_search(dim: int, size: int = CALIBRATION_SIZE) -> SearchCalibration:
    """Time both kinds on `size` random unit vectors (the search cost does not depend on the data)."""
    import datetime as dt
    import time

    vectors = np.random.default_rng(0).normal(size=(size, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [""] * size
    seconds = {}
    for kind in ("flat", "ivf"):
        started = time.perf_counter()
        knn(build_index(vectors, ids, kind), vectors, CALIBRATION_NEIGHBOURS)  # type: ignore[arg-type]
        seconds[kind] = time.perf_counter() - started
    return SearchCalibration(machine_id(), dim, size, round(seconds["flat"], 4), round(seconds["ivf"], 4),
                             dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))  # fmt: skip


def search_calibration(warehouse: Warehouse, dim: int) -> SearchCalibration:
    """This machine's calibration for `dim`, measured the first time and kept in the warehouse."""
    machine = machine_id()
    key = layout.search_calibration_file(machine, dim)
    if warehouse.exists(key):
        return SearchCalibration(**json.loads(warehouse.read_bytes(key)))
    calibration = measure_search(dim)
    exact_s, ivf_s = calibration.flat_s, calibration.ivf_s
    logger.info("index: calibrated on this machine: exact %.2f s, IVF %.2f s at %d vectors", exact_s, ivf_s, calibration.size)
    warehouse.write_json(key, calibration.__dict__)
    return calibration


def choose_kind(n: int, dim: int, warehouse: Warehouse | None = None) -> tuple[str, str]:
    """(index kind, why) for `n` vectors of `dim`: measured on this machine where a warehouse keeps
    its calibration and the collection is large enough for the choice to matter."""
    if n <= CALIBRATE_ABOVE:
        return "flat", f"exact: {n} vectors (at most {CALIBRATE_ABOVE}, seconds on any machine)"
    if warehouse is None:
        kind = "flat" if n <= EXACT_MAX_VECTORS else "ivf"
        return kind, f"{kind}: {n} vectors against the default crossover {EXACT_MAX_VECTORS} (no calibration)"
    calibration = search_calibration(warehouse, dim)
    kind = calibration.choose(n)
    return kind, (f"{kind}: predicted {calibration.predicted_s('flat', n):.0f} s exact, {calibration.predicted_s('ivf', n):.0f} s IVF "
                  f"at {n} vectors (calibrated on this machine {calibration.measured_at})")  # fmt: skip


def _trained_ivf(vectors: np.ndarray, dim: int) -> faiss.Index:
    """IVF with fp16 vectors: half the memory of flat storage, cosine error ~1e-3, and it trains and
    fills in minutes at a million vectors on 2 cores, where HNSW's build takes the better part of an hour."""
    import faiss

    n_lists = max(1, min(len(vectors) // 39, int(4 * np.sqrt(max(1, len(vectors))))))
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, n_lists, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    # 40 training points per list (faiss warns below 39); more only costs memory for the copy.
    sample = np.random.default_rng(0).choice(len(vectors), size=min(len(vectors), 40 * n_lists), replace=False)
    index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
    index.nprobe = IVF_NPROBE
    return index


def chunks(queries: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """float32 blocks of the queries; float16 input is converted one block at a time, so callers
    can hold a million vectors in half the memory."""
    for start in range(0, len(queries), SEARCH_CHUNK):
        yield start, np.ascontiguousarray(queries[start : start + SEARCH_CHUNK], dtype=np.float32)


def knn(vindex: VectorIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, row numbers), each (n_queries, k); -1 rows where fewer than k exist."""
    k = max(1, min(k, vindex.index.ntotal or 1))
    sims, rows = [], []
    for _, chunk in chunks(queries):
        s, r = vindex.index.search(chunk, k)
        sims.append(s)
        rows.append(r)
    if not sims:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(sims), np.concatenate(rows)


def range_pairs(vindex: VectorIndex, vectors: np.ndarray, threshold: float) -> Iterator[tuple[int, int, float]]:
    """Every unordered pair (i < j) of indexed rows with similarity >= threshold, never a dense matrix.

    `vectors` are the indexed vectors in row order (the caller holds them; reconstructing them from
    a compressed index would cost a second copy)."""
    if vindex.index.ntotal == 0:
        return
    radius = np.float32(threshold) - np.float32(1e-6)  # faiss keeps scores strictly above the radius
    for start, chunk in chunks(vectors):
        limits, sims, rows = vindex.index.range_search(chunk, float(radius))
        for offset in range(len(chunk)):
            i = start + offset
            for position in range(limits[offset], limits[offset + 1]):
                j = int(rows[position])
                if j > i:
                    yield i, j, float(sims[position])


def knn_pairs(vindex: VectorIndex, vectors: np.ndarray, threshold: float, k: int) -> list[tuple[int, int, float]]:
    """Unordered pairs (i < j), each once, where j is among i's k nearest neighbours (or i among
    j's) with similarity >= threshold: at most k*N pairs however uniform the collection is."""
    if vindex.index.ntotal == 0:
        return []
    sims, rows = knn(vindex, vectors, k + 1)
    return neighbour_pairs(rows, sims, threshold)


def neighbour_pairs(rows: np.ndarray, sims: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Unordered pairs (i < j), each once, where row j is in query i's neighbours (`rows[i]`, -1 for
    none; query i is row i itself, which is never its own pair) with similarity >= threshold.
    Vectorised, so a million queries cost seconds of Python, not minutes."""
    query = np.arange(len(rows))[:, None].repeat(rows.shape[1], axis=1)
    keep = (rows >= 0) & (rows != query) & (sims >= threshold)
    low, high = np.minimum(query[keep], rows[keep]).astype(np.int64), np.maximum(query[keep], rows[keep]).astype(np.int64)
    kept_sims = sims[keep]
    _, first = np.unique(low * (int(high.max(initial=0)) + 1) + high, return_index=True)
    return [(int(low[x]), int(high[x]), float(kept_sims[x])) for x in first]


def save_index(warehouse: Warehouse, vindex: VectorIndex, embedder_id: str, run_date: str) -> str:
    """Write index, id map and description under indexes/<embedder>/run_date=D/; returns the folder URI."""
    import faiss
    import pyarrow as pa

    folder = layout.index_folder(embedder_id, run_date)
    warehouse.write_bytes(f"{folder}/index.faiss", faiss.serialize_index(vindex.index).tobytes())
    warehouse.write_table_file(f"{folder}/ids.parquet", pa.table({"content_sha256": pa.array(vindex.ids, pa.string())}))
    meta = {"embedder": embedder_id, "kind": vindex.kind, "n": len(vindex.ids), "dim": vindex.dim}
    if vindex.kind == "hnsw":
        meta.update(M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, ef_search=HNSW_EF_SEARCH)
    if vindex.kind == "ivf":
        meta.update(nprobe=IVF_NPROBE, n_lists=int(vindex.index.nlist))
    warehouse.write_bytes(f"{folder}/meta.json", json.dumps(meta, indent=2).encode())
    return warehouse.uri(folder)


def load_index(warehouse: Warehouse, embedder_id: str, run_date: str) -> VectorIndex:
    import faiss
    import pyarrow.parquet as pq

    folder = layout.index_folder(embedder_id, run_date)
    if not warehouse.exists(f"{folder}/index.faiss"):
        raise FileNotFoundError(f"no index for embedder {embedder_id} on {run_date} in {warehouse.uri()}")
    index = faiss.deserialize_index(np.frombuffer(warehouse.read_bytes(f"{folder}/index.faiss"), dtype=np.uint8))
    with warehouse.fs.open(warehouse.path(f"{folder}/ids.parquet"), "rb") as handle:
        ids = pq.read_table(handle).column("content_sha256").to_pylist()
    meta = json.loads(warehouse.read_bytes(f"{folder}/meta.json"))
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = int(meta.get("ef_search", HNSW_EF_SEARCH))
    if meta["kind"] == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(meta.get("nprobe", IVF_NPROBE))
    return VectorIndex(index, ids, meta["kind"])

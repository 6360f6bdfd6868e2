"""Where HNSW starts to beat exact search for the run's job: all near-duplicate pairs of N vectors.

For each N: exact `IndexFlatIP` (build + range search of every vector) against HNSW (build + the same
range search), with HNSW's pair recall against the exact result. `pipeline.features.index.EXACT_MAX_VECTORS`
is set from this table. faiss-cpu's bundled OpenBLAS mis-detects some CPUs and runs flat search ~5x
slower: run with OPENBLAS_CORETYPE=SkylakeX where that applies (benchmarks only).

    OPENBLAS_CORETYPE=SkylakeX .venv/bin/python -m bench.index_crossover [--sizes 5000 20000 50000] [--dim 512]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import write_result


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 20), dim))
    points = centres[rng.integers(len(centres), size=n)] + 0.25 * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 50000, 80000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.9)
    args = parser.parse_args()

    from pipeline.features.index import EXACT_MAX_VECTORS, build_index, range_pairs

    print(f"dim {args.dim}, threshold {args.threshold}; current EXACT_MAX_VECTORS = {EXACT_MAX_VECTORS}")
    print(f"{'N':>8} {'flat s':>8} {'hnsw s':>8} {'hnsw/flat':>9} {'pair recall':>11}")
    rows = []
    for n in args.sizes:
        vectors = clustered(n, args.dim)
        ids = [str(i) for i in range(n)]
        timings, found = {}, {}
        for kind in ("flat", "hnsw"):
            started = time.perf_counter()
            index = build_index(vectors, ids, kind=kind)
            found[kind] = {(i, j) for i, j, _ in range_pairs(index, vectors, args.threshold)}
            timings[kind] = time.perf_counter() - started
        recall = len(found["hnsw"] & found["flat"]) / max(1, len(found["flat"]))
        print(f"{n:8d} {timings['flat']:8.2f} {timings['hnsw']:8.2f} {timings['hnsw'] / timings['flat']:9.2f} {recall:11.3f}")
        rows.append(
            {"n": n, "flat_s": round(timings["flat"], 3), "hnsw_s": round(timings["hnsw"], 3), "hnsw_pair_recall": round(recall, 4)}
        )
    write_result("index_crossover", {"dim": args.dim, "threshold": args.threshold, "sizes": rows})


if __name__ == "__main__":
    main()

"""Near-duplicate candidate search at scale: 10k, 100k and 1M synthetic 512-d vectors.

Each size runs in its own process (so peak RSS is its own): unit vectors in loose clusters (like
photos of one style), 1% of them with a planted near-copy (cosine ~0.93-0.99, like an edited
photo). Timed: the index stage's search, i.e. the kind `choose_kind` picks from this machine's
calibration (measured once, into a warehouse shared by the sizes, and timed apart), `build_index` and
`knn_pairs` over every vector. Reported: the kind and why, seconds, peak RSS, recall of the planted
pairs, and recall against exact search for 1,000 sampled queries. `--kinds auto flat ivf` also times
the kinds forced, to check the calibrated choice against both (exact above 200,000 vectors takes
hours and is skipped). Target: 1M in <= 10 min and <= 4 GB on whichever machine runs it, with no
BLAS or thread environment variables set. Vectors are held as float16 (the index functions convert
block by block), as a million-photo run would hold them.

    .venv/bin/python -m bench.neardup_scale [--sizes 10000 100000 1000000] [--kinds auto flat ivf]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.common import REPO, write_result

DIM = 512
THRESHOLD = 0.9
K = 10


def make_vectors(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, planted pairs as rows of (original, copy)); built in blocks to keep memory flat."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 200), DIM), dtype=np.float32)
    vectors = np.empty((n, DIM), np.float16)  # what the pipeline can hold: half the memory
    for start in range(0, n, 50_000):
        stop = min(n, start + 50_000)
        block = centres[rng.integers(len(centres), size=stop - start)] + 1.4 * rng.standard_normal((stop - start, DIM), dtype=np.float32)
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    n_planted = n // 100
    originals = rng.choice(n // 2, size=n_planted, replace=False)
    copies = n // 2 + rng.choice(n - n // 2, size=n_planted, replace=False)
    noise = rng.normal(size=(n_planted, DIM)).astype(np.float32)
    noise *= rng.uniform(0.15, 0.4, size=(n_planted, 1)).astype(np.float32) / np.linalg.norm(noise, axis=1, keepdims=True)
    edited = vectors[originals].astype(np.float32) + noise
    vectors[copies] = edited / np.linalg.norm(edited, axis=1, keepdims=True)
    return vectors, np.stack([originals, copies], axis=1)


def measure(n: int, kind: str, calibration: str) -> dict:
    from pipeline.features.index import build_index, choose_kind, knn, knn_pairs
    from pipeline.warehouse import Warehouse

    vectors, planted = make_vectors(n)
    started = time.perf_counter()
    why = "forced"
    if kind == "auto":
        kind, why = choose_kind(n, DIM, Warehouse(calibration))
    calibrated = time.perf_counter() - started
    started = time.perf_counter()
    vindex = build_index(vectors, [""] * n, kind)  # type: ignore[arg-type]
    built = time.perf_counter() - started
    pairs = knn_pairs(vindex, vectors, THRESHOLD, K)
    total = time.perf_counter() - started
    found = {(i, j) for i, j, _ in pairs}
    planted_recall = np.mean([(min(a, b), max(a, b)) in found for a, b in planted.tolist()])
    # Exact neighbours of 1,000 sampled queries, in blocks (no dense N x N matrix).
    rng = np.random.default_rng(1)
    queries = np.sort(rng.choice(n, size=min(1000, n), replace=False))
    best = np.full((len(queries), K + 1), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), K + 1), np.int64)
    for start in range(0, n, 20_000):
        sims = vectors[queries].astype(np.float32) @ vectors[start : start + 20_000].astype(np.float32).T
        merged = np.concatenate([best, sims], axis=1)
        merged_rows = np.concatenate([best_rows, np.arange(start, start + sims.shape[1])[None, :].repeat(len(queries), 0)], axis=1)
        order = np.argsort(-merged, axis=1)[:, : K + 1]
        best, best_rows = np.take_along_axis(merged, order, 1), np.take_along_axis(merged_rows, order, 1)
    exact = {
        (min(q, int(r)), max(q, int(r)))
        for q, row, sim in zip(queries, best_rows, best)
        for r, s in zip(row, sim)
        if r != q and s >= THRESHOLD
    }
    approx_sims, approx_rows = knn(vindex, vectors[queries].astype(np.float32), K + 1)
    approx = {
        (min(q, int(r)), max(q, int(r)))
        for q, row, sim in zip(queries, approx_rows, approx_sims)
        for r, s in zip(row, sim)
        if r != q and r >= 0 and s >= THRESHOLD
    }
    return {
        "n": n, "index": vindex.kind, "why": why, "calibration_s": round(calibrated, 1), "build_s": round(built, 1), "total_s": round(total, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "pairs": len(pairs), "planted_recall": round(float(planted_recall), 4),
        "recall_vs_exact": round(len(exact & approx) / max(1, len(exact)), 4), "exact_pairs_sampled": len(exact),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", choices=["auto", "flat", "ivf"], default=["auto"])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size here
    parser.add_argument("--kind", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--calibration", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.kind, args.calibration)))
        return
    print(f"{'N':>9} {'index':>6} {'build s':>8} {'total s':>8} {'peak GB':>8} {'pairs':>9} {'planted recall':>15} {'recall vs exact':>16}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="neardup-scale-") as calibration:  # this machine's calibration, shared by the sizes
        for n in args.sizes:
            for kind in args.kinds:
                if kind == "flat" and n > 200_000:
                    continue
                command = [sys.executable, "-m", "bench.neardup_scale", "--one", str(n), "--kind", kind, "--calibration", calibration]
                done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"{r['n']:9d} {r['index']:>6} {r['build_s']:8.1f} {r['total_s']:8.1f} {r['peak_rss_gb']:8.2f} {r['pairs']:9d} "
                    f"{r['planted_recall']:15.4f} {r['recall_vs_exact']:16.4f}  {kind}: {r['why']}"
                    + (f" (calibration {r['calibration_s']} s)" if r["calibration_s"] >= 0.5 else "")
                )
                rows.append({**r, "asked": kind})
    write_result("neardup_scale", {"sizes": rows})


if __name__ == "__main__":
    main()

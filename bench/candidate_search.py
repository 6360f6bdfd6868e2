"""The near-duplicate candidate search: a fresh search of every photo against every other, against a
night that brings the kept neighbour lists up to date (pipeline/features/neighbours.py).

For each size N, on synthetic clustered unit vectors of the three candidate sources' shapes (the
whole-picture embedding: one 512-d query a photo; the region views: nine window queries a photo
against the whole views, `regions.DIM`; the face window: one query a photo for the 90% of photos with
a face), in one process on one machine:
- fresh: `search_lists` of every photo, with the index kind the pipeline chooses (exact, or IVF
  where this machine's calibration says it is faster): what every night cost before the lists were kept;
- the first night: `kept_lists` with nothing kept (a fresh search, and the lists written);
- a 1% night: 1% of the photos replaced by new ones (the lists read, brought up to date, written);
- an unchanged night.
Printed: seconds per source and in all, and the 1% night's share of the fresh search. The search's
share of a whole night is what bench.scale measures.

    .venv/bin/python -m bench.candidate_search [--sizes 20000 50000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from bench.common import write_result

CHANGED_SHARE = 0.01
FACE_SHARE = 0.9


def clustered(rng: np.random.Generator, n: int, dim: int, views: int) -> tuple[np.ndarray, np.ndarray]:
    """(targets (n, dim), queries (n, views, dim)), float16 as the caches hold them."""
    centres = rng.normal(size=(max(1, n // 20), dim))
    targets = centres[rng.integers(len(centres), size=n)] + 0.25 * rng.normal(size=(n, dim))
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    queries = targets[:, None] + (0.15 * rng.normal(size=(n, views, dim)) if views > 1 else 0)
    queries /= np.linalg.norm(queries, axis=2, keepdims=True)
    return targets.astype(np.float16), queries.astype(np.float16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from pipeline.features import regions
    from pipeline.features.index import choose_kind
    from pipeline.features.neighbours import kept_lists, search_lists
    from pipeline.warehouse import Warehouse

    sources = {"embedding": (512, 1, 11), "region_views": (regions.DIM, regions.N_VIEWS - 1, 4), "face_window": (31, 1, 11)}
    results = {}
    for n in args.sizes:
        rng = np.random.default_rng([args.seed, n])
        n_changed = max(1, round(CHANGED_SHARE * n))
        figures: dict[str, dict] = {}
        with tempfile.TemporaryDirectory(prefix="candidate-search-") as folder:
            warehouse = Warehouse(folder)
            for source, (dim, n_views, need) in sources.items():
                size = n if source != "face_window" else round(FACE_SHARE * n)
                targets, queries = clustered(rng, size + n_changed, dim, n_views)  # the last n_changed: tonight's new photos
                contents = [f"{source}-{i:07d}" for i in range(size + n_changed)]
                base = np.arange(size)
                tonight = np.concatenate([np.sort(rng.choice(size, size - n_changed, replace=False)), np.arange(size, size + n_changed)])
                timed: dict[str, float] = {}
                kind = choose_kind(size, dim, warehouse)[0]  # as the pipeline chooses (calibrated once per machine, not timed)
                started = time.perf_counter()
                search_lists([contents[i] for i in base], targets[base], queries[base], need, kind)  # type: ignore[arg-type]
                timed["fresh_s"] = time.perf_counter() - started
                for night, rows in (("first_night_s", base), ("changed_night_s", tonight), ("unchanged_night_s", tonight)):
                    started = time.perf_counter()
                    _, count = kept_lists(warehouse, source, "bench", [contents[i] for i in rows], targets[rows], queries[rows], need)
                    timed[night] = time.perf_counter() - started
                    if night == "changed_night_s":
                        timed["changed_photos_searched"] = count.photos_searched
                figures[source] = {"photos": size, "views": n_views, "dim": dim, "kind": kind, **{k: round(v, 3) for k, v in timed.items()}}
                print(f"{n:>7} {source:<13} fresh ({kind}) {timed['fresh_s']:7.2f} s, first night {timed['first_night_s']:7.2f} s, "
                      f"1% night {timed['changed_night_s']:6.2f} s ({timed['changed_photos_searched']:.0f} photos searched), "
                      f"unchanged {timed['unchanged_night_s']:6.2f} s")  # fmt: skip
        fresh = sum(f["fresh_s"] for f in figures.values())
        changed = sum(f["changed_night_s"] for f in figures.values())
        unchanged = sum(f["unchanged_night_s"] for f in figures.values())
        results[str(n)] = {"sources": figures, "fresh_s": round(fresh, 2), "changed_night_s": round(changed, 2),
                           "unchanged_night_s": round(unchanged, 2), "changed_over_fresh": round(changed / fresh, 4)}  # fmt: skip
        print(
            f"{n:>7} all           fresh {fresh:7.2f} s, 1% night {changed:6.2f} s = {changed / fresh:.3f} of fresh, unchanged {unchanged:.2f} s"
        )
    write_result("candidate_search", {"seed": args.seed, "changed_share": CHANGED_SHARE, "sizes": results})


if __name__ == "__main__":
    main()

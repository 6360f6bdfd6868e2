"""Face identity's same-face search on a night that changed 1% of the faces: every face against every
face (what a run without kept lists does) against each face's nearest faces kept from the last run
and brought up to date (`pipeline.features.identity.kept_content_pairs`), on synthetic descriptors
(photos of a few thousand people at dlib's scale), with the kept result checked equal to the fresh one.
The descriptors' computing and unsealing are not in it: the search alone.

    .venv/bin/python -m bench.identity_search [--sizes 20000 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from bench.common import write_result


def faces(rng: np.random.Generator, n: int, people: np.ndarray) -> np.ndarray:
    return (people[rng.integers(len(people), size=n)] + rng.normal(0, 0.015, (n, people.shape[1]))).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--changed", type=float, default=0.01, help="share of the faces replaced on the night")
    args = parser.parse_args()

    from pipeline.features.identity import content_pairs, kept_content_pairs
    from pipeline.warehouse import Warehouse

    rows = []
    print(f"{'faces':>8} {'cold s':>8} {'fresh s':>8} {'kept s':>8} {'kept/fresh':>10} {'searched':>9} {'pairs':>8}")
    for n in args.sizes:
        rng = np.random.default_rng(n)
        people = rng.normal(0, 0.06, (max(1, n // 5), 128))
        contents = [f"face-{i:07d}" for i in range(n)]
        descriptors = faces(rng, n, people)
        with tempfile.TemporaryDirectory() as folder:
            warehouse = Warehouse(folder)
            started = time.perf_counter()
            kept_content_pairs(warehouse, contents, descriptors)  # the cold run: a fresh search, its lists kept
            cold_s = time.perf_counter() - started
            changed = rng.choice(n, size=int(n * args.changed), replace=False)
            descriptors[changed] = faces(rng, len(changed), people)
            for i in changed:
                contents[i] = contents[i].replace("face-", "new-")
            order = np.argsort(contents)
            contents, descriptors = [contents[i] for i in order], descriptors[order]
            started = time.perf_counter()
            kept, searched = kept_content_pairs(warehouse, contents, descriptors)
            kept_s = time.perf_counter() - started
        started = time.perf_counter()
        fresh = content_pairs(contents, descriptors)
        fresh_s = time.perf_counter() - started
        if {pair[:2] for pair in kept} != {pair[:2] for pair in fresh}:
            raise SystemExit(f"{n} faces: the kept lists' pairs differ from a fresh search's")
        print(f"{n:8d} {cold_s:8.1f} {fresh_s:8.1f} {kept_s:8.2f} {kept_s / fresh_s:10.3f} {searched:9d} {len(fresh):8d}")
        rows.append({"faces": n, "changed": len(changed), "cold_s": round(cold_s, 2), "fresh_s": round(fresh_s, 2), "kept_s": round(kept_s, 3),
                     "kept_over_fresh": round(kept_s / fresh_s, 4), "faces_searched": searched, "pairs": len(fresh)})  # fmt: skip
    write_result("identity_search", {"changed_share": args.changed, "sizes": rows})


if __name__ == "__main__":
    main()

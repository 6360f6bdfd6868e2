"""Verification alone, replayed: a kept warehouse's cached candidate pairs verified again in one
process, timed, and checked against the verdicts the warehouse cached.

The warehouse is one `bench.scale --keep` kept (or any other): its images tables give the photos,
its verdict cache (`W/verifications/`, at the default thresholds) the pairs and what they were
judged. `--pairs` of them are drawn (seeded), put in the pipeline's order (`cache_friendly_order`),
their photos' features computed once (untimed, as the stage's features step does), then the pairs
verified by `verify_job` in this process, one thread (as a worker process runs it), `--repeats`
times: the best time counts. Printed: milliseconds per pair, the share of pairs that aligned (inlier
ratio at least the threshold: those reach the warps and block correlations), and how many verdicts
differ from the cache (same photo, inlier ratio, block and face correlation, bit for bit).

`--baseline REV` runs the same measurement, interleaved, with the pipeline package of another
commit (a temporary git worktree; this file runs there on that commit's `pipeline`): the ratio of
this checkout's time to REV's is measured in one run on one machine.

    .venv/bin/python -m bench.verify_replay --warehouse var/scale/n2000-seed0/measure/warehouse [--pairs 3000] [--repeats 3] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(warehouse_root: str, n_pairs: int, repeats: int, seed: int) -> dict:
    """One code version's figures (this process's `pipeline`, whichever checkout that is)."""
    import time

    import cv2
    import faiss
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from pipeline import layout
    from pipeline.features.face_signals import largest_faces
    from pipeline.features.verify import VerifyParams
    from pipeline.metrics import near_duplicates as nd
    from pipeline.warehouse import Warehouse

    cv2.setNumThreads(1)  # as in a worker process, which owns one CPU (pipeline/parallel.py)
    faiss.omp_set_num_threads(1)
    warehouse = Warehouse(warehouse_root)
    images = warehouse.read_table("images")  # every run's: a night's replaced photos have pairs in the cache too
    if images.empty:
        raise SystemExit(f"no images table in {warehouse_root}: a warehouse that `bench.scale --keep` kept is one")
    ok = images[images["status"] == "ok"]
    object_of = dict(zip(ok["content_sha256"], ok["raw_object"]))
    params = VerifyParams.from_thresholds()
    cached = pa.concat_tables(warehouse.read_shards(layout.verifications_folder(params.cache_id))).to_pandas()
    cached = cached.drop_duplicates(["content_a", "content_b"], keep="last")
    cached = cached[cached["content_a"].isin(object_of) & cached["content_b"].isin(object_of)]
    drawn = cached.sample(min(n_pairs, len(cached)), random_state=seed)
    pairs = nd.cache_friendly_order(list(zip(drawn["content_a"], drawn["content_b"])))
    photos = sorted({photo for pair in pairs for photo in pair})
    objects, faces = nd._photos_of(photos, object_of, largest_faces(warehouse, 0.9))
    with tempfile.TemporaryDirectory() as scratch:
        nd.compute_features(nd.FeatureJob(photos, warehouse, objects, faces, scratch))
        seconds = []
        for _ in range(repeats):
            began = time.perf_counter()
            verdicts, _ = nd.verify_job(nd.VerifyJob(pairs, scratch, params, warehouse, objects, faces))
            seconds.append(time.perf_counter() - began)
    found = pd.DataFrame({
        "content_a": [a for a, _ in pairs], "content_b": [b for _, b in pairs],
        "same": [v.same_photo for v in verdicts], "ratio": [v.inlier_ratio for v in verdicts],
        "block": [v.block_correlation for v in verdicts],
        "face": [np.nan if v.face_correlation is None else v.face_correlation for v in verdicts],
    }).merge(drawn, on=["content_a", "content_b"])  # fmt: skip
    differ = (
        (found["same"] != found["same_photo"]) | (found["ratio"] != found["inlier_ratio"]) | (found["block"] != found["block_correlation"])
        | ~np.isclose(found["face"], found["face_correlation"].astype(float), rtol=0, atol=0, equal_nan=True)
    )  # fmt: skip
    return {
        "pairs": len(pairs), "photos": len(photos), "ms_per_pair": round(1000 * min(seconds) / len(pairs), 3),
        "seconds": [round(s, 2) for s in seconds], "aligned_share": round(float((found["ratio"] >= params.min_inlier_ratio).mean()), 3),
        "accepted": int(found["same"].sum()), "verdicts_differing_from_cache": int(differ.sum()),
    }  # fmt: skip


def _measure_in(checkout: Path, args: argparse.Namespace) -> dict:
    """`measure` in a fresh process whose `pipeline` is `checkout`'s."""
    command = [sys.executable, str(Path(__file__).resolve()), "--measure-only", "--warehouse", str(args.warehouse),
               "--pairs", str(args.pairs), "--repeats", "1", "--seed", str(args.seed)]  # fmt: skip
    done = subprocess.run(command, cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"measuring in {checkout} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warehouse", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", help="a commit to measure against, interleaved (a temporary git worktree)")
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)  # one measurement, as JSON: what --baseline runs
    args = parser.parse_args()
    if args.measure_only:
        print(json.dumps(measure(str(args.warehouse.resolve()), args.pairs, args.repeats, args.seed)))
        return
    from bench.common import write_result

    args.warehouse = args.warehouse.resolve()
    if not args.baseline:
        figures = measure(str(args.warehouse), args.pairs, args.repeats, args.seed)
        print(json.dumps(figures, indent=1))
        write_result("verify_replay", {"this_checkout": figures})
        return
    with tempfile.TemporaryDirectory(prefix="verify-replay-") as folder:
        baseline = Path(folder) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(baseline), args.baseline], check=True)
        try:
            runs: dict[str, list[dict]] = {"this_checkout": [], "baseline": []}
            for repeat in range(args.repeats):  # interleaved: a machine that slows down slows both
                for name, checkout in (("this_checkout", REPO), ("baseline", baseline)):
                    runs[name].append(_measure_in(checkout, args))
                    print(f"repeat {repeat + 1}: {name} {runs[name][-1]['ms_per_pair']} ms a pair", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=False)
    best = {name: min(found, key=lambda figures: figures["ms_per_pair"]) for name, found in runs.items()}
    ratio = round(best["this_checkout"]["ms_per_pair"] / best["baseline"]["ms_per_pair"], 3)
    for name, figures in best.items():
        print(f"{name}: {figures['ms_per_pair']} ms a pair over {figures['pairs']} pairs ({figures['aligned_share']:.0%} aligned), "
              f"{figures['verdicts_differing_from_cache']} verdict(s) differing from the cache")  # fmt: skip
    print(f"this checkout / {args.baseline}: {ratio}")
    write_result("verify_replay", {"baseline_commit": args.baseline, **best, "ratio_to_baseline": ratio,
                                   "all_runs_ms_per_pair": {name: [f["ms_per_pair"] for f in found] for name, found in runs.items()}})  # fmt: skip


if __name__ == "__main__":
    main()

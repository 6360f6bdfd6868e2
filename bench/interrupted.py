"""What a killed run costs: a cold `homog run` killed part-way (SIGKILL to its process group: a lost
worker machine, an out-of-memory kill, an Airflow task timeout), then run again to the end, against
the same cold run never interrupted.

The population is bench.scale's (`--size` photos, generated from the corpus and kept under `--work`).
Each run is a fresh `homog run` process (classic embedder, every stage) on a fresh warehouse; the
retry runs on the killed run's warehouse with the same run date. The kill points are fractions of
the uninterrupted run's wall time (`--kill-at`); the stage running then is read off that run's stage
seconds. Printed per kill point: the retry's wall time, and the work lost, i.e. the killed part plus
the retry less the uninterrupted run (what was done twice, plus a second start-up), in seconds and as
a share of the uninterrupted run.

    .venv/bin/python -m bench.interrupted [--size 2000] [--kill-at 0.15 0.7] [--work var/scale]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import write_result
from bench.scale import generate, mirror, run
from pipeline.parallel import remove_abandoned_pools

RUN_DATE = "2026-01-01"


def killed_run(folder: Path, warehouse: Path, after_s: float) -> float:
    """Start `homog run` as bench.scale runs it and kill its whole process group after `after_s`;
    returns when it was killed (seconds after the start)."""
    homog = str(Path(sys.executable).with_name("homog"))
    command = [homog, "run", "--input", str(folder), "--warehouse", str(warehouse), "--reports", str(warehouse.parent / "reports"),
               "--run-date", RUN_DATE, "--embedder", "classic", "--no-progress", "--json"]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        process.wait(timeout=after_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        # A killed process cannot remove its worker pool's shared memory: the next run's first pool
        # would (pipeline.parallel), but the bench leaves none even where the retry starts no pool.
        remove_abandoned_pools()
        return time.perf_counter() - started
    raise SystemExit(f"the run ended before {after_s:.0f} s: choose an earlier --kill-at")


def stage_at(stage_seconds: dict[str, float], wall_s: float, at_s: float) -> str:
    """The stage a run was in `at_s` seconds after its start, by its stage seconds (the time before the
    first stage and between stages spread over them in proportion)."""
    scale, elapsed = wall_s / max(1e-9, sum(stage_seconds.values())), 0.0
    for stage, seconds in stage_seconds.items():
        elapsed += seconds * scale
        if at_s < elapsed:
            return stage
    return "(after the last stage)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--kill-at", type=float, nargs="+", default=[0.15, 0.7], help="fractions of the uninterrupted run's wall time")
    parser.add_argument("--work", type=Path, default=Path("var/scale"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not all(0 < fraction < 1 for fraction in args.kill_at):
        parser.error("--kill-at takes fractions between 0 and 1")
    base, _, _ = generate(args.work, args.size, args.seed)
    root = args.work / f"n{args.size}-seed{args.seed}" / "interrupted"
    shutil.rmtree(root, ignore_errors=True)
    photos = root / "photos"
    mirror(base, photos)
    try:
        whole = run(photos, root / "whole" / "warehouse", RUN_DATE)
        print(f"{args.size} photos, never interrupted: {whole['wall_s']:.0f} s; stages: {whole['stage_seconds']}")
        points = []
        for fraction in args.kill_at:
            warehouse = root / f"killed-{fraction}" / "warehouse"
            killed_at = killed_run(photos, warehouse, fraction * whole["wall_s"])
            retry = run(photos, warehouse, RUN_DATE)
            lost = killed_at + retry["wall_s"] - whole["wall_s"]
            point = {
                "kill_at": fraction, "killed_at_s": round(killed_at, 1), "stage": stage_at(whole["stage_seconds"], whole["wall_s"], killed_at),
                "retry_wall_s": retry["wall_s"], "retry_stage_seconds": retry["stage_seconds"], "retry_counts": retry["counts"],
                "lost_s": round(lost, 1), "lost_share": round(lost / whole["wall_s"], 3),
            }  # fmt: skip
            points.append(point)
            print(f"killed at {killed_at:.0f} s (in {point['stage']}): retry {retry['wall_s']:.0f} s, work lost {lost:.0f} s "
                  f"= {point['lost_share']:.3f} of the uninterrupted run")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_result("interrupted", {"size": args.size, "seed": args.seed, "whole": whole, "kill_points": points})


if __name__ == "__main__":
    main()

"""Start-up: how long `homog --help` takes, and how long a classic run takes to read its first image
(issue targets: at most 0.5 s and 1.5 s), each measured as wall time from the moment the process is
started, median of several runs, on this machine.

    .venv/bin/python -m bench.startup [--repeat 5]

The first-image probe starts `homog run --input <drawings> --embedder classic` in a fresh process
whose PIL.Image.open reports the wall clock of its first call; it also lists which heavy modules
were loaded by then (torch, open_clip, umap, numba must not be)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import write_result

BIN = Path(sys.executable).parent
HEAVY = ["torch", "torchvision", "open_clip", "umap", "numba", "cv2", "faiss", "sklearn", "dlib", "pandas", "scipy", "airflow"]
PROBE = """
import sys, time, json
import PIL.Image
_open = PIL.Image.open
def first_open(*args, **kwargs):
    if not getattr(first_open, "seen", False):
        first_open.seen = True
        heavy = {heavy!r}
        print("FIRST " + json.dumps({{"at": time.time(), "loaded": [m for m in heavy if m in sys.modules]}}), file=sys.stderr, flush=True)
    return _open(*args, **kwargs)
PIL.Image.open = first_open
from pipeline.apps.cli import app
sys.argv = ["homog", "run", "--input", {folder!r}, "--warehouse", {warehouse!r}, "--reports", {reports!r},
            "--embedder", "classic", "--no-progress"]
app()
"""


def help_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([str(BIN / "homog"), "--help"], check=True, capture_output=True)
    return time.perf_counter() - start


def first_image_seconds(folder: Path, scratch: Path) -> tuple[float, list[str]]:
    code = PROBE.format(heavy=HEAVY, folder=str(folder), warehouse=str(scratch / "wh"), reports=str(scratch / "reports"))
    started = time.time()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    line = next(line for line in done.stderr.splitlines() if line.startswith("FIRST "))
    found = json.loads(line[len("FIRST ") :])
    return found["at"] - started, found["loaded"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from pipeline.apps.demo.data import generate_demo_images

    with tempfile.TemporaryDirectory() as tmp:
        folder = generate_demo_images(Path(tmp) / "demo", per_company=2).parent
        helps = [help_seconds() for _ in range(args.repeat)]
        firsts, loaded = [], []
        for attempt in range(args.repeat):
            seconds, loaded = first_image_seconds(folder, Path(tmp) / f"run{attempt}")
            firsts.append(seconds)
    result = {
        "help_s_median": round(statistics.median(helps), 3), "help_s_all": [round(v, 3) for v in helps], "help_target_s": 0.5,
        "first_image_s_median": round(statistics.median(firsts), 3), "first_image_s_all": [round(v, 3) for v in firsts],
        "first_image_target_s": 1.5, "loaded_before_first_image": loaded,
        "help_ratio_to_target": round(statistics.median(helps) / 0.5, 2),
        "first_image_ratio_to_target": round(statistics.median(firsts) / 1.5, 2),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    write_result("startup", result)


if __name__ == "__main__":
    main()

"""What the benchmarks share: where the headshot corpus is, and how results are written."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def default_corpus() -> Path:
    """`$HOMOG_CORPUS`, else the shared corpus beside the checkout (`../shared/data/headshots`)."""
    return Path(os.environ.get("HOMOG_CORPUS") or REPO.parent / "shared" / "data" / "headshots")


def corpus_pictures(root: Path) -> list[Path]:
    """Every picture below the corpus folder, sorted; a clear error where the corpus is absent."""
    if not root.is_dir():
        raise SystemExit(f"corpus not found at {root} (set HOMOG_CORPUS or pass --root): nothing to measure")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in PICTURE_SUFFIXES)


# Calibration and report halves of the corpus, so a threshold is never judged on what fitted it:
# whole folders, and for folders of several people or packs, alternate sitters and packs.
_REPORT_FOLDERS = ("real_ffhq", "real_lab_london/lisa", "real_lab_london/zoom", "real_lab_london/composite")
_REPORT_PACKS = ("corporate-headshots", "natural-headshots")


def corpus_half(relative: str) -> str:
    """ "calibrate" or "report" for a picture's path relative to the corpus root."""
    parts = relative.split("/")
    if relative.startswith(_REPORT_FOLDERS):
        return "report"
    if parts[0] == "ai_diffusion_packs":
        return "report" if parts[1] in _REPORT_PACKS else "calibrate"
    if parts[0] == "real_lab_london" and parts[1] in ("neutral_front", "smiling_front"):
        return "report" if int(parts[2].split("_")[0]) % 2 == 0 else "calibrate"  # alternate sitters
    return "calibrate"  # real_staff_18f, ai_stylegan2


def _commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout
        return head + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_result(name: str, figures: dict[str, Any], out: Path | None = None) -> Path:
    """Write one benchmark's figures as JSON with the commit, date, command and machine; returns the path.
    `name` is the bench module's name, optionally with a `-variant` (one file per variant)."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "bench": name,
        "commit": _commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", f"bench.{name.split('-')[0]}", *sys.argv[1:]]),
        "machine": {
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            # Set on some machines for every process; it changes which BLAS kernel runs, and so the speed.
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
        },
        "figures": figures,
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    print(f"results: {path}")
    return path


class Measured(NamedTuple):
    wall: float  # seconds
    rss: float  # peak MB
    stdout: str
    stderr: str  # the run's log


def measured(command: list[str], env: dict[str, str] | None = None) -> Measured:
    """Wall seconds, peak RSS MB, stdout and stderr of one fresh run. The peak is the process tree's: its
    processes' resident sets summed, sampled every 0.1 s (worker processes hold memory of their
    own), or the largest single process's peak where that is higher (a spike between samples)."""
    wrapper = textwrap.dedent("""
        import json, resource, subprocess, sys, threading, time
        import psutil
        started = time.perf_counter()
        process = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        output = {}
        reader = threading.Thread(target=lambda: output.update(zip(("stdout", "stderr"), process.communicate())))
        reader.start()
        tree_peak = 0
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                tree_peak = max(tree_peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)
        reader.join()
        wall = time.perf_counter() - started
        rss = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, tree_peak / 2**20)
        sys.stderr.write(output["stderr"][-3000:])
        print(json.dumps({"wall": wall, "rss": rss, "rc": process.returncode, "stdout": output["stdout"], "stderr": output["stderr"]}))
    """)
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True, env=env)
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"{command[0]} failed (exit {result['rc']}): {done.stderr[-1500:]}")
    return Measured(result["wall"], result["rss"], result["stdout"], result["stderr"])

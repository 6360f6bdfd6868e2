"""The near-duplicate job side by side with the tools people would use instead: imagededup (PHash),
CleanVision and fastdup, each with its defaults, and `homog run` on the same pictures.

The set is bench.neardup_eval's (originals from every corpus folder, each with `--copies` edited
copies of the 12 edit kinds, hard negatives by construction), laid out flat for the peers. The peers
are installed into a virtual environment of their own (`--venv`, default var/bench-peers; never
dependencies of the project; fastdup runs with SENTRY_OPT_OUT=1, and its bundled model is for
non-commercial use: benchmark use only). Every tool runs in a fresh process, `--repeats` times (best
wall time kept); peak RSS is that process tree's largest resident set.

Printed: wall seconds, peak RSS, precision, recall and F1 over every pair of pictures of one original
(copy to copy included), hard-negative pairs accepted; then the ratios the speed issue asks for:
`homog run` cold against the fastest peer, and the near-duplicate path alone (intake, faces, embed,
index, near_duplicates: what the peers do) against each peer.

    .venv/bin/python -m bench.peers [--per-folder 12] [--copies 2] [--repeats 2] [--venv var/bench-peers]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pandas as pd

from bench.common import REPO, measured, write_result
from bench.neardup_eval import CORPUS, Truth, build

PEER_PACKAGES = ("imagededup", "cleanvision", "fastdup")

# Each driver reads the flat folder (argv[1]) and prints one JSON line: the pairs of file names it
# calls duplicates. Pairs within a tool's duplicate set are all pairs of the set.
DRIVERS = {
    "imagededup_phash": """
        import json, sys
        from imagededup.methods import PHash
        found = PHash(verbose=False).find_duplicates(image_dir=sys.argv[1])
        print(json.dumps(sorted({tuple(sorted((a, b))) for a, dupes in found.items() for b in dupes})))
    """,
    "cleanvision": """
        import itertools, json, os, sys
        from cleanvision import Imagelab
        lab = Imagelab(data_path=sys.argv[1])
        lab.find_issues({"exact_duplicates": {}, "near_duplicates": {}}, verbose=False)
        pairs = set()
        for issue in ("exact_duplicates", "near_duplicates"):
            for group in lab.info[issue]["sets"]:
                names = sorted(os.path.basename(path) for path in group)
                pairs |= set(itertools.combinations(names, 2))
        print(json.dumps(sorted(pairs)))
    """,
    "fastdup": """
        import json, os, sys, tempfile
        import fastdup
        work = tempfile.mkdtemp()
        fd = fastdup.create(work_dir=work, input_dir=sys.argv[1])
        fd.run(verbose=False)
        similar = fd.similarity()
        names = [c for c in similar.columns if c.startswith("filename")] or ["from", "to"]
        pairs = {tuple(sorted((os.path.basename(str(a)), os.path.basename(str(b))))) for a, b in zip(similar[names[0]], similar[names[1]])}
        print(json.dumps(sorted(p for p in pairs if p[0] != p[1])))
    """,
}


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    missing = [p for p in PEER_PACKAGES if subprocess.run([str(python), "-m", "pip", "show", "-q", p], capture_output=True).returncode]
    if missing:
        print(f"installing {', '.join(missing)} into {venv} (pip, as configured on this machine)")
        subprocess.run([str(python), "-m", "pip", "install", "-q", *missing], check=True)
    return python


def flat_copy(folder: Path, out: Path) -> dict[str, str]:
    """The set in one folder, as the peers read it: 'company__file' -> 'company/file'."""
    out.mkdir(parents=True)
    names = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            relative = path.relative_to(folder).as_posix()
            flat = relative.replace("/", "__")
            os.link(path, out / flat)
            names[flat] = relative
    return names


def scores(truth: Truth, predicted: set[frozenset[str]]) -> dict:
    files = sorted(truth.family)
    true_positive = false_positive = n_true = 0
    hard: dict[str, list[bool]] = {}
    for a, b in itertools.combinations(files, 2):
        found = frozenset((a, b)) in predicted
        if truth.family[a] == truth.family[b]:
            n_true += 1
            true_positive += found
        else:
            false_positive += found
            relation = truth.related.get(frozenset((truth.family[a], truth.family[b])))
            if relation:
                hard.setdefault(relation, []).append(found)
    precision = true_positive / max(1, true_positive + false_positive)
    recall = true_positive / max(1, n_true)
    return {
        "precision": round(precision, 4), "recall": round(recall, 4),
        "f1": round(2 * precision * recall / max(1e-9, precision + recall), 4), "false_positives": false_positive,
        "hard_negatives_accepted": {kind: f"{sum(v)}/{len(v)}" for kind, v in sorted(hard.items())},
    }  # fmt: skip


NEARDUP_PATH = """
import sys, tempfile
from pathlib import Path
from bench.neardup_eval import run_path
seconds, pairs, images, candidates = run_path(Path(sys.argv[1]), Path(tempfile.mkdtemp()))
print("PAIRS", pairs[["image_a", "image_b"]].to_json(orient="values"))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-folder", type=int, default=12)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--venv", default=str(REPO / "var" / "bench-peers"))
    args = parser.parse_args()
    if not CORPUS.is_dir():
        raise SystemExit(f"corpus not found at {CORPUS} (set HOMOG_CORPUS): nothing to compare")
    peer_python = ensure_venv(Path(args.venv))
    scratch = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    figures: dict = {"per_folder": args.per_folder, "copies": args.copies, "seed": args.seed, "repeats": args.repeats, "tools": {}}
    try:
        truth = build(scratch / "set", args.per_folder, args.copies, args.seed)
        flat = flat_copy(scratch / "set", scratch / "flat")
        figures["pictures"] = len(truth.family)
        print(f"{len(truth.family)} pictures ({len(truth.half)} originals)")
        env = {**os.environ, "SENTRY_OPT_OUT": "1"}

        def record(name: str, wall: float, rss: float, pairs: set[frozenset[str]]) -> None:
            """A tool's figures, keeping its best wall time (and that run's memory) over the repeats."""
            if wall < figures["tools"].get(name, {}).get("wall_s", float("inf")):
                figures["tools"][name] = {"wall_s": round(wall, 2), "peak_rss_mb": round(rss), **scores(truth, pairs)}

        runs = {name: [str(peer_python), "-c", textwrap.dedent(code), str(scratch / "flat")] for name, code in DRIVERS.items()}
        homog = str(Path(sys.executable).with_name("homog"))
        for repeat in range(args.repeats):
            for name, command in runs.items():
                try:
                    wall, rss, out, _ = measured(command, env)
                except RuntimeError as exc:
                    print(f"{name}: {exc}")
                    figures["tools"][name] = {"failed": str(exc)[:500]}
                    continue
                record(name, wall, rss, {frozenset(flat[n] for n in pair) for pair in json.loads(out.strip().splitlines()[-1])})
            # homog: the whole run cold (a fresh warehouse each time), then the near-duplicate path alone.
            warehouse = scratch / f"warehouse-{repeat}"
            wall, rss, out, _ = measured([homog, "run", "--input", str(scratch / "set"), "--warehouse", str(warehouse), "--embedder", "classic",
                                       "--run-date", "2026-01-01", "--json", "--no-progress", "--reports", str(scratch / f"reports-{repeat}")], env)  # fmt: skip
            table = pd.read_parquet(json.loads(out.strip().splitlines()[-1])["outputs"]["pairs"])
            record("homog_run_cold", wall, rss, {frozenset(p) for p in zip(table["image_a"], table["image_b"])})
            wall, rss, out, _ = measured([sys.executable, "-c", NEARDUP_PATH, str(scratch / "set")], {**env, "PYTHONPATH": str(REPO)})
            line = next(line for line in out.splitlines() if line.startswith("PAIRS "))
            record("homog_neardup_path", wall, rss, {frozenset(p) for p in json.loads(line.removeprefix("PAIRS "))})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\n{'tool':22s} {'wall s':>8s} {'RSS MB':>8s} {'precision':>9s} {'recall':>7s} {'F1':>6s}  hard negatives accepted")
    for name, row in figures["tools"].items():
        if "failed" in row:
            print(f"{name:22s} failed")
            continue
        print(
            f"{name:22s} {row['wall_s']:8.1f} {row['peak_rss_mb']:8d} {row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:6.3f}  {row['hard_negatives_accepted']}"
        )
    peers = {name: row for name, row in figures["tools"].items() if name in DRIVERS and "wall_s" in row}
    if peers:
        fastest = min(peers, key=lambda name: peers[name]["wall_s"])
        cold, path = figures["tools"]["homog_run_cold"], figures["tools"]["homog_neardup_path"]
        figures["ratios"] = {
            "cold_over_fastest_peer": round(cold["wall_s"] / peers[fastest]["wall_s"], 1),
            **{f"neardup_path_over_{name}": round(path["wall_s"] / row["wall_s"], 2) for name, row in peers.items()},
            "fastest_peer": fastest, "best_peer_f1": max(row["f1"] for row in peers.values()),
        }  # fmt: skip
        print(f"\nhomog run cold / fastest peer ({fastest}): {figures['ratios']['cold_over_fastest_peer']}x (target at most 2x)")
        for name in peers:
            print(f"near-duplicate path / {name}: {figures['ratios'][f'neardup_path_over_{name}']}x (target under 1x)")
    write_result("peers", figures)


if __name__ == "__main__":
    main()

"""Are two warehouses' runs the same? Every table partition, every run.json count and every report file,
compared after the two roots are written alike (paths name the warehouse they live in).

    python -m bench.compare_runs BEFORE_WAREHOUSE AFTER_WAREHOUSE [--reports BEFORE AFTER] --label corpus

Proves that a refactoring changed no output; lists, by file, what did change where one was intended.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
from pathlib import Path

import pandas as pd

from bench.common import write_result

DATA_URI = re.compile(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+")
# A source's size and mtime as intake read it: two runs that each download (or generate) their files
# anew differ here by design, whatever else they agree on.
VOLATILE_COLUMNS = ("source_fingerprint",)
VOLATILE_RUN_KEYS = ("started_at", "finished_at", "stage_seconds", "stages_run", "source", "settings", "outputs")


def _normalised(frame: pd.DataFrame, root: str) -> pd.DataFrame:
    frame = frame.drop(columns=[c for c in VOLATILE_COLUMNS if c in frame.columns])
    for column in frame.columns:
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].map(lambda v: v.replace(root, "<root>") if isinstance(v, str) else v)
    return frame


def compare_tables(before: Path, after: Path) -> dict[str, str]:
    """partition -> 'identical' or what differs."""
    verdicts = {}
    names = sorted({p.relative_to(before).as_posix() for p in before.glob("tables/*/run_date=*/part-0.parquet")}
                   | {p.relative_to(after).as_posix() for p in after.glob("tables/*/run_date=*/part-0.parquet")})  # fmt: skip
    for name in names:
        if not (before / name).exists() or not (after / name).exists():
            verdicts[name] = "only in " + ("after" if (after / name).exists() else "before")
            continue
        a = _normalised(pd.read_parquet(before / name), str(before.parent))
        b = _normalised(pd.read_parquet(after / name), str(after.parent))
        try:
            pd.testing.assert_frame_equal(a, b, check_exact=True)
            verdicts[name] = "identical"
        except AssertionError as exc:
            verdicts[name] = "differs: " + " ".join(str(exc).split())[:300]
    return verdicts


def compare_runs(before: Path, after: Path) -> dict[str, str]:
    verdicts = {}
    for path in sorted(before.glob("runs/run_date=*/run.json")):
        name = path.relative_to(before).as_posix()
        other = after / name
        if not other.exists():
            verdicts[name] = "only in before"
            continue
        a, b = (json.loads(p.read_text()) for p in (path, other))
        for key in VOLATILE_RUN_KEYS:
            a.pop(key, None)
            b.pop(key, None)
        differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        verdicts[name] = "identical" if not differing else "differs in " + ", ".join(f"{k} ({a.get(k)} -> {b.get(k)})" for k in differing)
    return verdicts


def compare_reports(before: Path, after: Path, roots: tuple[str, str]) -> dict[str, str]:
    verdicts = {}
    names = sorted({p.relative_to(before).as_posix() for p in before.rglob("*") if p.is_file()}
                   | {p.relative_to(after).as_posix() for p in after.rglob("*") if p.is_file()})  # fmt: skip
    for name in names:
        if not (before / name).exists() or not (after / name).exists():
            verdicts[name] = "only in " + ("after" if (after / name).exists() else "before")
            continue
        a = (before / name).read_text(errors="replace").replace(roots[0], "<root>")
        b = (after / name).read_text(errors="replace").replace(roots[1], "<root>")
        if a == b:
            verdicts[name] = "identical"
            continue
        changed = [
            DATA_URI.sub("<data URI>", line)[:90]
            for line in difflib.unified_diff(a.splitlines(), b.splitlines(), n=0, lineterm="")
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        verdicts[name] = f"differs in {len(changed)} line(s), e.g. " + " | ".join(dict.fromkeys(changed[:4]))
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--reports", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--label", default="run", help="names the result file: bench/results/compare_runs-LABEL.json")
    args = parser.parse_args()
    figures: dict[str, dict[str, str]] = {"tables": compare_tables(args.before, args.after), "runs": compare_runs(args.before, args.after)}
    if args.reports:
        roots = (str(args.before.parent), str(args.after.parent))
        figures["reports"] = compare_reports(args.reports[0], args.reports[1], roots)
    for section, verdicts in figures.items():
        same = sum(v == "identical" for v in verdicts.values())
        print(f"{section}: {same} of {len(verdicts)} identical")
        for name, verdict in verdicts.items():
            if verdict != "identical":
                print(f"  {name}: {verdict}")
    write_result(f"compare_runs-{args.label}", figures)


if __name__ == "__main__":
    main()

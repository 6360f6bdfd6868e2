"""Calibrate the `classic` embedder's near-duplicate threshold on the shared headshot corpus.

Positives: each sampled photo vs each of its generated edits (pipeline/calibration.py).
Hard negatives: the same sitter photographed twice in one studio (real_lab_london neutral vs smiling),
several photos of one person (lisa), different photos of one AI template pack; plus random pairs.
Prints precision/recall at a few thresholds, the best-F1 threshold, recall per edit and the
false-positive rate per negative kind.

    .venv/bin/python -m bench.calibrate_classic [--per-category 25] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import default_corpus, write_result
from pipeline.features.calibration import EDITS, best_f1_threshold, precision_recall
from pipeline.features.embedders.classic import EMBEDDER_ID, describe
from pipeline.ingest.intake import load_rgb

CORPUS = default_corpus()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--per-category", type=int, default=25, help="photos per top-level folder that get edits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.corpus.is_dir():
        print(f"corpus not found at {args.corpus}; nothing to calibrate", file=sys.stderr)
        sys.exit(0)
    rng = np.random.default_rng(args.seed)
    everything = sorted(p for p in args.corpus.rglob("*.jp*g"))
    vectors: dict[Path, np.ndarray] = {}

    def vector(path: Path) -> np.ndarray:
        if path not in vectors:
            vectors[path] = describe(load_rgb(str(path)))
        return vectors[path]

    started = time.perf_counter()
    scores, labels, kinds = [], [], []

    def add(a: np.ndarray, b: np.ndarray, positive: bool, kind: str) -> None:
        scores.append(float(a @ b))
        labels.append(positive)
        kinds.append(kind)

    # Positives: generated edits of a sample from every top-level folder.
    for folder in sorted(p for p in args.corpus.iterdir() if p.is_dir()):
        photos = sorted(folder.rglob("*.jp*g"))
        for path in rng.choice(photos, size=min(args.per_category, len(photos)), replace=False):
            original = load_rgb(str(path))
            base = vector(path)
            for name, edit in EDITS.items():
                add(base, describe(edit(original)), True, f"edit:{name}")

    # Hard negatives.
    lab = args.corpus / "real_lab_london"
    for neutral in sorted((lab / "neutral_front").glob("*.jpg")):
        smiling = sorted((lab / "smiling_front").glob(neutral.stem.split("_")[0] + "_*.jpg"))
        for other in smiling:
            add(vector(neutral), vector(other), False, "neg:same_sitter_same_studio")
    for a, b in itertools.combinations(sorted((lab / "lisa").glob("*.jpg")), 2):
        add(vector(a), vector(b), False, "neg:same_person_other_photo")
    for pack in sorted((args.corpus / "ai_diffusion_packs").iterdir()):
        for a, b in itertools.combinations(sorted(pack.glob("*.jpg")), 2):
            add(vector(a), vector(b), False, "neg:same_ai_template_pack")
    # Random pairs across the corpus.
    for _ in range(2000):
        a, b = rng.choice(len(everything), size=2, replace=False)
        pa, pb = everything[a], everything[b]
        same_folder = pa.relative_to(args.corpus).parts[0] == pb.relative_to(args.corpus).parts[0]
        add(vector(pa), vector(pb), False, "neg:random_pair_same_folder" if same_folder else "neg:random_pair_across_folders")

    elapsed = time.perf_counter() - started
    s, y, k = np.array(scores), np.array(labels), np.array(kinds)
    print(
        f"embedder {EMBEDDER_ID}: {int(y.sum())} positive and {int((~y).sum())} negative pairs "
        f"({len(vectors)} corpus photos described) in {elapsed:.0f} s"
    )
    threshold, precision, recall, f1 = best_f1_threshold(s, y)
    print(f"best F1 threshold {threshold:.4f}: precision {precision:.3f} recall {recall:.3f} F1 {f1:.3f}")
    for t in (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96):
        p, r = precision_recall(s, y, t)
        print(f"  threshold {t:.2f}: precision {p:.3f} recall {r:.3f}")
    print("per kind at the best-F1 threshold (share scored as near-duplicate; min/median score):")
    per_kind = {}
    for kind in sorted(set(kinds)):
        mask = k == kind
        per_kind[kind] = {"n": int(mask.sum()), "flagged": round(float(np.mean(s[mask] >= threshold)), 4)}
        print(
            f"  {kind:38s} n={mask.sum():5d} flagged {np.mean(s[mask] >= threshold):.3f} "
            f"min {s[mask].min():.3f} median {np.median(s[mask]):.3f} max {s[mask].max():.3f}"
        )
    write_result(
        "calibrate_classic",
        {"embedder": EMBEDDER_ID, "positives": int(y.sum()), "negatives": int((~y).sum()),
         "best_f1": {"threshold": round(threshold, 4), "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)},
         "by_threshold": {f"{t:.2f}": dict(zip(("precision", "recall"), map(lambda v: round(v, 4), precision_recall(s, y, t))))
                          for t in (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96)},
         "per_kind_at_best_f1": per_kind},
    )  # fmt: skip


if __name__ == "__main__":
    main()

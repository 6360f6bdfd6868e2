"""Calibrate the geometric verification of near-duplicate candidates (pipeline/verify.py).

Positives: photos from every top-level folder of ../shared/data/headshots against each generated
edit (pipeline/calibration.py). Negatives: the London studio's neutral vs smiling photo of every
sitter, every pair of one person's several photos (lisa), and pairs within each AI diffusion pack.
Prints the acceptance rate per kind at the configured thresholds and a small grid around them.

    .venv/bin/python -m bench.calibrate_verify [--per-folder 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np

from bench.common import default_corpus, write_result

CORPUS = default_corpus()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-folder", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not CORPUS.is_dir():
        print(f"corpus not found at {CORPUS}; nothing to calibrate", file=sys.stderr)
        return

    from pipeline.features.calibration import EDITS
    from pipeline.features.verify import VerifyParams, features, verify
    from pipeline.ingest.intake import load_rgb

    rng = np.random.default_rng(args.seed)
    results: dict[str, list] = {}
    started = time.perf_counter()
    for folder in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
        photos = sorted(folder.rglob("*.jp*g"))
        for path in rng.choice(photos, size=min(args.per_folder, len(photos)), replace=False):
            original = load_rgb(str(path))
            original_features = features(original)
            for name, edit in EDITS.items():
                results.setdefault(f"edit:{name}", []).append(verify(original_features, features(edit(original))))
    lab = CORPUS / "real_lab_london"
    for neutral in sorted((lab / "neutral_front").glob("*.jpg")):
        for smiling in sorted((lab / "smiling_front").glob(neutral.stem.split("_")[0] + "_*.jpg")):
            results.setdefault("neg:same_sitter_same_studio", []).append(
                verify(features(load_rgb(str(neutral))), features(load_rgb(str(smiling))))
            )
    for a, b in itertools.combinations(sorted((lab / "lisa").glob("*.jpg")), 2):
        results.setdefault("neg:same_person_other_photo", []).append(verify(features(load_rgb(str(a))), features(load_rgb(str(b)))))
    for pack in sorted((CORPUS / "ai_diffusion_packs").iterdir()):
        for a, b in itertools.combinations(sorted(pack.glob("*.jpg"))[: args.per_folder], 2):
            results.setdefault("neg:same_ai_pack", []).append(verify(features(load_rgb(str(a))), features(load_rgb(str(b)))))
    print(f"{sum(map(len, results.values()))} pairs verified in {time.perf_counter() - started:.0f} s; thresholds {VerifyParams()}")
    accepted = {kind: round(float(np.mean([v.same_photo for v in verdicts])), 4) for kind, verdicts in results.items()}
    for kind, verdicts in results.items():
        ratio = np.array([v.inlier_ratio for v in verdicts])
        correlation = np.array([v.block_correlation for v in verdicts])
        faces = np.array([v.face_correlation for v in verdicts if v.face_correlation is not None])
        face_range = f"{faces.min():.2f}..{faces.max():.2f} ({len(faces)} with a face)" if len(faces) else "no face found"
        print(
            f"  {kind:30s} n={len(verdicts):4d} accepted {np.mean([v.same_photo for v in verdicts]):.3f} "
            f"inlier ratio {ratio.min():.2f}..{ratio.max():.2f} block correlation {correlation.min():.2f}..{correlation.max():.2f} "
            f"face correlation {face_range}"
        )

    def table(prefix: str) -> np.ndarray:
        return np.array(
            [
                (v.inlier_ratio, v.block_correlation, 2.0 if v.face_correlation is None else v.face_correlation)
                for k, vs in results.items()
                if k.startswith(prefix)
                for v in vs
            ]
        )

    positives, negatives = table("edit"), table("neg")
    print("grid (min inlier ratio, min block correlation, min face correlation): edits accepted, different photos accepted")
    grid = []
    for ratio_min in (0.6,):
        for correlation_min in (0.95, 0.96):
            for face_min in (-1.0, 0.8, 0.85, 0.9, 0.93):
                limits = np.array([ratio_min, correlation_min, face_min])
                edits_accepted = (positives >= limits).all(axis=1).mean()
                wrong = int((negatives >= limits).all(axis=1).sum())
                print(f"  {ratio_min:.2f} {correlation_min:.2f} {face_min:5.2f}: {edits_accepted:.3f}  {wrong}/{len(negatives)}")
                grid.append({"limits": limits.tolist(), "edits_accepted": round(float(edits_accepted), 4), "negatives_accepted": wrong,
                             "negatives": len(negatives)})  # fmt: skip
    write_result("calibrate_verify", {"thresholds": str(VerifyParams()), "accepted_by_kind": accepted, "grid": grid})


if __name__ == "__main__":
    main()

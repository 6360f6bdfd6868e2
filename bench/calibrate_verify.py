"""Calibrate the verification of near-duplicate candidates (pipeline/features/verify.py) on one half
of the corpus and report it on the other (bench.common.corpus_half).

Positives: originals from each folder against one edit of every kind (pipeline.features.calibration
EDIT_KINDS: downscales to 48-200 px, JPEG quality 5-30, crops up to 30%, overlays up to 25%, combined
crop + resize + JPEG, ...). Hard negatives, by kind: the London studio's neutral vs smiling photo of
one sitter, also with the smiling one downscaled or recompressed, and either one cropped, downscaled
and recompressed (low resolution must not make two photos one); every pair of one person's several
photos (lisa, zoom); pairs within an AI pack.

The thresholds chosen are the ones, on a small grid, that accept the most calibration edits while
accepting no calibration hard negative (with a margin): first the rule for clean copies, then beside
it the spread-noise rule for degraded ones (verify.VerifyParams); then recall per edit kind and false
positives per negative kind are printed for both halves at the chosen and at the configured thresholds.

    .venv/bin/python -m bench.calibrate_verify [--per-folder 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import corpus_half, default_corpus, write_result

CORPUS = default_corpus()
GRID = {
    "min_inlier_ratio": (0.2,),
    "min_block_correlation": (0.8, 0.85),
    "min_face_correlation": (0.8, 0.85),
    "max_motion_share": (0.003, 0.0035, 0.004, 0.0045, 0.005),
    "motion_floor_px": (0.6, 0.8, 1.0, 1.2),
    "detail_side": (96, 128, 160),
    "min_small_correlation": (0.96, 0.97, 0.98, 0.985, 0.99),
    "min_face_floor": (-1.0, 0.3, 0.5, 0.6, 0.7),
    "min_small_face_floor": (0.8, 0.85, 0.9, 0.93),
}
# The spread-noise rule (verify.VerifyParams), chosen beside the rule above once that is chosen.
SPREAD_GRID = {
    "max_face_residual_ratio": (1.4, 1.6, 1.8, 2.0),
    "min_noisy_correlation": (0.84, 0.86, 0.88, 0.9, 0.92),
    "min_noisy_face_floor": (0.3, 0.5, 0.6, 0.7),
    "noisy_motion_floor_px": (0.8, 1.0, 1.2, 1.4),
}


def _measure(job: tuple[str, str, str, str | None, int]) -> tuple[str, str, np.ndarray, np.ndarray]:
    """(half, kind, both views' measures, each view's face median before the refinement) of one pair:
    an original and its edit (`edit`), or two corpus photos (`other`), the second one degraded by
    `edit` where given."""
    from PIL import Image

    from pipeline.features.calibration import EDIT_KINDS
    from pipeline.features.verify import as_measures, features, measure_views

    half, kind, first, second_or_edit, seed = job
    rng = np.random.default_rng(seed)
    original = Image.open(first).convert("RGB")
    if kind.startswith("edit:"):
        other = EDIT_KINDS[kind.removeprefix("edit:")](original, rng)
    else:
        path, _, degrade = (second_or_edit or "").partition("|")
        other = Image.open(path).convert("RGB")
        if degrade:
            other = EDIT_KINDS[degrade](other, rng)
    views = measure_views(features(original), features(other))
    unrefined = np.array([np.nan if v.unrefined_face_correlation is None else v.unrefined_face_correlation for v in views])
    return half, kind, as_measures(views), unrefined


def jobs(per_folder: int, seed: int) -> list[tuple[str, str, str, str | None, int]]:
    from pipeline.features.calibration import EDIT_KINDS

    rng = np.random.default_rng(seed)
    found: list[tuple[str, str, str, str | None, int]] = []

    def add(kind: str, first: Path, second: str | None = None) -> None:
        relative = first.relative_to(CORPUS).as_posix()
        found.append((corpus_half(relative), kind, str(first), second, int(rng.integers(2**31))))

    folders = sorted({p.parent for p in CORPUS.rglob("*.jpg")})
    for folder in folders:
        photos = sorted(folder.glob("*.jpg"))
        for half in ("calibrate", "report"):
            mine = [p for p in photos if corpus_half(p.relative_to(CORPUS).as_posix()) == half]
            for original in rng.permutation(mine)[: per_folder // (2 if "lab_london" in str(folder) else 1)]:
                for name in EDIT_KINDS:
                    add(f"edit:{name}", Path(original))
    lab = CORPUS / "real_lab_london"
    for neutral in sorted((lab / "neutral_front").glob("*.jpg")):
        for smiling in sorted((lab / "smiling_front").glob(neutral.stem.split("_")[0] + "_*.jpg")):
            add("neg:same_sitter_same_session", neutral, str(smiling))
            add("neg:same_sitter_low_resolution", neutral, f"{smiling}|resize")
            add("neg:same_sitter_low_quality", neutral, f"{smiling}|jpeg_low")
            # Cropped, downscaled and recompressed, either one: the noise such a copy spreads over
            # the picture is what the spread-noise rule forgives.
            add("neg:same_sitter_crop_resize_jpeg", neutral, f"{smiling}|crop_resize_jpeg")
            add("neg:same_sitter_crop_resize_jpeg", smiling, f"{neutral}|crop_resize_jpeg")
    people = sorted((lab / "lisa").glob("*.jpg")) + sorted((lab / "zoom").glob("*.jpg"))
    for a, b in itertools.combinations(people, 2):
        add("neg:same_person_other_photo", a, str(b))
    for pack in sorted((CORPUS / "ai_diffusion_packs").iterdir()):
        for a, b in itertools.combinations(sorted(pack.glob("*.jpg"))[:per_folder], 2):
            add("neg:same_ai_pack", a, str(b))
    return found


def as_array(measured: list[tuple[str, str, np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.stack([np.asarray(views, dtype=float) for _, _, views, _ in measured])


def refinement_gate(params, measured: list[tuple[str, str, np.ndarray, np.ndarray]], views: np.ndarray) -> dict[str, float]:  # noqa: ANN001
    """Whether verification's face gate on the refinement (verify._FACE_REFINE_REACH) could have cost
    an accepted view: the lowest face median before the refinement of any view these thresholds
    accept (it must stay at or above the gate, the face median some rule needs less the reach)."""
    from pipeline.features.verify import _FACE_REFINE_REACH

    accepted = params.accepted(*(views[..., i] for i in range(views.shape[-1])))
    unrefined = np.stack([faces for *_, faces in measured])[accepted]
    lowest = float(np.nanmin(unrefined)) if np.isfinite(unrefined).any() else float("nan")
    gate = params.face_needed - _FACE_REFINE_REACH
    return {"accepted_views_with_a_face": int(np.isfinite(unrefined).sum()), "lowest_unrefined_face_median": round(lowest, 4),
            "gate": round(gate, 4), "margin": round(lowest - gate, 4)}  # fmt: skip


def rates(params, measured: list[tuple[str, str, np.ndarray, np.ndarray]], views: np.ndarray, half: str) -> dict[str, float]:  # noqa: ANN001
    from pipeline.features.verify import accepted_views

    flags = accepted_views(params, views)
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for (pair_half, kind, *_), flag in zip(measured, flags):
        if pair_half == half:
            by_kind[kind].append(bool(flag))
    return {kind: round(float(np.mean(found)), 4) for kind, found in sorted(by_kind.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-folder", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--save", help="also keep the raw measures in this pickle file, for analysis")
    parser.add_argument("--load", help="measures kept by --save: try thresholds without measuring again")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        raise SystemExit(f"corpus not found at {CORPUS} (set HOMOG_CORPUS): nothing to calibrate")
    import pickle

    from pipeline.features.verify import VerifyParams, accepted_views

    started = time.perf_counter()
    if args.load:
        measured = pickle.loads(Path(args.load).read_bytes())
    else:
        with ProcessPoolExecutor(args.workers) as pool:
            measured = list(pool.map(_measure, jobs(args.per_folder, args.seed), chunksize=8))
    seconds = time.perf_counter() - started
    if args.save:
        Path(args.save).write_bytes(pickle.dumps(measured))
    print(f"{len(measured)} pairs measured in {seconds:.0f} s ({1000 * seconds / len(measured) * args.workers:.0f} ms per pair per worker)")

    views = as_array(measured)
    calibration = np.array([half == "calibrate" for half, *_ in measured])
    negative = np.array([kind.startswith("neg:") for _, kind, *_ in measured])

    def loosened(params: VerifyParams) -> VerifyParams:
        """A margin: no calibration hard negative may pass even with looser thresholds than these, or
        the choice sits on the edge of what these few negatives happen to be."""
        return dataclasses.replace(
            params, max_motion_share=params.max_motion_share * 1.1, motion_floor_px=params.motion_floor_px * 1.1,
            min_block_correlation=params.min_block_correlation - 0.005, min_face_correlation=params.min_face_correlation - 0.005,
            min_small_correlation=params.min_small_correlation - 0.005, min_face_floor=params.min_face_floor - 0.05,
            min_small_face_floor=params.min_small_face_floor - 0.05, max_face_residual_ratio=params.max_face_residual_ratio * 1.1,
            min_noisy_correlation=params.min_noisy_correlation - 0.01, min_noisy_face_floor=params.min_noisy_face_floor - 0.05,
            noisy_motion_floor_px=params.noisy_motion_floor_px * 1.1,
        )  # fmt: skip

    def choose(candidates: Iterable[VerifyParams], strictness) -> tuple[float, float, VerifyParams]:  # noqa: ANN001
        """Of the thresholds that accept no calibration hard negative (with the margin), those within
        half a point of the best recall, the strictest: recall that close is noise on this many pairs,
        and a stricter rule is further from the negatives not seen here."""
        scored = [
            (float(accepted_views(params, views)[calibration & ~negative].mean()), params)
            for params in candidates
            if not accepted_views(loosened(params), views[calibration & negative]).any()
        ]
        if not scored:
            raise SystemExit("no threshold on the grid accepts no calibration hard negative")
        top = max(recall for recall, _ in scored)
        recall, params = max((item for item in scored if item[0] >= top - 0.005), key=lambda item: strictness(item[1]))
        return recall, top, params

    # First the rule for clean copies, with the spread-noise rule off; then the spread-noise rule beside it.
    off = dict.fromkeys(SPREAD_GRID, 0.0) | {"min_noisy_correlation": 2.0}
    _, _, clean = choose(
        (VerifyParams(**dict(zip(GRID, values)), **off) for values in itertools.product(*GRID.values())),
        lambda p: (
            p.min_face_floor, p.min_small_face_floor, -p.max_motion_share, -p.motion_floor_px,
            p.min_small_correlation, p.min_block_correlation, p.min_face_correlation, p.min_inlier_ratio,
        ),
    )  # fmt: skip
    recall, top, chosen = choose(
        (dataclasses.replace(clean, **dict(zip(SPREAD_GRID, values))) for values in itertools.product(*SPREAD_GRID.values())),
        lambda p: (-p.max_face_residual_ratio, p.min_noisy_face_floor, p.min_noisy_correlation, -p.noisy_motion_floor_px),
    )
    configured = VerifyParams.from_thresholds()
    print(f"chosen on the calibration half (edits accepted {recall:.3f}, best {top:.3f}; no hard negative, with a margin): {chosen}")
    figures: dict = {"pairs": len(measured), "seconds": round(seconds, 1), "chosen": str(chosen), "configured": str(configured)}
    for label, params in (("chosen", chosen), ("configured", configured)):
        for half in ("calibrate", "report"):
            found = rates(params, measured, views, half)
            figures[f"{label}:{half}"] = found
            edits = [v for k, v in found.items() if k.startswith("edit:")]
            print(f"\n{label} thresholds, {half} half: mean recall over edit kinds {np.mean(edits):.3f}")
            for kind, rate in found.items():
                n = sum(1 for h, k, *_ in measured if h == half and k == kind)
                print(f"  {kind:34s} n={n:4d} {'recall' if kind.startswith('edit:') else 'accepted (false positives)'} {rate:.3f}")
        figures[f"{label}:refinement_gate"] = gate = refinement_gate(params, measured, views)
        print(
            f"\n{label} thresholds, the face gate on the refinement: lowest face median before it of an accepted view "
            f"{gate['lowest_unrefined_face_median']:.3f}, gate {gate['gate']:.3f} (margin {gate['margin']:.3f})"
        )
    write_result("calibrate_verify", figures)


if __name__ == "__main__":
    main()

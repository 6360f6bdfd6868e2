"""End-to-end near-duplicate evaluation: a set of originals and their edited copies built from the
corpus, run through the pipeline's near-duplicate path (intake, faces, embed, index,
near_duplicates), scored pair by pair against the truth.

The set: originals from every folder (both halves of bench.common.corpus_half, scored separately:
thresholds are calibrated on the "calibrate" half by bench.calibrate_verify), each with `--copies`
edited copies of different kinds (pipeline.features.calibration.EDIT_KINDS), spread over eight
companies, so that copies are also matched to each other (a group, not only pairs). Hard
negatives are in the set by construction: both photos of London studio sitters (neutral, smiling),
one person's several photos (lisa, zoom) and several photos of one AI pack, each with their copies.

Printed per half: precision, recall and F1 over all true pairs (original-copy and copy-copy), and
recall over the pairs where neither picture is a combined edit (the single edits of
pipeline.features.calibration: what reposting one photo usually does);
recall per edit kind (original-copy pairs); copy-copy recall; candidate recall per kind (did the
pair reach verification at all); false positives per hard-negative kind; seconds per stage.

    .venv/bin/python -m bench.neardup_eval [--per-folder 12] [--copies 2] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import corpus_half, default_corpus, write_result

CORPUS = default_corpus()
COMPANIES = [f"company-{i:02d}" for i in range(8)]


@dataclass
class Truth:
    family: dict[str, str] = field(default_factory=dict)  # "company/file" -> original's corpus path
    kind: dict[str, str] = field(default_factory=dict)  # "company/file" -> "original" or the edit kind
    half: dict[str, str] = field(default_factory=dict)  # original's corpus path -> calibrate | report
    related: dict[frozenset[str], str] = field(default_factory=dict)  # two originals -> hard-negative kind


def _originals(rng: np.random.Generator, per_folder: int) -> tuple[list[Path], dict[frozenset[str], str], dict[str, str]]:
    """Originals, the hard-negative relation between some of them, and originals that are the same
    picture as an earlier one (-> that one)."""
    from PIL import Image

    chosen: list[Path] = []
    same_picture: dict[str, str] = {}
    related: dict[frozenset[str], str] = {}
    lab = CORPUS / "real_lab_london"
    for folder in sorted({p.parent for p in CORPUS.rglob("*.jpg")}):
        if folder.parent == lab and folder.name in ("neutral_front", "smiling_front"):
            continue  # chosen by sitter below
        photos = sorted(folder.glob("*.jpg"))
        if folder.name in ("lisa", "zoom"):
            picked = photos
        else:
            picked = [Path(p) for p in rng.permutation(photos)[:per_folder]]
        chosen += picked
        if folder.parent.name == "ai_diffusion_packs":
            for a, b in itertools.combinations(picked, 2):
                related[frozenset((str(a), str(b)))] = "same_ai_pack"
    people = sorted((lab / "lisa").glob("*.jpg")) + sorted((lab / "zoom").glob("*.jpg"))
    for a, b in itertools.combinations(people, 2):
        related[frozenset((str(a), str(b)))] = "same_person_other_photo"
    neutrals = sorted((lab / "neutral_front").glob("*.jpg"))
    for neutral in rng.permutation(neutrals)[:per_folder]:
        neutral = Path(neutral)
        smiling = sorted((lab / "smiling_front").glob(neutral.stem.split("_")[0] + "_*.jpg"))
        chosen += [neutral, *smiling]
        for other in smiling:
            related[frozenset((str(neutral), str(other)))] = "same_sitter_same_session"
    # The corpus holds the same picture more than once (a StyleGAN face served twice, packs whose
    # cover is a larger copy of a numbered photo): such originals are one photograph in the truth.
    # Judged here independently of the pipeline: same aspect, and 32 px grey thumbnails that differ
    # by under 2 grey levels on average.
    thumbs: list[tuple[float, np.ndarray]] = []
    for path in chosen:
        with Image.open(path) as picture:
            aspect = picture.width / picture.height
            thumb = np.asarray(picture.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=float)
        twin = next((i for i, (a, t) in enumerate(thumbs) if abs(a - aspect) < 0.02 and np.abs(t - thumb).mean() < 2), None)
        if twin is not None:
            first = str(chosen[twin])
            same_picture[str(path)] = same_picture.get(first, first)
        thumbs.append((aspect, thumb))
    return chosen, related, same_picture


def build(out: Path, per_folder: int, copies: int, seed: int) -> Truth:
    from PIL import Image

    from pipeline.features.calibration import EDIT_FORMATS, EDIT_KINDS, encoded

    rng = np.random.default_rng(seed)
    originals, related, same_picture = _originals(rng, per_folder)
    truth = Truth(related=related)
    kinds = sorted(EDIT_KINDS)
    for number, path in enumerate(originals):
        truth.half[str(path)] = corpus_half(path.relative_to(CORPUS).as_posix())
        if str(path) in same_picture:
            print(f"  {path.relative_to(CORPUS)} is the same picture as {Path(same_picture[str(path)]).relative_to(CORPUS)}")
        picture = Image.open(path).convert("RGB")
        company = COMPANIES[int(rng.integers(len(COMPANIES)))]
        (out / company).mkdir(parents=True, exist_ok=True)
        name = f"{company}/p{number:04d}-original{path.suffix}"
        shutil.copyfile(path, out / name)
        family = same_picture.get(str(path), str(path))
        truth.family[name], truth.kind[name] = family, "original"
        for kind in rng.choice(kinds, size=copies, replace=False):
            edited = EDIT_KINDS[kind](picture, rng)
            company = COMPANIES[int(rng.integers(len(COMPANIES)))]
            (out / company).mkdir(parents=True, exist_ok=True)
            fmt = EDIT_FORMATS.get(kind, "JPEG")
            name = f"{company}/p{number:04d}-{kind}.{fmt.lower().replace('jpeg', 'jpg')}"
            (out / name).write_bytes(encoded(edited, fmt, **({"quality": 95} if fmt == "JPEG" else {})))
            truth.family[name], truth.kind[name] = family, kind
    return truth


def run_path(folder: Path, scratch: Path) -> tuple[dict[str, float], object, object, set[frozenset[str]]]:
    """The near-duplicate path of a run: seconds per stage, the pairs and images tables, and the content
    pairs that reached verification (the candidates)."""
    from pipeline import layout
    from pipeline.config import load_settings
    from pipeline.context import RunContext
    from pipeline.features.verify import VerifyParams
    from pipeline.ingest.sources import scan_folder
    from pipeline.stages import BY_NAME, advance, begin_run

    settings = load_settings(warehouse=str(scratch / "warehouse"), embedder="classic")
    ctx = RunContext(settings, "2026-01-01", progress=False, rows=scan_folder(str(folder)))
    ctx.embedder()
    begin_run(ctx)
    seconds = {}
    for name in ("intake", "faces", "embed", "index", "near_duplicates"):
        started = time.perf_counter()
        ctx = advance(ctx, BY_NAME[name].run(ctx))
        seconds[name] = round(time.perf_counter() - started, 2)
    pairs = ctx.warehouse.read_table("pairs", ctx.run_date)
    images = ctx.warehouse.read_table("images", ctx.run_date)
    candidates: set[frozenset[str]] = set()
    for table in ctx.warehouse.read_shards(layout.verifications_folder(VerifyParams.from_thresholds(settings.thresholds).cache_id)):
        candidates |= {frozenset(p) for p in zip(table.column("content_a").to_pylist(), table.column("content_b").to_pylist())}
    print(f"{len(candidates)} candidate content pairs verified in {seconds['near_duplicates']:.1f} s")
    return seconds, pairs, images, candidates


def score(truth: Truth, pairs, images, candidates: set[frozenset[str]]) -> dict:  # noqa: ANN001 - pandas frames
    """Pair-level scores per half, per edit kind and per hard-negative kind, and the recall over the
    pairs where neither picture is a combined edit (crop + downscale + JPEG)."""
    from pipeline.features.calibration import COMBINED_EDITS

    # A folder source names each row's image by its path below the folder: "company/file", as `truth`.
    predicted = {frozenset((r.image_a, r.image_b)) for r in pairs.itertuples()}
    content = {r.image: r.content_sha256 for r in images.itertuples() if r.status == "ok"}
    files = sorted(truth.family)
    result: dict = {}
    for half in ("calibrate", "report"):
        mine = [f for f in files if truth.half[truth.family[f]] == half]
        by_kind: dict[str, list[bool]] = defaultdict(list)
        reached: dict[str, list[bool]] = defaultdict(list)
        negatives: dict[str, list[bool]] = defaultdict(list)
        true_positive = false_positive = n_true = 0
        single = {"found": 0, "true": 0}  # pairs where no picture is a combined edit
        for a, b in itertools.combinations(mine, 2):
            pair = frozenset((a, b))
            found = pair in predicted
            same = truth.family[a] == truth.family[b]
            if same:
                n_true += 1
                true_positive += found
                kinds = {truth.kind[a], truth.kind[b]}
                if not kinds & COMBINED_EDITS:
                    single["true"] += 1
                    single["found"] += found
                edits = kinds - {"original"}
                label = "copy_to_copy" if "original" not in kinds else edits.pop() if edits else "corpus_duplicate"
                by_kind[label].append(found)
                contents = frozenset((content.get(a), content.get(b)))
                reached[label].append(found or len(contents) == 1 or contents in candidates)
            else:
                false_positive += found
                relation = truth.related.get(frozenset((truth.family[a], truth.family[b])))
                if relation:
                    negatives[relation].append(found)
                elif found:
                    negatives["unrelated"].append(True)
        precision = true_positive / max(1, true_positive + false_positive)
        recall = true_positive / max(1, n_true)
        result[half] = {
            "photos": len(mine), "true_pairs": n_true, "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(2 * precision * recall / max(1e-9, precision + recall), 4), "false_positives": false_positive,
            "recall_single_edits": round(single["found"] / max(1, single["true"]), 4), "true_pairs_single_edits": single["true"],
            "recall_by_kind": {k: round(float(np.mean(v)), 4) for k, v in sorted(by_kind.items())},
            "pairs_by_kind": {k: len(v) for k, v in sorted(by_kind.items())},
            "candidate_recall_by_kind": {k: round(float(np.mean(v)), 4) for k, v in sorted(reached.items())},
            "hard_negative_false_positives": {k: f"{int(np.sum(v))}/{len(v)}" for k, v in sorted(negatives.items())},
        }  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-folder", type=int, default=12)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="build the set and the warehouse in this folder and keep them (default: a temporary one)")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        raise SystemExit(f"corpus not found at {CORPUS} (set HOMOG_CORPUS): nothing to evaluate")
    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-neardup-"))
    try:
        truth = build(scratch / "set", args.per_folder, args.copies, args.seed)
        print(f"{len(truth.family)} pictures ({len(truth.half)} originals) in {scratch / 'set'}")
        seconds, pairs, images, candidates = run_path(scratch / "set", scratch)
        print("seconds per stage:", seconds)
        result = score(truth, pairs, images, candidates)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    for half, figures in result.items():
        print(f"\n{half} half: {figures['photos']} photos, {figures['true_pairs']} true pairs: precision {figures['precision']:.3f} "
              f"recall {figures['recall']:.3f} F1 {figures['f1']:.3f} ({figures['false_positives']} false positive pairs); "
              f"recall without combined edits {figures['recall_single_edits']:.3f} of {figures['true_pairs_single_edits']} pairs")  # fmt: skip
        for kind, recall in figures["recall_by_kind"].items():
            print(
                f"  {kind:22s} n={figures['pairs_by_kind'][kind]:4d} recall {recall:.3f}  reached verification {figures['candidate_recall_by_kind'][kind]:.3f}"
            )
        print("  hard negatives accepted:", figures["hard_negative_false_positives"])
    write_result("neardup_eval", {"seconds": seconds, "per_folder": args.per_folder, "copies": args.copies, "seed": args.seed, **result})


if __name__ == "__main__":
    main()

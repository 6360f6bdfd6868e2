"""Validate the homogeneity index on real photos (../shared/data/headshots), in one pipeline run.

Pages ("companies") built from the corpus:
- each AI diffusion pack, the London studio set (neutral), the real 18F staff page;
- `mix-XXX`: 20 photos of the 18F page with 0, 25, 50, 75, 100% replaced by one AI pack;
- `18f-subNN`: random subsets of the 18F page of 10, 20 and 40 photos.
Prints each page's index with its 95% interval and checks the three expectations of the analytics
issue: packs and studio above 18F, a strictly increasing index along the mix, overlapping intervals
across subset sizes.

One mix and one set of subsets is one draw. `--draws N` then repeats the mix (for every pack) and
the subsets on N further random draws, computed from the run's own vectors, reference and
near-duplicate pairs with the pipeline's `page_index`, and prints how often each check holds: how
robust the result is, rather than whether one draw passed.

    .venv/bin/python -m bench.validate_homogeneity [--embedder classic|clip] [--pack corporate-headshots] [--draws 20]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import default_corpus, write_result

CORPUS = default_corpus()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", default="classic", choices=["classic", "clip", "auto"])
    parser.add_argument("--pack", default="corporate-headshots")
    parser.add_argument("--warehouse", default=None, help="reuse a warehouse (its embedding cache) between runs")
    parser.add_argument("--draws", type=int, default=20, help="random draws for the robustness figures (0: none)")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        print(f"corpus not found at {CORPUS}; nothing to validate", file=sys.stderr)
        return

    from pipeline.config import load_settings
    from pipeline.ingest.sources import read_manifest
    from pipeline.stages import run_pipeline

    rng = np.random.default_rng(0)
    staff = sorted(str(p) for p in (CORPUS / "real_staff_18f").glob("*.jp*g"))
    pack = sorted(str(p) for p in (CORPUS / "ai_diffusion_packs" / args.pack).glob("*.jp*g"))
    rows: list[tuple[str, str]] = []
    for folder in sorted((CORPUS / "ai_diffusion_packs").iterdir()):
        rows += [(f"pack:{folder.name}", str(p)) for p in sorted(folder.glob("*.jp*g"))]
    rows += [("studio:london-neutral", str(p)) for p in sorted((CORPUS / "real_lab_london" / "neutral_front").glob("*.jpg"))]
    rows += [("real:18f", p) for p in staff]
    base = list(rng.choice(staff, 20, replace=False))
    replacements = list(rng.choice(pack, 20, replace=False))
    mixes = []
    for share in (0, 25, 50, 75, 100):
        k = 20 * share // 100
        mixes.append(f"mix-{share:03d}")
        rows += [(mixes[-1], p) for p in base[: 20 - k] + replacements[:k]]
    subsets = []
    for size in (10, 20, 40):
        subsets.append(f"18f-sub{size:02d}")
        rows += [(subsets[-1], p) for p in rng.choice(staff, size, replace=False)]

    scratch = Path(tempfile.mkdtemp(prefix="validate-homog-"))
    manifest = scratch / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["company", "image"])
        writer.writerows(rows)
    settings = load_settings(warehouse=args.warehouse or str(scratch / "warehouse"), embedder=args.embedder)
    ensure_reference(settings)
    result = run_pipeline(read_manifest(str(manifest)), settings, run_date="2026-01-01", progress=False)
    import pandas as pd

    companies = pd.read_parquet(result.outputs["companies"]).set_index("company")
    print(f"embedder {result.embedder}")
    print(f"{'page':34s} {'n':>4s} {'index':>6s} {'95% interval':>16s} {'near-dup':>8s} {'vendi':>6s}")
    for company, row in companies.iterrows():
        print(
            f"{company:34s} {row['n_images']:4d} {row['homogeneity_index']:6.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] "
            f"{row['near_dup_rate']:8.3f} {row['vendi_score']:6.2f}"
        )
    staff_index = companies.loc["real:18f", "homogeneity_index"]
    above = [c for c in companies.index if c.startswith(("pack:", "studio:"))]
    below = [c for c in above if companies.loc[c, "homogeneity_index"] <= staff_index]
    print(f"\nindex reference: {companies['index_reference'].iloc[0]}")
    print(f"pages above the 18F page: {len(above) - len(below)} of {len(above)}" + (f" (not: {', '.join(below)})" if below else ""))
    mix = [companies.loc[m, "homogeneity_index"] for m in mixes]
    print(f"mix 0..100% {args.pack}: {' '.join(f'{v:.3f}' for v in mix)}; strictly increasing: {all(b > a for a, b in zip(mix, mix[1:]))}")
    intervals = [(companies.loc[s, "ci_low"], companies.loc[s, "ci_high"]) for s in subsets]
    overlap = max(low for low, _ in intervals) <= min(high for _, high in intervals)
    print(f"18F subsets 10/20/40: intervals {' '.join(f'[{low:.3f}, {high:.3f}]' for low, high in intervals)}; all overlap: {overlap}")
    figures = {
        "embedder": result.embedder, "index_reference": str(companies["index_reference"].iloc[0]),
        "pages": companies[["n_images", "homogeneity_index", "ci_low", "ci_high", "near_dup_rate", "vendi_score"]].round(4).to_dict(orient="index"),
        "pages_above_18f": len(above) - len(below), "pages_that_should_be_above": len(above), "not_above": below,
        "mix": {"pack": args.pack, "index_at_0_25_50_75_100": [round(float(v), 4) for v in mix],
                "strictly_increasing": all(b > a for a, b in zip(mix, mix[1:]))},
        "subsets_10_20_40_intervals_overlap": bool(overlap),
    }  # fmt: skip
    if args.draws:
        figures["robustness"] = robustness(settings, result.embedder, staff, args.draws)
    write_result(f"validate_homogeneity-{result.embedder}", figures)


def ensure_reference(settings) -> None:  # type: ignore[no-untyped-def]
    """Without a stored or shipped reference the run would freeze one fitted on the validation pages
    themselves; fit it instead on the same held-out folders as the shipped classic one."""
    from pipeline.features.embed import resolve_embedder
    from pipeline.features.reference import fit_from_folders, save_reference, stored_reference
    from pipeline.warehouse import Warehouse

    embedder = resolve_embedder(settings).embedder
    warehouse = Warehouse(settings.warehouse)
    if stored_reference(warehouse, embedder.id, embedder.dim) is None:
        folders = [str(CORPUS / "real_ffhq"), str(CORPUS / "ai_stylegan2")]
        reference, _ = fit_from_folders(folders, embedder, settings.intake)
        save_reference(warehouse, reference)
        print(f"fitted a {embedder.id} reference on {reference.source}")


def robustness(settings, embedder_id: str, staff: list[str], draws: int) -> dict:  # type: ignore[no-untyped-def]
    """The mix and subset checks on `draws` random draws each, from the run's stored vectors."""
    from pipeline.features.embed import load_cache
    from pipeline.features.reference import no_reference, stored_reference
    from pipeline.metrics.homogeneity import page_index
    from pipeline.warehouse import Warehouse

    warehouse = Warehouse(settings.warehouse)
    images = warehouse.read_table("images", "2026-01-01")
    content_of = dict(zip(images["image"], images["content_sha256"]))
    keys, vectors = load_cache(warehouse, embedder_id)
    reference = stored_reference(warehouse, embedder_id, vectors.shape[1]) or no_reference(embedder_id, vectors.shape[1])
    centred = dict(zip(keys, reference.centre(vectors)))
    pairs = warehouse.read_table("pairs", "2026-01-01")
    duplicates = {frozenset((content_of[a], content_of[b])) for a, b in zip(pairs["image_a"], pairs["image_b"])}

    def index_of(paths: list[str], seed: int) -> tuple[float, float, float]:
        contents = [content_of[p] for p in paths]
        duplicate = np.array([[a != b and frozenset((a, b)) in duplicates for b in contents] for a in contents])
        return page_index(np.stack([centred[c] for c in contents]), duplicate, settings.thresholds.bootstrap_samples, seed)

    print(f"\nrobustness over {draws} random draws (reference {reference.id}):")
    found: dict = {"draws": draws, "mix_strictly_increasing": {}}
    for folder in sorted((CORPUS / "ai_diffusion_packs").iterdir()):
        pack = sorted(str(p) for p in folder.glob("*.jp*g"))
        for size in (12, 20):
            if len(pack) < size:
                continue
            increasing = 0
            for draw in range(draws):
                rng = np.random.default_rng(1000 + draw)
                base, replacements = list(rng.choice(staff, size, replace=False)), list(rng.choice(pack, size, replace=False))
                curve = [index_of(base[: size - k] + replacements[:k], draw)[0] for k in (size * s // 100 for s in (0, 25, 50, 75, 100))]
                increasing += all(b > a for a, b in zip(curve, curve[1:]))
            print(f"  mix with {folder.name:26s} page of {size}: strictly increasing in {increasing}/{draws} draws")
            found["mix_strictly_increasing"][f"{folder.name}/{size}"] = increasing
    overlapping = 0
    for draw in range(draws):
        rng = np.random.default_rng(2000 + draw)
        intervals = [index_of(list(rng.choice(staff, size, replace=False)), draw)[1:] for size in (10, 20, 40)]
        overlapping += max(low for low, _ in intervals) <= min(high for _, high in intervals)
    print(f"  18F subsets of 10/20/40: intervals overlap in {overlapping}/{draws} draws")
    found["subsets_intervals_overlap"] = overlapping
    return found


if __name__ == "__main__":
    main()

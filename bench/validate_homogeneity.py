"""Validate the homogeneity index on real photos (../shared/data/headshots), in one pipeline run.

Pages ("companies") built from the corpus:
- each AI diffusion pack, the London studio set (neutral), the real 18F staff page;
- `mix-XXX`: 20 photos of the 18F page with 0, 25, 50, 75, 100% replaced by one AI pack;
- `18f-subNN`: random subsets of the 18F page of 10, 20 and 40 photos.
Prints each page's index with its 95% interval and checks the three expectations of the analytics
issue: packs and studio above 18F, a strictly increasing index along the mix, overlapping intervals
across subset sizes.

    .venv/bin/python bench/validate_homogeneity.py [--embedder classic|clip] [--pack corporate-headshots]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "headshots"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", default="classic", choices=["classic", "clip", "auto"])
    parser.add_argument("--pack", default="corporate-headshots")
    parser.add_argument("--warehouse", default=None, help="reuse a warehouse (its embedding cache) between runs")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        print(f"corpus not found at {CORPUS}; nothing to validate", file=sys.stderr)
        return

    from pipeline.config import load_settings
    from pipeline.run import run_pipeline
    from pipeline.sources import read_manifest

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
    result = run_pipeline(read_manifest(str(manifest)), settings, run_date="2026-01-01", progress=False)
    import pandas as pd

    companies = pd.read_parquet(result.outputs["companies"]).set_index("company")
    print(f"embedder {result.embedder}")
    print(f"{'page':34s} {'n':>4s} {'index':>6s} {'95% interval':>16s} {'near-dup':>8s} {'vendi':>6s}")
    for company, row in companies.iterrows():
        print(f"{company:34s} {row['n_images']:4d} {row['homogeneity_index']:6.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] "
              f"{row['near_dup_rate']:8.3f} {row['vendi_score']:6.2f}")
    staff_index = companies.loc["real:18f", "homogeneity_index"]
    above = [c for c in companies.index if c.startswith(("pack:", "studio:"))]
    print(f"\npages above the 18F page: {sum(companies.loc[c, 'homogeneity_index'] > staff_index for c in above)} of {len(above)} "
          f"({', '.join(c for c in above if companies.loc[c, 'homogeneity_index'] <= staff_index) or 'all'} not)")
    mix = [companies.loc[m, "homogeneity_index"] for m in mixes]
    print(f"mix 0..100% {args.pack}: {' '.join(f'{v:.3f}' for v in mix)}; strictly increasing: {all(b > a for a, b in zip(mix, mix[1:]))}")
    intervals = [(companies.loc[s, "ci_low"], companies.loc[s, "ci_high"]) for s in subsets]
    overlap = max(low for low, _ in intervals) <= min(high for _, high in intervals)
    print(f"18F subsets 10/20/40: intervals {' '.join(f'[{l:.3f}, {h:.3f}]' for l, h in intervals)}; all overlap: {overlap}")


if __name__ == "__main__":
    main()

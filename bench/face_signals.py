"""Template signals on the corpus: does each AI set differ from the real 18F staff page in the
direction the seed describes (tighter framing, more symmetric, smoother skin, plainer and more
uniform backdrops, one colour grade)?

Run: .venv/bin/python -m bench.face_signals [--root ../shared/data/headshots]
Every sub-folder is a page; the AI diffusion packs are also measured pack by pack.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from bench.common import corpus_pictures, default_corpus, write_result
from pipeline.features.face_signals import PAGE_COLUMNS, page_signals, photo_signals

EXPECTED = {  # direction "more templated / more AI-like" than the real page
    "framing_spread": "lower", "symmetry_mean": "higher", "skin_detail_mean": "lower",
    "background_std_mean": "lower", "background_spread": "lower", "colour_spread": "lower",
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=default_corpus())
    args = parser.parse_args()
    root = args.root
    rows = []
    start = time.perf_counter()
    files = corpus_pictures(root)
    for path in files:
        parts = path.relative_to(root).parts
        page = parts[0] if parts[0] != "ai_diffusion_packs" or len(parts) < 3 else f"pack:{parts[1]}"
        with Image.open(path) as picture:
            rows.append({"page": page, **photo_signals(picture).as_row()})
    seconds = time.perf_counter() - start
    photos = pd.DataFrame(rows)
    pages = pd.DataFrame({page: page_signals(group) for page, group in photos.groupby("page")}).T[PAGE_COLUMNS]
    pages.insert(0, "photos", photos.groupby("page").size())
    pd.set_option("display.width", 200)
    print(pages.round(3).to_string())
    print(f"\n{len(files)} photos, {seconds / len(files) * 1000:.0f} ms each")
    real = pages.loc["real_staff_18f"]
    print("\nAgainst real_staff_18f, in the seed's direction (yes/no per page):")
    in_direction = {}
    for column, direction in EXPECTED.items():
        verdicts = []
        for page, row in pages.iterrows():
            if page == "real_staff_18f" or not page.startswith(("pack:", "ai_")):
                continue
            ok = row[column] < real[column] if direction == "lower" else row[column] > real[column]
            verdicts.append(f"{page}={'yes' if ok else 'no'}")
        print(f"  {column} {direction}: " + ", ".join(verdicts))
        in_direction[column] = {v.split("=")[0]: v.endswith("yes") for v in verdicts}
    write_result(
        "face_signals",
        {"pages": pages.round(4).to_dict(orient="index"), "ms_per_photo": round(seconds / len(files) * 1000, 1),
         "in_the_seed_direction_vs_real_staff_18f": in_direction},
    )  # fmt: skip


if __name__ == "__main__":
    main()

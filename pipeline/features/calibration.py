"""Generated edits and the scoring used to calibrate near-duplicate thresholds.

The edits are what happens to a staff photo when it is reposted: recompression, resizing, crops of
10-20%, small rotations, borders, mirroring, captions, greyscale, brightness changes. Calibration
pairs each photo with its edits (positives) and with *different photos* that are easy to confuse with
it (negatives: the same sitter in the same studio, the same AI template pack), then reads precision
and recall off the similarity scores.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _crop(image: Image.Image, share: float, anchor: float = 0.5) -> Image.Image:
    """Remove `share` of width and height, split between the sides by `anchor` (0.5 = centred)."""
    width, height = image.size
    dx, dy = width * share, height * share
    left, top = dx * anchor, dy * anchor
    return image.crop((round(left), round(top), round(left + width - dx), round(top + height - dy)))


def _rotate(image: Image.Image, degrees: float) -> Image.Image:
    return image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(255, 255, 255))


def _border(image: Image.Image, share: float, colour: tuple[int, int, int]) -> Image.Image:
    return ImageOps.expand(image, border=max(1, int(min(image.size) * share)), fill=colour)


def _caption(image: Image.Image) -> Image.Image:
    edited = image.copy()
    draw = ImageDraw.Draw(edited)
    width, height = edited.size
    draw.rectangle([0, int(height * 0.86), width, height], fill=(20, 20, 20))
    draw.text((int(width * 0.05), int(height * 0.89)), "Jane Doe, Head of Sales", fill=(255, 255, 255))
    return edited


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "recompress_q25": lambda im: _jpeg(im, 25),
    "resize_half": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.Resampling.BILINEAR),
    "crop_10_centred": lambda im: _crop(im, 0.10),
    "crop_20_offset": lambda im: _crop(im, 0.20, anchor=0.25),
    "rotate_3": lambda im: _rotate(im, 3),
    "border_white": lambda im: _border(im, 0.06, (255, 255, 255)),
    "border_black": lambda im: _border(im, 0.10, (0, 0, 0)),
    "mirror": ImageOps.mirror,
    "caption": _caption,
    "greyscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
    "contrast_down": lambda im: ImageEnhance.Contrast(im).enhance(0.7),
    "combo_crop_jpeg_small": lambda im: _jpeg(_crop(im, 0.12).resize((im.width * 2 // 3, im.height * 2 // 3)), 50),
}


def precision_recall(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """Precision and recall of "score >= threshold means near-duplicate"."""
    predicted = scores >= threshold
    true_positives = int((predicted & labels).sum())
    precision = true_positives / max(1, int(predicted.sum()))
    recall = true_positives / max(1, int(labels.sum()))
    return precision, recall


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    """(threshold, precision, recall, f1) at the threshold that maximises F1 on these pairs."""
    best = (1.0, 0.0, 0.0, 0.0)
    for threshold in np.unique(np.round(scores, 4)):
        precision, recall = precision_recall(scores, labels, float(threshold))
        f1 = 2 * precision * recall / max(1e-12, precision + recall)
        if f1 > best[3]:
            best = (float(threshold), precision, recall, f1)
    return best

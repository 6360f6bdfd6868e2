"""Generated edits and the scoring used to calibrate near-duplicate thresholds.

The edits are what happens to a staff photo when it is reposted: recompression, resizing, crops,
small rotations, borders, mirroring, captions, greyscale, brightness changes. `EDITS` are fixed
examples (tests use them); `EDIT_KINDS` draw each edit's strength from the range a reposted photo
shows (downscales to 48-200 px, JPEG quality 5-30, crops up to 30% of each side, overlays up to a
quarter of the picture, combined edits), for the calibration and evaluation benches. Calibration
pairs each photo with its edits (positives) and with *different photos* that are easy to confuse with
it (negatives: the same sitter in the same studio, the same AI template pack), then reads precision
and recall off the scores.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps


def encoded(image: Image.Image, format: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _reencode(image: Image.Image, format: str, **options: int) -> Image.Image:
    return Image.open(io.BytesIO(encoded(image, format, **options))).convert("RGB")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    return _reencode(image, "JPEG", quality=quality)


def _long_side(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR)


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


def _caption(image: Image.Image, share: float = 0.14) -> Image.Image:
    """A dark band with a name across the bottom `share` of the picture."""
    edited = image.copy()
    draw = ImageDraw.Draw(edited)
    width, height = edited.size
    top = int(height * (1 - share))
    draw.rectangle([0, top, width, height], fill=(20, 20, 20))
    draw.text((int(width * 0.05), top + int(height * 0.03)), "Jane Doe, Head of Sales", fill=(255, 255, 255))
    return edited


def _badge(image: Image.Image, share: float, rng: np.random.Generator) -> Image.Image:
    """A solid logo block covering `share` of the picture in one corner."""
    edited = image.copy()
    width, height = edited.size
    side_x, side_y = int(width * np.sqrt(share)), int(height * np.sqrt(share))
    left = 0 if rng.random() < 0.5 else width - side_x
    top = 0 if rng.random() < 0.5 else height - side_y
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    ImageDraw.Draw(edited).rectangle([left, top, left + side_x, top + side_y], fill=colour)
    return edited


def _overlay(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    share = float(rng.uniform(0.10, 0.25))
    return _caption(image, share) if rng.random() < 0.6 else _badge(image, share, rng)


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


# One edit per kind, its strength drawn from the range reposted photos show. Every kind returns
# the edited picture; "png" and "webp" are re-encodings (a bench that writes files keeps the format:
# `EDIT_FORMATS`).
EDIT_KINDS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "border": lambda im, rng: _border(im, float(rng.uniform(0.03, 0.12)), tuple(int(c) for c in rng.choice([0, 128, 255], 3))),
    "brightness": lambda im, rng: ImageEnhance.Brightness(im).enhance(float(rng.choice([rng.uniform(0.7, 0.85), rng.uniform(1.15, 1.4)]))),
    "crop": lambda im, rng: _crop(im, float(rng.uniform(0.10, 0.30)), anchor=float(rng.uniform(0, 1))),
    "mirror": lambda im, rng: ImageOps.mirror(im),
    "greyscale": lambda im, rng: ImageOps.grayscale(im).convert("RGB"),
    "jpeg_low": lambda im, rng: _jpeg(im, int(rng.integers(5, 31))),
    "png": lambda im, rng: _reencode(im, "PNG"),
    "resize": lambda im, rng: _long_side(im, int(rng.integers(48, 201))),
    "rotation": lambda im, rng: _rotate(im, float(rng.uniform(1.5, 6.0) * rng.choice([-1, 1]))),
    "overlay": _overlay,
    "webp": lambda im, rng: _reencode(im, "WEBP", quality=int(rng.integers(40, 81))),
    "crop_resize_jpeg": lambda im, rng: _jpeg(
        _long_side(_crop(im, float(rng.uniform(0.10, 0.20)), anchor=float(rng.uniform(0, 1))), int(rng.integers(80, 201))),
        int(rng.integers(10, 31)),
    ),
}
EDIT_FORMATS = {"png": "PNG", "webp": "WEBP"}  # the others are stored as JPEG (quality 95 unless the edit chose one)
COMBINED_EDITS = frozenset({"crop_resize_jpeg"})  # several edits in one; the others are single edits


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

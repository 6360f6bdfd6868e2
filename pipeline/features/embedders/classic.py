"""`classic`: a model-free, deterministic image embedder that needs no download.

It describes a picture by what near-copies of a photo keep and what different photos change:

- **layout**: low-frequency DCT of the luminance (a real-valued pHash), which survives re-encoding,
  resizing, brightness/contrast changes and greyscale;
- **shape**: a coarse HOG grid of the luminance (edges of head, shoulders, hair, backdrop);
- **colour**: a coarse grid of Lab chroma, so colour grading and backdrop colour count a little;
- **texture**: a uniform-LBP histogram (skin smoothness, grain, backdrop texture).

Before describing, solid borders that an editor added are trimmed, and every spatial block is made
mirror-invariant by describing the picture and its mirror image together (sum and absolute
difference), so a horizontally flipped copy gets the same vector. Each block is L2-normalised and
weighted, then the whole vector is L2-normalised, so cosine similarity is the inner product.

Change the computation, change `VERSION`: cached vectors are keyed by the embedder id.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageChops

VERSION = 1
EMBEDDER_ID = f"classic-v{VERSION}"

_GRID_SIDE = 64  # luminance is described at 64x64, after border trimming
_DCT_SIDE = 32
_DCT_KEEP = 8
_HOG_CELL = 16
_COLOUR_GRID = 4
_LBP_SIDE = 128
# Share of the squared norm each block carries (so cosine similarity is their weighted average).
_CHROMA_REFERENCE = 0.5  # chroma-vector length (Lab a*/b* in units of 100) treated as fully colourful
_WEIGHTS = {"layout": 0.35, "shape": 0.40, "colour": 0.15, "texture": 0.10}


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    basis = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))
    basis[0] /= np.sqrt(2)
    return basis * np.sqrt(2 / n)


_DCT = _dct_matrix(_DCT_SIDE)


def trim_solid_border(image: Image.Image, tolerance: int = 12, max_share: float = 0.3) -> Image.Image:
    """Remove a frame of one flat colour that an editor added around a picture.

    Only a border that is flat to within `tolerance` (after JPEG ringing) and covers at most
    `max_share` of each side is removed, so a studio backdrop that reaches the edge stays.
    """
    width, height = image.size
    corners = np.array([image.getpixel(xy) for xy in ((0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1))], float)
    frame_colour = np.median(corners, axis=0)
    if np.abs(corners - frame_colour).max() > tolerance:
        return image  # an added frame surrounds the picture: its four corners agree (mirror-safe, too)
    background = Image.new(image.mode, image.size, tuple(int(round(c)) for c in frame_colour))
    difference = ImageChops.difference(image, background).convert("L").point(lambda v: 255 if v > tolerance else 0)
    box = difference.getbbox()
    if box is None:
        return image
    left, top, right, bottom = box
    if left > width * max_share or top > height * max_share:
        return image
    if width - right > width * max_share or height - bottom > height * max_share:
        return image
    if (right - left) * (bottom - top) > 0.98 * width * height:
        return image  # nothing worth trimming: avoid shifting by a pixel of noise
    return image.crop(box)


def unit_length(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _mirror_invariant(describe, plane: np.ndarray) -> np.ndarray:
    """Describe a plane and its mirror image; sum and |difference| do not change under flipping."""
    direct, mirrored = describe(plane), describe(plane[:, ::-1])
    return np.concatenate([direct + mirrored, np.abs(direct - mirrored)])


def layout_coefficients(luma: np.ndarray) -> np.ndarray:
    small = np.asarray(Image.fromarray(luma).resize((_DCT_SIDE, _DCT_SIDE), Image.Resampling.BILINEAR), float)
    coefficients = _DCT @ (small - small.mean()) @ _DCT.T
    block = coefficients[:_DCT_KEEP, :_DCT_KEEP].copy()
    # A horizontal flip negates coefficients of odd horizontal frequency; their magnitude stays.
    block[:, 1::2] = np.abs(block[:, 1::2])
    return block.ravel()[1:]


def _hog(luma: np.ndarray) -> np.ndarray:
    from skimage.feature import hog

    return hog(
        luma,
        orientations=9,
        pixels_per_cell=(_HOG_CELL, _HOG_CELL),
        cells_per_block=(2, 2),
        block_norm="L2-Hys",
        feature_vector=True,
    )


def chroma_grid(rgb_small: np.ndarray) -> np.ndarray:
    """Mean Lab a*/b* (in units of 100) of a 4x4 grid, made mirror-invariant (sum and |difference|
    of each cell and its mirror cell). `rgb_small`: a square float RGB picture in 0..1."""
    from skimage.color import rgb2lab

    lab = rgb2lab(rgb_small)
    cell = rgb_small.shape[0] // _COLOUR_GRID
    grid = lab[: cell * _COLOUR_GRID, : cell * _COLOUR_GRID, 1:].reshape(_COLOUR_GRID, cell, _COLOUR_GRID, cell, 2)
    means = grid.mean(axis=(1, 3)) / 100.0  # (rows, cols, a/b)
    return np.concatenate([(means + means[:, ::-1]).ravel(), np.abs(means - means[:, ::-1]).ravel()])


def _texture(luma: np.ndarray) -> np.ndarray:
    from skimage.feature import local_binary_pattern

    codes = local_binary_pattern(luma, P=8, R=1, method="uniform")
    histogram, _ = np.histogram(codes, bins=10, range=(0, 10))
    return np.sqrt(histogram / max(1, histogram.sum()))


def describe(rgb: Image.Image) -> np.ndarray:
    """The classic vector of one RGB picture (L2-normalised float32)."""
    rgb = trim_solid_border(rgb.convert("RGB"))
    rgb_small = np.asarray(rgb.resize((_GRID_SIDE, _GRID_SIDE), Image.Resampling.BILINEAR), float) / 255.0
    luma = np.asarray(rgb.convert("L").resize((_GRID_SIDE, _GRID_SIDE), Image.Resampling.BILINEAR))
    luma_fine = np.asarray(rgb.convert("L").resize((_LBP_SIDE, _LBP_SIDE), Image.Resampling.BILINEAR))
    # Equalising contrast makes brightness and contrast edits (and greyscale) cheap to ignore.
    luma = stretch_contrast(luma)
    chroma = chroma_grid(rgb_small)
    blocks = {
        "layout": unit_length(layout_coefficients(luma)),
        "shape": unit_length(_mirror_invariant(_hog, luma)),
        "colour": scaled_chroma(chroma),
        "texture": unit_length(_texture(stretch_contrast(luma_fine))),
    }
    vector = np.concatenate([blocks[name] * np.sqrt(weight) for name, weight in _WEIGHTS.items()])
    return unit_length(vector).astype(np.float32)


def scaled_chroma(chroma: np.ndarray) -> np.ndarray:
    """Chroma scaled to length 1 only once it is colourful: a near-grey picture has almost no chroma,
    and normalising that would blow numerical noise up into a random direction."""
    return chroma / max(float(np.linalg.norm(chroma)), _CHROMA_REFERENCE)


def stretch_contrast(luma: np.ndarray) -> np.ndarray:
    low, high = np.percentile(luma, (1, 99))
    if high - low < 1:
        return luma.astype(np.uint8)
    return np.clip((luma.astype(float) - low) * 255.0 / (high - low), 0, 255).astype(np.uint8)


DIM = int(describe(Image.new("RGB", (_GRID_SIDE, _GRID_SIDE), (128, 128, 128))).shape[0])


class ClassicEmbedder:
    """Deterministic, offline; `embed_bytes` decodes like intake does, then describes."""

    id = EMBEDDER_ID
    dim = DIM

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return np.stack(list(pool.map(describe, images))) if images else np.zeros((0, self.dim), np.float32)

    def embed_uris(self, uris: Sequence[str], progress: bool = False) -> np.ndarray:
        from tqdm.auto import tqdm

        from pipeline.ingest.intake import load_rgb

        def one(uri: str) -> np.ndarray:
            return describe(load_rgb(uri))

        if not uris:
            return np.zeros((0, self.dim), np.float32)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            vectors = list(tqdm(pool.map(one, uris), total=len(uris), desc="embed classic", unit="img", disable=not progress))
        return np.stack(vectors)

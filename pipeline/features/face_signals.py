"""Interpretable "template" signals per photo, from its largest face, and how tightly a page holds them.

The seed of this project names what makes AI headshots recognisable: identical framing and
backdrops, too-perfect symmetry, unnaturally smooth skin, one colour grade. Each signal here is one
of those, measured plainly (no model beyond the face detector), so a page can be told *why* it looks
templated:

- framing: the face centre (`face_x`, `face_y`, fractions of width and height) and `face_scale`
  (face height / picture height). A page whose photos share one framing has a small
  `framing_spread` (root mean square of the three standard deviations).
- `symmetry`: 1 - mean |crop - mirrored crop| / 255 over a grey, contrast-equalised face crop that is
  levelled on the eyes and centred between them (1 = perfectly mirror-symmetric).
- `skin_detail`: high-frequency energy of the central face region, |grey - blurred grey| divided by
  the region's contrast (lower = smoother skin; retouching and diffusion models lower it).
- backdrop: `background_std` (colour spread of the pixels beside and above the head, in Lab units;
  lower = plainer backdrop), `background_blur` (variance of the Laplacian there; lower = more
  blurred), and its mean colour; a page with one backdrop has a small `background_spread`.
- colour grade: the picture's mean Lab a* and b* and mean saturation; `colour_spread` per page.

Beside the signals, the cache keeps `face_window`: a coarse, mirror-symmetric descriptor of the
aligned face (low frequencies of the levelled, equalised crop). A crop of the picture, a caption or a
logo beside the face, a border, a mirror image or a new grade leave it where it was, so the
near-duplicate stage uses it to find candidates that the whole-picture embedding misses.

Photos without a face get only the whole-picture signals (colour); face signals are empty there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from pipeline import layout

VERSION = 2  # 2: face_window kept
CROP_SIDE = 128
WINDOW_SIDE = 24  # the aligned crop is shrunk to this before the transform
WINDOW_FREQUENCIES = 8  # low frequencies kept per axis (horizontal: the even, mirror-symmetric ones)
SIGNAL_COLUMNS = [
    "n_faces", "face_score", "face_x", "face_y", "face_scale", "symmetry", "skin_detail",
    "background_std", "background_blur", "background_l", "background_a", "background_b",
    "colour_a", "colour_b", "saturation",
]  # fmt: skip


@dataclass
class PhotoSignals:
    n_faces: int = 0
    face_score: float = math.nan
    face_x: float = math.nan
    face_y: float = math.nan
    face_scale: float = math.nan
    symmetry: float = math.nan
    skin_detail: float = math.nan
    background_std: float = math.nan
    background_blur: float = math.nan
    background_l: float = math.nan
    background_a: float = math.nan
    background_b: float = math.nan
    colour_a: float = math.nan
    colour_b: float = math.nan
    saturation: float = math.nan
    # Where the largest face is in the picture downscaled to the working side (-1: no face), and the
    # score floor it was detected at: kept in the signal cache (not the faces table) so that identity
    # reuses this detection instead of running the detector on the same picture again.
    box_x: int = -1
    box_y: int = -1
    box_width: int = -1
    box_height: int = -1
    box_score_floor: float = math.nan
    face_window: list[float] | None = None  # see the module docstring; None where no face was found

    def as_row(self) -> dict[str, float]:
        return asdict(self)


# ------------------------------------------------------------------ single signals (pure, testable)
def framing(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[float, float, float]:
    """(centre x, centre y, scale) of a face box (x, y, w, h) in a picture of `size` (w, h)."""
    x, y, w, h = box
    width, height = size
    return (x + w / 2) / width, (y + h / 2) / height, h / height


def aligned_face(
    grey: np.ndarray, box: tuple[int, int, int, int], left_eye: tuple[float, float], right_eye: tuple[float, float]
) -> np.ndarray:
    """A CROP_SIDE² grey crop of the face, rotated so the eyes are level and centred between them."""
    import cv2

    (lx, ly), (rx, ry) = left_eye, right_eye
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    centre_x, centre_y = (lx + rx) / 2, box[1] + box[3] / 2
    side = max(box[2], box[3]) * 1.1
    scale = CROP_SIDE / side
    matrix = cv2.getRotationMatrix2D((centre_x, centre_y), angle, scale)
    matrix[0, 2] += CROP_SIDE / 2 - centre_x
    matrix[1, 2] += CROP_SIDE / 2 - centre_y
    crop = cv2.warpAffine(grey, matrix, (CROP_SIDE, CROP_SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.equalizeHist(crop)


def face_window(crop: np.ndarray) -> list[float]:
    """The aligned face's low-frequency cosine transform, mirror-symmetric (even horizontal
    frequencies of the crop averaged with its mirror image), without the mean, unit length."""
    import cv2

    small = cv2.resize(crop, (WINDOW_SIDE, WINDOW_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    coefficients = cv2.dct((small + small[:, ::-1]) / 2)[:WINDOW_FREQUENCIES, :WINDOW_FREQUENCIES:2].ravel()[1:]
    norm = float(np.linalg.norm(coefficients))
    return (coefficients / norm if norm > 0 else coefficients).round(5).tolist()


def symmetry(crop: np.ndarray) -> float:
    """1 - mean absolute difference between a face crop and its mirror image, over 255."""
    crop = crop.astype(np.float32)
    return float(1.0 - np.mean(np.abs(crop - crop[:, ::-1])) / 255.0)


def skin_detail(crop: np.ndarray) -> float:
    """High-frequency energy of the central face region relative to its contrast (lower = smoother)."""
    import cv2

    side = crop.shape[0]
    centre = crop[int(side * 0.3) : int(side * 0.8), int(side * 0.25) : int(side * 0.75)].astype(np.float32)
    detail = np.abs(centre - cv2.GaussianBlur(centre, (0, 0), 2.0))
    return float(detail.mean() / (centre.std() + 1.0))


def background_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels beside and above the person: everything outside a band from the head down to the bottom,
    2.4 face widths wide (shoulders), and outside the face box grown by half its size."""
    width, height = size
    x, y, w, h = box
    mask = np.ones((height, width), bool)
    centre = x + w / 2
    band_left, band_right = int(max(0, centre - 1.2 * w)), int(min(width, centre + 1.2 * w))
    mask[int(max(0, y - 0.5 * h)) :, band_left:band_right] = False
    return mask


def background_stats(rgb: np.ndarray, lab: np.ndarray, mask: np.ndarray) -> tuple[float, float, float, float, float]:
    """(colour spread in Lab, Laplacian variance, mean L, mean a, mean b) of the masked pixels."""
    import cv2

    if mask.sum() < 100:  # the person fills the frame: no backdrop to measure
        return (math.nan,) * 5  # type: ignore[return-value]
    pixels = lab[mask]
    spread = float(np.sqrt(np.mean(pixels.var(axis=0))))
    laplacian = cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_32F)
    blur = float(laplacian[mask].var())
    lightness, a, b = (float(v) for v in pixels.mean(axis=0))
    return spread, blur, lightness, a, b


def colour_grade(lab: np.ndarray, rgb: np.ndarray) -> tuple[float, float, float]:
    """(mean a*, mean b*, mean saturation 0..1) of the whole picture."""
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    return float(lab[..., 1].mean()), float(lab[..., 2].mean()), float(hsv[..., 1].mean() / 255.0)


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab with L in 0..100 and a*, b* around 0 (OpenCV's 8-bit Lab rescaled)."""
    import cv2

    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] *= 100.0 / 255.0
    lab[..., 1:] -= 128.0
    return lab


# ------------------------------------------------------------------ one photo
def photo_signals(picture: Image.Image, score_floor: float = 0.9, working_side: int = 512) -> PhotoSignals:
    """Every signal of one photo (measured on a copy at most `working_side` pixels long)."""
    import cv2

    from pipeline.features.faces import detect_faces, downscaled

    picture = downscaled(picture, working_side)
    rgb = np.asarray(picture)
    lab = to_lab(rgb)
    signals = PhotoSignals()
    signals.colour_a, signals.colour_b, signals.saturation = colour_grade(lab, rgb)
    faces = detect_faces(picture, score_floor)
    signals.n_faces, signals.box_score_floor = len(faces), score_floor
    if not faces:
        return signals
    face = faces[0]  # the largest is the subject
    box = (face.x, face.y, face.width, face.height)
    signals.box_x, signals.box_y, signals.box_width, signals.box_height = box
    signals.face_score = face.score
    signals.face_x, signals.face_y, signals.face_scale = framing(box, picture.size)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    crop = aligned_face(grey, box, face.keypoints["left_eye"], face.keypoints["right_eye"])
    signals.symmetry = symmetry(crop)
    signals.face_window = face_window(crop)
    signals.skin_detail = skin_detail(crop)
    (signals.background_std, signals.background_blur, signals.background_l, signals.background_a, signals.background_b) = background_stats(
        rgb, lab, background_mask(picture.size, box)
    )
    return signals


# ------------------------------------------------------------------ one page
def _rms_std(frame, columns: list[str]) -> float:  # noqa: ANN001
    stds = [frame[c].std(ddof=0) for c in columns if frame[c].notna().sum() >= 2]
    return float(np.sqrt(np.mean(np.square(stds)))) if stds else math.nan


def page_signals(frame) -> dict[str, float]:  # noqa: ANN001 - a pandas frame of one page's photo signals
    """How tightly one page holds each signal: shares, means and spreads over its photos."""
    with_face = frame[frame["n_faces"] > 0]
    return {
        "face_share": float((frame["n_faces"] > 0).mean()) if len(frame) else math.nan,
        "multi_face_share": float((frame["n_faces"] > 1).mean()) if len(frame) else math.nan,
        "framing_spread": _rms_std(with_face, ["face_x", "face_y", "face_scale"]),
        "symmetry_mean": float(with_face["symmetry"].mean()) if len(with_face) else math.nan,
        "skin_detail_mean": float(with_face["skin_detail"].mean()) if len(with_face) else math.nan,
        "background_std_mean": float(with_face["background_std"].mean()) if len(with_face) else math.nan,
        "background_spread": _rms_std(with_face, ["background_l", "background_a", "background_b"]),
        "colour_spread": _rms_std(frame, ["colour_a", "colour_b"]),
    }


PAGE_COLUMNS = [
    "face_share",
    "multi_face_share",
    "framing_spread",
    "symmetry_mean",
    "skin_detail_mean",
    "background_std_mean",
    "background_spread",
    "colour_spread",
]


# ------------------------------------------------------------------ stage
def measure_images(images, warehouse, score_floor: float = 0.9, workers: int = 2):  # noqa: ANN001, ANN201
    """The `faces` table of a run: one row per `ok` image row, from the warehouse cache where the same
    content was measured before (keyed by content hash and this module's VERSION)."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2  # noqa: F401 - imported before the pool: cv2's loader is not safe to run from several threads at once
    import pandas as pd
    import pyarrow as pa

    from pipeline.ingest.intake import distinct_ok, load_rgb
    from pipeline.parallel import chunked
    from pipeline.warehouse import CHECKPOINT_PHOTOS

    ok = images[images["status"] == "ok"]
    known: dict[str, dict] = {}
    for table in warehouse.read_shards(layout.face_signals_folder(VERSION)):
        for row in table.to_pylist():
            known[row.pop("content_sha256")] = row
    distinct = distinct_ok(ok)
    todo = distinct[~distinct["content_sha256"].isin(known)]

    def measure(object_key: str) -> dict:
        return photo_signals(load_rgb(warehouse.uri(object_key)), score_floor).as_row()

    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="faces") as pool,
        warehouse.checkpoints(layout.face_signals_folder(VERSION)) as write,
    ):
        for chunk in chunked(list(zip(todo["content_sha256"], todo["raw_object"])), CHECKPOINT_PHOTOS):
            contents = [content for content, _ in chunk]
            fresh = list(pool.map(measure, [object_key for _, object_key in chunk]))
            write(contents, pa.Table.from_pylist([{"content_sha256": key, **row} for key, row in zip(contents, fresh)]))
            known.update(zip(contents, fresh))
    rows = [
        {"company": r.company, "image": r.image, "content_sha256": r.content_sha256, **known[r.content_sha256]} for r in ok.itertuples()
    ]
    return pd.DataFrame(rows, columns=["company", "image", "content_sha256", *SIGNAL_COLUMNS]), len(todo)


def largest_faces(warehouse, score_floor: float) -> dict[str, tuple[int, int, int, int] | None]:  # noqa: ANN001
    """content hash -> the largest face's box as the signal cache stored it (detected at `score_floor`,
    in the picture downscaled to the working side), None where it found no face. Photos measured at
    another floor, or in shards written before boxes were kept, are not in it."""
    boxes: dict[str, tuple[int, int, int, int] | None] = {}
    for table in warehouse.read_shards(layout.face_signals_folder(VERSION)):
        if "box_x" not in table.column_names:
            continue
        for row in table.select(["content_sha256", "box_x", "box_y", "box_width", "box_height", "box_score_floor"]).to_pylist():
            if row["box_score_floor"] == score_floor:
                found = row["box_x"] >= 0
                boxes[row["content_sha256"]] = (row["box_x"], row["box_y"], row["box_width"], row["box_height"]) if found else None
    return boxes


def face_boxes(warehouse, score_floor: float) -> dict[str, tuple[int, int, int, int]]:  # noqa: ANN001
    """The boxes of `largest_faces` where a face was found."""
    return {content: box for content, box in largest_faces(warehouse, score_floor).items() if box is not None}


def face_windows(warehouse, contents) -> dict[str, np.ndarray]:  # noqa: ANN001
    """content hash -> face_window, for those of `contents` whose face was found (cached by the faces stage)."""
    wanted, windows = set(contents), {}
    for table in warehouse.read_shards(layout.face_signals_folder(VERSION)):
        for content, window in zip(table.column("content_sha256").to_pylist(), table.column("face_window").to_pylist()):
            if content in wanted and window is not None:
                windows[content] = np.asarray(window, dtype=np.float32)
    return windows


def page_table(faces, companies: list[str]):  # noqa: ANN001, ANN201
    """The template-signal columns of these companies' pages (NaN where a page had no photo, or no face was measured)."""
    import pandas as pd

    faces = faces[faces["company"].isin(companies)] if len(faces) else faces
    if faces.empty:
        return pd.DataFrame({"company": companies, **{column: math.nan for column in PAGE_COLUMNS}})
    per_page = pd.DataFrame({company: page_signals(group) for company, group in faces.groupby("company")}).T
    per_page.index.name = "company"
    return per_page[PAGE_COLUMNS].reset_index()

"""Templated pages of different people: real staff photos run through one studio or generator template.

What a template fixes, applied to each real photo while the person stays who they are:
- `backdrop`: the person cut out (GrabCut seeded by the detected face and the shoulders below it) and
  put on one backdrop: a vertical gradient of one colour with a soft vignette;
- `framing`: the picture re-framed so the face sits at one position with one size;
- `grade`: one colour grade (a shift of Lab a*/b*, a saturation factor, a tone curve);
- `smoothing`: mild skin smoothing (an edge-preserving filter blended into the face region).

A `Template` holds one choice of each, drawn at random per page (`random_template`); `parts` says which
of the four it applies, so that subtler templates (only a grade and a framing, only a backdrop) are
built the same way. Used by bench.validate_homogeneity and bench.fit_template_model; nothing in
pipeline/ depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

ALL_PARTS = frozenset({"backdrop", "framing", "grade", "smoothing"})
SIDE = 384  # templated photos are square, like most staff-page headshots


@dataclass(frozen=True)
class Template:
    backdrop_rgb: tuple[int, int, int]
    face_centre: tuple[float, float]  # where the face centre goes, fractions of the side
    face_height: float  # face box height / picture side
    shift_a: float  # Lab a* shift
    shift_b: float  # Lab b* shift
    saturation: float  # chroma factor
    contrast: float  # tone-curve strength (0: none)
    smoothing: float  # share of the filtered face blended in
    parts: frozenset[str] = ALL_PARTS

    def only(self, *parts: str) -> Template:
        return replace(self, parts=frozenset(parts))


def random_template(rng: np.random.Generator) -> Template:
    hue = rng.uniform(0, 2 * np.pi)
    base = rng.uniform(90, 200)
    backdrop = tuple(int(np.clip(base + 25 * np.cos(hue + k * 2 * np.pi / 3), 0, 255)) for k in range(3))
    return Template(
        backdrop_rgb=backdrop,  # type: ignore[arg-type]
        face_centre=(rng.uniform(0.46, 0.54), rng.uniform(0.36, 0.42)),
        face_height=rng.uniform(0.40, 0.50),  # staff photos are tight crops: re-framing zooms in rather than padding
        shift_a=rng.uniform(-6, 6),
        shift_b=rng.uniform(-4, 12),
        saturation=rng.uniform(0.7, 1.2),
        contrast=rng.uniform(0.1, 0.35),
        smoothing=rng.uniform(0.5, 0.8),
    )


def _face(picture: Image.Image):  # noqa: ANN202
    from pipeline.features.faces import detect_faces

    faces = detect_faces(picture, 0.9)
    return faces[0] if faces else None


def _person_mask(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Soft (0..1) mask of the person: GrabCut seeded with the face as certain foreground, the band
    below it (shoulders) as probable foreground, the top corners as certain background."""
    import cv2

    height, width = rgb.shape[:2]
    x, y, w, h = box
    seeds = np.full((height, width), cv2.GC_PR_BGD, np.uint8)
    centre = x + w / 2
    left, right = int(max(0, centre - 1.3 * w)), int(min(width, centre + 1.3 * w))
    seeds[int(max(0, y - 0.35 * h)) :, left:right] = cv2.GC_PR_FGD
    seeds[max(0, y) : y + h, max(0, x) : x + w] = cv2.GC_FGD
    # Beside the head, above the chin and well outside the face, is backdrop in a headshot.
    beside_left, beside_right = int(max(0, x - 0.45 * w)), int(min(width, x + 1.45 * w))
    seeds[: int(y + 0.8 * h), :beside_left] = cv2.GC_BGD
    seeds[: int(y + 0.8 * h), beside_right:] = cv2.GC_BGD
    seeds[: int(max(0, y - 0.45 * h)), :] = cv2.GC_BGD
    background_model, foreground_model = np.zeros((1, 65)), np.zeros((1, 65))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    try:
        cv2.grabCut(bgr, seeds, None, background_model, foreground_model, 4, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # the person fills the frame (no backdrop sample): the seeds are the mask
        pass
    mask = np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
    return cv2.GaussianBlur(mask, (0, 0), max(1.0, width / 200))


def _backdrop(template: Template, width: int, height: int) -> np.ndarray:
    """The template's backdrop: its colour, lighter at the top, darker in the corners."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = 1.08 - 0.16 * ys / height
    vignette = 1.0 - 0.18 * (((xs - width / 2) / width) ** 2 + ((ys - height / 2) / height) ** 2) * 2
    colour = np.asarray(template.backdrop_rgb, np.float32)
    return np.clip(colour[None, None, :] * (gradient * vignette)[..., None], 0, 255)


def reframe(rgb: np.ndarray, box: tuple[int, int, int, int], template: Template) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    import cv2

    x, y, w, h = box
    scale = template.face_height * SIDE / h
    target_x, target_y = template.face_centre[0] * SIDE, template.face_centre[1] * SIDE
    matrix = np.float32([[scale, 0, target_x - scale * (x + w / 2)], [0, scale, target_y - scale * (y + h / 2)]])
    # Where the source ends, its edge rows continue (clothing downwards); mirrored padding looks worse.
    framed = cv2.warpAffine(rgb, matrix, (SIDE, SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    new_box = (int(target_x - scale * w / 2), int(target_y - scale * h / 2), int(scale * w), int(scale * h))
    return framed, new_box


def grade(rgb: np.ndarray, template: Template) -> np.ndarray:
    import cv2

    lab = cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 1] = 128 + (lab[..., 1] - 128) * template.saturation + template.shift_a
    lab[..., 2] = 128 + (lab[..., 2] - 128) * template.saturation + template.shift_b
    lightness = lab[..., 0] / 255.0
    curve = lightness + template.contrast * (lightness - 0.5) * (1 - np.abs(2 * lightness - 1))  # an S-curve
    lab[..., 0] = np.clip(curve, 0, 1) * 255
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _smooth(rgb: np.ndarray, box: tuple[int, int, int, int], share: float) -> np.ndarray:
    import cv2

    x, y, w, h = box
    filtered = cv2.bilateralFilter(rgb.astype(np.uint8), 9, 40, 7).astype(np.float32)
    weight = np.zeros(rgb.shape[:2], np.float32)
    cv2.ellipse(weight, (x + w // 2, y + h // 2), (max(1, int(w * 0.55)), max(1, int(h * 0.65))), 0, 0, 360, 1.0, -1)
    weight = cv2.GaussianBlur(weight, (0, 0), max(1.0, w / 10))[..., None] * share
    return rgb * (1 - weight) + filtered * weight


def templated(picture: Image.Image, template: Template) -> Image.Image | None:
    """The photo run through the template (None where no face is found: nothing to frame or cut out)."""
    picture = picture.convert("RGB")
    face = _face(picture)
    if face is None:
        return None
    rgb = np.asarray(picture).astype(np.float32)
    box = (face.x, face.y, face.width, face.height)
    if "framing" in template.parts:
        rgb, box = reframe(rgb, box, template)
    if "backdrop" in template.parts:
        mask = _person_mask(rgb.astype(np.uint8), box)[..., None]
        rgb = rgb * mask + _backdrop(template, rgb.shape[1], rgb.shape[0]) * (1 - mask)
    if "smoothing" in template.parts:
        rgb = _smooth(rgb, box, template.smoothing)
    if "grade" in template.parts:
        rgb = grade(np.clip(rgb, 0, 255), template)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))

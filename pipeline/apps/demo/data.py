"""Deterministic synthetic "headshot-like" pictures for the demo and the tests.

These are drawings (a backdrop, shoulders, a head, hair, eyes), plainly not photographs, and every
file says so in its JPEG comment. They exist so that the demo and the tests run anywhere without
personal data, and they are built to have known structure:

- a *template* fixes backdrop, framing, lighting, attire and palette; a *sitter* varies face shape,
  skin tone and hair. A page drawn from one template is the homogenised case the product measures.
- `northwind-legal`: every picture from one template, plus an exact duplicate file and an edited
  copy (crop + recompression) of one picture.
- `bluebird-bakery`: every picture from its own random template: the diverse case.
- `copperleaf-consulting`: half from northwind's template (template reuse across companies), one of
  them the very same file as on northwind's page (photo reuse), half varied.
- `tiny-startup`: two pictures, for "too few images" handling.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Part of the demo pictures' bytes, hence of every demo content hash: kept as first written (the module
# has since moved to pipeline.apps.demo.data) so that the demo's tables stay comparable across versions.
SYNTHETIC_NOTE = b"synthetic demo image drawn by pipeline.demo_data; not a photograph of a person"
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class Template:
    size: tuple[int, int]
    backdrop_top: tuple[int, int, int]
    backdrop_bottom: tuple[int, int, int]
    backdrop_blobs: int  # >0: a busy, "outdoor/office" background with this many blobs
    head_center: tuple[float, float]  # fraction of width, height
    head_scale: float  # head height as a fraction of image height
    attire: tuple[int, int, int]
    light_from_left: float  # -1..1, shading direction
    warmth: float  # colour grade: >0 warmer, <0 cooler


@dataclass(frozen=True)
class Sitter:
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_volume: float
    face_aspect: float
    eye_spacing: float


def _rgb(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, size=3))  # type: ignore[return-value]


def random_template(rng: np.random.Generator) -> Template:
    width = int(rng.choice([240, 256, 288, 320]))
    height = int(width * rng.choice([1.0, 1.25, 1.33]))
    return Template(
        size=(width, height),
        backdrop_top=_rgb(rng),
        backdrop_bottom=_rgb(rng),
        backdrop_blobs=int(rng.choice([0, 6, 12, 20])),
        head_center=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.5))),
        head_scale=float(rng.uniform(0.22, 0.5)),
        attire=_rgb(rng),
        light_from_left=float(rng.uniform(-1, 1)),
        warmth=float(rng.uniform(-0.25, 0.25)),
    )


CORPORATE_TEMPLATE = Template(
    size=(256, 320),
    backdrop_top=(92, 108, 128),
    backdrop_bottom=(40, 48, 62),
    backdrop_blobs=0,
    head_center=(0.5, 0.38),
    head_scale=0.36,
    attire=(28, 34, 58),
    light_from_left=0.6,
    warmth=0.08,
)

_SKIN_TONES = [(241, 204, 178), (224, 172, 138), (198, 134, 96), (160, 102, 70), (112, 72, 50), (84, 56, 42)]
_HAIR_COLOURS = [(20, 18, 16), (60, 40, 25), (110, 75, 40), (170, 130, 80), (200, 190, 170), (90, 30, 20)]


def random_sitter(rng: np.random.Generator) -> Sitter:
    return Sitter(
        skin=_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))],
        hair=_HAIR_COLOURS[int(rng.integers(len(_HAIR_COLOURS)))],
        hair_volume=float(rng.uniform(0.05, 0.35)),
        face_aspect=float(rng.uniform(0.68, 0.82)),
        eye_spacing=float(rng.uniform(0.32, 0.42)),
    )


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)  # type: ignore[return-value]


def render(template: Template, sitter: Sitter, seed: int) -> Image.Image:
    """Draw one picture; the same (template, sitter, seed) always gives the same pixels."""
    rng = np.random.default_rng(seed)
    width, height = (side * _SUPERSAMPLE for side in template.size)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    top, bottom = np.array(template.backdrop_top, float), np.array(template.backdrop_bottom, float)
    canvas = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).copy()
    image = Image.fromarray(canvas.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(template.backdrop_blobs):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.04, 0.18) * width
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_rgb(rng, 30, 230))

    cx, cy = template.head_center[0] * width, template.head_center[1] * height
    head_h = template.head_scale * height
    head_w = head_h * sitter.face_aspect
    shoulder_w = head_w * 2.6
    draw.ellipse([cx - shoulder_w / 2, cy + head_h * 0.55, cx + shoulder_w / 2, cy + head_h * 2.4], fill=template.attire)
    draw.rectangle([cx - head_w * 0.18, cy + head_h * 0.3, cx + head_w * 0.18, cy + head_h * 0.7], fill=_shade(sitter.skin, 0.85))
    hair_pad = head_h * sitter.hair_volume
    draw.ellipse(
        [cx - head_w / 2 - hair_pad / 2, cy - head_h / 2 - hair_pad, cx + head_w / 2 + hair_pad / 2, cy + head_h * 0.15], fill=sitter.hair
    )
    draw.ellipse([cx - head_w / 2, cy - head_h / 2 + hair_pad * 0.4, cx + head_w / 2, cy + head_h / 2], fill=sitter.skin)
    # Brows, eye sockets, a nose shadow and full lips: the dark/light layout that face detectors
    # (trained on photographs) look for, so the demo site's crawler face check finds these drawings.
    eye_dx, eye_y, eye_r = head_w * sitter.eye_spacing / 2, cy - head_h * 0.05, head_w * 0.075
    for ex in (cx - eye_dx, cx + eye_dx):
        draw.ellipse([ex - eye_r * 1.5, eye_y - eye_r * 1.2, ex + eye_r * 1.5, eye_y + eye_r * 1.0], fill=_shade(sitter.skin, 0.7))
        draw.chord([ex - eye_r * 1.5, eye_y - eye_r * 2.4, ex + eye_r * 1.5, eye_y - eye_r * 0.9], 190, 350, fill=_shade(sitter.hair, 0.9))
        draw.ellipse([ex - eye_r, eye_y - eye_r * 0.6, ex + eye_r, eye_y + eye_r * 0.6], fill=(235, 232, 228))
        draw.ellipse([ex - eye_r * 0.5, eye_y - eye_r * 0.5, ex + eye_r * 0.5, eye_y + eye_r * 0.5], fill=(45, 32, 24))
        draw.ellipse([ex - eye_r * 0.22, eye_y - eye_r * 0.22, ex + eye_r * 0.22, eye_y + eye_r * 0.22], fill=(10, 8, 8))
    nose_y = cy + head_h * 0.12
    draw.polygon([(cx, eye_y + eye_r), (cx - head_w * 0.08, nose_y), (cx + head_w * 0.08, nose_y)], fill=_shade(sitter.skin, 0.88))
    draw.ellipse([cx - head_w * 0.09, nose_y - head_h * 0.02, cx + head_w * 0.09, nose_y + head_h * 0.03], fill=_shade(sitter.skin, 0.7))
    mouth_y = cy + head_h * 0.25
    draw.ellipse(
        [cx - head_w * 0.2, mouth_y - head_h * 0.035, cx + head_w * 0.2, mouth_y + head_h * 0.045],
        fill=_shade((170, 80, 80), sitter.skin[0] / 255),
    )
    draw.line([cx - head_w * 0.19, mouth_y, cx + head_w * 0.19, mouth_y], fill=(70, 30, 30), width=max(1, int(head_w * 0.015)))

    image = image.resize(template.size, Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(0.8))
    pixels = np.asarray(image, dtype=float)
    # A soft left-right ramp stands in for the key light of a studio set-up.
    ramp_x = np.linspace(-0.5, 0.5, template.size[0])[None, :, None]
    pixels *= 1 + 0.3 * template.light_from_left * ramp_x
    pixels[..., 0] *= 1 + template.warmth
    pixels[..., 2] *= 1 - template.warmth
    pixels += rng.normal(0, 3.0, pixels.shape)  # sensor-like grain, so no two drawings are identical
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, comment=SYNTHETIC_NOTE)
    return buffer.getvalue()


def edited_copy(image: Image.Image) -> Image.Image:
    """A crop of ~12% and a resize: what a reposted copy of a photo often looks like."""
    width, height = image.size
    dx, dy = int(width * 0.06), int(height * 0.06)
    return image.crop((dx, dy, width - dx, height - dy)).resize((width - 40, int((width - 40) * height / width)))


def demo_pictures(seed: int = 7, per_company: int = 12) -> dict[str, dict[str, bytes]]:
    """The demo companies' pictures as they are on the first night: company -> file name -> JPEG bytes."""
    rng = np.random.default_rng(seed)
    files: dict[str, dict[str, bytes]] = {}

    def sitter_picture(template: Template) -> Image.Image:
        return render(template, random_sitter(rng), int(rng.integers(2**31)))

    northwind = {f"staff_{i:02d}.jpg": jpeg_bytes(sitter_picture(CORPORATE_TEMPLATE)) for i in range(per_company)}
    first = Image.open(io.BytesIO(northwind["staff_00.jpg"]))
    northwind["staff_00_copy.jpg"] = northwind["staff_00.jpg"]
    northwind["staff_00_reposted.jpg"] = jpeg_bytes(edited_copy(first), quality=70)
    files["northwind-legal"] = northwind

    files["bluebird-bakery"] = {f"team_{i:02d}.jpg": jpeg_bytes(sitter_picture(random_template(rng))) for i in range(per_company)}

    half = per_company // 2
    copperleaf = {f"people_{i:02d}.jpg": jpeg_bytes(sitter_picture(CORPORATE_TEMPLATE)) for i in range(half - 1)}
    copperleaf["people_shared.jpg"] = northwind["staff_01.jpg"]
    copperleaf.update({f"people_{i:02d}.jpg": jpeg_bytes(sitter_picture(random_template(rng))) for i in range(half, per_company)})
    files["copperleaf-consulting"] = copperleaf

    files["tiny-startup"] = {f"founder_{i}.jpg": jpeg_bytes(sitter_picture(random_template(rng))) for i in range(2)}
    return files


def write_pictures(out_dir: Path, files: dict[str, dict[str, bytes]]) -> Path:
    """Write `<out_dir>/<company>/<name>` and `<out_dir>/manifest.csv`; returns the manifest path. A file
    whose bytes are already there is left alone (its modification time too: a web server serving the
    folder answers conditional requests for it with 304), and a company's file that is no longer
    in its list goes away, as a photo taken off a staff page does."""
    out_dir = Path(out_dir)
    manifest_rows = []
    for company, pictures in files.items():
        folder = out_dir / company
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.jpg"):
            if stale.name not in pictures:
                stale.unlink()
        for name, data in sorted(pictures.items()):
            target = folder / name
            if not target.is_file() or target.read_bytes() != data:
                target.write_bytes(data)
            manifest_rows.append({"company": company, "image": f"{company}/{name}"})
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["company", "image"])
        writer.writeheader()
        writer.writerows(manifest_rows)
    (out_dir / "README.txt").write_text(
        "Synthetic drawings made by `homog demo-data` for the demo and the tests. They are not photographs of anyone.\n"
    )
    return manifest


def generate_demo_images(out_dir: Path, seed: int = 7, per_company: int = 12) -> Path:
    """Write the first night's demo companies to `<out_dir>/<company>/*.jpg` with `manifest.csv`; returns the manifest path."""
    return write_pictures(out_dir, demo_pictures(seed, per_company))

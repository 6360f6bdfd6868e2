"""The demo's nights: how the demo companies' staff pages change from one night to the next.

`make demo` runs the nightly DAG once per night of this story, so that a newcomer's first report
has a history to read. What happens is what real staff pages do (night 1 is the demo site of
`pipeline.apps.demo.data`, plus alder-architects):

- bluebird-bakery replaces its varied staff photos step by step with photos from one headshot
  generator's template: 3 more each night from night 2, all 12 by night 5;
- alder-architects swaps all its photos for the same generator's on night 3, and goes back to its
  own photos on night 5;
- copperleaf-consulting adds people: 3 on night 3, 2 on night 5;
- tiny-startup puts a copy of one of copperleaf-consulting's photos on its page on night 4 (a
  cropped, recompressed re-post: a near-duplicate across companies);
- northwind-legal, already one template, does not change; nor does anyone on night 6.

Every picture has its own seed, so a photo that stays on a page keeps its bytes from night to night
(the crawler then gets 304 Not Modified for it, as it would from a real server).
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.apps.demo.data import Template, demo_pictures, edited_copy, jpeg_bytes, random_sitter, random_template, render

NIGHTS = 6  # `make demo`'s default: enough for every event of the story and one quiet night after them

# One headshot generator's look: a seamless light backdrop, the head centred and large, soft frontal light, a warm grade.
GENERATOR_TEMPLATE = Template(
    size=(288, 360),
    backdrop_top=(214, 210, 204),
    backdrop_bottom=(170, 166, 160),
    backdrop_blobs=0,
    head_center=(0.5, 0.4),
    head_scale=0.42,
    attire=(52, 56, 64),
    light_from_left=0.1,
    warmth=0.12,
)

BLUEBIRD_REPLACED_PER_NIGHT = 3
ALDER_PEOPLE = 10
ALDER_TEMPLATED = range(3, 5)  # the nights alder-architects shows the generator's photos
COPPERLEAF_JOINERS = {3: 3, 5: 2}  # night -> people who join that night
TINY_COPY_FROM = ("copperleaf-consulting", "people_08.jpg")
TINY_COPY_NIGHT = 4


@dataclass(frozen=True)
class Event:
    night: int
    company: str
    what: str


def events(nights: int = NIGHTS, per_company: int = 12) -> list[Event]:
    """The story in words, night by night (what the tests and the docs hold the demo to)."""
    told = []
    for night in range(2, nights + 1):
        replaced = min(per_company, BLUEBIRD_REPLACED_PER_NIGHT * (night - 1)) - min(per_company, BLUEBIRD_REPLACED_PER_NIGHT * (night - 2))
        if replaced:
            told.append(Event(night, "bluebird-bakery", f"{replaced} photos replaced by the generator's"))
        if night == ALDER_TEMPLATED.start:
            told.append(Event(night, "alder-architects", "every photo replaced by the generator's"))
        if night == ALDER_TEMPLATED.stop:
            told.append(Event(night, "alder-architects", "back to its own photos"))
        if night in COPPERLEAF_JOINERS:
            told.append(Event(night, "copperleaf-consulting", f"{COPPERLEAF_JOINERS[night]} people join"))
        if night == TINY_COPY_NIGHT:
            told.append(Event(night, "tiny-startup", f"re-posts {TINY_COPY_FROM[0]}'s {TINY_COPY_FROM[1]}"))
    return told


FACE_MARGIN = (
    0.95  # above the crawler's face_score_floor (0.9 by default), so that small numeric differences between machines cannot flip it
)
MAX_DRAWS = 50


@functools.lru_cache(maxsize=512)
def _picture(seed: int, key: str, template: Template | None = None) -> bytes:
    """One picture drawn from its own seed (the story's seed and the picture's name): the same every night.

    The face detector finds a face in some drawings and not in others; the story's pictures are drawn
    until it finds one with a margin, so that the crawler keeps every one of them on any page markup
    (a staff photo it refused would be a change the story did not tell)."""
    from pipeline.features.faces import detect_faces

    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    for _ in range(MAX_DRAWS):
        picture = render(template or random_template(rng), random_sitter(rng), int(rng.integers(2**31)))
        if any(face.score >= FACE_MARGIN for face in detect_faces(picture, score_floor=0.5)):
            return jpeg_bytes(picture)
    raise RuntimeError(f"no drawing of {key} in {MAX_DRAWS} draws has a face the detector finds: the demo's templates have changed")


def night_pictures(night: int, seed: int = 7, per_company: int = 12) -> dict[str, dict[str, bytes]]:
    """The demo companies' pictures on `night` (1 = the first): company -> file name -> JPEG bytes."""
    if night < 1:
        raise ValueError(f"nights are counted from 1, not {night}")
    files = {company: dict(pictures) for company, pictures in demo_pictures(seed, per_company).items()}

    bluebird = files["bluebird-bakery"]
    for name in sorted(bluebird)[: BLUEBIRD_REPLACED_PER_NIGHT * (night - 1)]:
        bluebird[name] = _picture(seed, f"bluebird-bakery/generated/{name}", GENERATOR_TEMPLATE)

    templated = night in ALDER_TEMPLATED
    files["alder-architects"] = {
        f"architect_{i:02d}.jpg": _picture(seed, f"alder-architects/{'generated' if templated else 'own'}/{i}",
                                           GENERATOR_TEMPLATE if templated else None)
        for i in range(ALDER_PEOPLE)
    }  # fmt: skip

    copperleaf = files["copperleaf-consulting"]
    joined = sum(n for joined_on, n in COPPERLEAF_JOINERS.items() if joined_on <= night)
    for i in range(per_company, per_company + joined):
        copperleaf[f"people_{i:02d}.jpg"] = _picture(seed, f"copperleaf-consulting/{i}")

    company, name = TINY_COPY_FROM
    if night >= TINY_COPY_NIGHT and name in files[company]:
        original = Image.open(io.BytesIO(files[company][name]))
        files["tiny-startup"]["founder_2.jpg"] = jpeg_bytes(edited_copy(original), quality=70)
    return files

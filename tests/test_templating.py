"""The validation's templated pages (bench/templating.py): a template puts the face where it says, puts
the backdrop it names behind the person, and applies only the parts asked for."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bench.templating import SIDE, random_template, templated
from pipeline.features.face_signals import photo_signals
from tests.fixture_site import face_pictures


def _face_picture() -> Image.Image:
    return Image.open(io.BytesIO(face_pictures(1)[0])).convert("RGB")


def test_a_full_template_reframes_the_face_and_replaces_the_backdrop() -> None:
    template = random_template(np.random.default_rng(4))
    result = templated(_face_picture(), template)
    assert result is not None and result.size == (SIDE, SIDE)
    signals = photo_signals(result)
    assert signals.n_faces == 1
    assert abs(signals.face_x - template.face_centre[0]) < 0.06 and abs(signals.face_y - template.face_centre[1]) < 0.08
    assert abs(signals.face_scale - template.face_height) < 0.06  # the fixture face is at 0.32: re-framed
    corner = np.asarray(result)[: SIDE // 10, : SIDE // 10].reshape(-1, 3).mean(axis=0)
    assert np.abs(corner - np.asarray(template.backdrop_rgb)).max() < 45  # the backdrop, graded and vignetted


def test_a_partial_template_applies_only_its_parts_and_no_face_gives_nothing() -> None:
    picture = _face_picture()
    template = random_template(np.random.default_rng(5))
    backdrop_only = templated(picture, template.only("backdrop"))
    assert backdrop_only is not None and backdrop_only.size == picture.size  # not re-framed
    before, after = photo_signals(picture), photo_signals(backdrop_only)
    assert abs(before.face_x - after.face_x) < 0.03 and abs(before.face_scale - after.face_scale) < 0.05
    assert templated(Image.new("RGB", (200, 200), (90, 90, 90)), template) is None

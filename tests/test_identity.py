"""Face identity: pairs by descriptor distance, copies of one photo left out, counts per page."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.identity import SAME_FACE_DISTANCE, face_descriptor, identity_table, page_counts, same_face_pairs


def test_same_face_pairs_finds_close_descriptors_only() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 0.1, (4, 128)).astype(np.float32)
    base[1] += 1.0  # far from everything
    descriptors = np.concatenate([base, base[[0]] + 0.01, base[[2]] + 0.5])  # 4: 0's twin; 5: too far from 2
    pairs = same_face_pairs(descriptors)
    assert [(i, j) for i, j, _ in pairs] == [(0, 4)] and pairs[0][2] < SAME_FACE_DISTANCE
    assert same_face_pairs(descriptors[:1]) == []


def test_identity_table_leaves_out_copies_of_one_photo_and_counts_pages() -> None:
    images = pd.DataFrame({
        "company": ["a", "a", "b", "b"], "image": ["a1", "a2", "b1", "b2"],
        "content_sha256": ["x", "y", "z", "w"], "status": ["ok"] * 4,
    })  # fmt: skip
    descriptors = np.zeros((4, 128), np.float32)
    descriptors[3] += 5.0  # w is someone else; x, y, z are one face
    table = identity_table(images, ["x", "y", "z", "w"], descriptors, same_photo={frozenset(("x", "z"))})
    assert sorted(map(tuple, table[["image_a", "image_b", "same_page"]].values.tolist())) == [("a1", "a2", True), ("a2", "b1", False)]
    counts = page_counts(table, ["a", "b", "c"]).set_index("company")
    assert counts.loc["a"].tolist() == [2, 1] and counts.loc["b"].tolist() == [0, 1] and counts.loc["c"].tolist() == [0, 0]


def test_descriptor_of_a_face_is_stable_under_resizing_and_absent_without_a_face() -> None:
    from tests.fixture_site import face_pictures

    first, second = (Image.open(io.BytesIO(data)) for data in face_pictures(2))
    one = face_descriptor(first)
    assert one is not None and one.shape == (128,)
    resized = face_descriptor(first.resize((first.width * 3 // 4, first.height * 3 // 4)))
    assert resized is not None and np.linalg.norm(one - resized) < SAME_FACE_DISTANCE
    assert face_descriptor(Image.new("RGB", (200, 200), "grey")) is None

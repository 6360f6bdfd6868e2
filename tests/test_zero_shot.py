"""Zero-shot style and page-level AI-likelihood: mechanics on constructed vectors; classic says "not available"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.features.zero_shot import ATTRIBUTES, page_table, probabilities, wilson


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


@pytest.fixture
def prompts() -> dict:
    rng = np.random.default_rng(0)
    return {attribute: {value: unit(rng.normal(size=16)) for value in values} for attribute, values in ATTRIBUTES.items()}


def test_wilson_interval() -> None:
    assert wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == 1
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.237, abs=0.002) and high == pytest.approx(0.763, abs=0.002)
    assert all(np.isnan(wilson(0, 0)))


def test_probabilities_pick_the_closest_prompt(prompts: dict) -> None:
    origin = prompts["origin"]
    photos = np.stack([origin["ai-generated"], origin["photograph"]])
    p = probabilities(photos, origin)
    assert np.allclose(p.sum(axis=1), 1) and p[0, 0] > 0.99 and p[1, 1] > 0.99


def test_page_table_reports_pages_only(prompts: dict) -> None:
    origin, backdrop = prompts["origin"], prompts["backdrop"]
    keys = [f"k{i}" for i in range(8)]
    vectors = np.stack(
        [unit(origin["ai-generated"] + backdrop["office"]) for _ in range(4)]
        + [unit(origin["photograph"] + backdrop["outdoors"]) for _ in range(4)]
    )
    images = pd.DataFrame({"company": ["gen"] * 4 + ["real"] * 4, "image": keys, "content_sha256": keys, "status": ["ok"] * 8})
    table = page_table(images, keys, vectors, prompts, "clip-x").set_index("company")
    assert list(table.index) == ["gen", "real"]  # one row per page, no per-photo score anywhere
    assert table.loc["gen", "ai_share"] == 1 and table.loc["real", "ai_share"] == 0
    assert table.loc["gen", "backdrop_top"] == "office" and table.loc["real", "backdrop_top"] == "outdoors"
    assert 0 < table.loc["real", "ai_ci_high"] < 0.6 and table.loc["gen", "ai_ci_low"] > 0.4


def test_classic_pages_say_not_available() -> None:
    images = pd.DataFrame({"company": ["a"], "image": ["x"], "content_sha256": ["x"], "status": ["ok"]})
    table = page_table(images, ["x"], np.zeros((1, 8), np.float32), None, "classic-v1")
    assert table.loc[0, "zero_shot_status"].startswith("not available: classic-v1 has no text tower")
    assert np.isnan(table.loc[0, "ai_share"])

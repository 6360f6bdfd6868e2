"""Zero-shot style attributes and a page-level AI-likelihood, from the clip embedder's text tower.

Each photo's image vector is compared with prompt vectors (softmax over cosine × 100, CLIP's own
logit scale) for: backdrop, attire, framing, and "AI-generated image" against "real photograph".
Only pages are reported: the share of each attribute's most common value, and the share of photos
more likely AI-generated than real with a 95% Wilson interval. No per-photo AI score is stored or
shown: a single photo's zero-shot guess is not evidence about a person.

Known limits: zero-shot CLIP has no calibrated notion of "AI-generated"; the share is a population
signal that moves when a page fills with generated pictures, not a detector. Its figures need real
CLIP weights; none could be measured on this project's machines. The offline `classic` embedder has
no text tower: its pages say "not available" instead of guessing.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline import layout

LOGIT_SCALE = 100.0
ATTRIBUTES: dict[str, dict[str, list[str]]] = {
    "backdrop": {
        "plain studio backdrop": ["a headshot in front of a plain studio backdrop", "a portrait with a plain grey background"],
        "office": ["a portrait photo taken in an office", "a headshot with an office in the background"],
        "outdoors": ["a portrait photo taken outdoors", "a headshot with trees and sky in the background"],
    },
    "attire": {
        "business formal": ["a person wearing a suit and tie", "a person in formal business attire"],
        "casual": ["a person wearing casual clothes", "a person in a t-shirt"],
    },
    "framing": {
        "head and shoulders": ["a close-up head and shoulders portrait"],
        "half body": ["a half-body portrait of a person"],
        "full body": ["a full-body photo of a person standing"],
    },
    "origin": {
        "ai-generated": ["an AI-generated portrait", "a synthetic, computer-generated headshot"],
        "photograph": ["a real photograph of a person taken with a camera", "a candid photo of a real person"],
    },
}
PAGE_COLUMNS = ["zero_shot_status", "backdrop_top", "backdrop_share", "attire_top", "attire_share", "framing_top", "framing_share",
                "ai_share", "ai_ci_low", "ai_ci_high"]  # fmt: skip


def prompt_vectors(embed_texts) -> dict[str, dict[str, np.ndarray]]:  # noqa: ANN001 - ClipEmbedder.embed_texts
    """One unit vector per attribute value: the normalised mean of its prompts' vectors."""
    vectors: dict[str, dict[str, np.ndarray]] = {}
    for attribute, values in ATTRIBUTES.items():
        vectors[attribute] = {}
        for value, prompts in values.items():
            mean = embed_texts(prompts).mean(axis=0)
            vectors[attribute][value] = mean / (np.linalg.norm(mean) or 1.0)
    return vectors


def probabilities(image_vectors: np.ndarray, values: dict[str, np.ndarray]) -> np.ndarray:
    """Softmax over the values of one attribute, per photo (rows) and value (columns, in dict order)."""
    logits = LOGIT_SCALE * image_vectors @ np.stack(list(values.values())).T
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def page_table(
    images: pd.DataFrame, keys: list[str], image_vectors: np.ndarray, prompts: dict[str, dict[str, np.ndarray]] | None, embedder_id: str
) -> pd.DataFrame:
    """Per page: the most common value of each attribute and its share, and the AI-likely share with its CI."""
    ok = images[images["status"] == "ok"]
    rows = []
    position = {key: i for i, key in enumerate(keys)}
    for company, group in ok.groupby("company", sort=False):
        record: dict[str, object] = {"company": company, **{c: math.nan for c in PAGE_COLUMNS}}
        if prompts is None:
            record["zero_shot_status"] = f"not available: {embedder_id} has no text tower (needs the clip embedder)"
            rows.append(record)
            continue
        vectors = image_vectors[[position[k] for k in group["content_sha256"]]]
        record["zero_shot_status"] = "ok"
        for attribute in ("backdrop", "attire", "framing"):
            chosen = probabilities(vectors, prompts[attribute]).argmax(axis=1)
            counts = np.bincount(chosen, minlength=len(prompts[attribute]))
            record[f"{attribute}_top"] = list(prompts[attribute])[int(counts.argmax())]
            record[f"{attribute}_share"] = float(counts.max() / len(vectors))
        likely_ai = int((probabilities(vectors, prompts["origin"])[:, 0] > 0.5).sum())
        record["ai_share"] = likely_ai / len(vectors)
        record["ai_ci_low"], record["ai_ci_high"] = wilson(likely_ai, len(vectors))
        rows.append(record)
    return pd.DataFrame(rows, columns=["company", *PAGE_COLUMNS])


def cached_prompt_vectors(warehouse, embedder) -> dict[str, dict[str, np.ndarray]] | None:  # noqa: ANN001
    """Prompt vectors of a clip embedder, cached in the warehouse per embedder and prompt set, so a
    rerun served from the embedding cache never loads the model; None for embedders without text."""
    import hashlib
    import io
    import json

    if not hasattr(embedder, "embed_texts"):
        return None
    digest = hashlib.sha256(json.dumps(ATTRIBUTES, sort_keys=True).encode()).hexdigest()[:12]
    key = layout.zero_shot_prompts(embedder.id, digest)
    if warehouse.exists(key):
        stored = np.load(io.BytesIO(warehouse.read_bytes(key)))
        return {a: {v: stored[f"{a}|{v}"] for v in values} for a, values in ATTRIBUTES.items()}
    vectors = prompt_vectors(embedder.embed_texts)
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{a}|{v}": vector for a, values in vectors.items() for v, vector in values.items()})
    warehouse.write_bytes(key, buffer.getvalue())
    return vectors

"""Embedders and the embed stage: classic behaviour on generated edits, the real open_clip path with a
tiny seeded model, weights resolution and its error, `auto`, and the embedding cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.apps.demo.data import CORPORATE_TEMPLATE, generate_demo_images, random_sitter, random_template, render
from pipeline.config import load_settings
from pipeline.features.calibration import EDITS
from pipeline.features.embed import embed_images, load_cache, resolve_embedder
from pipeline.features.embedders.classic import DIM, EMBEDDER_ID, ClassicEmbedder, describe, trim_solid_border
from pipeline.features.embedders.clip import TINY_TEST_MODEL, ClipEmbedder, WeightsNotFound, find_local_weights
from pipeline.ingest.sources import read_manifest
from pipeline.stages import run_pipeline
from pipeline.warehouse import Warehouse
from tests.conftest import photo_like

# ---------------------------------------------------------------- classic
CLASSIC_NEAR_DUPLICATE = 0.90  # README: precision 0.861, recall 0.886 on the corpus calibration


@pytest.fixture(scope="module")
def templated_sitters() -> list:
    rng = np.random.default_rng(11)
    return [render(CORPORATE_TEMPLATE, random_sitter(rng), seed) for seed in range(5)]


def test_classic_vectors_are_unit_length_deterministic_and_documented_size() -> None:
    picture = photo_like(seed=1)
    first, second = describe(picture), describe(picture.copy())
    assert first.shape == (DIM,) and first.dtype == np.float32
    assert np.isclose(np.linalg.norm(first), 1.0, atol=1e-5)
    assert np.array_equal(first, second)
    assert EMBEDDER_ID == "classic-v1"


@pytest.mark.parametrize("edit", [name for name in EDITS if name != "crop_20_offset"])
def test_classic_edits_land_above_the_near_duplicate_threshold(edit: str, templated_sitters: list) -> None:
    for picture in templated_sitters:
        assert float(describe(picture) @ describe(EDITS[edit](picture))) >= CLASSIC_NEAR_DUPLICATE


def test_classic_mirror_and_added_borders_are_exactly_invariant(templated_sitters: list) -> None:
    for picture in templated_sitters:
        vector = describe(picture)
        for edit in ("mirror", "border_white", "border_black"):
            assert float(vector @ describe(EDITS[edit](picture))) > 0.999


def test_classic_heavy_crop_stays_closer_than_other_templates(templated_sitters: list) -> None:
    rng = np.random.default_rng(5)
    others = [describe(render(random_template(rng), random_sitter(rng), 100 + i)) for i in range(8)]
    for picture in templated_sitters:
        vector = describe(picture)
        cropped = float(vector @ describe(EDITS["crop_20_offset"](picture)))
        assert cropped > 0.8
        assert cropped > max(float(vector @ other) for other in others)


def test_classic_separates_other_templates_from_near_copies(templated_sitters: list) -> None:
    rng = np.random.default_rng(3)
    vector = describe(templated_sitters[0])
    for seed in range(8):
        other = describe(render(random_template(rng), random_sitter(rng), 200 + seed))
        assert float(vector @ other) < CLASSIC_NEAR_DUPLICATE


def test_border_trim_keeps_a_backdrop_that_reaches_the_edge() -> None:
    studio = render(CORPORATE_TEMPLATE, random_sitter(np.random.default_rng(0)), 1)
    assert trim_solid_border(studio).size == studio.size
    framed = EDITS["border_white"](studio)
    assert abs(trim_solid_border(framed).size[0] - studio.size[0]) <= 2


# ------------------------------------------------------------------- clip
def test_tiny_clip_checkpoint_runs_the_real_pipeline_end_to_end(tiny_checkpoint: Path, tmp_path: Path) -> None:
    manifest = generate_demo_images(tmp_path / "demo", per_company=3)
    settings = load_settings(
        warehouse=str(tmp_path / "wh"),
        embedder="clip",
        clip={"model": TINY_TEST_MODEL, "checkpoint": str(tiny_checkpoint), "batch_size": 4},
    )
    result = run_pipeline(read_manifest(str(manifest)), settings, run_date="2026-01-01", progress=False)
    assert result.embedder.startswith(f"clip-{TINY_TEST_MODEL}-ckpt") and not result.embedder_fallback
    keys, vectors = load_cache(Warehouse(str(tmp_path / "wh")), result.embedder)
    assert len(keys) == result.counts["distinct_images"] and vectors.shape == (len(keys), 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    meta = json.loads((Path(result.outputs["index"]) / "meta.json").read_text())
    assert meta["embedder"] == result.embedder and meta["n"] == len(keys)
    companies = pd.read_parquet(result.outputs["companies"])  # the text tower ran: zero-shot columns are filled
    assert (companies["zero_shot_status"] == "ok").all() and companies["ai_share"].between(0, 1).all()


def test_prefetched_file_path_equals_in_memory_path(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from pipeline.ingest.intake import load_rgb

    embedder = ClipEmbedder(TINY_TEST_MODEL, checkpoint=tiny_checkpoint, precision="fp32", batch_size=3, decode_threads=2)
    manifest = generate_demo_images(tmp_path, per_company=2)
    uris = [row.uri for row in read_manifest(str(manifest))]
    from_files = embedder.embed_uris(uris)
    in_memory = embedder.embed_images([load_rgb(uri, draft_side=embedder.input_side) for uri in uris])
    assert np.allclose(from_files, in_memory, atol=1e-5)


def test_bf16_agrees_with_fp32(tiny_checkpoint: Path) -> None:
    pictures = [photo_like(seed=s) for s in range(6)]
    fp32 = ClipEmbedder(TINY_TEST_MODEL, checkpoint=tiny_checkpoint, precision="fp32").embed_images(pictures)
    bf16 = ClipEmbedder(TINY_TEST_MODEL, checkpoint=tiny_checkpoint, precision="bf16").embed_images(pictures)
    cosines = np.sum(fp32 * bf16, axis=1)
    # Tiny random weights are far less forgiving than real ones (0.9999 measured with ViT-B-32).
    assert cosines.min() > 0.99, cosines


def test_missing_weights_give_one_error_naming_three_ways(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound) as caught:
        ClipEmbedder("ViT-B-32", "laion2b_s34b_b79k")
    message = str(caught.value)
    for way in ("homog models pull ViT-B-32 laion2b_s34b_b79k", "HF_HOME", "clip.checkpoint"):
        assert way in message
    with pytest.raises(WeightsNotFound, match="checkpoint file not found"):
        ClipEmbedder("ViT-B-32", checkpoint=tmp_path / "nope.pt")


def test_random_weights_are_not_reachable_by_accident() -> None:
    with pytest.raises(ValueError, match="random weights"):
        ClipEmbedder(TINY_TEST_MODEL, pretrained=None)
    with pytest.raises(Exception, match="must not be empty"):
        load_settings(clip={"pretrained": ""})


def test_weights_are_found_in_the_hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    snapshot = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("abc123")
    weights = snapshot / "snapshots" / "abc123" / "open_clip_pytorch_model.bin"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert find_local_weights("ViT-B-32", "laion2b_s34b_b79k") == str(weights)
    assert find_local_weights("ViT-B-32", "openai") is None


def test_auto_falls_back_to_classic_loudly_and_clip_without_weights_fails(caplog: pytest.LogCaptureFixture) -> None:
    choice = resolve_embedder(load_settings(embedder="auto"))
    assert choice.embedder.id == EMBEDDER_ID
    assert "classic" in choice.fallback_reason and "EMBEDDER FALLBACK" in caplog.text
    with pytest.raises(WeightsNotFound):
        resolve_embedder(load_settings(embedder="clip"))


def test_auto_uses_clip_when_weights_are_there(tiny_checkpoint: Path) -> None:
    choice = resolve_embedder(load_settings(embedder="auto", clip={"model": TINY_TEST_MODEL, "checkpoint": str(tiny_checkpoint)}))
    assert choice.embedder.id.startswith("clip-") and choice.fallback_reason == ""


# ------------------------------------------------------------------ cache
class CountingEmbedder(ClassicEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def embed_uris(self, uris, progress=False):  # type: ignore[override]
        self.calls.append(len(uris))
        return super().embed_uris(uris, progress)


def test_rerun_embeds_only_new_content(tmp_path: Path) -> None:
    from pipeline.config import IntakeConfig, PrivacyConfig
    from pipeline.ingest.intake import ingest

    manifest = generate_demo_images(tmp_path / "demo", per_company=3)
    rows = read_manifest(str(manifest))
    warehouse = Warehouse(str(tmp_path / "wh"))
    images = ingest(rows, warehouse, "2026-01-01", IntakeConfig(), PrivacyConfig(), progress=False)
    embedder = CountingEmbedder()
    first = embed_images(images, warehouse, embedder, progress=False)
    second = embed_images(images, warehouse, embedder, progress=False)
    third = embed_images(images.iloc[:-1], warehouse, embedder, progress=False)
    assert embedder.calls == [first.n_embedded]  # the model is not even called on a rerun
    assert first.n_embedded == images["content_sha256"].nunique()
    assert np.array_equal(first.vectors, second.vectors)
    assert third.content_sha256 == first.content_sha256[: len(third.content_sha256)]
    # a new image: only it is embedded
    new_rows = rows_with_one_more(rows, tmp_path)
    images = ingest(new_rows, warehouse, "2026-01-02", IntakeConfig(), PrivacyConfig(), progress=False)
    fourth = embed_images(images, warehouse, embedder, progress=False)
    assert embedder.calls[-1] == 1 and fourth.n_embedded == 1


def test_mapped_embedding_shards_split_the_new_pictures_between_them(tmp_path: Path) -> None:
    from pipeline.config import IntakeConfig, PrivacyConfig
    from pipeline.features.embed import embed_shard
    from pipeline.ingest.intake import ingest

    manifest = generate_demo_images(tmp_path / "demo", per_company=4)
    warehouse = Warehouse(str(tmp_path / "wh"))
    images = ingest(read_manifest(str(manifest)), warehouse, "2026-01-01", IntakeConfig(), PrivacyConfig(), progress=False)
    embedder = CountingEmbedder()
    parts = [embed_shard(images, warehouse, embedder, shard, 3) for shard in range(3)]
    assert sum(parts) == images["content_sha256"].nunique() and all(parts)  # disjoint, complete, each did some
    assert embed_shard(images, warehouse, embedder, 1, 3) == 0  # a retried task finds its part done
    collected = embed_images(images, warehouse, embedder, progress=False)
    assert collected.n_embedded == 0 and len(collected.content_sha256) == sum(parts)
    with pytest.raises(ValueError, match="not in 0..2"):
        embed_shard(images, warehouse, embedder, 3, 3)


def test_pictures_a_failed_shard_left_out_are_embedded_after_the_parts(tmp_path: Path) -> None:
    from pipeline.config import IntakeConfig, PrivacyConfig
    from pipeline.features.embed import embed_shard
    from pipeline.ingest.intake import ingest

    manifest = generate_demo_images(tmp_path / "demo", per_company=4)
    warehouse = Warehouse(str(tmp_path / "wh"))
    images = ingest(read_manifest(str(manifest)), warehouse, "2026-01-01", IntakeConfig(), PrivacyConfig(), progress=False)
    embedder = CountingEmbedder()
    done = embed_shard(images, warehouse, embedder, 0, 2)  # shard 1 never ran
    collected = embed_images(images, warehouse, embedder, progress=False)
    assert collected.n_embedded == images["content_sha256"].nunique() - done > 0


def rows_with_one_more(rows: list, tmp_path: Path) -> list:
    from pipeline.ingest.sources import ManifestRow

    extra = tmp_path / "extra.jpg"
    photo_like(seed=99).save(extra, format="JPEG")
    return [*rows, ManifestRow(company="newco", image="extra.jpg", uri=str(extra))]


def test_unknown_model_is_a_clear_error() -> None:
    from pipeline.features.embedders.clip import UnknownModel

    with pytest.raises(UnknownModel, match="unknown open_clip model 'ViT-Z-99'"):
        ClipEmbedder("ViT-Z-99", checkpoint=None, pretrained=None, random_init_seed=0)


def test_model_loads_only_when_something_must_be_embedded(tiny_checkpoint: Path) -> None:
    embedder = ClipEmbedder(TINY_TEST_MODEL, checkpoint=tiny_checkpoint)
    assert embedder._model is None and embedder.dim == 32 and embedder.input_side == 64
    assert embedder.embed_uris([]).shape == (0, 32) and embedder._model is None


def test_an_interrupted_embed_keeps_the_chunks_it_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vectors reach the cache chunk by chunk: an embed killed in its third chunk keeps the first two,
    and the retry embeds only the rest, with the vectors of a run that was never interrupted."""
    import pipeline.warehouse
    from pipeline.config import IntakeConfig, PrivacyConfig
    from pipeline.ingest.intake import ingest

    monkeypatch.setattr(pipeline.warehouse, "CHECKPOINT_PHOTOS", 2)
    manifest = generate_demo_images(tmp_path / "demo", per_company=3)
    warehouse = Warehouse(str(tmp_path / "wh"))
    images = ingest(read_manifest(str(manifest)), warehouse, "2026-01-01", IntakeConfig(), PrivacyConfig(), progress=False)
    distinct = images["content_sha256"].nunique()
    assert distinct > 4

    class FailingThird(CountingEmbedder):
        def embed_uris(self, uris, progress=False):  # type: ignore[override]
            if len(self.calls) == 2:
                raise MemoryError("killed")
            return super().embed_uris(uris, progress)

    with pytest.raises(MemoryError):
        embed_images(images, warehouse, FailingThird(), progress=False)
    assert len(load_cache(warehouse, EMBEDDER_ID)[0]) == 4
    retry = CountingEmbedder()
    resumed = embed_images(images, warehouse, retry, progress=False)
    assert resumed.n_embedded == distinct - 4 and sum(retry.calls) == distinct - 4
    objects = dict(zip(images["content_sha256"], images["raw_object"]))
    never_interrupted = ClassicEmbedder().embed_uris([warehouse.uri(objects[content]) for content in resumed.content_sha256])
    assert np.array_equal(resumed.vectors, never_interrupted)

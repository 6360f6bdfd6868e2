"""Embed: one L2-normalised vector per distinct image content, cached by (content_sha256, embedder id).

The embedder is chosen once per run (`resolve_embedder`): `classic`, `clip`, or `auto` = clip where
its weights are already on this machine, else classic, announced loudly. Vectors live in the
warehouse under `embeddings/<embedder id>/shard-<digest>.parquet`; a rerun embeds only content that
no shard holds yet, so unchanged images never reach the model again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from pipeline import layout
from pipeline.config import Settings
from pipeline.ingest.intake import distinct_ok
from pipeline.warehouse import Warehouse

logger = logging.getLogger(__name__)


class Embedder(Protocol):
    id: str
    dim: int

    def embed_uris(self, uris: Sequence[str], progress: bool = False) -> np.ndarray: ...


@dataclass(frozen=True)
class EmbedderChoice:
    embedder: Embedder
    fallback_reason: str = ""  # non-empty: `auto` fell back to classic, and why


def resolve_embedder(settings: Settings) -> EmbedderChoice:
    """Build the run's embedder; `clip` without weights raises WeightsNotFound, `auto` falls back."""
    from pipeline.features.embedders.classic import ClassicEmbedder
    from pipeline.features.embedders.clip import ClipEmbedder, find_local_weights

    clip = settings.clip
    if settings.embedder == "classic":
        return EmbedderChoice(ClassicEmbedder())
    if settings.embedder == "auto" and find_local_weights(clip.model, clip.pretrained, clip.checkpoint) is None:
        reason = (
            f"CLIP weights for {clip.model} / {clip.pretrained} are not on this machine (see `homog models list`); "
            "using the offline `classic` embedder instead. Its numbers are not comparable with clip's."
        )
        logger.warning("EMBEDDER FALLBACK: %s", reason)
        return EmbedderChoice(ClassicEmbedder(), fallback_reason=reason)
    return EmbedderChoice(
        ClipEmbedder(
            clip.model,
            clip.pretrained,
            clip.checkpoint,
            device=clip.device,
            precision=clip.precision,
            batch_size=clip.batch_size,
            decode_threads=clip.decode_threads,
        )
    )


def load_cache(warehouse: Warehouse, embedder_id: str) -> tuple[list[str], np.ndarray]:
    """Every cached vector of one embedder: (content hashes, float32 matrix)."""
    keys: list[str] = []
    blocks: list[np.ndarray] = []
    for table in warehouse.read_shards(layout.embeddings_folder(embedder_id)):
        keys.extend(table.column("content_sha256").to_pylist())
        blocks.append(np.asarray(table.column("vector").combine_chunks().flatten(), np.float32).reshape(table.num_rows, -1))
    return keys, (np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32))


def cached_keys(warehouse: Warehouse, embedder_id: str) -> set[str]:
    """The content hashes the cache holds vectors for, without reading the vectors."""
    tables = warehouse.read_shards(layout.embeddings_folder(embedder_id), columns=["content_sha256"])
    return {key for table in tables for key in table.column("content_sha256").to_pylist()}


def vectors_for(warehouse: Warehouse, embedder_id: str, keys: Sequence[str], dim: int) -> np.ndarray:
    """The cached vectors of `keys`, in that order; every key must have been embedded."""
    cached_keys, cached = load_cache(warehouse, embedder_id)
    position = {key: row for row, key in enumerate(cached_keys)}
    missing = [key for key in keys if key not in position]
    if missing:
        raise RuntimeError(
            f"{len(missing)} image(s) have no {embedder_id} vector in the cache: the embed stage has not run for them, or retention "
            "deleted them with their photo (last seen more than retention.raw_images_days ago: that run's tables stay, "
            "but nothing that needs its vectors can be computed again)"
        )
    return cached[[position[key] for key in keys]] if len(keys) else np.zeros((0, dim), np.float32)


def _cache_table(embedder_id: str, keys: Sequence[str], vectors: np.ndarray):  # noqa: ANN202 - a pyarrow Table
    """One shard of the vector cache: content hashes and float32 vectors, named by their embedder."""
    import pyarrow as pa

    return pa.table(
        {
            "content_sha256": pa.array(list(keys), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), vectors.shape[1]),
        }
    ).replace_schema_metadata({"embedder": embedder_id})


def embed_into_cache(
    warehouse: Warehouse, embedder: Embedder, contents: Sequence[str], objects: Sequence[str], progress: bool
) -> np.ndarray:
    """Vectors of these contents (their pictures' object keys `objects`), written to the cache chunk by
    chunk as they are computed (`Warehouse.checkpoints`: a run killed half-way keeps the chunks it finished)."""
    from tqdm.auto import tqdm

    from pipeline.parallel import chunked
    from pipeline.warehouse import CHECKPOINT_PHOTOS

    vectors = [np.zeros((0, embedder.dim), np.float32)]
    with (
        warehouse.checkpoints(layout.embeddings_folder(embedder.id)) as write,
        tqdm(total=len(contents), desc=f"embed {embedder.id}", unit="img", disable=not progress or not contents) as bar,
    ):
        for chunk in chunked(list(zip(contents, objects)), CHECKPOINT_PHOTOS):
            keys = [content for content, _ in chunk]
            vectors.append(embedder.embed_uris([warehouse.uri(key) for _, key in chunk]))
            write(keys, _cache_table(embedder.id, keys, vectors[-1]))
            bar.update(len(chunk))  # one bar for the whole stage, not one per chunk
    return np.concatenate(vectors)


@dataclass
class Embeddings:
    embedder_id: str
    content_sha256: list[str]  # row i of `vectors` is the content with this hash
    vectors: np.ndarray
    n_embedded: int  # computed in this run (the rest came from the cache)


def shard_of(content_sha256: str, n_shards: int) -> int:
    """Which of `n_shards` embedding tasks embeds this content: a stable split by hash."""
    return int(content_sha256[:15], 16) % n_shards


def embed_shard(images: pd.DataFrame, warehouse: Warehouse, embedder: Embedder, shard: int, n_shards: int) -> int:
    """Embed into the cache the run's uncached contents that fall in `shard` of `n_shards` (one
    mapped Airflow task each; their cache shards never collide). Returns how many were embedded.
    `embed_images` afterwards finds them cached, and embeds itself anything a shard left out."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is not in 0..{n_shards - 1}")
    ok = distinct_ok(images)
    missing = ok[~ok["content_sha256"].isin(cached_keys(warehouse, embedder.id))]
    mine = missing.iloc[[row for row, content in enumerate(missing["content_sha256"]) if shard_of(content, n_shards) == shard]]
    logger.info("embed %s, shard %d of %d: %d of %d uncached images", embedder.id, shard, n_shards, len(mine), len(missing))
    embed_into_cache(warehouse, embedder, list(mine["content_sha256"]), list(mine["raw_object"]), progress=False)
    return len(mine)


def embed_images(images: pd.DataFrame, warehouse: Warehouse, embedder: Embedder, progress: bool = True) -> Embeddings:
    """Vectors for every distinct `ok` image of the `images` table, from the cache where possible."""
    ok = distinct_ok(images)
    wanted = list(ok["content_sha256"])
    cached_keys, cached = load_cache(warehouse, embedder.id)
    position = {key: i for i, key in enumerate(cached_keys)}
    missing = ok[~ok["content_sha256"].isin(position)]
    logger.info("embed %s: %d distinct images, %d cached, %d to embed", embedder.id, len(wanted), len(wanted) - len(missing), len(missing))
    fresh = embed_into_cache(warehouse, embedder, list(missing["content_sha256"]), list(missing["raw_object"]), progress)
    fresh_position = {key: i for i, key in enumerate(missing["content_sha256"])}
    vectors = np.zeros((len(wanted), embedder.dim), np.float32)
    for row, key in enumerate(wanted):
        vectors[row] = fresh[fresh_position[key]] if key in fresh_position else cached[position[key]]
    return Embeddings(embedder.id, wanted, vectors, n_embedded=len(missing))

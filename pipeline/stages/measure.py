"""The stages that measure what intake stored: faces, embed, zero-shot, index, near-duplicates,
identity, pages (the companies table and trends), changes (since the previous run) and report.

Each reads what earlier stages stored for the run date, writes its own tables and returns only URIs
and counts (`{"outputs": ..., "counts": ...}`), so Airflow tasks on different workers can run them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pipeline.context import RunContext

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.features.embed import Embeddings

logger = logging.getLogger(__name__)


def _images(ctx: RunContext) -> pd.DataFrame:
    return ctx.warehouse.read_table("images", ctx.run_date)


def _run_embeddings(ctx: RunContext) -> Embeddings:
    """The cached vectors of the run's distinct `ok` pictures, in the run's index order."""
    from pipeline.features.embed import Embeddings, vectors_for
    from pipeline.ingest.intake import distinct_ok

    keys = list(distinct_ok(_images(ctx))["content_sha256"])
    embedder_id = ctx.require_embedder_id()
    return Embeddings(embedder_id, keys, vectors_for(ctx.warehouse, embedder_id, keys, ctx.embedder_dim), n_embedded=0)


def faces(ctx: RunContext) -> dict[str, Any]:
    """Face detection and template signals for the run's `ok` images; writes the `faces` table."""
    from pipeline.features.face_signals import measure_images

    table, n_measured = measure_images(_images(ctx), ctx.warehouse, ctx.settings.crawl.face_score_floor)
    return {
        "outputs": {"faces": ctx.warehouse.write_table("faces", ctx.run_date, table)},
        "counts": {"faces_measured": n_measured, "photos_with_face": int((table["n_faces"] > 0).sum())},
    }


def embed_shard(ctx: RunContext, shard: int, n_shards: int) -> dict[str, Any]:
    """One mapped embedding task: the run's uncached pictures whose hash falls in `shard`."""
    from pipeline.features.embed import embed_shard as embed_part

    embedder = ctx.embedder().embedder
    embedded = embed_part(_images(ctx), ctx.warehouse, embedder, shard, n_shards)
    return {"shard": shard, "embedder": embedder.id, "counts": {"embedded": embedded}}


def embed(ctx: RunContext) -> dict[str, Any]:
    """Embed the run's distinct `ok` images into the embedding cache (cache hits cost nothing)."""
    from pipeline.features.embed import embed_images

    choice = ctx.embedder()
    embeddings = embed_images(_images(ctx), ctx.warehouse, choice.embedder, progress=ctx.progress)
    n_distinct = len(embeddings.content_sha256)
    return {
        "outputs": {}, "embedder": embeddings.embedder_id, "dim": choice.embedder.dim, "embedder_fallback": choice.fallback_reason,
        "counts": {"distinct_images": n_distinct, "embedded": embeddings.n_embedded, "embedding_cache_hits": n_distinct - embeddings.n_embedded},
    }  # fmt: skip


def combine_embed_parts(result: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """What the mapped shards embedded counts as embedded by this run, not as cache hits."""
    by_parts = sum(part["counts"]["embedded"] for part in parts)
    counts = result["counts"]
    return {
        **result,
        "counts": {**counts, "embedded": counts["embedded"] + by_parts, "embedding_cache_hits": counts["embedding_cache_hits"] - by_parts},
    }


def zero_shot(ctx: RunContext) -> dict[str, Any]:
    """Zero-shot style attributes and the AI-likely share per page (clip only); writes `zero_shot`."""
    from pipeline.features.zero_shot import cached_prompt_vectors, page_table

    choice = ctx.embedder()
    if choice.embedder.id != ctx.require_embedder_id():
        raise RuntimeError(f"this worker resolves the embedder to {choice.embedder.id}, the run's vectors are {ctx.embedder_id}: "
                           "give every worker the same clip weights or set the embedder explicitly")  # fmt: skip
    embeddings = _run_embeddings(ctx)
    prompts = cached_prompt_vectors(ctx.warehouse, choice.embedder)
    styles = page_table(_images(ctx), embeddings.content_sha256, embeddings.vectors, prompts, embeddings.embedder_id)
    return {"outputs": {"zero_shot": ctx.warehouse.write_table("zero_shot", ctx.run_date, styles)}, "counts": {}}


def index(ctx: RunContext) -> dict[str, Any]:
    """Build and save the run's FAISS index from the cached vectors of its distinct `ok` images."""
    from pipeline.features.index import build_index, choose_kind, save_index

    embeddings = _run_embeddings(ctx)
    kind, why = choose_kind(len(embeddings.vectors), embeddings.vectors.shape[1] if embeddings.vectors.ndim == 2 else 1, ctx.warehouse)
    logger.info("index: %s", why)
    vector_index = build_index(embeddings.vectors, embeddings.content_sha256, kind)  # type: ignore[arg-type]
    return {"outputs": {"index": save_index(ctx.warehouse, vector_index, embeddings.embedder_id, ctx.run_date)}, "counts": {},
            "index_kind": vector_index.kind, "index_choice": why}  # fmt: skip


def near_duplicates(ctx: RunContext) -> dict[str, Any]:
    """Exact and verified near-duplicate pairs, style clusters and cross-company reuse."""
    from pipeline.features.embed import Embeddings, vectors_for
    from pipeline.features.index import load_index
    from pipeline.metrics.near_duplicates import find_near_duplicates
    from pipeline.parallel import worker_count

    warehouse = ctx.warehouse
    vector_index = load_index(warehouse, ctx.require_embedder_id(), ctx.run_date)
    vectors = vectors_for(warehouse, ctx.embedder_id, vector_index.ids, vector_index.dim)
    embeddings = Embeddings(ctx.embedder_id, vector_index.ids, vectors, n_embedded=0)
    settings = ctx.settings
    found = find_near_duplicates(_images(ctx), embeddings, vector_index, warehouse, settings.thresholds, settings.crawl.face_score_floor,
                                 worker_count(settings.compute.workers))  # fmt: skip
    return {
        "outputs": {table: warehouse.write_table(table, ctx.run_date, getattr(found, table)) for table in ("pairs", "groups", "clusters", "reuse")},
        "counts": {"near_duplicate_candidates": found.n_candidates, "near_duplicates_verified": found.n_verified,
                   "verifications_computed": found.n_verifications_computed,
                   **{f"candidates_by_{source}": n for source, n in found.candidates_by_source.items()},
                   "region_views_computed": found.n_region_views_computed, "keypoints_computed": found.n_keypoints_computed,
                   **{f"candidate_search_{source}_photos": count.photos_searched for source, count in found.candidate_search.items()},
                   "pairs": len(found.pairs), "duplicate_groups": int(found.groups["group_id"].nunique()),
                   "cross_company_pairs": len(found.reuse)},
    }  # fmt: skip


def identity(ctx: RunContext) -> dict[str, Any]:
    """Same face, different photographs: descriptors of the run's faces (kept sealed to their photo
    with privacy.keep_face_descriptors, else only in memory), paired, minus pairs that are copies of
    one photograph."""
    import numpy as np
    import pandas as pd

    from pipeline.features.face_signals import face_boxes
    from pipeline.features.identity import (
        PAIR_COLUMNS,
        content_pairs,
        drop_kept_descriptors,
        face_descriptors,
        faces_key,
        identity_table,
        kept_content_pairs,
        remember_pairs,
        reused_pairs,
    )
    from pipeline.ingest.intake import content_by_row, distinct_ok
    from pipeline.parallel import worker_count

    warehouse, settings = ctx.warehouse, ctx.settings
    images, faces_table = _images(ctx), warehouse.read_table("faces", ctx.run_date)
    n_computed = n_unsealed = n_searched = 0
    drop_kept_descriptors(warehouse, settings.privacy.face_identity and settings.privacy.keep_face_descriptors)
    if not settings.privacy.face_identity or faces_table.empty or not (faces_table["n_faces"] > 0).any():
        identities = pd.DataFrame(columns=PAIR_COLUMNS)
    else:
        ok = images[images["status"] == "ok"]
        contents = sorted(faces_table.loc[faces_table["n_faces"] > 0, "content_sha256"].drop_duplicates())
        key = faces_key(contents, settings.crawl.face_score_floor)
        same_faces = reused_pairs(warehouse, key)
        if same_faces is None:
            floor = settings.crawl.face_score_floor
            # The face signals found every face already: identity reuses their boxes instead of detecting again.
            descriptors, n_computed = face_descriptors(warehouse, distinct_ok(ok), contents, settings.privacy.keep_face_descriptors, floor,
                                                       worker_count(settings.compute.workers), face_boxes(warehouse, floor))  # fmt: skip
            n_unsealed = len(contents) - n_computed  # kept ones, read back with their photo
            found = ~np.isnan(descriptors).any(axis=1)
            faces = [c for c, f in zip(contents, found) if f]
            if settings.privacy.keep_face_descriptors:
                same_faces, n_searched = kept_content_pairs(warehouse, faces, descriptors[found])
            else:  # nothing derived from the descriptors outlives the run: every face against every face
                same_faces, n_searched = content_pairs(faces, descriptors[found]), len(faces)
            remember_pairs(warehouse, key, same_faces)
        pairs = warehouse.read_table("pairs", ctx.run_date)
        content_of = content_by_row(ok)
        same_photo = {frozenset((content_of[(r.company_a, r.image_a)], content_of[(r.company_b, r.image_b)])) for r in pairs.itertuples()}
        identities = identity_table(images, same_faces, same_photo)
    return {
        "outputs": {"identities": warehouse.write_table("identities", ctx.run_date, identities)},
        "counts": {
            "same_face_pairs": len(identities),
            "face_descriptors_computed": n_computed,
            "face_descriptors_unsealed": n_unsealed,
            "face_search_photos": n_searched,
        },
    }


def pages(ctx: RunContext) -> dict[str, Any]:
    """The `companies` table (every registered page metric; where a metric's inputs of a page are
    unchanged, the earlier row's values) and the `trends` table."""
    from pipeline.features.reference import run_reference
    from pipeline.metrics.pages import PageInputs, companies_table
    from pipeline.metrics.trends import trends_table

    warehouse, settings = ctx.warehouse, ctx.settings
    embeddings = _run_embeddings(ctx)
    reference = run_reference(warehouse, embeddings.embedder_id, embeddings.vectors, settings.thresholds.reference_min_photos, ctx.run_date)
    inputs = PageInputs(settings=settings, images=_images(ctx), embeddings=embeddings, reference=reference,
                        read=lambda table: warehouse.read_table(table, ctx.run_date), warehouse_uri=warehouse.uri())  # fmt: skip
    # Rows to keep: this date's from an earlier attempt, else the latest run's before it.
    measured = [date for date in warehouse.run_dates("companies") if date <= ctx.run_date]
    earlier = warehouse.read_table("companies", measured[-1]) if measured else None
    companies, computed = companies_table(inputs, earlier)
    logger.info("pages: metrics computed for %s of %d page(s), the rest kept", computed, len(companies))
    trends = trends_table(warehouse.read_table("companies"), companies, ctx.run_date)
    return {
        "outputs": {"companies": warehouse.write_table("companies", ctx.run_date, companies),
                    "trends": warehouse.write_table("trends", ctx.run_date, trends)},
        "counts": {"significant_changes": int(trends.loc[trends["run_date"] == ctx.run_date, "significant"].sum()),
                   "page_metrics_computed": sum(computed.values()),
                   "page_metrics_kept": len(companies) * len(computed) - sum(computed.values())},
    }  # fmt: skip


def previous_run(ctx: RunContext) -> str:
    """The latest finished run (one with run.json) before this run's date, or "" where there is none."""
    earlier = [date for date in ctx.warehouse.finished_run_dates() if date < ctx.run_date]
    return earlier[-1] if earlier else ""


def changes(ctx: RunContext) -> dict[str, Any]:
    """What changed since the previous finished run: per company, photos kept, replaced, added and
    removed, and the index's move in words (`changes`); photos and faces two companies share because
    a photo is new (`newly_shared`)."""
    from pipeline.metrics.trends import changes_table, newly_shared_table

    warehouse = ctx.warehouse

    def tables(run_date: str) -> dict[str, pd.DataFrame]:
        return {name: warehouse.read_table(name, run_date) for name in ("images", "reuse", "identities")}

    before = previous_run(ctx)
    current, previous = tables(ctx.run_date), tables(before) if before else None
    shared = newly_shared_table(current, previous, ctx.run_date)
    table = changes_table(current, previous, before, warehouse.read_table("trends", ctx.run_date), shared, ctx.run_date)
    return {
        "outputs": {"changes": warehouse.write_table("changes", ctx.run_date, table),
                    "newly_shared": warehouse.write_table("newly_shared", ctx.run_date, shared)},
        "counts": {"pages_changed": int((table[["n_replaced", "n_added", "n_removed"]].sum(axis=1) > 0).sum()) if before else 0,
                   "newly_shared": len(shared) if before else 0},
    }  # fmt: skip


def report(ctx: RunContext) -> dict[str, Any]:
    """The HTML run report, the companies' audit pages and summary.json, from the warehouse."""
    from pipeline.report.render import render_report

    written = render_report(ctx)
    return {"outputs": {"report": written["report"], "summary": written["summary"]}, "counts": {"audit_pages": written["audit_pages"]}}

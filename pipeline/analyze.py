"""Analyze: near-duplicates, style clusters, a homogeneity index per page, cross-company reuse.

Near-duplicates, in two stages so that cost grows ~N log N and no N x N matrix is ever built:
1. exact: same bytes (`content_sha256`) or same pixels in another encoding (`pixel_sha256`);
2. near: each photo's nearest neighbours in the FAISS index (at most
   `thresholds.max_candidates_per_image`) above the embedder's generous *candidate* threshold, then
   geometric verification of each candidate (pipeline/verify.py), which keeps edited copies of one
   photograph and drops different photos of one sitter or template. Bounding candidates per photo
   keeps a uniform studio page, where every pair looks "similar", from costing N^2 verifications.

Style clusters are the connected components of the graph whose edges are exact and verified pairs
plus nearest-neighbour pairs at or above the embedder's *style* threshold: deterministic,
parameter-light and built from the same sparse neighbour search (HDBSCAN would need a dense or
tree index over 512-d vectors and gives run-to-run label changes for borderline points).

The homogeneity index of a page is the expected similarity of two different photos on it, measured
after taking out what every headshot shares (pipeline/reference.py: the embedder's fixed reference
mean is subtracted and the vectors re-normalised, c(i, j) = cosine of the centred vectors):

    H = mean over unordered pairs {i, j} of k(i, j),  k = 1 for exact/near-duplicate pairs,
                                                     k = max(0, c(i, j)) otherwise

It is ~0 for unrelated headshots, 1 for one photo repeated. It uses the page alone (no other
company enters it; the reference is fixed per embedder), and as a U-statistic its expectation does
not depend on how many photos the page has, so pages of different sizes and runs with the same
embedder and reference compare directly; only its uncertainty shrinks with size. The 95% interval is
a percentile bootstrap over the page's photos (pairs of the same resampled photo are left out, as
the U-statistic bootstrap requires), seeded by the company name so that reruns give identical
numbers. `mean_pairwise_similarity` is the raw (uncentred) cosine mean; the Vendi score is computed
on the centred vectors.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import ThresholdsConfig
from pipeline.embed import Embeddings
from pipeline.index import VectorIndex, knn_pairs
from pipeline.reference import Reference
from pipeline.verify import VerifyParams, features, verify
from pipeline.warehouse import Warehouse

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ["image_a", "image_b", "company_a", "company_b", "similarity", "kind"]
CLUSTER_COLUMNS = ["image", "company", "cluster_id"]
COMPANY_COLUMNS = [
    "company", "n_images", "near_dup_rate", "mean_pairwise_similarity", "vendi_score", "homogeneity_index",
    "ci_low", "ci_high", "n_clusters", "largest_cluster_share", "embedder", "status", "n_rows", "n_errors",
    "n_reused_images", "n_partner_companies", "index_reference",
]  # fmt: skip


def embedder_family(embedder_id: str) -> str:
    return "clip" if embedder_id.startswith("clip") else "classic"


@dataclass
class Analysis:
    pairs: pd.DataFrame
    clusters: pd.DataFrame
    companies: pd.DataFrame
    reuse: pd.DataFrame
    n_candidates: int
    n_verified: int


# ------------------------------------------------------------ near-duplicates
def _exact_groups(ok: pd.DataFrame) -> dict[str, str]:
    """content hash -> representative of its exact group (same bytes or same decoded pixels)."""
    representative: dict[str, str] = {}
    for _, group in ok.groupby("pixel_sha256", sort=True):
        contents = sorted(group["content_sha256"].unique())
        for content in contents:
            representative[content] = contents[0]
    return representative


def verify_params(thresholds: ThresholdsConfig) -> VerifyParams:
    return VerifyParams(thresholds.verify_min_inlier_ratio, thresholds.verify_min_block_correlation, thresholds.verify_min_face_correlation)


def verifications_folder(params: VerifyParams) -> str:
    return f"verifications/{params.cache_id}"


def verified_content_pairs(
    candidates: list[tuple[int, int, float]],
    embeddings: Embeddings,
    object_of: dict[str, str],
    warehouse: Warehouse,
    params: VerifyParams,
    workers: int = 2,
) -> list[tuple[str, str, float]]:
    """Keep the candidate pairs (rows of the index) that verify as the same photograph.

    Verdicts are cached in the warehouse per (content pair, verification parameters): a nightly
    rerun over unchanged pages verifies nothing again, and changed thresholds start a fresh cache.
    """
    from concurrent.futures import ThreadPoolExecutor
    from functools import lru_cache

    import cv2  # noqa: F401 - first import here, not in the pool: cv2's loader is not safe to run from several threads at once
    import pyarrow as pa

    from pipeline.intake import load_rgb

    folder = verifications_folder(params)
    known: dict[tuple[str, str], bool] = {}
    for table in warehouse.read_shards(folder):
        known.update(zip(zip(table.column("content_a").to_pylist(), table.column("content_b").to_pylist()), table.column("same_photo").to_pylist()))

    @lru_cache(maxsize=4096)
    def cached_features(content: str):  # type: ignore[no-untyped-def]
        return features(load_rgb(warehouse.uri(object_of[content])))

    def canonical(candidate: tuple[int, int, float]) -> tuple[str, str]:
        a, b = embeddings.content_sha256[candidate[0]], embeddings.content_sha256[candidate[1]]
        return (a, b) if a < b else (b, a)

    todo = sorted({canonical(c) for c in candidates} - set(known))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        verdicts = list(pool.map(lambda pair: verify(cached_features(pair[0]), cached_features(pair[1]), params), todo))
    if todo:
        table = pa.table({
            "content_a": [a for a, _ in todo], "content_b": [b for _, b in todo],
            "same_photo": [v.same_photo for v in verdicts], "inlier_ratio": [v.inlier_ratio for v in verdicts],
            "block_correlation": [v.block_correlation for v in verdicts], "face_correlation": [v.face_correlation for v in verdicts],
        })  # fmt: skip
        warehouse.write_shard(folder, [f"{a}:{b}" for a, b in todo], table)
        known.update(zip(todo, (v.same_photo for v in verdicts)))
    logger.info("verification: %d candidate pair(s), %d from the cache", len(candidates), len(candidates) - len(todo))
    return [(*canonical(c), c[2]) for c in candidates if known[canonical(c)]]


def _row_pairs(rows_a: pd.DataFrame, rows_b: pd.DataFrame | None, similarity: float, kind: str) -> list[dict]:
    """All unordered row pairs within rows_a (rows_b None) or across rows_a x rows_b."""
    a_records = rows_a.to_dict("records")
    if rows_b is None:
        combos = [(a_records[x], a_records[y]) for x in range(len(a_records)) for y in range(x + 1, len(a_records))]
    else:
        combos = [(a, b) for a in a_records for b in rows_b.to_dict("records")]
    pairs = []
    for first, second in combos:
        first, second = sorted((first, second), key=lambda r: (r["company"], r["image"]))
        pairs.append(
            {"image_a": first["image"], "image_b": second["image"], "company_a": first["company"],
             "company_b": second["company"], "similarity": similarity, "kind": kind}
        )  # fmt: skip
    return pairs


def pairs_table(ok: pd.DataFrame, representative: dict[str, str], near: list[tuple[str, str, float]]) -> pd.DataFrame:
    by_group = dict(tuple(ok.groupby(ok["content_sha256"].map(representative), sort=True)))
    records: list[dict] = []
    for group in by_group.values():
        if len(group) > 1:
            records.extend(_row_pairs(group, None, 1.0, "exact"))
    seen: set[tuple[str, str]] = set()
    for a, b, similarity in near:
        ga, gb = sorted((representative[a], representative[b]))
        if ga == gb or (ga, gb) in seen:
            continue  # already exact, or the same two groups reached through another encoding
        seen.add((ga, gb))
        records.extend(_row_pairs(by_group[ga], by_group[gb], round(float(similarity), 6), "near_duplicate"))
    frame = pd.DataFrame(records, columns=PAIR_COLUMNS)
    return frame.sort_values(["company_a", "image_a", "company_b", "image_b"], ignore_index=True)


# ------------------------------------------------------------------- clusters
def style_clusters(ok: pd.DataFrame, embeddings: Embeddings, edges: Iterable[tuple[str, str]], all_rows: pd.DataFrame) -> pd.DataFrame:
    """Connected components over contents; rows of a component with >= 2 rows share a cluster id."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    position = {content: i for i, content in enumerate(embeddings.content_sha256)}
    pairs = [(position[a], position[b]) for a, b in edges if a in position and b in position]
    n = len(position)
    rows = [p[0] for p in pairs]
    cols = [p[1] for p in pairs]
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    row_component = ok["content_sha256"].map(lambda c: int(component[position[c]]))
    sizes = row_component.value_counts()
    big = sizes[sizes >= 2]
    # Deterministic ids: biggest first, ties by the smallest content hash in the component.
    first_content = {comp: min(ok.loc[row_component == comp, "content_sha256"]) for comp in big.index}
    ordered = sorted(big.index, key=lambda comp: (-big[comp], first_content[comp]))
    cluster_of = {comp: cluster_id for cluster_id, comp in enumerate(ordered)}
    clusters = all_rows[["image", "company"]].copy()
    clusters["cluster_id"] = -1
    clusters.loc[ok.index, "cluster_id"] = [cluster_of.get(comp, -1) for comp in row_component]
    return clusters[CLUSTER_COLUMNS].reset_index(drop=True)


# ---------------------------------------------------------------- homogeneity
def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "little")


def pair_kernel(similarities: np.ndarray, duplicate: np.ndarray) -> np.ndarray:
    """k(i, j): 1 for exact/near-duplicate pairs, else cosine clipped at 0; diagonal irrelevant."""
    kernel = np.clip(similarities, 0.0, 1.0)
    kernel[duplicate] = 1.0
    return kernel


def homogeneity(kernel: np.ndarray, samples: int, seed: int) -> tuple[float, float, float]:
    """(index, ci_low, ci_high): mean k over distinct pairs, bootstrap over photos (see module doc)."""
    n = len(kernel)
    off_diagonal = kernel.sum() - np.trace(kernel)
    index = off_diagonal / (n * (n - 1))
    rng = np.random.default_rng(seed)
    # Bootstrap weights: w[i] = how often photo i was drawn; pairs of the same photo are left out.
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=samples).T.astype(float)  # (n, samples)
    kw = kernel @ weights
    numerator = np.einsum("ib,ib->b", weights, kw) - np.einsum("ib,i->b", weights**2, np.diag(kernel))
    denominator = weights.sum(axis=0) ** 2 - (weights**2).sum(axis=0)
    replicates = numerator[denominator > 0] / denominator[denominator > 0]
    low, high = np.percentile(replicates, [2.5, 97.5])
    return float(index), float(low), float(high)


def page_index(centred: np.ndarray, duplicate: np.ndarray, samples: int, seed: int) -> tuple[float, float, float]:
    """The homogeneity index of one page and its interval, from its reference-centred unit vectors
    and which of its pairs are exact/near-duplicates (module doc)."""
    return homogeneity(pair_kernel(centred @ centred.T, duplicate), samples, seed)


def vendi_score(vectors: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K/n), K the cosine Gram matrix: the effective number of
    distinct photos (1 = all identical, n = all orthogonal). Computed from the d x d matrix."""
    n = len(vectors)
    eigenvalues = np.linalg.eigvalsh((vectors.T @ vectors) / n)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    eigenvalues = eigenvalues / eigenvalues.sum()
    return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


def company_metrics(
    images: pd.DataFrame,
    embeddings: Embeddings,
    pairs: pd.DataFrame,
    clusters: pd.DataFrame,
    thresholds: ThresholdsConfig,
    reference: Reference,
) -> pd.DataFrame:
    position = {content: i for i, content in enumerate(embeddings.content_sha256)}
    within = pairs[pairs["company_a"] == pairs["company_b"]]
    across = pairs[pairs["company_a"] != pairs["company_b"]]
    records = []
    for company, rows in images.groupby("company", sort=True):
        ok = rows[rows["status"] == "ok"]
        if len(ok) > thresholds.max_page_sample:
            ok = ok.sample(thresholds.max_page_sample, random_state=_seed(company) % 2**32)
        n = len(ok)
        record = {
            "company": company, "n_images": n, "embedder": embeddings.embedder_id, "n_rows": len(rows),
            "n_errors": int((rows["status"] != "ok").sum()), "status": "ok", "index_reference": reference.id,
        }  # fmt: skip
        dup_here = within[within["company_a"] == company]
        images_with_dup = set(dup_here["image_a"]) | set(dup_here["image_b"])
        record["near_dup_rate"] = len(images_with_dup & set(ok["image"])) / n if n else float("nan")
        reused = across[(across["company_a"] == company) | (across["company_b"] == company)]
        mine = set(reused.loc[reused["company_a"] == company, "image_a"]) | set(reused.loc[reused["company_b"] == company, "image_b"])
        record["n_reused_images"] = len(mine)
        record["n_partner_companies"] = len((set(reused["company_a"]) | set(reused["company_b"])) - {company})
        company_clusters = clusters[(clusters["company"] == company) & clusters["image"].isin(ok["image"])]
        clustered = company_clusters[company_clusters["cluster_id"] >= 0]["cluster_id"]
        record["n_clusters"] = int(clustered.nunique())
        record["largest_cluster_share"] = float(clustered.value_counts().max() / n) if len(clustered) else 0.0
        if n < thresholds.min_images:
            record.update(status="too_few_images", mean_pairwise_similarity=float("nan"), vendi_score=float("nan"),
                          homogeneity_index=float("nan"), ci_low=float("nan"), ci_high=float("nan"))  # fmt: skip
            records.append(record)
            continue
        vectors = embeddings.vectors[[position[c] for c in ok["content_sha256"]]]
        image_index = {image: i for i, image in enumerate(ok["image"])}
        duplicate = np.zeros((n, n), dtype=bool)
        for a, b in zip(dup_here["image_a"], dup_here["image_b"]):
            if a in image_index and b in image_index:
                duplicate[image_index[a], image_index[b]] = duplicate[image_index[b], image_index[a]] = True
        raw = vectors @ vectors.T
        record["mean_pairwise_similarity"] = float((raw.sum() - np.trace(raw)) / (n * (n - 1)))
        centred = reference.centre(vectors)
        record["vendi_score"] = vendi_score(centred)
        index, low, high = page_index(centred, duplicate, thresholds.bootstrap_samples, _seed(company))
        record.update(homogeneity_index=index, ci_low=low, ci_high=high)
        records.append(record)
    return pd.DataFrame(records, columns=COMPANY_COLUMNS)


# --------------------------------------------------------------------- trends
TREND_COLUMNS = [
    "company", "embedder", "run_date", "n_images", "homogeneity_index", "ci_low", "ci_high", "near_dup_rate",
    "previous_run_date", "previous_index", "change", "z", "significant", "direction",
]  # fmt: skip


def trends_table(history: pd.DataFrame, current: pd.DataFrame, run_date: str) -> pd.DataFrame:
    """Every run of each company with this run's embedder and index reference up to `run_date`, with
    the change since the previous one (indexes measured otherwise are not comparable, so not joined).
    A change is significant when |z| > 1.96, z = change / sqrt(se1^2 + se2^2), each se read off the
    95% bootstrap interval as (high - low) / (2 * 1.96)."""
    embedder = current["embedder"].iloc[0] if len(current) else ""
    reference = current["index_reference"].iloc[0] if len(current) else ""
    frames = [current.assign(run_date=run_date)]
    if not history.empty and "index_reference" in history:
        earlier = history[(history["run_date"] < run_date) & (history["embedder"] == embedder) & (history["index_reference"] == reference)]
        frames.insert(0, earlier)
    runs = pd.concat(frames, ignore_index=True)
    runs = runs[runs["status"] == "ok"].sort_values(["company", "run_date"], ignore_index=True)
    runs["se"] = (runs["ci_high"] - runs["ci_low"]).astype(float) / (2 * 1.96)
    grouped = runs.groupby("company", sort=False)
    runs["previous_run_date"] = grouped["run_date"].shift(1)
    runs["previous_index"] = grouped["homogeneity_index"].shift(1)
    runs["change"] = runs["homogeneity_index"] - runs["previous_index"]
    combined = np.sqrt(runs["se"] ** 2 + grouped["se"].shift(1) ** 2)
    runs["z"] = runs["change"] / combined.replace(0, np.nan)
    runs["significant"] = runs["z"].abs() > 1.96
    runs["direction"] = np.where(~runs["significant"], "", np.where(runs["change"] > 0, "more homogeneous", "less homogeneous"))
    return runs[TREND_COLUMNS].reset_index(drop=True)


# ----------------------------------------------------------------------- stage
def analyze(
    images: pd.DataFrame,
    embeddings: Embeddings,
    vector_index: VectorIndex,
    warehouse: Warehouse,
    thresholds: ThresholdsConfig,
    reference: Reference,
) -> Analysis:
    family = embedder_family(embeddings.embedder_id)
    candidate_threshold = thresholds.candidate[family]
    style_threshold = max(thresholds.style[family], candidate_threshold)
    ok = images[images["status"] == "ok"]
    representative = _exact_groups(ok)
    object_of = dict(zip(ok["content_sha256"], ok["raw_object"]))

    candidates = [
        (i, j, s)
        for i, j, s in knn_pairs(vector_index, embeddings.vectors, candidate_threshold, thresholds.max_candidates_per_image)
        if representative[embeddings.content_sha256[i]] != representative[embeddings.content_sha256[j]]
    ]
    near = verified_content_pairs(candidates, embeddings, object_of, warehouse, verify_params(thresholds))
    logger.info("near-duplicates: %d candidate pair(s) at >= %.2f, %d verified", len(candidates), candidate_threshold, len(near))

    pairs = pairs_table(ok, representative, near)
    edges = [(a, b) for a, b, _ in near]
    edges += [(embeddings.content_sha256[i], embeddings.content_sha256[j]) for i, j, s in candidates if s >= style_threshold]
    edges += [(content, rep) for content, rep in representative.items() if content != rep]
    clusters = style_clusters(ok, embeddings, edges, images)
    companies = company_metrics(images, embeddings, pairs, clusters, thresholds, reference)
    reuse = pairs[pairs["company_a"] != pairs["company_b"]].reset_index(drop=True)
    return Analysis(pairs, clusters, companies, reuse, len(candidates), len(near))

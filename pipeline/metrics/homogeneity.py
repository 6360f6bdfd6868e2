"""Homogeneity of one page: the index with its bootstrap interval, and the Vendi score.

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

import numpy as np
import pandas as pd

from pipeline.config import ThresholdsConfig
from pipeline.features.embed import Embeddings
from pipeline.features.reference import Reference
from pipeline.tables import rows_by

COMPANY_COLUMNS = [
    "company", "n_images", "near_dup_rate", "mean_pairwise_similarity", "vendi_score", "homogeneity_index",
    "ci_low", "ci_high", "n_clusters", "largest_cluster_share", "embedder", "status", "n_rows", "n_errors",
    "n_reused_images", "n_partner_companies", "index_reference",
]  # fmt: skip


def page_seed(company: str) -> int:
    """The seed of a page's sample and bootstrap: reruns give identical numbers."""
    return int.from_bytes(hashlib.sha256(company.encode()).digest()[:8], "little")


def page_sample(rows: pd.DataFrame, company: str, thresholds: ThresholdsConfig) -> pd.DataFrame:
    """The page's ok photos, or a seeded sample of `max_page_sample` of them on larger pages."""
    ok = rows[rows["status"] == "ok"]
    if len(ok) > thresholds.max_page_sample:
        ok = ok.sample(thresholds.max_page_sample, random_state=page_seed(company) % 2**32)
    return ok


def duplicate_matrix(images: pd.Series, pairs: pd.DataFrame) -> np.ndarray:
    """(n, n) True where two of `images` are an exact/near-duplicate pair of `pairs` (image_a, image_b)."""
    position = {image: i for i, image in enumerate(images)}  # a name listed twice: its last row carries its pairs
    duplicate = np.zeros((len(images), len(images)), dtype=bool)
    for a, b in zip(pairs["image_a"], pairs["image_b"]):
        if a in position and b in position:
            duplicate[position[a], position[b]] = duplicate[position[b], position[a]] = True
    return duplicate


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
    distinct photos (1 = all identical, n = all orthogonal). K (n x n) and the d x d scatter matrix
    have the same non-zero eigenvalues: the smaller one is decomposed (a 24-photo page's 24 x 24
    instead of 785 x 785, ~40 ms a page on 2 cores)."""
    n = len(vectors)
    gram = vectors @ vectors.T if n <= vectors.shape[1] else vectors.T @ vectors
    eigenvalues = np.linalg.eigvalsh(gram / n)
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
    within_of = rows_by(pairs[pairs["company_a"] == pairs["company_b"]], "company_a")
    across = pairs[pairs["company_a"] != pairs["company_b"]]
    across_as_a, across_as_b = rows_by(across, "company_a"), rows_by(across, "company_b")
    clusters_of = rows_by(clusters, "company")
    no_pairs = pairs.iloc[:0]
    records = []
    for company, rows in images.groupby("company", sort=True):
        ok = page_sample(rows, company, thresholds)
        n = len(ok)
        record = {
            "company": company, "n_images": n, "embedder": embeddings.embedder_id, "n_rows": len(rows),
            "n_errors": int((rows["status"] != "ok").sum()), "status": "ok", "index_reference": reference.id,
        }  # fmt: skip
        dup_here = within_of.get(company, no_pairs)
        images_with_dup = set(dup_here["image_a"]) | set(dup_here["image_b"])
        record["near_dup_rate"] = len(images_with_dup & set(ok["image"])) / n if n else float("nan")
        as_a, as_b = across_as_a.get(company, no_pairs), across_as_b.get(company, no_pairs)
        record["n_reused_images"] = len(set(as_a["image_a"]) | set(as_b["image_b"]))
        record["n_partner_companies"] = len((set(as_a["company_b"]) | set(as_b["company_a"])) - {company})
        company_clusters = clusters_of.get(company, clusters.iloc[:0])
        company_clusters = company_clusters[company_clusters["image"].isin(ok["image"])]
        clustered = company_clusters[company_clusters["cluster_id"] >= 0]["cluster_id"]
        record["n_clusters"] = int(clustered.nunique())
        record["largest_cluster_share"] = float(clustered.value_counts().max() / n) if len(clustered) else 0.0
        if n < thresholds.min_images:
            record.update(status="too_few_images", mean_pairwise_similarity=float("nan"), vendi_score=float("nan"),
                          homogeneity_index=float("nan"), ci_low=float("nan"), ci_high=float("nan"))  # fmt: skip
            records.append(record)
            continue
        vectors = embeddings.vectors[[position[c] for c in ok["content_sha256"]]]
        duplicate = duplicate_matrix(ok["image"], dup_here)
        raw = vectors @ vectors.T
        record["mean_pairwise_similarity"] = float((raw.sum() - np.trace(raw)) / (n * (n - 1)))
        centred = reference.centre(vectors)
        record["vendi_score"] = vendi_score(centred)
        index, low, high = page_index(centred, duplicate, thresholds.bootstrap_samples, page_seed(company))
        record.update(homogeneity_index=index, ci_low=low, ci_high=high)
        records.append(record)
    return pd.DataFrame(records, columns=COMPANY_COLUMNS)

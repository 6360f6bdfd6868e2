"""The reference of an embedder: what generic headshots have in common, taken out before the index.

Every headshot shares a lot with every other one: a face in the middle, shoulders below, a
backdrop around. In raw embedding space that shared part dominates: with the classic embedder two
unrelated real staff photos have cosine ~0.6 and two photos of one AI template pack ~0.6 too, so
the raw mean similarity cannot tell a diverse page from a templated one (measured on the corpus,
see README). The homogeneity index therefore compares photos *after subtracting the mean vector of a
reference set of diverse, unrelated headshots* and re-normalising: what is left is how a photo
differs from a generic headshot, and two photos from one template share that difference while two
unrelated photos do not (centred cosine ~0).

The reference is fixed per embedder, never fitted on the run being measured, so a page's index still
depends on that page alone and stays comparable between runs. Where it comes from, in this order:

1. the warehouse's own `references/<embedder>.npz`, written by `homog reference fit` from a set of
   headshots you choose (or frozen by an earlier run, see 3);
2. the reference shipped for the embedder (`pipeline/embedders/references/`; classic-v1 ships one);
3. otherwise, the first run with at least `thresholds.reference_min_photos` photos fits it on its
   own photos and freezes it in the warehouse (logged), so later runs compare with that run;
   a run with fewer photos uses no reference (`index_reference` = "none") and says so.

Every companies row records the reference it was measured with (`index_reference`), and trends
never connect indexes measured with different references.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import layout
from pipeline.warehouse import Warehouse

if TYPE_CHECKING:
    from pipeline.config import IntakeConfig
    from pipeline.features.embed import Embedder

logger = logging.getLogger(__name__)

PACKAGED = Path(__file__).resolve().parent / "embedders" / "references"
NO_REFERENCE_ID = "none"


class ReferenceError(ValueError):
    """A reference file that cannot be used for this embedder."""


@dataclass(frozen=True)
class Reference:
    embedder_id: str
    mean: np.ndarray  # (dim,) float64; zeros = no reference
    n_photos: int
    source: str  # what it was fitted on, in words

    @property
    def id(self) -> str:
        """Short, content-derived: equal ids mean equal centring, so indexes compare."""
        if not self.n_photos:
            return NO_REFERENCE_ID
        digest = hashlib.sha256(self.embedder_id.encode() + np.ascontiguousarray(self.mean, np.float64).tobytes()).hexdigest()
        return f"{self.n_photos}@{digest[:12]}"

    def centre(self, vectors: np.ndarray) -> np.ndarray:
        """Unit vectors of (vector - mean). A photo equal to the mean has no direction: it stays zero,
        so it is similar to nothing (rather than a division by zero)."""
        centred = np.asarray(vectors, np.float64) - self.mean
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 1e-9)


def no_reference(embedder_id: str, dim: int) -> Reference:
    return Reference(embedder_id, np.zeros(dim), 0, "no reference: raw cosine similarity")


def fit_reference(vectors: np.ndarray, embedder_id: str, source: str) -> Reference:
    """The mean of the reference photos' vectors. Each column is summed in sorted order, so the same
    photos give the same bits (and reference id) in any order."""
    if len(vectors) < 2:
        raise ReferenceError(f"a reference needs at least 2 photos, got {len(vectors)}")
    mean = np.sort(np.asarray(vectors, np.float64), axis=0).sum(axis=0) / len(vectors)
    return Reference(embedder_id, mean, len(vectors), source)


def to_bytes(reference: Reference) -> bytes:
    meta = {"embedder_id": reference.embedder_id, "n_photos": reference.n_photos, "source": reference.source}
    buffer = io.BytesIO()
    np.savez(buffer, mean=reference.mean, meta=np.array(json.dumps(meta, sort_keys=True)))
    return buffer.getvalue()


def from_bytes(data: bytes, embedder_id: str, dim: int, origin: str) -> Reference:
    """Parse a reference file, refusing one made for another embedder or dimension."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            mean = np.asarray(archive["mean"], np.float64)
            meta = json.loads(str(archive["meta"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ReferenceError(f"{origin}: not a reference file ({exc})") from None
    if meta.get("embedder_id") != embedder_id:
        raise ReferenceError(f"{origin}: fitted for {meta.get('embedder_id')!r}, not {embedder_id!r}")
    if mean.shape != (dim,) or not np.isfinite(mean).all():
        raise ReferenceError(f"{origin}: mean has shape {mean.shape} (or non-finite values), expected ({dim},)")
    return Reference(embedder_id, mean, int(meta["n_photos"]), str(meta["source"]))


def stored_reference(warehouse: Warehouse, embedder_id: str, dim: int) -> Reference | None:
    """The warehouse's reference, else the packaged one, else None."""
    key = layout.reference_file(embedder_id)
    if warehouse.exists(key):
        return from_bytes(warehouse.read_bytes(key), embedder_id, dim, warehouse.uri(key))
    packaged = PACKAGED / Path(key).name
    if packaged.is_file():
        return from_bytes(packaged.read_bytes(), embedder_id, dim, str(packaged))
    return None


def save_reference(warehouse: Warehouse, reference: Reference) -> str:
    return warehouse.write_bytes(layout.reference_file(reference.embedder_id), to_bytes(reference))


def run_reference(warehouse: Warehouse, embedder_id: str, vectors: np.ndarray, min_photos: int, run_date: str) -> Reference:
    """The reference this run's index uses (module doc: stored, packaged, else frozen from this run's
    vectors, one per distinct photo)."""
    n_photos, dim = vectors.shape
    found = stored_reference(warehouse, embedder_id, dim)
    if found is not None:
        return found
    if n_photos < min_photos:
        logger.warning(
            "no index reference for %s and only %d photo(s) in this run (%d needed to fit one): the homogeneity "
            "index uses raw cosine similarity and is not comparable with indexes measured with a reference",
            embedder_id, n_photos, min_photos,
        )  # fmt: skip
        return no_reference(embedder_id, dim)
    reference = fit_reference(vectors, embedder_id, f"the {n_photos} photos of run {run_date} (first run with enough photos)")
    save_reference(warehouse, reference)
    logger.warning(
        "no index reference for %s: fitted one on this run's %d photos and froze it in %s; later runs are measured "
        "against it (fit a chosen one with `homog reference fit`)", embedder_id, n_photos, warehouse.uri(layout.reference_file(embedder_id)),
    )  # fmt: skip
    return reference


def fit_from_folders(
    folders: list[str], embedder: Embedder, intake: IntakeConfig, progress: bool = False
) -> tuple[Reference, list[tuple[str, str]]]:
    """Fit a reference on every image below `folders`; files that intake would refuse are skipped
    and returned with the reason, the rest are embedded exactly as a run embeds them."""
    from pipeline.ingest.intake import IntakeError, load_rgb
    from pipeline.ingest.sources import scan_company_folder

    uris, skipped = [], []
    for folder in folders:
        for row in scan_company_folder(folder, "reference"):
            try:
                load_rgb(row.uri, intake)
            except IntakeError as exc:
                skipped.append((row.uri, str(exc)))
                continue
            uris.append(row.uri)
    vectors = embedder.embed_uris(sorted(uris), progress=progress)
    source = f"{len(uris)} photos below {', '.join(folders)}"
    return fit_reference(vectors, embedder.id, source), skipped

"""The warehouse layout: every key the project reads or writes under a warehouse root, and nowhere else.

A warehouse is one root URI (a local path or any fsspec URL). Under it:

    objects/raw/<sha[:2]>/<sha>.<ext>                 original bytes, content-addressed (absent in no-raw mode)
    objects/thumbs/<sha[:2]>/<sha>.jpg                thumbnails, content-addressed
    objects/keypoints/<sha[:2]>/<sha>.v<N>.npz        verification's ORB keypoints of a photo (no picture), purged with it
    staging/run_date=D/raw/<sha[:2]>/<sha>.<ext>      run-scoped originals in no-raw mode, dropped at run end
    tables/<table>/run_date=D/part-0.parquet          Parquet tables, Hive-partitioned by run date
    runs/run_date=D/run.json                          what a run did: the mark of a finished run
    runs/run_date=D/lease.json                        who is writing the run date now (`pipeline.lease`)
    crawl/state/<company>.json                        per-URL crawl state (ETag, Last-Modified, object key)
    crawl/runs/run_date=D/<company>/{manifest.csv,log.parquet}   one company's crawl (Airflow fan-out)
    crawl/runs/run_date=D/manifest.csv                the run's joined crawl manifest
    intake/runs/run_date=D/<company>.parquet          one company's intake part (Airflow fan-out)
    embeddings/<embedder>/shard-<digest>.parquet      embedding cache, keyed by (content hash, embedder), purged with the photo
    indexes/<embedder>/run_date=D/{index.faiss,ids.parquet,meta.json}   the run's FAISS index
    indexes/calibration/<machine>-d<dim>.json         exact vs IVF search speed measured on one machine
    indexes/neighbours/<source>.npz                   the last run's nearest-neighbour lists per candidate source and of faces (no vector)
    verifications/<params>/shard-<digest>.parquet     near-duplicate verdicts per content pair, purged with either photo
    regions/v<N>/shard-<digest>.parquet               region views (whole picture and nine windows) per content, purged with it
    face_signals/v<N>/shard-<digest>.parquet          face detection and template signals per content, purged with it
    face_identity/v<N>/shard-<digest>.parquet         face descriptors sealed to their photo (privacy.keep_face_descriptors)
    face_identity/pairs-v<N>.json                     the last run's same-face pairs (no descriptor)
    zero_shot/<embedder>/prompts-<digest>.npz         CLIP text vectors of the zero-shot prompts
    references/<embedder>.npz                         the homogeneity index's reference (mean headshot)
    projections/<embedder>/map-v2.npz                 the report's fixed map: fitted photos, their vectors and places
    projections/<embedder>/places-v1.npz              the last run's photos' places on that map (content hashes, no vector)
    audits/<company>/<date>/                          a brand audit: a whole warehouse of its own
    audit-sites.yaml                                  the sites file of the latest URL audit
    .tmp/                                             in-flight writes; never read, swept when stale

Every write is atomic (`pipeline.warehouse`): a killed run leaves no half file where a reader looks,
and a rerun of a run date replaces its partitions. run.json records what the run did (counts,
settings, versions, seconds per stage) and is written last, so a run date without it did not finish.

Shards (`shard-<digest>.parquet`) are immutable and named by the keys they hold, so concurrent
writers of different keys never collide and a brand audit can copy the nightly's caches shard by
shard (`REUSABLE_CACHES`). Changing a key here moves data: existing warehouses keep the old one,
so any change needs a migration note in docs/changelog.md.

The caches are written as the work goes (`Warehouse.checkpoints`): embeddings, face signals, region
views and kept face descriptors every 500 photos, verdicts as each verification job's come back. A
run killed half-way (a lost worker, an out-of-memory kill, an Airflow task timeout) keeps what it
finished, and its retry computes only the rest. A stage that ends merges the shards it wrote into
one, the shard a single write at the end would have left; a killed run's shards stay as they are.
Every reader takes a row that an interrupted merge left twice once. A cache so gains a shard a
night, and a killed run's chunks: `homog retention` rewrites one that holds more than 16
(`COMPACT_ABOVE_SHARDS`), or that loses a row, as one shard, each row once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

ObjectKind = Literal["raw", "thumbs", "keypoints"]
TMP_DIR = ".tmp"
AUDIT_SITES_FILE = "audit-sites.yaml"
DEMO_SITES_FILE = "demo-sites.yaml"  # `homog demo` on a remote warehouse: where every worker reads the sites file


def validate_run_date(run_date: str | dt.date) -> str:
    """Return the run date as YYYY-MM-DD, or raise ValueError saying what was wrong."""
    if isinstance(run_date, dt.date):
        return run_date.isoformat()
    try:
        parsed = dt.date.fromisoformat(run_date)
    except (TypeError, ValueError):
        raise ValueError(f"run date must be YYYY-MM-DD, got {run_date!r}") from None
    if parsed.isoformat() != run_date:
        raise ValueError(f"run date must be YYYY-MM-DD, got {run_date!r}")
    return run_date


def company_slug(name: str) -> str:
    """A file-name-safe, collision-resistant name for a company (scraped names may hold anything)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:40] or "company"
    return f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"  # names that slug alike stay apart


def embedder_slug(embedder_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", embedder_id)


# ------------------------------------------------------------------ content-addressed pictures
def object_key(kind: ObjectKind, sha256: str, ext: str) -> str:
    return f"objects/{kind}/{sha256[:2]}/{sha256}.{ext}"


def keypoints_key(sha256: str, version: int) -> str:
    return object_key("keypoints", sha256, f"v{version}.npz")


def objects_folder(kind: ObjectKind) -> str:
    return f"objects/{kind}"


def staging_folder(run_date: str) -> str:
    return f"staging/run_date={validate_run_date(run_date)}"


def staging_key(run_date: str, sha256: str, ext: str) -> str:
    return f"{staging_folder(run_date)}/raw/{sha256[:2]}/{sha256}.{ext}"


# ------------------------------------------------------------------ tables and runs
def tables_folder(table: str) -> str:
    return f"tables/{table}"


def partition_dir(table: str, run_date: str) -> str:
    return f"{tables_folder(table)}/run_date={validate_run_date(run_date)}"


def partition_date(folder_name: str) -> str | None:
    """The run date a partition folder (`run_date=D`) holds, or None for anything else found there."""
    prefix = "run_date="
    if not folder_name.startswith(prefix):
        return None
    try:
        return validate_run_date(folder_name.removeprefix(prefix))
    except ValueError:
        return None  # not written by us (a stray folder): never read as a run


def table_file(table: str, run_date: str) -> str:
    return f"{partition_dir(table, run_date)}/part-0.parquet"


def run_lease(run_date: str) -> str:
    """Who is writing a run date right now (`pipeline.lease`); absent when nobody is."""
    return f"runs/run_date={validate_run_date(run_date)}/lease.json"


def run_record(run_date: str) -> str:
    """run.json: written last by a run, so its presence means the run finished."""
    return f"runs/run_date={validate_run_date(run_date)}/run.json"


# ------------------------------------------------------------------ crawl and intake fan-out
def crawl_state(company: str) -> str:
    return f"crawl/state/{company_slug(company)}.json"


def crawl_folder(run_date: str, company: str | None = None) -> str:
    folder = f"crawl/runs/run_date={validate_run_date(run_date)}"
    return f"{folder}/{company_slug(company)}" if company is not None else folder


def crawl_manifest(run_date: str, company: str | None = None) -> str:
    """A company's crawl manifest (written last: the mark of a finished crawl), or the run's joined one."""
    return f"{crawl_folder(run_date, company)}/manifest.csv"


def crawl_log(run_date: str, company: str) -> str:
    return f"{crawl_folder(run_date, company)}/log.parquet"


def intake_part(run_date: str, company: str) -> str:
    return f"intake/runs/run_date={validate_run_date(run_date)}/{company_slug(company)}.parquet"


# ------------------------------------------------------------------ caches and models
EMBEDDINGS_ROOT = "embeddings"  # one folder per embedder below it


def embeddings_folder(embedder_id: str) -> str:
    return f"{EMBEDDINGS_ROOT}/{embedder_slug(embedder_id)}"


def index_folder(embedder_id: str, run_date: str) -> str:
    return f"indexes/{embedder_slug(embedder_id)}/run_date={validate_run_date(run_date)}"


def search_calibration_file(machine: str, dim: int) -> str:
    return f"indexes/calibration/{machine}-d{dim}.json"


NEIGHBOURS_FOLDER = "indexes/neighbours"


def neighbour_lists_file(source: str) -> str:
    return f"{NEIGHBOURS_FOLDER}/{source}.npz"


VERIFICATIONS_ROOT = "verifications"  # one folder per set of verification parameters below it


def verifications_folder(params_id: str) -> str:
    return f"{VERIFICATIONS_ROOT}/{params_id}"


def regions_folder(version: int) -> str:
    return f"regions/v{version}"


def face_signals_folder(version: int) -> str:
    return f"face_signals/v{version}"


def face_descriptors_folder(version: int) -> str:
    return f"face_identity/v{version}"


def face_pairs_file(version: int) -> str:
    return f"face_identity/pairs-v{version}.json"


def zero_shot_prompts(embedder_id: str, prompts_digest: str) -> str:
    return f"zero_shot/{embedder_slug(embedder_id)}/prompts-{prompts_digest}.npz"


def reference_file(embedder_id: str) -> str:
    return f"references/{embedder_slug(embedder_id)}.npz"


def projection_file(embedder_id: str) -> str:
    # Arrays only (.npz, read without pickle): a pickled model in a shared bucket would run the code of
    # whoever can write there. Older warehouses' umap.pkl beside it is never read.
    return f"projections/{embedder_slug(embedder_id)}/map-v2.npz"


def projection_places_file(embedder_id: str) -> str:
    return f"projections/{embedder_slug(embedder_id)}/places-v1.npz"


AUDIT_ROOTS_GLOB = "audits/*/*"  # every brand audit's own warehouse


def audit_root(company: str, run_date: str) -> tuple[str, str, str]:
    """The parts of a brand audit's own warehouse under the nightly's (join with Warehouse.uri)."""
    return "audits", company_slug(company), validate_run_date(run_date)


# ------------------------------------------------------------------ reports (under the reports root)
COMPANY_PAGES = "companies"
REPORTS_INDEX = "index.html"  # every run's report, listed
REPORT_SUMMARIES = "*/summary.json"  # one per run report: what the list of runs is made of


def report_page(run_date: str) -> str:
    return f"{validate_run_date(run_date)}/index.html"


def report_summary(run_date: str) -> str:
    return f"{validate_run_date(run_date)}/summary.json"


def company_page(company: str) -> str:
    """An audit page, relative to its run's report folder (as the run report links it)."""
    return f"{COMPANY_PAGES}/{company_slug(company)}.html"


def company_pages_folder(run_date: str) -> str:
    return f"{validate_run_date(run_date)}/{COMPANY_PAGES}"


# ------------------------------------------------------------------ what an audit may copy
@dataclass(frozen=True)
class ReusableCache:
    """A cache a brand audit copies from the nightly instead of recomputing it."""

    name: str
    same_embedder_only: bool  # holds the embedder's vectors or models: useless to another embedder
    needs_kept_descriptors: bool = False  # biometric: copied only where the nightly keeps them anyway


REUSABLE_CACHES = (
    ReusableCache("face_signals", same_embedder_only=False),
    ReusableCache("regions", same_embedder_only=False),
    ReusableCache("verifications", same_embedder_only=False),
    ReusableCache("face_descriptors", same_embedder_only=False, needs_kept_descriptors=True),
    ReusableCache("embeddings", same_embedder_only=True),
    ReusableCache("reference", same_embedder_only=True),
    ReusableCache("projection", same_embedder_only=True),
)

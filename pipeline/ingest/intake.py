"""Intake: fetch each manifest row's image, check it, normalise it to RGB, hash it, store it.

One `images` row per manifest row, always: a payload that is not a usable image becomes an `error`
row whose `error_kind` and `error` say why, and the run goes on. What is checked, in order:

    empty payload · larger than `intake.max_bytes` (never read whole) · not an image at all (HTML,
    SVG, JSON, PDF, text...) · more pixels than `intake.max_pixels` (decompression bomb, refused
    before decoding) · truncated or corrupt data · smaller than `intake.min_side`

and what is accepted with a recorded warning: an extension that disagrees with the real format,
animated images (the first frame is used), embedded ICC profiles (converted to sRGB). Every colour
mode (CMYK, 16-bit, palette, alpha, greyscale, bilevel) is normalised to 8-bit RGB; transparency is
flattened onto white, the way a web page shows it; the EXIF orientation is applied, so `width` and
`height` are what a viewer sees.

`content_sha256` hashes the bytes as received (the storage key); `pixel_sha256` hashes the
normalised pixels, so the same picture re-encoded losslessly is still recognisably identical.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from pipeline import layout
from pipeline.config import CrawlConfig, IntakeConfig, PrivacyConfig
from pipeline.ingest.fetch import IntakeError, fetch_bytes, remote_fetcher, source_fingerprint
from pipeline.ingest.sources import ManifestRow
from pipeline.warehouse import Warehouse

if TYPE_CHECKING:
    from pipeline.ingest.crawl.http import Fetcher

logger = logging.getLogger(__name__)

_EXTENSIONS_BY_FORMAT = {
    "JPEG": ("jpg", {"jpg", "jpeg", "jpe", "jfif"}),
    "PNG": ("png", {"png"}),
    "WEBP": ("webp", {"webp"}),
    "GIF": ("gif", {"gif"}),
    "BMP": ("bmp", {"bmp", "dib"}),
    "TIFF": ("tif", {"tif", "tiff"}),
    "MPO": ("jpg", {"jpg", "jpeg", "mpo"}),
    "ICO": ("ico", {"ico"}),
}
_HIGH_BIT_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_SRGB_PROFILE = ImageCms.createProfile("sRGB")

IMAGE_COLUMNS = [
    "company", "image", "content_sha256", "status", "error", "width", "height",
    "error_kind", "warnings", "person", "source_url", "image_url", "format", "source_mode", "n_frames",
    "n_bytes", "pixel_sha256", "phash", "raw_object", "thumbnail_object", "uri", "source_fingerprint",
]  # fmt: skip


@dataclass
class ImageRecord:
    company: str
    image: str
    content_sha256: str = ""
    status: str = "error"
    error: str = ""
    width: int | None = None
    height: int | None = None
    error_kind: str = ""
    warnings: list[str] = field(default_factory=list)
    person: str = ""
    source_url: str = ""
    image_url: str = ""
    format: str = ""
    source_mode: str = ""
    n_frames: int | None = None
    n_bytes: int | None = None
    pixel_sha256: str = ""
    phash: str = ""
    raw_object: str = ""
    thumbnail_object: str = ""
    uri: str = ""
    source_fingerprint: str = ""  # size + mtime/ETag of the source when fetched; "" = unknown


@dataclass(frozen=True)
class DecodedImage:
    rgb: Image.Image
    format: str
    extension: str
    source_mode: str
    n_frames: int
    warnings: tuple[str, ...]


# ------------------------------------------------------------------ decoding
def _describe_non_image(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<body" in head:
        return "an HTML page"
    if b"<svg" in head:
        return "an SVG drawing (vector graphics are not photos)"
    if head.startswith((b"{", b"[")):
        return "JSON or other text"
    if head.startswith(b"%pdf"):
        return "a PDF document"
    if head.startswith(b"<?xml") or head.startswith(b"<"):
        return "XML or markup"
    try:
        text = data[:512].decode("utf-8")
    except UnicodeDecodeError:
        text = "\x00"
    if all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return "plain text"
    return "binary data in no supported image format"


def _declared_extension(name: str) -> str:
    tail = name.rsplit("/", 1)[-1].split("?", 1)[0]
    return tail.rsplit(".", 1)[-1].lower() if "." in tail else ""


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Normalise any Pillow mode to 8-bit sRGB."""
    icc = image.info.get("icc_profile")
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    if icc and image.mode in ("RGB", "CMYK", "L"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(image, source, _SRGB_PROFILE, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            notes.append(f"embedded ICC profile unreadable ({exc}); colours taken as sRGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(data: bytes, declared_name: str, cfg: IntakeConfig, draft_side: int | None = None) -> DecodedImage:
    """Check and decode one payload; raise IntakeError with the reason if it is not usable.

    `draft_side`: a consumer that only needs about this many pixels per side (a model input) lets
    the JPEG decoder scale down by 2/4/8 while decoding, which is several times cheaper.
    """
    try:
        return _decode(data, declared_name, cfg, draft_side)
    except IntakeError:
        raise
    except Exception as exc:
        # Pillow's format plugins answer some malformed files (mutated TIFF, DDS, IM headers) with
        # TypeError, NotImplementedError, struct.error, ... instead of OSError: one bad picture is one
        # error row, never the end of a run or of a company's crawl.
        raise IntakeError("corrupt", f"the image decoder failed on this payload ({type(exc).__name__}: {exc})") from None


def _decode(data: bytes, declared_name: str, cfg: IntakeConfig, draft_side: int | None) -> DecodedImage:
    if not data:
        raise IntakeError("empty", "empty payload (0 bytes)")
    if len(data) > cfg.max_bytes:
        raise IntakeError("too_large", f"payload is {len(data)} bytes, over the limit of {cfg.max_bytes}")
    notes: list[str] = []
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise IntakeError("not_an_image", f"not an image: the payload is {_describe_non_image(data)}") from None
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit (2x its warning level)
        raise IntakeError("decompression_bomb", str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise IntakeError("corrupt", f"unreadable image header: {exc}") from None

    width, height = image.size
    if width * height > cfg.max_pixels:
        raise IntakeError(
            "decompression_bomb",
            f"{width}x{height} = {width * height} pixels, over the limit of {cfg.max_pixels} (refused before decoding)",
        )
    fmt = image.format or "UNKNOWN"
    extension, accepted = _EXTENSIONS_BY_FORMAT.get(fmt, (fmt.lower(), {fmt.lower()}))
    declared = _declared_extension(declared_name)
    if declared and declared not in accepted:
        notes.append(f"extension .{declared} but the content is {fmt}")
    n_frames = int(getattr(image, "n_frames", 1) or 1)
    if n_frames > 1:
        notes.append(f"animated ({n_frames} frames): the first frame is used")
        image.seek(0)
    source_mode = image.mode
    if draft_side and fmt == "JPEG":
        image.draft(image.mode, (draft_side, draft_side))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise IntakeError("truncated", f"truncated or corrupt image data: {exc}") from None
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError) as exc:
        notes.append(f"EXIF orientation unreadable ({exc}); image used as stored")
    if min(image.size) < cfg.min_side:
        raise IntakeError("too_small", f"{image.size[0]}x{image.size[1]} is below the minimum side of {cfg.min_side} px")
    rgb = _to_rgb(image, notes)
    return DecodedImage(rgb, fmt, extension, source_mode, n_frames, tuple(notes))


def load_rgb(uri: str, cfg: IntakeConfig | None = None, draft_side: int | None = None) -> Image.Image:
    """Read an image that passed intake (e.g. a stored object) and normalise it exactly as intake did."""
    cfg = cfg or IntakeConfig()
    return decode_image(fetch_bytes(uri, cfg.max_bytes, cfg.fetch_timeout_s), uri, cfg, draft_side).rgb


def thumbnail_jpeg(rgb: Image.Image, side: int) -> bytes:
    thumb = rgb.copy()
    thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()


def pixel_digest(rgb: Image.Image) -> str:
    digest = hashlib.sha256(f"{rgb.size[0]}x{rgb.size[1]}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


# -------------------------------------------------------------------- intake
def distinct_ok(images: pd.DataFrame) -> pd.DataFrame:
    """The `ok` rows of an images table, one per distinct content (the first row of each)."""
    return images[images["status"] == "ok"].drop_duplicates("content_sha256")


def content_by_row(images: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(company, image) -> content hash of an images table's rows: how pair tables, which name rows,
    are taken back to the photographs they show."""
    return dict(zip(zip(images["company"], images["image"]), images["content_sha256"])) if len(images) else {}


def store_original(warehouse: Warehouse, privacy: PrivacyConfig, run_date: str, sha256: str, extension: str, data: bytes) -> str:
    """Store a picture's original bytes where the privacy mode says; returns the object's key.

    Kept originals are content-addressed under objects/raw; in no-raw-images mode they live in the
    run's staging area, which is dropped when the run ends."""
    if privacy.keep_raw_images:
        key = layout.object_key("raw", sha256, extension)
    else:
        key = layout.staging_key(run_date, sha256, extension)
    warehouse.put_object(key, data)
    return key


def ingest_one(
    row: ManifestRow,
    warehouse: Warehouse,
    run_date: str,
    intake_cfg: IntakeConfig,
    privacy: PrivacyConfig,
    fingerprint: str = "",
    fetcher: Fetcher | None = None,
) -> ImageRecord:
    """Fetch, check, normalise, hash and store one image; never raises for a bad image.
    `fetcher`: the guarded HTTP client for http(s) rows (ingest shares one, so per-host politeness holds)."""
    import imagehash

    record = ImageRecord(
        company=row.company, image=row.image, person=row.person, source_url=row.source_url, image_url=row.image_url, uri=row.uri
    )
    try:
        if row.problem:
            raise IntakeError("bad_row", row.problem)
        record.source_fingerprint = fingerprint
        data = fetch_bytes(row.uri, intake_cfg.max_bytes, intake_cfg.fetch_timeout_s, fetcher)
        record.n_bytes = len(data)
        record.content_sha256 = hashlib.sha256(data).hexdigest()
        decoded = decode_image(data, row.image, intake_cfg)
    except IntakeError as exc:
        record.error_kind, record.error = exc.kind, str(exc)
        return record

    sha = record.content_sha256
    record.format, record.source_mode, record.n_frames = decoded.format, decoded.source_mode, decoded.n_frames
    record.width, record.height = decoded.rgb.size
    record.warnings = list(decoded.warnings)
    record.pixel_sha256 = pixel_digest(decoded.rgb)
    record.phash = str(imagehash.phash(decoded.rgb))
    record.raw_object = store_original(warehouse, privacy, run_date, sha, decoded.extension, data)
    if privacy.keep_thumbnails:
        record.thumbnail_object = layout.object_key("thumbs", sha, "jpg")
        if not warehouse.exists(record.thumbnail_object):
            warehouse.write_bytes(record.thumbnail_object, thumbnail_jpeg(decoded.rgb, intake_cfg.thumbnail_side))
    record.status = "ok"
    return record


def records_to_frame(records: Sequence[ImageRecord]) -> pd.DataFrame:
    frame = pd.DataFrame([asdict(r) for r in records], columns=IMAGE_COLUMNS)
    for column in ("width", "height", "n_frames", "n_bytes"):
        frame[column] = frame[column].astype("Int64")
    return frame


def reusable_records(previous: pd.DataFrame, privacy: PrivacyConfig) -> dict[tuple[str, str], dict]:
    """Earlier `ok` rows, keyed by (uri, source fingerprint); whether their stored objects are still
    there is checked when one is used.

    In no-raw-images mode nothing is reused: the originals are gone after each run, and content that
    is new to the embedding cache would have nothing to be embedded from.
    """
    if previous.empty or "source_fingerprint" not in previous or not privacy.keep_raw_images:
        return {}
    usable = previous[(previous["status"] == "ok") & (previous["source_fingerprint"] != "")]
    reusable = {}
    for row in usable.to_dict("records"):
        if bool(row["thumbnail_object"]) != privacy.keep_thumbnails:
            continue  # thumbnails were switched on or off since: redo the row under today's setting
        reusable[(row["uri"], row["source_fingerprint"])] = row
    return reusable


DUPLICATE_ROW = "repeats an earlier manifest row (same company, image, person and source): the photo is counted once, on that row"


def repeated_rows(rows: Sequence[ManifestRow]) -> set[int]:
    """Positions of rows that repeat an earlier row entirely (company, image, where it was found, who).
    One photo listed twice on one page is one photo: were both rows kept, it would be its own
    near-duplicate and weigh twice in every page metric. The same picture under two names, on two
    people's cards (crawled pictures are named by their content) or on two companies' pages is not a
    repeat: that is reuse, which the near-duplicate tables are there to show."""
    seen: set[tuple[str, ...]] = set()
    repeats = set()
    for index, row in enumerate(rows):
        if row.problem:
            continue
        key = (row.company, row.image, row.image_url, row.person, row.source_url)
        if key in seen:
            repeats.add(index)
        seen.add(key)
    return repeats


def ingest(
    rows: Sequence[ManifestRow],
    warehouse: Warehouse,
    run_date: str,
    intake_cfg: IntakeConfig,
    privacy: PrivacyConfig,
    progress: bool = True,
    previous: pd.DataFrame | None = None,
    crawl: CrawlConfig | None = None,
) -> pd.DataFrame:
    """Ingest every row (in parallel threads, order kept); returns the `images` table.

    `previous`: an earlier `images` table. A row whose source has the same fingerprint (size and
    mtime/ETag) as there, and whose stored objects still exist, is carried over without being fetched
    or decoded again, which is what makes a nightly rerun over unchanged pages cheap.
    """
    from tqdm.auto import tqdm

    known = reusable_records(previous if previous is not None else pd.DataFrame(), privacy)
    repeats = repeated_rows(rows)

    def work(numbered: tuple[int, ManifestRow]) -> ImageRecord:
        index, row = numbered
        if index in repeats:
            return ImageRecord(company=row.company, image=row.image, person=row.person, source_url=row.source_url,
                               image_url=row.image_url, uri=row.uri, error_kind="duplicate_row", error=DUPLICATE_ROW)  # fmt: skip
        fingerprint = "" if row.problem else source_fingerprint(row.uri)
        earlier = known.get((row.uri, fingerprint)) if fingerprint else None
        if earlier is not None and _objects_present(earlier, warehouse):
            carried = {**earlier, "warnings": list(earlier["warnings"])}
            carried.update(company=row.company, image=row.image, person=row.person, source_url=row.source_url, image_url=row.image_url)
            return ImageRecord(**carried)
        return ingest_one(row, warehouse, run_date, intake_cfg, privacy, fingerprint, fetcher)

    # One guarded client for every http(s) row of the run: the crawler's address guard, caps and
    # per-host spacing (`crawl` settings) apply to manifest URLs too.
    remote = (crawl or CrawlConfig()).model_copy(update={"timeout_s": intake_cfg.fetch_timeout_s})
    with remote_fetcher(remote) as fetcher, ThreadPoolExecutor(max_workers=intake_cfg.workers, thread_name_prefix="intake") as pool:
        records = list(tqdm(pool.map(work, enumerate(rows)), total=len(rows), desc="intake", unit="img", disable=not progress))
    frame = records_to_frame(records)
    failed = frame[frame["status"] == "error"]
    logger.info("intake: %d ok, %d error(s) of %d rows", len(frame) - len(failed), len(failed), len(frame))
    for kind, count in failed["error_kind"].value_counts().items():
        logger.warning("intake: %d image(s) refused as %s", count, kind)
    return frame


def _objects_present(record: dict, warehouse: Warehouse) -> bool:
    keys = [record["raw_object"]] + ([record["thumbnail_object"]] if record["thumbnail_object"] else [])
    return all(warehouse.exists(key) for key in keys)


def write_images_table(frame: pd.DataFrame, warehouse: Warehouse, run_date: str) -> str:
    return warehouse.write_table("images", run_date, frame)

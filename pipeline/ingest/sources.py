"""Sources: turn a CSV manifest or a folder of company sub-folders into manifest rows.

Nothing is fetched here. A row that cannot name an image (empty `company` or `image`) is kept, with
`problem` set, so that intake records it as an error row instead of silently dropping it.
"""

from __future__ import annotations

import io
import os
import posixpath
from dataclasses import dataclass

import fsspec

from pipeline.ingest.text import clean_text
from pipeline.warehouse import is_local_fs

MAX_MANIFEST_BYTES = 512 << 20  # millions of rows; a larger "manifest" is not one
REQUIRED_COLUMNS = ("company", "image")
OPTIONAL_COLUMNS = ("person", "source_url", "image_url")
# Sidecar files that commonly sit beside photos; everything else in a company folder is offered to
# intake, so a photo with a wrong or missing extension becomes a checked row rather than vanishing.
_SIDECAR_SUFFIXES = (".md", ".txt", ".csv", ".json", ".yaml", ".yml", ".db", ".ini")


class SourceError(ValueError):
    """The manifest or input folder itself is unusable (missing columns, not found, empty)."""


@dataclass(frozen=True)
class ManifestRow:
    company: str
    image: str  # exactly as given by the source
    uri: str  # where to read it from (fsspec URL or absolute path)
    person: str = ""
    source_url: str = ""
    image_url: str = ""  # where a crawled picture was found; `image` is where it was downloaded to
    problem: str = ""  # non-empty: the row itself is unusable, with the reason


def _has_scheme(ref: str) -> bool:
    return "://" in ref


def resolve_reference(image: str, base: str) -> str:
    """Resolve `image` as given in a manifest against the manifest's folder `base`."""
    if _has_scheme(image) or os.path.isabs(image):
        return image
    if _has_scheme(base):
        return posixpath.join(base.rstrip("/") + "/", image)
    return os.path.normpath(os.path.join(base, image))


def _parent(uri: str) -> str:
    if _has_scheme(uri):
        return uri.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(uri))


def read_manifest(manifest: str) -> list[ManifestRow]:
    """Read a CSV manifest with columns company, image [, person, source_url, image_url]."""
    import pandas as pd

    from pipeline.ingest.fetch import IntakeError, fetch_bytes

    try:  # the same guarded read as every picture: address guard for http(s), no named pipes, a byte cap
        raw = fetch_bytes(manifest, MAX_MANIFEST_BYTES, timeout_s=60)
    except IntakeError as exc:
        if str(exc).startswith("not found"):
            raise SourceError(f"manifest not found: {manifest}") from None
        raise SourceError(f"manifest {manifest} cannot be read: {exc}") from None
    try:
        frame = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SourceError(f"manifest {manifest} is not a readable UTF-8 CSV: {exc}") from None
    frame.columns = [str(column).strip().lower() for column in frame.columns]
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise SourceError(
            f"manifest {manifest} lacks column(s) {', '.join(missing)}; "
            f"required: {', '.join(REQUIRED_COLUMNS)}; optional: {', '.join(OPTIONAL_COLUMNS)}; "
            f"found: {', '.join(frame.columns) or '(none)'}"
        )
    base = _parent(manifest)
    rows = []
    for record in frame.to_dict("records"):
        company = clean_text(record["company"])
        image = record["image"].strip()
        problem = ""
        if not company:
            problem = "manifest row has an empty company"
        if not image:
            problem = "manifest row has an empty image reference"
        rows.append(
            ManifestRow(
                company=company,
                image=image,
                uri=resolve_reference(image, base) if image else "",
                person=clean_text(record.get("person", "")),
                source_url=record.get("source_url", "").strip(),
                image_url=record.get("image_url", "").strip(),
                problem=problem,
            )
        )
    return rows


def scan_folder(root: str) -> list[ManifestRow]:
    """Each sub-folder of `root` is one company; every file below it (recursively) is one image.

    `image` is the path relative to `root`, as it would be written in a manifest beside the folder.
    """
    fs, root_path = fsspec.core.url_to_fs(root)
    if not fs.isdir(root_path):
        raise SourceError(f"input folder not found: {root}")
    root_path = root_path.rstrip("/")
    rows = []
    for entry in sorted(fs.ls(root_path, detail=True), key=lambda e: e["name"]):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] == "directory" and not name.startswith("."):
            # Shown in every report: no bidi override or zero-width character may disguise it.
            rows += _files_of(fs, entry["name"], root_path, clean_text(name) or name.encode("unicode_escape").decode())
    if not rows:
        raise SourceError(f"input folder {root} has no company sub-folders with files in them")
    return rows


def scan_company_folder(folder: str, company: str) -> list[ManifestRow]:
    """Every file below `folder` (recursively) as one image of `company` (a brand audit's upload)."""
    fs, path = fsspec.core.url_to_fs(folder)
    if not fs.isdir(path):
        raise SourceError(f"folder not found: {folder}")
    path = path.rstrip("/")
    rows = _files_of(fs, path, path.rsplit("/", 1)[0], company)
    if not rows:
        raise SourceError(f"folder {folder} has no image files")
    return rows


def _files_of(fs: fsspec.AbstractFileSystem, folder: str, root_path: str, company: str) -> list[ManifestRow]:
    rows = []
    for path in sorted(fs.find(folder)):
        relative = path[len(root_path) + 1 :]
        name = relative.rsplit("/", 1)[-1]
        if any(part.startswith(".") for part in relative.split("/")) or name.lower().endswith(_SIDECAR_SUFFIXES):
            continue
        uri = path if is_local_fs(fs) else fs.unstrip_protocol(path)
        rows.append(ManifestRow(company=company, image=relative, uri=uri))
    return rows

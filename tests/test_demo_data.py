"""The synthetic demo companies: deterministic, labelled as synthetic, with the structure they promise."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from pipeline.apps.demo.data import SYNTHETIC_NOTE, generate_demo_images
from pipeline.ingest.sources import read_manifest


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.jpg"))}


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    generate_demo_images(tmp_path / "a", seed=3, per_company=4)
    generate_demo_images(tmp_path / "b", seed=3, per_company=4)
    generate_demo_images(tmp_path / "c", seed=4, per_company=4)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert digests(tmp_path / "a") != digests(tmp_path / "c")


def test_structure_and_labelling(tmp_path: Path) -> None:
    manifest = generate_demo_images(tmp_path, per_company=6)
    rows = read_manifest(str(manifest))
    by_company: dict[str, list[str]] = {}
    for row in rows:
        by_company.setdefault(row.company, []).append(hashlib.sha256(Path(row.uri).read_bytes()).hexdigest())
    assert set(by_company) == {"northwind-legal", "bluebird-bakery", "copperleaf-consulting", "tiny-startup"}
    assert len(by_company["tiny-startup"]) == 2
    northwind = by_company["northwind-legal"]
    assert len(northwind) - len(set(northwind)) == 1  # one exact duplicate within the page
    assert len(set(northwind) & set(by_company["copperleaf-consulting"])) == 1  # one photo reused across pages
    for row in rows:
        with Image.open(row.uri) as image:
            assert image.info.get("comment") == SYNTHETIC_NOTE

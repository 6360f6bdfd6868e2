"""On the shared real-photo corpus (skipped where ../shared/data/headshots is absent)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import load_settings
from pipeline.run import run_pipeline
from pipeline.sources import scan_folder


def test_ai_diffusion_packs_ingest_completely(corpus: Path, tmp_path: Path) -> None:
    folder = corpus / "ai_diffusion_packs"
    result = run_pipeline(scan_folder(str(folder)), load_settings(warehouse=str(tmp_path)), "2026-01-01", progress=False)
    images = pd.read_parquet(result.outputs["images"])
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(images) == len(files) == 107
    assert (images["status"] == "ok").all(), images.loc[images["status"] != "ok", ["image", "error"]]
    assert images["company"].nunique() == 5
    assert (images["width"] >= 200).all() and (images["height"] >= 200).all()

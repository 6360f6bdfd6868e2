"""Cost of a rerun with nothing changed, as a share of the cold run (target <= 0.05).

A cold run fetches, checks and stores every image, embeds it and builds the index; a rerun over the
same unchanged sources carries intake rows over by source fingerprint, takes every vector from the
embedding cache and only rebuilds the (small) tables and index. Both are timed in one process, on
the shared corpus where present, else on generated demo pictures.

    .venv/bin/python -m bench.rerun_cost [--embedder classic|clip]

`--embedder clip` uses ViT-B-32 with random weights saved as a local checkpoint (same cost as real
weights; no download).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import default_corpus, write_result

CORPUS = default_corpus()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", choices=["classic", "clip"], default="classic")
    args = parser.parse_args()

    from pipeline.config import load_settings
    from pipeline.ingest.sources import read_manifest, scan_folder
    from pipeline.stages import run_pipeline

    scratch = Path(tempfile.mkdtemp(prefix="bench-rerun-"))
    if CORPUS.is_dir():
        rows, source = scan_folder(str(CORPUS)), "shared corpus"
    else:
        from pipeline.apps.demo.data import generate_demo_images

        rows, source = read_manifest(str(generate_demo_images(scratch / "demo", per_company=60))), "generated demo pictures"
    overrides: dict = {"warehouse": str(scratch / "warehouse"), "embedder": args.embedder}
    if args.embedder == "clip":
        import open_clip
        import torch

        torch.manual_seed(0)
        checkpoint = scratch / "vit-b-32-random.pt"
        torch.save(open_clip.create_model("ViT-B-32").state_dict(), checkpoint)
        overrides["clip"] = {"model": "ViT-B-32", "checkpoint": str(checkpoint)}
    settings = load_settings(**overrides)
    print(f"{len(rows)} images from the {source}; embedder {args.embedder}; warehouse {scratch / 'warehouse'}")

    started = time.perf_counter()
    cold = run_pipeline(rows, settings, run_date="2026-01-01", progress=False)
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    rerun = run_pipeline(rows, settings, run_date="2026-01-02", progress=False)
    rerun_s = time.perf_counter() - started

    print(f"cold run: {cold_s:7.2f} s  (embedded {cold.counts['embedded']})")
    print(f"rerun:    {rerun_s:7.2f} s  (embedded {rerun.counts['embedded']}, cache hits {rerun.counts['embedding_cache_hits']})")
    print(f"ratio rerun / cold: {rerun_s / cold_s:.3f}  (target <= 0.05)")
    write_result(
        f"rerun_cost-{args.embedder}",
        {"images": len(rows), "source": source, "embedder": cold.embedder, "cold_s": round(cold_s, 2), "rerun_s": round(rerun_s, 2),
         "ratio_rerun_cold": round(rerun_s / cold_s, 4), "cold_stage_seconds": _stage_seconds(settings, "2026-01-01"),
         "rerun_stage_seconds": _stage_seconds(settings, "2026-01-02")},
    )  # fmt: skip


def _stage_seconds(settings, run_date: str) -> dict:  # noqa: ANN001
    from pipeline.layout import run_record
    from pipeline.warehouse import Warehouse

    return Warehouse(settings.warehouse).read_json(run_record(run_date))["stage_seconds"]


if __name__ == "__main__":
    main()

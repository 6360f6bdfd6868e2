"""Embedding throughput, all figures from one run on this machine.

- bare forward: `encode_image` on ready-made tensors, in the dtype the pipeline picks (bf16 on CPUs
  with AMX/AVX512-BF16) — the fastest the model can go;
- pipeline: files on disk -> vectors through `ClipEmbedder.embed_uris` (decode + preprocess of the
  next batches in background threads, overlapped with the model);
- plain fp32 loop: what a straightforward open_clip script does (decode, preprocess, fp32 forward,
  one after the other);
- classic: the offline embedder, files on disk -> vectors.

Random weights cost exactly what real ones cost, so no download is needed. Images are the shared
corpus (../shared/data/headshots) where present, else generated demo pictures.

    .venv/bin/python -m bench.embed_throughput [--images 384] [--model ViT-B-32] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import default_corpus, write_result

CORPUS = default_corpus()


def image_files(count: int) -> list[str]:
    if CORPUS.is_dir():
        files = sorted(str(p) for p in CORPUS.rglob("*.jp*g"))
        source = f"shared corpus ({len(files)} files)"
    else:
        from pipeline.apps.demo.data import generate_demo_images
        from pipeline.ingest.sources import read_manifest

        folder = Path(tempfile.mkdtemp(prefix="bench-embed-"))
        files = [row.uri for row in read_manifest(str(generate_demo_images(folder, per_company=max(4, count // 3))))]
        source = f"generated demo pictures ({len(files)} files)"
    files = (files * (count // len(files) + 1))[:count]
    print(f"images: {count} from {source}")
    return files


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--decode-threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from pipeline.features.embedders.classic import ClassicEmbedder
    from pipeline.features.embedders.clip import ClipEmbedder
    from pipeline.ingest.intake import load_rgb

    files = image_files(args.images)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")

    fast = ClipEmbedder(args.model, pretrained=None, random_init_seed=0, batch_size=args.batch_size, decode_threads=args.decode_threads)
    print(f"pipeline dtype: {str(fast.dtype).removeprefix('torch.')} on {fast.device}")

    # Bare forward on tensors prepared beforehand (best of two passes: the first warms up kernels).
    batch = torch.randn(args.batch_size, 3, fast.input_side, fast.input_side)
    n_batches = max(1, args.images // args.batch_size)
    fast.encode_batch(batch)
    bare = 0.0
    for _ in range(2):
        started = time.perf_counter()
        for _ in range(n_batches):
            fast.encode_batch(batch)
        bare = max(bare, rate(n_batches * args.batch_size, time.perf_counter() - started))

    started = time.perf_counter()
    vectors = fast.embed_uris(files)
    pipeline = rate(len(vectors), time.perf_counter() - started)

    plain = ClipEmbedder(args.model, pretrained=None, random_init_seed=0, precision="fp32", batch_size=args.batch_size)
    started = time.perf_counter()
    for start in range(0, len(files), args.batch_size):
        pixels = torch.stack([plain.preprocess(load_rgb(path)) for path in files[start : start + args.batch_size]])
        plain.encode_batch(pixels)
    plain_fp32 = rate(len(files), time.perf_counter() - started)

    classic = ClassicEmbedder()
    started = time.perf_counter()
    classic.embed_uris(files)
    classic_rate = rate(len(files), time.perf_counter() - started)

    print(f"bare forward ({str(fast.dtype).removeprefix('torch.')}):      {bare:8.1f} img/s")
    print(f"pipeline files -> vectors:  {pipeline:8.1f} img/s")
    print(f"plain fp32 open_clip loop:  {plain_fp32:8.1f} img/s")
    print(f"classic files -> vectors:   {classic_rate:8.1f} img/s")
    print(f"ratio pipeline / bare forward: {pipeline / bare:.2f}  (target >= 0.9)")
    print(f"ratio pipeline / plain fp32:   {pipeline / plain_fp32:.2f}  (target >= 3)")
    write_result(
        "embed_throughput",
        {"images": len(files), "dtype": str(fast.dtype).removeprefix("torch."), "bare_forward_img_s": round(bare, 1),
         "pipeline_img_s": round(pipeline, 1), "plain_fp32_img_s": round(plain_fp32, 1), "classic_img_s": round(classic_rate, 1),
         "ratio_pipeline_bare": round(pipeline / bare, 3), "ratio_pipeline_plain_fp32": round(pipeline / plain_fp32, 3)},
    )  # fmt: skip


if __name__ == "__main__":
    main()

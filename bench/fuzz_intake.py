"""Mutation fuzzing of intake's decoder: every mutated picture must end as an `ok` row or an error row
with a reason, never a crash or a hang.

    .venv/bin/python -m bench.fuzz_intake [--cases 100000] [--seed 0] [--timeout-s 10]

Seeds are valid JPEG, PNG, WebP, GIF, TIFF and BMP files made here; each case applies one seeded
mutation (bit flips, truncation, header overwrite, or a chunk spliced in from another seed). Cases
run in worker processes, so a case that hangs is counted (and killed) instead of stopping the run.
The test suite runs the same cases in-process (tests/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import io
import random
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, TimeoutError

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")


def seed_payloads() -> dict[str, bytes]:
    """One small valid file per format, the same bytes on every run."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    payloads = {}
    for fmt in FORMATS:
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        payloads[fmt] = buffer.getvalue()
    return payloads


def mutate(data: bytes, rng: random.Random, donors: list[bytes]) -> bytes:
    """One seeded mutation; headers (the first 256 bytes) are hit more often, where parsers decide most."""
    out = bytearray(data)
    kind = rng.randrange(4)
    head = min(len(out), 256)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(head if rng.random() < 0.7 else len(out))
            out[at] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        out = out[: rng.randrange(1, len(out))]
    elif kind == 2:  # overwrite a few header bytes with random ones
        at = rng.randrange(head)
        out[at : at + rng.randint(1, 8)] = rng.randbytes(rng.randint(1, 8))
    else:  # splice a chunk of another format's file in
        donor = rng.choice(donors)
        start = rng.randrange(len(donor))
        chunk = donor[start : start + rng.randint(4, 64)]
        at = rng.randrange(len(out))
        out[at:at] = chunk
    return bytes(out)


def cases(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`n` (format, mutated bytes) cases, round-robin over the formats, reproducible from `seed`."""
    payloads = seed_payloads()
    donors = list(payloads.values())
    rng = random.Random(seed)
    return [(fmt, mutate(payloads[fmt], rng, donors)) for i in range(n) for fmt in (FORMATS[i % len(FORMATS)],)]


def outcome(data: bytes) -> str:
    """`ok`, `error:<kind>` for an error row, or `crash:<exception>` for anything else."""
    from pipeline.config import IntakeConfig
    from pipeline.ingest.intake import IntakeError, decode_image

    try:
        decode_image(data, "case", IntakeConfig())
        return "ok"
    except IntakeError as exc:
        return f"error:{exc.kind}" if str(exc) else "crash:empty-reason"
    except Exception as exc:  # what the decoder must never let out
        return f"crash:{type(exc).__name__}"


def main() -> None:
    from bench.common import write_result

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=10.0, help="a case taking longer counts as a hang")
    args = parser.parse_args()
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    by_format: dict[str, Counter[str]] = {fmt: Counter() for fmt in FORMATS}
    batch = 2_000  # cases are made batch by batch: 100,000 mutated files need not sit in memory at once
    with ProcessPoolExecutor() as pool:
        for start in range(0, args.cases, batch):
            chunk = cases(min(batch, args.cases - start), seed=args.seed * 1_000_003 + start)
            futures = [(fmt, pool.submit(outcome, data)) for fmt, data in chunk]
            for fmt, future in futures:
                try:
                    result = future.result(timeout=args.timeout_s)
                except TimeoutError:
                    result = "hang"
                counts[result.split(":")[0]] += 1
                by_format[fmt][result] += 1
    seconds = time.perf_counter() - started
    print(f"{args.cases} cases in {seconds:.0f} s: {dict(counts)}")
    for fmt, found in by_format.items():
        print(f"  {fmt:5s} {dict(found.most_common())}")
    write_result(
        "fuzz_intake",
        {"cases": args.cases, "seed": args.seed, "seconds": round(seconds, 1), "outcomes": dict(counts),
         "crashes": counts.get("crash", 0), "hangs": counts.get("hang", 0),
         "by_format": {fmt: dict(found) for fmt, found in by_format.items()}},
    )  # fmt: skip


if __name__ == "__main__":
    main()

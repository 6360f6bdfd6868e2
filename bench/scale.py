"""The whole pipeline at scale: cold, then with 1% of the photos changed, then with nothing changed.

A population of `--sizes` photos is generated from the corpus, so that what a real population holds
occurs in it: distinct people, copies of one photograph on several pages and templated pages.
- Distinct photos: two corpus photos re-framed to one face position and blended (weights 0.3-0.7),
  each at its own framing and mirrored half the time: a face no corpus photo shows, and as many of
  them as needed (the corpus has 672 photos; pairs of them are ~225,000).
- Copies: 5% of the photos on ordinary pages are an edit (pipeline.features.calibration.EDIT_KINDS:
  crops, downscales, JPEG, overlays, ...) of a photo of an earlier page: reuse across companies.
- Templates: every tenth page is one template (bench.templating: one framing and one colour grade)
  over different distinct people.
Pages ("companies") hold 24 photos. The changed population replaces 1% of the photos, chosen at
random, by new distinct ones (the same file names, other pictures): what a nightly sees when a few
staff pages changed.

Each run is a fresh `homog run` process (classic embedder, every stage, no progress bars) on one
warehouse, reading one folder (hard links to the population: until 2026-12-03 the changed night
read another folder, so intake met every path anew and the night looked ~6 s dearer at 2,000):
wall time, peak RSS, seconds per stage (run.json) and the units each stage computed.
Printed per size: photos per second cold; the changed run's and the unchanged run's cost as a share
of the cold run (targets: 1% changed at most 0.05, nothing changed at most 0.1, whole-process wall
time); peak RSS (target at 100,000 photos: at most 8 GB).

    .venv/bin/python -m bench.scale [--sizes 2000 20000] [--work var/scale] [--seed 0]

Generated populations are kept under `--work` (per size and seed) and reused; the warehouse of each
measurement is made afresh. Generating takes ~25 ms per photo per core.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import corpus_pictures, default_corpus, measured, write_result

CORPUS = default_corpus()
PAGE = 24
TEMPLATE_EVERY = 10  # every tenth page is templated
COPY_SHARE = 0.05
CHANGED_SHARE = 0.01
RUN_DATES = {"cold": "2026-01-01", "changed": "2026-01-02", "unchanged": "2026-01-03"}


def _sources(work: Path) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Corpus photos with the largest face's box (x, y, width, height), measured once and kept in `work`."""
    cached = work / "faces.json"
    if cached.exists():
        return [(path, tuple(box)) for path, box in json.loads(cached.read_text())]
    from PIL import Image

    from pipeline.features.faces import detect_faces

    found = []
    for path in corpus_pictures(CORPUS):
        with Image.open(path) as picture:
            faces = detect_faces(picture.convert("RGB"))
        if faces:
            found.append((str(path), (faces[0].x, faces[0].y, faces[0].width, faces[0].height)))
    work.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(found))
    return found


@functools.cache
def _rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"), np.float32)


class Population:
    """Photo `i` of a population, as a function of (seed, i, version): workers make any photo alone."""

    def __init__(self, sources: list[tuple[str, tuple[int, int, int, int]]], seed: int) -> None:
        self.sources, self.seed = sources, seed

    def template(self, page: int):  # noqa: ANN201 - bench.templating.Template, or None on an ordinary page
        from bench.templating import random_template

        if page % TEMPLATE_EVERY != TEMPLATE_EVERY - 1:
            return None
        return random_template(np.random.default_rng([self.seed, page, 7])).only("grade", "framing")

    def distinct(self, rng: np.random.Generator, template) -> np.ndarray:  # noqa: ANN001
        from bench.templating import grade, random_template, reframe

        framing = template or random_template(rng)
        first, second = rng.choice(len(self.sources), 2, replace=False)
        weight = rng.uniform(0.3, 0.7)
        framed = [reframe(_rgb(self.sources[k][0]), self.sources[k][1], framing)[0] for k in (first, second)]
        rgb = weight * framed[0] + (1 - weight) * framed[1]
        if template is None:
            return rgb[:, ::-1] if rng.random() < 0.5 else rgb
        return grade(np.clip(rgb, 0, 255), template).astype(np.float32)

    def photo(self, i: int, version: int = 0) -> tuple[bytes, str]:
        """(encoded bytes, file suffix) of photo `i`; `version` 1 is its replacement in the changed population."""
        from PIL import Image

        from pipeline.features.calibration import EDIT_FORMATS, EDIT_KINDS, encoded

        page = i // PAGE
        template = self.template(page)
        rng = np.random.default_rng([self.seed, i, version])
        if template is None and version == 0 and page > 0 and rng.random() < COPY_SHARE:
            source = int(rng.integers(0, page * PAGE))
            original = Image.open(io.BytesIO(self.photo(source)[0])).convert("RGB")
            kind = str(rng.choice(sorted(EDIT_KINDS)))
            fmt = EDIT_FORMATS.get(kind, "JPEG")
            return encoded(EDIT_KINDS[kind](original, rng), fmt, **({"quality": 92} if fmt == "JPEG" else {})), fmt.lower()
        picture = Image.fromarray(np.clip(self.distinct(rng, template), 0, 255).astype(np.uint8))
        return encoded(picture, "JPEG", quality=90), "jpg"


def _name(i: int, suffix: str) -> str:
    return f"page-{i // PAGE:05d}/photo-{i % PAGE:02d}.{suffix}"


_population: Population | None = None


def _write(task: tuple[str, int, int]) -> str:
    folder, i, version = task
    data, suffix = _population.photo(i, version)  # type: ignore[union-attr]
    path = Path(folder) / _name(i, suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.relative_to(folder).as_posix()


def generate(work: Path, size: int, seed: int) -> tuple[Path, Path, list[int]]:
    """(base population folder, changed population folder, the photos changed), generated once per size and seed."""
    global _population
    import multiprocessing

    root = work / f"n{size}-seed{seed}"
    base, changed, done = root / "base", root / "changed", root / "done.json"
    if done.exists():
        return base, changed, json.loads(done.read_text())["changed"]
    shutil.rmtree(root, ignore_errors=True)
    _population = Population(_sources(work), seed)
    rng = np.random.default_rng([seed, size])
    changed_ids = sorted(int(i) for i in rng.choice(size, max(1, round(CHANGED_SHARE * size)), replace=False))
    started = time.perf_counter()
    # fork: workers inherit the population and decode each corpus photo once (their own cache)
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        names = pool.map(_write, [(str(base), i, 0) for i in range(size)], chunksize=64)
        new_names = pool.map(_write, [(str(root / "replacements"), i, 1) for i in changed_ids])
    for name in names:  # the changed population: the base, hard-linked, but for the replaced photos
        (changed / name).parent.mkdir(parents=True, exist_ok=True)
        os.link(base / name, changed / name)
    for i, new_name in zip(changed_ids, new_names):
        (changed / names[i]).unlink()
        os.replace(root / "replacements" / new_name, changed / new_name)
    shutil.rmtree(root / "replacements")
    print(f"  generated {size} photos (+{len(changed_ids)} replacements) in {time.perf_counter() - started:.0f} s")
    done.write_text(json.dumps({"changed": changed_ids}))
    return base, changed, changed_ids


def mirror(source: Path, target: Path) -> None:
    """Make `target` hold `source`'s files as hard links (the same inodes: size and modification time
    unchanged) and nothing else. The three runs read one folder, as a nightly reads one site: intake
    then reuses what it knows by path and fingerprint, and only the replaced photos are new."""
    wanted = {path.relative_to(source) for path in source.rglob("*") if path.is_file()}
    for path in [path for path in target.rglob("*") if path.is_file()]:
        relative = path.relative_to(target)
        if relative not in wanted or not os.path.samefile(path, source / relative):
            path.unlink()
    for relative in sorted(wanted):
        if not (target / relative).exists():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            os.link(source / relative, target / relative)


def run(folder: Path, warehouse: Path, run_date: str) -> dict:
    """One `homog run` process: wall s, peak RSS, and its run.json's stage seconds, unit costs and counts."""
    homog = str(Path(sys.executable).with_name("homog"))
    command = [homog, "run", "--input", str(folder), "--warehouse", str(warehouse), "--reports", str(warehouse.parent / "reports"),
               "--run-date", run_date, "--embedder", "classic", "--no-progress", "--json"]  # fmt: skip
    from pipeline.layout import run_record

    done = measured(command)
    record = json.loads((warehouse / run_record(run_date)).read_text())
    return {"wall_s": round(done.wall, 1), "peak_rss_mb": round(done.rss), "stage_seconds": {k: round(v, 2) for k, v in record["stage_seconds"].items()},
            "unit_costs": record["unit_costs"], "counts": record["counts"], "timed_log": timed_lines(done.stderr)}  # fmt: skip


def timed_lines(log: str) -> list[str]:
    """The log lines that give seconds (a stage's phases: verification's features and pairs, identity's
    faces): what explains a slow stage after a 90-minute run, which run.json sums per stage."""
    return [line for line in log.splitlines() if re.search(r"\d s\b", line)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000])
    parser.add_argument("--work", type=Path, default=Path("var/scale"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    results = {}
    for size in args.sizes:
        print(f"{size} photos")
        base, changed, changed_ids = generate(args.work, size, args.seed)
        warehouse = args.work / f"n{size}-seed{args.seed}" / "measure" / "warehouse"
        shutil.rmtree(warehouse.parent, ignore_errors=True)
        photos = warehouse.parent / "photos"
        mirror(base, photos)
        runs = {"cold": run(photos, warehouse, RUN_DATES["cold"])}
        mirror(changed, photos)
        runs |= {"changed": run(photos, warehouse, RUN_DATES["changed"]), "unchanged": run(photos, warehouse, RUN_DATES["unchanged"])}
        cold = runs["cold"]
        figures = {
            "photos": size,
            "photos_changed": len(changed_ids),
            "runs": runs,
            "cold_photos_per_s": round(size / cold["wall_s"], 2),
            "changed_over_cold": round(runs["changed"]["wall_s"] / cold["wall_s"], 4),
            "unchanged_over_cold": round(runs["unchanged"]["wall_s"] / cold["wall_s"], 4),
            "changed_over_cold_by_stage": {
                stage: round(runs["changed"]["stage_seconds"].get(stage, 0) / seconds, 3)
                for stage, seconds in cold["stage_seconds"].items() if seconds >= 0.5
            },
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs.values()),
        }  # fmt: skip
        results[str(size)] = figures
        print(f"  cold {cold['wall_s']:.0f} s ({figures['cold_photos_per_s']} photos/s), peak RSS {cold['peak_rss_mb']} MB")
        for name in ("changed", "unchanged"):
            target = 0.05 if name == "changed" else 0.1
            print(f"  {name}: {runs[name]['wall_s']:.0f} s = {figures[f'{name}_over_cold']:.3f} of cold (target <= {target})")
        print(
            "  stage seconds cold / 1% changed: "
            + ", ".join(
                f"{s} {cold['stage_seconds'][s]:.1f}/{runs['changed']['stage_seconds'].get(s, 0):.1f}" for s in cold["stage_seconds"]
            )
        )
        shutil.rmtree(warehouse.parent, ignore_errors=True)
    write_result("scale", {"seed": args.seed, "sizes": {**earlier_sizes(args.seed), **results},
                           "targets": {"changed_over_cold": 0.05, "unchanged_over_cold": 0.1, "peak_rss_mb_at_100000": 8192}})  # fmt: skip


def earlier_sizes(seed: int) -> dict:
    """The sizes the last results hold for this seed, each marked with the commit and date it was
    measured at: a run of one size replaces that size only, and never passes older figures off as its own."""
    from bench.common import RESULTS

    path = RESULTS / "scale.json"
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("figures", {}).get("seed") != seed:
        return {}
    stamp = {"measured_at_commit": earlier.get("commit", "")[:12], "measured_on": earlier.get("date", "")}
    return {size: {**stamp, **figures} for size, figures in earlier["figures"].get("sizes", {}).items()}


if __name__ == "__main__":
    main()

"""Fit the template index's model and validate both page indexes on templated pages of different people.

Photos (../shared/data/headshots): the five AI packs, the London studio set (neutral and smiling), the
real 18F staff photos (placeholders left out) split by alternate file into a *fit* half and a
*validation* half, and templated copies of real staff photos (bench/templating.py: one backdrop, one
framing, one grade, mild skin smoothing; the people unchanged) made with templates drawn at random.

Fitting: the fit half is split again into the *reference* (every other fit-half photo, 38: the photos
the model centres on, shipped with it) and the *fit bases* (37). On the fit bases the validation's
checks are simulated (`FIT_DRAWS` draws): ladders of a real page replaced by each pack's photos, by
studio photos and by each of 8 random templates (full, only a grade and a framing, only a backdrop)
applied to fit-base people, and each fully replaced page against three real pages. A page's index
is linear in the weights, so every weighting on a 0.1 grid is scored at once: a group's pass rate is
the share of draws whose ladder rises at every step, averaged with the share whose full page is
above all three real pages. The weights are those whose worst group passes most often; the kernels'
widths (18 combinations of a sharp and a broad signal width and a whole-picture width) are chosen by
leave-one-folder-out: each folder's pass rate judged by weights chosen without it, the widths with
the best mean.

Validation, over `--draws` random draws, on the validation half only (never fitted on):
- ladders of 0/25/50/75/100% of a page replaced: by templated photos of the same people (full,
  grade + framing, backdrop only; 24 photos), by each AI pack (24 photos, 12 where the pack is
  smaller), by studio photos (24): how often each rises strictly. A pack's ladder uses the model
  fitted without that pack (leave-one-folder-out), as does the studio's;
- separation: three disjoint real pages of 24 against each pack, the studio page and each fully
  templated page: how often all of them are above every real page;
- the bootstrap interval's width at 12, 24 and 48 photos (real, fully templated);
- rarefaction: real and templated subsets of 10, 20 and 40 photos whose intervals overlap.
Each figure for the homogeneity index (without near-duplicate pairs, which the bench does not look
for) and for the template index.

    .venv/bin/python -m bench.template_index [--draws 20] [--embedder classic|clip] [--seed N] [--write] [--cache FILE]

`--write` stores the fitted model as pipeline/metrics/template_models/<embedder id>.json and .npz.
"""

from __future__ import annotations

import argparse
import csv
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import default_corpus, write_result

CORPUS = default_corpus()
SHARES = (0, 25, 50, 75, 100)


def page_size(photos: list[str]) -> int:
    """A group's pages hold 24 photos, 12 where the group has fewer than 24."""
    return 24 if len(photos) >= 24 else 12


def ladder(base: list[str], replacements: list[str]) -> list[list[str]]:
    """The pages of a ladder: `base` with 0, 25, 50, 75, 100% of it replaced (the replaced people leave)."""
    size = len(base)
    return [base[size * share // 100 :] + replacements[: size * share // 100] for share in SHARES]


VARIANTS = {"full": None, "grade+framing": ("grade", "framing"), "backdrop": ("backdrop",)}
FIT_TEMPLATES = 8
BOOTSTRAP = 1000
CACHE_VERSION = 2  # of what --cache holds: a cache of another version, embedder, draw count or seed is rebuilt


@dataclass
class Photos:
    """Per photo: its signals (faces-table columns) and its reference-centred unit vector."""

    keys: list[str]
    signals: pd.DataFrame
    centred: np.ndarray

    def take(self, keys: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
        position = {key: i for i, key in enumerate(self.keys)}
        rows = [position[key] for key in keys]
        return self.signals.iloc[rows].reset_index(drop=True), self.centred[rows]


def _embedder_and_reference(name: str):  # noqa: ANN202
    from pipeline.config import load_settings
    from pipeline.features.embed import resolve_embedder
    from pipeline.features.embedders.clip import WeightsNotFound
    from pipeline.features.reference import PACKAGED, fit_from_folders, from_bytes

    settings = load_settings(embedder=name)
    try:
        embedder = resolve_embedder(settings).embedder
    except WeightsNotFound as error:
        raise SystemExit(f"{error}\nThe template model for clip can only be fitted where its weights are.") from error
    packaged = PACKAGED / f"{embedder.id}.npz"
    if packaged.is_file():
        return embedder, from_bytes(packaged.read_bytes(), embedder.id, embedder.dim, str(packaged))
    reference, _ = fit_from_folders([str(CORPUS / "real_ffhq"), str(CORPUS / "ai_stylegan2")], embedder, settings.intake)
    return embedder, reference


def measure(pictures: dict[str, object], embedder, reference) -> Photos:  # noqa: ANN001
    """Signals and centred vectors of every picture (key -> PIL image)."""
    from pipeline.features.face_signals import photo_signals
    from pipeline.metrics.template_index import PHOTO_COLUMNS

    keys = list(pictures)
    with ThreadPoolExecutor(2) as pool:
        signals = list(pool.map(lambda key: photo_signals(pictures[key]).as_row(), keys))
    vectors = np.concatenate([embedder.embed_images([pictures[k] for k in keys[i : i + 64]]) for i in range(0, len(keys), 64)])
    return Photos(keys, pd.DataFrame(signals)[PHOTO_COLUMNS], reference.centre(vectors))


def build(draws: int, seed: int) -> tuple[dict[str, object], dict]:
    """Every picture the bench needs (key -> image) and the plan: folders, halves, templated pages."""
    from PIL import Image

    from bench.templating import random_template, templated

    with (CORPUS / "manifest.csv").open() as handle:
        manifest = list(csv.DictReader(handle))
    staff = sorted(r["path"] for r in manifest if r["path"].startswith("real_staff_18f/") and r["category"] != "real_other_fixture")
    folders: dict[str, list[str]] = {}
    for row in manifest:
        parts = row["path"].split("/")
        if parts[0] == "ai_diffusion_packs":
            folders.setdefault(f"pack:{parts[1]}", []).append(row["path"])
        elif parts[0] == "real_lab_london" and parts[1] in ("neutral_front", "smiling_front"):
            folders.setdefault("studio:london", []).append(row["path"])
    pictures: dict[str, object] = {}

    def load(path: str):  # noqa: ANN202
        if path not in pictures:
            pictures[path] = Image.open(CORPUS / path).convert("RGB")
        return pictures[path]

    for path in staff + [p for paths in folders.values() for p in paths]:
        load(path)
    fit_half, validation_half = staff[0::2], staff[1::2]
    # The fit half is split again: the reference photos the model centres on, and the real photos
    # the fitting builds its pages from (a page of reference photos is centred on itself: too clean).
    reference, fit_bases = fit_half[0::2], fit_half[1::2]
    rng = np.random.default_rng(seed)
    jobs = []  # (key, source path, template)
    fit_pages: dict[str, list[str]] = {}
    for t in range(FIT_TEMPLATES):
        template = random_template(rng)
        for variant, parts in VARIANTS.items():
            chosen = rng.choice(fit_bases, 20, replace=False)
            page = f"fit-template-{t}-{variant}"
            fit_pages[page] = [f"{page}/{p}" for p in chosen]
            jobs += [(f"{page}/{p}", p, template if parts is None else template.only(*parts)) for p in chosen]
    plan_draws = []
    for d in range(draws):
        template = random_template(rng)
        people = list(rng.choice(validation_half, 48, replace=False))
        draw = {"people": people, "templated": {}}
        for variant, parts in VARIANTS.items():
            count = 48 if variant == "full" else 24
            keys = [f"draw-{d}-{variant}/{p}" for p in people[:count]]
            draw["templated"][variant] = keys
            jobs += [(k, p, template if parts is None else template.only(*parts)) for k, p in zip(keys, people)]
        plan_draws.append(draw)

    def make(job):  # noqa: ANN001, ANN202
        key, path, template = job
        return key, templated(pictures[path], template)

    failed = 0
    with ThreadPoolExecutor(2) as pool:
        for key, picture in pool.map(make, jobs):
            if picture is None:  # no face found: the person is left out of that templated page
                failed += 1
            else:
                pictures[key] = picture
    print(f"{len(jobs)} templated photos made ({failed} without a face left out)", file=sys.stderr)
    plan = {"folders": folders, "reference": reference, "fit_bases": fit_bases, "validation_half": validation_half, "fit_pages": fit_pages,
            "draws": plan_draws}  # fmt: skip
    return pictures, plan


# ------------------------------------------------------------------ fitting
FIT_DRAWS = 20  # simulated ladders per group on the fit half
# The kernels' widths, each combination tried: (signals' sharp Gaussian, their broad one, in
# reference spreads; whole picture, in cosine).
SHARPNESS = tuple((sharp, broad, whole) for sharp in (0.35, 0.5, 0.75) for broad in (1.5, 3.0) for whole in (0.05, 0.1, 0.2))


@dataclass
class FitFigures:
    """Per-component page indexes (last axis: COMPONENTS) of simulated pages on the fit half: an
    index is linear in the weights, so any weighting's pages follow from these without recomputing.
    ladders[group]: (draws, 5 steps of 0/25/50/75/100% of a real page replaced by the group's photos);
    real[draw]: three real pages of 24 (overlapping: the fit bases are 37 photos)."""

    ladders: dict[str, np.ndarray]
    real: np.ndarray  # (draws, 3, components)


def _page_components(model, photos: Photos, keys: list[str]) -> np.ndarray:  # noqa: ANN001
    from pipeline.metrics.template_index import COMPONENTS, component_kernels

    signals, centred = photos.take(keys)
    kernels = component_kernels(model, signals, centred)
    off_diagonal = ~np.eye(len(keys), dtype=bool)
    return np.array([kernels[c][off_diagonal].mean() for c in COMPONENTS])


def folder_of(group: str) -> str:
    """Groups held out together: a pack, the studio set, or one fit template with its subtler variants."""
    return group.rsplit("-", 1)[0] if group.startswith("fit-template-") else group


def fit_figures(photos: Photos, plan: dict, model) -> FitFigures:  # noqa: ANN001
    """The validation's ladders and real pages, simulated on the fit bases (module doc: Fitting)."""
    available = set(photos.keys)
    groups = {name: [k for k in keys if k in available] for name, keys in {**plan["folders"], **plan["fit_pages"]}.items()}
    staff = plan["fit_bases"]
    rng = np.random.default_rng(17)
    ladders, real = {}, []
    for _ in range(FIT_DRAWS):
        real.append([_page_components(model, photos, list(rng.choice(staff, 24, replace=False))) for _ in range(3)])
    for name, keys in groups.items():
        size = page_size(keys)
        steps = []
        for _ in range(FIT_DRAWS):
            replacements = list(rng.choice(keys, size, replace=False))
            if name.startswith("fit-template-"):  # the same people, templated
                base = [key.split("/", 1)[1] for key in replacements]
            else:
                base = list(rng.choice(staff, size, replace=False))
            steps.append([_page_components(model, photos, page) for page in ladder(base, replacements)])
        ladders[name] = np.array(steps)
    return FitFigures(ladders, np.array(real))


def pass_rates(figures: FitFigures, name: str, weights: np.ndarray) -> np.ndarray:
    """Per weighting (rows of `weights`), the share of simulated draws in which the group's ladder
    rises at every step and its fully replaced page is above all three real pages, averaged."""
    steps = np.einsum("dsc,wc->wds", figures.ladders[name], weights)
    rising = (np.diff(steps, axis=2) > 0).all(axis=2).mean(axis=1)
    real_top = np.einsum("drc,wc->wdr", figures.real, weights).max(axis=2)
    above = (steps[:, :, -1] > real_top).mean(axis=1)
    return (rising + above) / 2


def choose_weights(figures: FitFigures, exclude: str | None = None) -> tuple[np.ndarray, float]:
    """The weighting whose worst group (folder `exclude` left out) passes most often; ties broken by
    the mean over groups."""
    from pipeline.metrics.template_index import weight_grid

    grid = weight_grid()
    rates = np.array([pass_rates(figures, name, grid) for name in figures.ladders if exclude is None or folder_of(name) != exclude])
    score = rates.min(axis=0) + 0.01 * rates.mean(axis=0)
    best = int(np.argmax(score))
    return grid[best], float(score[best])


def fit(photos: Photos, plan: dict, embedder_id: str, sharpness: tuple | None = None, exclude: str | None = None):  # noqa: ANN201
    """The template model: the reference photos are plan["reference"]; the kernels' sharpness and the
    weights are chosen by leave-one-folder-out (each folder's pass rate judged by weights chosen
    without it; the sharpness whose held-out folders pass most often on average)."""
    from pipeline.metrics.template_index import COMPONENTS, PHOTO_COLUMNS, TemplateModel, signal_reference

    fit_signals, fit_centred = photos.take(plan["reference"])
    mean, std = signal_reference(fit_signals)

    def model_for(widths: tuple, weights: np.ndarray | None = None) -> TemplateModel:
        chosen = weights if weights is not None else np.full(len(COMPONENTS), 1 / len(COMPONENTS))
        source = (f"bench.template_index: {len(fit_signals)} reference photos (18F staff, every fourth); widths and weights chosen on "
                  f"{len(plan['folders'])} corpus folders and {len(plan['fit_pages'])} templated pages of {len(plan['fit_bases'])} other 18F staff"
                  + (f", without {exclude}" if exclude else ""))  # fmt: skip
        return TemplateModel(embedder_id, dict(zip(COMPONENTS, (float(w) for w in chosen))), mean, std, *widths, source,
                             fit_centred.astype(np.float32), fit_signals[PHOTO_COLUMNS].to_numpy(np.float64))  # fmt: skip

    folders = sorted({folder_of(name) for name in {**plan["folders"], **plan["fit_pages"]}})
    if sharpness is None:
        report = {}
        for level in SHARPNESS:
            figures = fit_figures(photos, plan, model_for(level))
            held_out = []
            for folder in folders:
                weights, _ = choose_weights(figures, exclude=folder)
                names = [n for n in figures.ladders if folder_of(n) == folder]
                held_out.append(min(float(pass_rates(figures, n, weights[None])[0]) for n in names))
            report[level] = (round(float(np.mean(held_out)), 3), round(float(np.min(held_out)), 3))
        sharpness = max(report, key=lambda level: report[level])
        print(f"leave-one-folder-out mean / worst pass rate by kernel widths: {report}; chosen {sharpness}", file=sys.stderr)
    figures = fit_figures(photos, plan, model_for(sharpness))
    weights, _ = choose_weights(figures, exclude=exclude)
    return model_for(sharpness, weights), sharpness


# ------------------------------------------------------------------ validation
def indexes(photos: Photos, keys: list[str], model, seed: int) -> dict[str, tuple[float, float, float]]:  # noqa: ANN001
    from pipeline.metrics.homogeneity import page_index
    from pipeline.metrics.template_index import page_template_index

    signals, centred = photos.take(keys)
    duplicate = np.zeros((len(keys), len(keys)), bool)
    template = page_template_index(model, signals, centred, duplicate, BOOTSTRAP, seed)
    return {"homogeneity": page_index(centred, duplicate, BOOTSTRAP, seed), "template": (template.index, template.ci_low, template.ci_high)}


def validate(photos: Photos, plan: dict, model, held_out_models: dict) -> dict:  # noqa: ANN001
    """The figures of the module doc, counted over the plan's draws, for both indexes."""
    which_all = ("homogeneity", "template")
    tally: dict = {"ladders": {}, "above_all_real": {}, "all_above_all_real": dict.fromkeys(which_all, 0), "rarefaction": {}, "widths": {}}

    def count(table: str, name: str, which: str, hit: bool) -> None:
        tally[table].setdefault(name, dict.fromkeys(which_all, 0))[which] += int(hit)

    widths: dict = {}
    available = set(photos.keys)
    for d, draw in enumerate(plan["draws"]):
        rng = np.random.default_rng(5000 + d)
        people = list(draw["people"])
        real_pages = [people[0:24], people[24:48], [p for p in plan["validation_half"] if p not in people][:24]]
        ladders = {}
        for variant, keys in draw["templated"].items():  # the same people, progressively templated
            kept = [(p, k) for p, k in zip(people, keys) if k in available][:24]
            ladders[f"templated:{variant}"] = ([p for p, _ in kept], [k for _, k in kept], model)
        for folder, keys in plan["folders"].items():
            size = page_size(keys)
            ladders[folder] = (people[:size], list(rng.choice(keys, size, replace=False)), held_out_models[folder])
        top_real = {}  # model id -> which -> the highest of the real pages, by that model
        for ladder_model in {m.id: m for _, _, m in ladders.values()}.values():
            scores = [indexes(photos, page, ladder_model, d) for page in real_pages]
            top_real[ladder_model.id] = {which: max(s[which][0] for s in scores) for which in which_all}
        all_above = dict.fromkeys(which_all, True)
        for name, (base, replacements, ladder_model) in ladders.items():
            size = len(base)
            curves: dict = {which: [] for which in which_all}
            for page in ladder(base, replacements):
                scores = indexes(photos, page, ladder_model, d)
                for which in which_all:
                    curves[which].append(scores[which])
            for which, curve in curves.items():
                values = [index for index, _, _ in curve]
                count("ladders", name, which, all(b > a for a, b in zip(values, values[1:])))
                above = values[-1] > top_real[ladder_model.id][which]
                count("above_all_real", name, which, above)
                if name != "templated:grade+framing" and name != "templated:backdrop":
                    all_above[which] &= above
                widths.setdefault((which, name, size), []).append(curve[-1])
        for which in which_all:
            tally["all_above_all_real"][which] += int(all_above[which])
        for size in (12, 24, 48):
            templated_full = [k for k in draw["templated"]["full"] if k in available]
            for name, page in (("real", people[:size]), ("templated:full", templated_full[:size])):
                for which, interval in indexes(photos, page, model, d).items():
                    widths.setdefault((which, name, len(page)), []).append(interval)
        for name, pool in (("real", plan["validation_half"]), ("templated:full", [k for k in draw["templated"]["full"] if k in available])):
            spans: dict = {which: [] for which in which_all}
            for size in (10, 20, 40):
                scores = indexes(photos, list(rng.choice(pool, min(size, len(pool)), replace=False)), model, d)
                for which in which_all:
                    spans[which].append(scores[which][1:])
            for which, intervals in spans.items():
                count("rarefaction", name, which, max(low for low, _ in intervals) <= min(high for _, high in intervals))
    for (which, name, size), values in sorted(widths.items()):
        tally["widths"].setdefault(f"{name}/{size}", {})[which] = round(float(np.median([high - low for _, low, high in values])), 3)
        tally.setdefault("median_index", {}).setdefault(f"{name}/{size}", {})[which] = round(float(np.median([v for v, _, _ in values])), 3)
    return tally


def validation_summary(tally: dict) -> list[list]:
    """What the audit page quotes: per kind of page, the lowest and highest median template index."""
    kinds = (("real staff pages", "real/"), ("AI headshot packs", "pack:"), ("one studio's session", "studio:"),
             ("staff photos run through one template", "templated:full/"), ("only its grade and framing", "templated:grade+framing/"),
             ("only its backdrop", "templated:backdrop/"))  # fmt: skip
    medians = {name: level["template"] for name, level in tally["median_index"].items()}
    summary = []
    for what, prefix in kinds:
        found = [value for name, value in medians.items() if name.startswith(prefix)]
        if found:
            summary.append([what, min(found), max(found)])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", default="classic", choices=["classic", "clip"])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument(
        "--widths",
        type=float,
        nargs=3,
        default=None,
        help="fix the kernels' widths (signals sharp and broad, whole) instead of choosing them",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="another seed: other fit templates and draws, to see how stable the fitting is (not with --write)",
    )
    parser.add_argument("--write", action="store_true", help="store the fitted model in pipeline/metrics/template_models/")
    parser.add_argument("--cache", default=None, help="keep the measured photos in this file between runs (bench only)")
    args = parser.parse_args()
    if args.write and args.seed:
        parser.error("--write ships the model fitted on the default seed; --seed is for checking how stable it is")
    if not CORPUS.is_dir():
        print(f"corpus not found at {CORPUS}; nothing to validate", file=sys.stderr)
        return
    from pipeline.metrics.template_index import MODELS

    embedder, reference = _embedder_and_reference(args.embedder)
    cache = Path(args.cache) if args.cache else None
    cached = pickle.loads(cache.read_bytes()) if cache and cache.is_file() else None  # bench-only file, written below
    key = (CACHE_VERSION, embedder.id, args.draws) + ((args.seed,) if args.seed else ())
    if cached and cached[0] == key:
        _, photos, plan = cached
    else:
        pictures, plan = build(args.draws, seed=args.seed)
        photos = measure(pictures, embedder, reference)
        if cache:
            cache.write_bytes(pickle.dumps((key, photos, plan)))
    model, sharpness = fit(photos, plan, embedder.id, tuple(args.widths) if args.widths else None)
    held_out = {folder: fit(photos, plan, embedder.id, sharpness, exclude=folder)[0] for folder in plan["folders"]}
    print("weights:", model.weights, "held out:", {f: m.weights for f, m in held_out.items()}, file=sys.stderr)
    tally = validate(photos, plan, model, held_out)
    draws = len(plan["draws"])
    print(f"\n{embedder.id}, {draws} draws: homogeneity index | template index")
    for which in ("homogeneity", "template"):
        print(f"all packs, the studio and the full template above every real page ({which}): {tally['all_above_all_real'][which]}/{draws}")
    for table in ("ladders", "above_all_real", "rarefaction"):
        print(f"{table}:")
        for name, hits in tally[table].items():
            print(f"  {name:34s} {hits['homogeneity']:3d}/{draws} | {hits['template']:3d}/{draws}")
    print("median index, median 95% interval width:")
    for name, width in tally["widths"].items():
        level = tally["median_index"][name]
        print(f"  {name:34s} {level['homogeneity']:.3f} {width['homogeneity']:.3f} | {level['template']:.3f} {width['template']:.3f}")
    if args.write:
        model = replace(model, validation=validation_summary(tally))
        MODELS.mkdir(exist_ok=True)
        model.save(MODELS)
        print(f"model written to {MODELS / f'{embedder.id}.json'} ({model.id})")
    write_result(f"template_index-{embedder.id}" + (f"-seed{args.seed}" if args.seed else ""), {"embedder": embedder.id, "reference": reference.id, "model": model.id, "kernel_widths": list(sharpness),
                                                   "weights": model.weights, "weights_with_folder_held_out": {f: m.weights for f, m in held_out.items()},
                                                   "draws": draws, **tally})  # fmt: skip


if __name__ == "__main__":
    main()

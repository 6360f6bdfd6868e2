"""Report stage: a static HTML run report, one brand-audit page per company, plots and summary.json.

Everything is read back from the warehouse (`homog report --run-date D` regenerates a report without
recomputing a metric). Pages are self-contained: thumbnails and plots are embedded as data URIs, the
styles are inline, there is no script at all, and a Content-Security-Policy forbids any (scraped
names, alt texts and file names are untrusted; Jinja2 autoescapes every one of them).

The UMAP map uses one fixed projection per embedder: fitted on the first run that has enough
photos, saved in the warehouse (`projections/<embedder>/umap.pkl`) and reused by every later run
(`transform`), so the maps of different runs can be laid side by side.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import pickle
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Settings
from pipeline.intake import distinct_ok
from pipeline.warehouse import Warehouse

logger = logging.getLogger(__name__)

MIN_MAP_POINTS = 10  # UMAP needs a neighbourhood; fewer photos get no map, with a note
GALLERY_LIMIT = 400  # thumbnails per audit page (largest pages are sampled, and say so)
EXTREMES = 5  # most generic / most distinctive photos shown


@dataclass
class RunData:
    run_date: str
    embedder: str
    embedder_fallback: str
    images: pd.DataFrame
    companies: pd.DataFrame
    pairs: pd.DataFrame
    clusters: pd.DataFrame
    reuse: pd.DataFrame
    trends: pd.DataFrame
    crawl_log: pd.DataFrame
    vectors: np.ndarray  # one row per distinct ok picture, in `keys` order
    keys: list[str]


def company_page_name(company: str) -> str:
    from pipeline.crawl import company_slug

    return f"companies/{company_slug(company)}.html"


# ------------------------------------------------------------------ data
def load_run(settings: Settings, run_date: str, embedder_id: str, embedder_fallback: str = "") -> RunData:
    from pipeline.embed import vectors_for

    store = Warehouse(settings.warehouse)

    def table(name: str) -> pd.DataFrame:
        return store.read_table(name, run_date)  # empty where the run has no such table

    images = table("images")
    keys = list(distinct_ok(images)["content_sha256"]) if len(images) else []
    vectors = vectors_for(store, embedder_id, keys, 0) if keys else np.zeros((0, 0), np.float32)
    trends = table("trends")
    if len(trends):
        trends = trends[trends["embedder"] == embedder_id]  # never mix embedders
    return RunData(run_date, embedder_id, embedder_fallback, images, table("companies"), table("pairs"), table("clusters"),
                   table("reuse"), trends, table("crawl_log"), vectors, keys)  # fmt: skip


def _label(row: pd.Series | dict) -> str:
    """How a photo is named on a page: the person's name where the page gave one, else its file name."""
    person = str(row.get("person") or "").strip()
    if person:
        return person
    source = str(row.get("image_url") or row.get("image") or "")
    return PurePosixPath(source.split("?", 1)[0]).name or source


def _thumbnail(store: Warehouse, key: object) -> str | None:
    if not isinstance(key, str) or not key or not store.exists(key):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(store.read_bytes(key)).decode("ascii")


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot_label(name: str, width: int = 40) -> str:
    # Scraped names may hold control or format characters that fonts cannot draw.
    return "".join(ch if ch.isprintable() else "?" for ch in str(name))[:width]


def _finite(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _count(value: object) -> int | None:
    """A count column, or None where it was not measured (missing, NaN)."""
    number = _finite(value)
    return None if number is None else int(number)


# ------------------------------------------------------------------ plots
def _figure(width: float = 7.0, height: float = 3.2):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.hashsalt": "homog"})
    return plt.subplots(figsize=(width, height))


def forest_plot(companies: pd.DataFrame) -> str | None:
    rated = companies[companies["status"] == "ok"].sort_values("homogeneity_index")
    if rated.empty:
        return None
    figure, axes = _figure(7, 0.35 * len(rated) + 1.2)
    y = np.arange(len(rated))
    axes.errorbar(rated["homogeneity_index"], y, xerr=[rated["homogeneity_index"] - rated["ci_low"], rated["ci_high"] - rated["homogeneity_index"]],
                  fmt="o", color="#1f4e79", ecolor="#8fb3d9", capsize=3)  # fmt: skip
    axes.set_yticks(y, [_plot_label(name) for name in rated["company"]])
    axes.set_xlim(0, 1)
    axes.set_xlabel("homogeneity index (95% bootstrap CI)")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def projection_key(embedder_id: str) -> str:
    return f"projections/{embedder_id}/umap.pkl"


def umap_map(store: Warehouse, data: RunData) -> tuple[str | None, str]:
    """The run's photos on the embedder's fixed UMAP projection; (PNG, note)."""
    if len(data.keys) < MIN_MAP_POINTS:
        return None, f"no map: UMAP needs at least {MIN_MAP_POINTS} distinct photos, this run has {len(data.keys)}"
    key = projection_key(data.embedder)
    if store.exists(key):
        projection = pickle.loads(store.read_bytes(key))  # written by this code only, inside the warehouse
        if getattr(projection, "homog_fitted_on", None) == data.run_date and getattr(projection, "homog_keys", None) == data.keys:
            points = projection.embedding_  # the fitting run itself: its own layout, so a regenerated report is identical
        else:
            points = projection.transform(data.vectors)
    else:
        import umap

        projection = umap.UMAP(n_neighbors=min(15, len(data.keys) - 1), metric="cosine", random_state=0, n_epochs=200)
        points = projection.fit_transform(data.vectors)
        projection.homog_fitted_on, projection.homog_keys = data.run_date, list(data.keys)
        store.write_bytes(key, pickle.dumps(projection))
    fitted_on = getattr(projection, "homog_fitted_on", "an earlier run")
    if fitted_on == data.run_date:
        note = f"fixed projection fitted on this run ({data.run_date}); later runs with {data.embedder} are placed on it, so their maps compare"
    else:
        note = f"fixed projection fitted on run {fitted_on}; this run's photos are placed on it, so maps of different runs compare"
    ok = distinct_ok(data.images)
    company_of = dict(zip(ok["content_sha256"], ok["company"]))
    companies = sorted({company_of[k] for k in data.keys})
    figure, axes = _figure(7, 5)
    colours = __import__("matplotlib").colormaps["tab20"]
    for index, company in enumerate(companies):
        mask = np.array([company_of[k] == company for k in data.keys])
        axes.scatter(points[mask, 0], points[mask, 1], s=14, color=colours(index % 20), label=_plot_label(company, 30), alpha=0.8)
    axes.set_xticks([])
    axes.set_yticks([])
    if len(companies) <= 20:
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    return _png(figure), note


def population_plot(companies: pd.DataFrame, company: str) -> str | None:
    rated = companies[companies["status"] == "ok"]
    if rated.empty:
        return None
    figure, axes = _figure(6, 2.6)
    axes.hist(rated["homogeneity_index"], bins=np.linspace(0, 1, 21), color="#c9d6e3", edgecolor="white", label="all pages this run")
    mine = rated[rated["company"] == company]
    if len(mine):
        row = mine.iloc[0]
        axes.axvspan(row["ci_low"], row["ci_high"], color="#f4a259", alpha=0.35, label="this page: 95% CI")
        axes.axvline(row["homogeneity_index"], color="#bc4b51", linewidth=2, label="this page")
    axes.set_xlim(0, 1)
    axes.set_xlabel("homogeneity index")
    axes.set_ylabel("pages")
    axes.legend(fontsize=7, frameon=False)
    return _png(figure)


def trend_plot(trends: pd.DataFrame, company: str) -> str | None:
    history = trends[(trends["company"] == company) & trends["homogeneity_index"].notna()].sort_values("run_date")
    if len(history) < 2:  # one run is a point, not a trend
        return None
    figure, axes = _figure(6, 2.4)
    dates = pd.to_datetime(history["run_date"])
    axes.fill_between(dates, history["ci_low"], history["ci_high"], color="#8fb3d9", alpha=0.4, label="95% CI")
    axes.plot(dates, history["homogeneity_index"], marker="o", color="#1f4e79", label="homogeneity index")
    axes.set_ylim(0, 1)
    axes.legend(fontsize=7, frameon=False)
    figure.autofmt_xdate()
    return _png(figure)


def similarity_histogram(data: RunData, company: str) -> str | None:
    ok = distinct_ok(data.images)
    position = {key: row for row, key in enumerate(data.keys)}
    mine = [position[k] for k in ok.loc[ok["company"] == company, "content_sha256"]]
    if len(mine) < 2:
        return None
    vectors = data.vectors
    inside = vectors[mine] @ vectors[mine].T
    inside = inside[np.triu_indices(len(mine), 1)]
    rng = np.random.default_rng(0)  # a seeded sample of population pairs: the same report every time
    a, b = rng.integers(0, len(vectors), 4000), rng.integers(0, len(vectors), 4000)
    population = np.einsum("ij,ij->i", vectors[a[a != b]], vectors[b[a != b]])
    figure, axes = _figure(6, 2.6)
    bins = np.linspace(min(population.min(), inside.min()), 1, 40)
    axes.hist(population, bins=bins, density=True, color="#c9d6e3", label="random pairs, all pages")
    axes.hist(inside, bins=bins, density=True, histtype="step", linewidth=2, color="#bc4b51", label="pairs on this page")
    axes.set_xlabel(f"cosine similarity ({data.embedder})")
    axes.legend(fontsize=7, frameon=False)
    return _png(figure)


def sparkline(values: list[float | None], width: int = 90, height: int = 22) -> str:
    """An inline SVG polyline of the index over runs (numbers only: nothing scraped goes in)."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(points) < 2:
        return ""
    step = (width - 4) / max(1, len(values) - 1)
    coords = " ".join(f"{2 + i * step:.1f},{height - 2 - v * (height - 4):.1f}" for i, v in points)
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="index over runs">'
            f'<polyline fill="none" stroke="#1f4e79" stroke-width="1.5" points="{coords}"/></svg>')  # fmt: skip


# ------------------------------------------------------------------ page data
def _photo(store: Warehouse, row: pd.Series, thumbnails: bool = True) -> dict[str, Any]:
    return {
        "label": _label(row),
        "alt": f"photo: {_label(row)}",
        "src": _thumbnail(store, row.get("thumbnail_object")) if thumbnails else None,
        "url": str(row.get("image_url") or ""),
        "file": str(row.get("image") or ""),
    }


def _reuse_rows(store: Warehouse, data: RunData, company: str | None = None) -> list[dict[str, Any]]:
    if data.reuse.empty:
        return []
    ok = data.images[data.images["status"] == "ok"].set_index(["company", "image"])
    rows = []
    for pair in data.reuse.itertuples():
        if company is not None and company not in (pair.company_a, pair.company_b):
            continue
        a, b = ok.loc[(pair.company_a, pair.image_a)], ok.loc[(pair.company_b, pair.image_b)]
        if isinstance(a, pd.DataFrame):
            a = a.iloc[0]
        if isinstance(b, pd.DataFrame):
            b = b.iloc[0]
        rows.append({"a": _photo(store, a), "b": _photo(store, b), "company_a": pair.company_a, "company_b": pair.company_b,
                     "similarity": float(pair.similarity), "kind": pair.kind})  # fmt: skip
    return rows


def _trend_values(trends: pd.DataFrame, company: str) -> list[float | None]:
    if trends.empty:
        return []
    history = trends[trends["company"] == company].sort_values("run_date")
    return [_finite(v) for v in history["homogeneity_index"]]


def _change(trends: pd.DataFrame, company: str, run_date: str) -> dict[str, Any] | None:
    if trends.empty:
        return None
    now = trends[(trends["company"] == company) & (trends["run_date"] == run_date)]
    if now.empty or not bool(now.iloc[0]["significant"]):
        return None
    row = now.iloc[0]
    return {"direction": row["direction"], "change": float(row["change"]), "since": row["previous_run_date"]}


def _failures(data: RunData) -> dict[str, Any]:
    failed = data.images[data.images["status"] == "error"] if len(data.images) else data.images
    by_kind = failed.groupby(["company", "error_kind"]).size().reset_index(name="n") if len(failed) else pd.DataFrame()
    examples = [{"company": r.company, "image": str(r.image), "error": str(r.error)} for r in failed.head(50).itertuples()] if len(failed) else []
    crawl = data.crawl_log
    crawl_counts = []
    if len(crawl):
        images = crawl[crawl["kind"] == "image"]
        crawl_counts = [{"company": c, **{s: int((g["status"] == s).sum()) for s in ("kept", "skipped", "rejected", "error")}}
                        for c, g in images.groupby("company", sort=False)]  # fmt: skip
        crawl_counts += [{"company": r.company, "page_error": f"{r.url}: {r.reason}"} for r in crawl[(crawl["kind"] == "page") & (crawl["status"] == "error")].itertuples()]
    return {
        "n_failed": len(failed),
        "by_kind": [{"company": r.company, "kind": r.error_kind, "n": int(r.n)} for r in by_kind.itertuples()] if len(by_kind) else [],
        "examples": examples,
        "crawl": crawl_counts,
    }


def _reading(row: pd.Series, companies: pd.DataFrame, n_reused: int, embedder: str, offline: bool) -> list[str]:
    """The audit page's plain-language reading of the numbers, and of what they do not say."""
    lines = []
    if row["status"] != "ok":
        lines.append(f"This page had {int(row['n_images'])} usable photo(s): too few for a homogeneity index that means anything. "
                     "The numbers below describe the photos only.")  # fmt: skip
    else:
        rated = companies[companies["status"] == "ok"]
        others = rated[rated["company"] != row["company"]]
        below = int((others["homogeneity_index"] < row["homogeneity_index"]).sum())
        lines.append(f"The page's homogeneity index is {row['homogeneity_index']:.2f} (95% CI {row['ci_low']:.2f} to {row['ci_high']:.2f}): "
                     f"more homogeneous than {below} of the {len(others)} other pages measured in this run.")  # fmt: skip
        lines.append(f"Its {int(row['n_images'])} photos behave like {row['vendi_score']:.1f} distinct photos (Vendi score) "
                     f"and fall into {int(row['n_clusters'])} style cluster(s); the largest holds {row['largest_cluster_share']:.0%} of them.")  # fmt: skip
    lines.append(f"{row['near_dup_rate']:.0%} of its photos have a near-copy on the same page.")
    if n_reused:
        lines.append(f"{n_reused} of its photos are copies or near-copies of photos on other companies' pages (listed below).")
    lines.append("What this does not say: a high index means the photos look alike to the embedder (framing, backdrop, lighting, "
                 "style). It does not say that a photo is AI-generated, and it says nothing about any person.")  # fmt: skip
    if offline:
        lines.append(f"These numbers come from the offline `{embedder}` embedder (image statistics, not CLIP): compare them only "
                     "with other runs of the same embedder.")  # fmt: skip
    return lines


TEMPLATE_SIGNALS = [  # column, label, direction that means "more templated", what it means when it is
    ("framing_spread", "framing spread", "lower", "the photos share one framing (face position and size)"),
    ("background_spread", "backdrop spread", "lower", "the photos share one backdrop colour and brightness"),
    ("background_std_mean", "backdrop busyness", "lower", "the backdrops are plain"),
    ("colour_spread", "colour-grade spread", "lower", "the photos share one colour grade"),
    ("symmetry_mean", "face symmetry", "higher", "the faces are more mirror-symmetric"),
    ("skin_detail_mean", "skin detail", "lower", "the skin is smoother (retouching or generation removes fine texture)"),
]


def template_signals(row: pd.Series, companies: pd.DataFrame) -> list[dict[str, Any]]:
    """Each template signal of a page against the median of the other pages, with a plain reading."""
    others = companies[companies["company"] != row["company"]]
    signals = []
    for column, label, direction, meaning in TEMPLATE_SIGNALS:
        value = _finite(row.get(column))
        median = _finite(others[column].median()) if column in others and len(others) else None
        templated = value is not None and median is not None and (value < median if direction == "lower" else value > median)
        signals.append({"label": label, "value": value, "median": median, "templated": templated, "reading": meaning if templated else ""})
    return signals


def _zero_shot(row: pd.Series) -> dict[str, Any]:
    """The page's zero-shot style and AI-likely share (clip only), or why there is none."""
    status = row.get("zero_shot_status")
    if not isinstance(status, str) or status != "ok":
        return {"status": status if isinstance(status, str) else "not measured"}
    return {
        "status": "ok",
        "styles": [(attribute, row.get(f"{attribute}_top"), _finite(row.get(f"{attribute}_share"))) for attribute in ("backdrop", "attire", "framing")],
        "ai_share": _finite(row.get("ai_share")), "ai_ci_low": _finite(row.get("ai_ci_low")), "ai_ci_high": _finite(row.get("ai_ci_high")),
    }


# ------------------------------------------------------------------ rendering
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _company_table(data: RunData) -> list[dict[str, Any]]:
    rows = []
    ranked = data.companies.assign(_key=data.companies["homogeneity_index"].fillna(-1)).sort_values(["_key", "company"], ascending=[False, True])
    for row in ranked.itertuples():
        rows.append({
            "company": row.company, "page": company_page_name(row.company), "status": row.status, "n_images": int(row.n_images),
            "index": _finite(row.homogeneity_index), "ci_low": _finite(row.ci_low), "ci_high": _finite(row.ci_high),
            "near_dup_rate": _finite(row.near_dup_rate), "n_clusters": int(row.n_clusters) if _finite(row.n_clusters) is not None else 0,
            "largest_cluster_share": _finite(row.largest_cluster_share), "n_reused": int(row.n_reused_images), "n_errors": int(row.n_errors),
            "spark": sparkline(_trend_values(data.trends, row.company)), "change": _change(data.trends, row.company, data.run_date),
            "signals": {column: _finite(getattr(row, column, None)) for column, *_ in TEMPLATE_SIGNALS},
            "face_share": _finite(getattr(row, "face_share", None)),
            "face_repeated": _count(getattr(row, "n_face_repeated", None)), "face_shared": _count(getattr(row, "n_face_shared", None)),
            "zero_shot": _zero_shot(pd.Series(row._asdict())),
        })  # fmt: skip
    return rows


def render_run_report(data: RunData, store: Warehouse, reports: Warehouse) -> dict[str, str]:
    """Write index.html, one audit page per company and summary.json; returns their URIs."""
    env = _environment()
    offline = data.embedder.startswith("classic")
    ok = data.images[data.images["status"] == "ok"] if len(data.images) else data.images
    n_ok = len(ok)
    overall_near_dup = float(np.nansum(data.companies["near_dup_rate"] * data.companies["n_images"]) / max(1, data.companies["n_images"].sum())) if len(data.companies) else 0.0
    map_png, map_note = umap_map(store, data)
    companies = _company_table(data)
    failures = _failures(data)
    index_reference = str(data.companies["index_reference"].iloc[0]) if "index_reference" in data.companies and len(data.companies) else ""
    common = {
        "run_date": data.run_date, "embedder": data.embedder, "embedder_fallback": data.embedder_fallback, "offline": offline,
        "index_reference": index_reference,
    }  # fmt: skip
    folder = data.run_date
    index_uri = reports.write_bytes(f"{folder}/index.html", env.get_template("run_report.html.j2").render(
        **common, companies=companies, n_companies=len(companies), n_ok=n_ok, n_rows=len(data.images),
        overall_near_dup=overall_near_dup, n_pairs=len(data.pairs), reuse=_reuse_rows(store, data),
        forest=forest_plot(data.companies) if len(data.companies) else None, umap=map_png, umap_note=map_note, failures=failures,
        signal_columns=[(column, label) for column, label, *_ in TEMPLATE_SIGNALS],
    ).encode("utf-8"))  # fmt: skip
    for row in data.companies.itertuples(index=False):
        render_audit_page(data, store, reports, pd.Series(row._asdict()), env)
    summary = {
        **common, "report": index_uri, "n_rows": len(data.images), "n_ok": n_ok, "near_dup_rate": overall_near_dup,
        "n_pairs": len(data.pairs), "n_cross_company_pairs": len(data.reuse),
        "companies": [{k: v for k, v in c.items() if k not in ("spark",)} for c in companies],
        "failures": {"n_failed": failures["n_failed"]},
    }  # fmt: skip
    summary_uri = reports.write_bytes(f"{folder}/summary.json", json.dumps(summary, indent=2, sort_keys=True, default=str).encode())
    return {"report": index_uri, "summary": summary_uri}


def render_audit_page(data: RunData, store: Warehouse, reports: Warehouse, row: pd.Series, env: Any = None, folder: str | None = None) -> str:
    env = env or _environment()
    company = row["company"]
    ok = data.images[(data.images["status"] == "ok") & (data.images["company"] == company)]
    clusters = data.clusters[data.clusters["company"] == company] if len(data.clusters) else pd.DataFrame(columns=["image", "cluster_id"])
    cluster_of = dict(zip(clusters["image"], clusters["cluster_id"]))
    sampled = len(ok) > GALLERY_LIMIT
    shown = ok.sample(GALLERY_LIMIT, random_state=0) if sampled else ok
    groups: dict[int, list[dict[str, Any]]] = {}
    for _, photo in shown.iterrows():
        groups.setdefault(int(cluster_of.get(photo["image"], -1)), []).append(_photo(store, photo))
    shared = sorted(((c, p) for c, p in groups.items() if c != -1 and len(p) > 1), key=lambda item: (-len(item[1]), item[0]))
    alone = [photo for c, p in sorted(groups.items()) if c == -1 or len(p) == 1 for photo in p]
    gallery = [{"cluster": c, "photos": p} for c, p in shared] + ([{"cluster": -1, "photos": alone}] if alone else [])

    generic, distinctive = [], []
    if len(data.keys) and len(ok):
        centre = data.vectors.mean(axis=0)
        centre /= np.linalg.norm(centre) or 1.0
        position = {key: i for i, key in enumerate(data.keys)}
        unique = ok.drop_duplicates("content_sha256")
        scores = data.vectors[[position[k] for k in unique["content_sha256"]]] @ centre
        order = np.argsort(-scores)
        generic = [{**_photo(store, unique.iloc[i]), "score": float(scores[i])} for i in order[:EXTREMES]]
        distinctive = [{**_photo(store, unique.iloc[i]), "score": float(scores[i])} for i in order[::-1][:EXTREMES] if i not in order[:EXTREMES]]

    reuse = _reuse_rows(store, data, company)
    page = env.get_template("audit_page.html.j2").render(
        run_date=data.run_date, embedder=data.embedder, embedder_fallback=data.embedder_fallback, offline=data.embedder.startswith("classic"),
        company=company, row={k: (_finite(v) if isinstance(v, (int, float, np.floating, np.integer)) else v) for k, v in row.items()},
        reading=_reading(row, data.companies, len({r["a"]["file"] if r["company_a"] == company else r["b"]["file"] for r in reuse}), data.embedder, data.embedder.startswith("classic")),
        gallery=gallery, sampled=sampled, n_ok=len(ok), generic=generic, distinctive=distinctive, reuse=reuse,
        population=population_plot(data.companies, company), trend=trend_plot(data.trends, company) if len(data.trends) else None,
        histogram=similarity_histogram(data, company), change=_change(data.trends, company, data.run_date),
        signals=template_signals(row, data.companies), face_share=_finite(row.get("face_share")),
        face_repeated=_count(row.get("n_face_repeated")), face_shared=_count(row.get("n_face_shared")),
        zero_shot=_zero_shot(row),
        thumbnails_off=bool(len(ok)) and ok["thumbnail_object"].fillna("").eq("").all(),
        back_link="../index.html" if folder is None else None,
    )  # fmt: skip
    return reports.write_bytes(f"{folder or data.run_date}/{company_page_name(company)}", page.encode("utf-8"))


def report_stage(settings: Settings, run_date: str, embedder_id: str, embedder_fallback: str = "") -> dict[str, Any]:
    """Render the run report and every company's audit page for `run_date` from the warehouse."""
    data = load_run(settings, run_date, embedder_id, embedder_fallback)
    written = render_run_report(data, Warehouse(settings.warehouse), Warehouse(settings.reports))
    return {**written, "audit_pages": len(data.companies)}

"""The run report (index.html), one audit page per company and summary.json.

Everything is read back from the warehouse (`homog report --run-date D` regenerates a report without
recomputing a metric). Pages are self-contained: thumbnails and plots are embedded as data URIs, the
styles are inline, there is no script at all, and a Content-Security-Policy forbids any (scraped
names, alt texts and file names are untrusted; Jinja2 autoescapes every one of them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline import layout
from pipeline.context import RunContext
from pipeline.metrics.template_index import drivers, validation_of
from pipeline.report.data import RunData, count, finite, label, load_run, thumbnail
from pipeline.report.plots import (
    MAX_CHANGED_LINES,
    MAX_FOREST_ROWS,
    RatedPages,
    changed_plot,
    company_trend_plot,
    forest_plot,
    median_without,
    pages_moved_significantly,
    pages_with_trend,
    population_over_time,
    population_plot,
    rated_pages,
    significant_rows,
    similarity_histogram,
    sparkline,
    trend_grid,
)
from pipeline.report.projection import umap_map
from pipeline.warehouse import Warehouse

GALLERY_LIMIT = 400  # thumbnails per audit page (largest pages are sampled, and say so)
EXTREMES = 5  # most generic / most distinctive photos shown


def _photo(store: Warehouse, row: pd.Series | dict, thumbnails: bool = True) -> dict[str, Any]:
    return {
        "label": label(row),
        "alt": f"photo: {label(row)}",
        "src": thumbnail(store, row.get("thumbnail_object")) if thumbnails else None,
        "url": str(row.get("image_url") or ""),
        "file": str(row.get("image") or ""),
    }


def _reuse_rows(store: Warehouse, data: RunData, company: str | None = None) -> list[dict[str, Any]]:
    if data.reuse.empty:
        return []
    ok = data.ok_rows
    positions = range(len(data.reuse)) if company is None else data.reuse_of_company.get(company, [])
    rows = []
    for pair in (data.reuse_records[position] for position in positions):
        a, b = ok[(pair["company_a"], pair["image_a"])], ok[(pair["company_b"], pair["image_b"])]
        rows.append({"a": _photo(store, a), "b": _photo(store, b), "company_a": pair["company_a"], "company_b": pair["company_b"],
                     "similarity": float(pair["similarity"]), "kind": pair["kind"]})  # fmt: skip
    return rows


MAX_GROUPS_SHOWN = 40  # the report lists the largest groups; the groups table holds them all
MAX_PHOTOS_PER_GROUP = 8


def _group_rows(store: Warehouse, data: RunData, company: str | None = None) -> list[dict[str, Any]]:
    """Duplicate groups as pages show them, largest first: several copies of one photograph, where
    they are, and how many of their pairs were verified directly (the rest are implied by the group)."""
    if data.groups.empty:
        return []
    ok = data.ok_rows
    ids = sorted(data.group_members) if company is None else data.group_ids_of_company.get(company, [])
    rows = []
    for group_id in ids[:MAX_GROUPS_SHOWN]:
        members = data.group_members[group_id]
        n_direct, n_implied = data.group_links.get(group_id, (0, 0))
        rows.append({
            "id": int(group_id), "size": len(members), "companies": sorted({r["company"] for r in members}),
            "photos": [{**_photo(store, ok[(r["company"], r["image"])]), "company": r["company"]} for r in members[:MAX_PHOTOS_PER_GROUP]],
            "n_direct": n_direct, "n_implied": n_implied,
        })  # fmt: skip
    return rows


def _trend_values(data: RunData, company: str) -> list[float | None]:
    history = data.trends_of_company.get(company)
    return [] if history is None else [finite(v) for v in history["homogeneity_index"]]


def _change(data: RunData, company: str) -> dict[str, Any] | None:
    row = data.trends_now.get(company)
    if row is None or not bool(row["significant"]):
        return None
    return {"direction": row["direction"], "change": float(row["change"]), "since": row["previous_run_date"]}


MAX_NEW_FACE_PAIRS_SHOWN = 12  # the newly_shared table holds them all


def _since_previous(store: Warehouse, data: RunData) -> dict[str, Any]:
    """What changed since the previous run, as the report leads with it: the pages that changed (in
    words, significant moves first), the ones that did not, and photos and faces newly shared."""
    changes = data.changes
    previous = str(changes["previous_run_date"].iloc[0]) if len(changes) else ""
    if changes.empty or not previous:
        return {"previous": "", "changed": [], "unchanged": [], "copies": [], "faces": [], "n_faces": 0}
    moved = changes[["n_replaced", "n_added", "n_removed", "n_new_copies", "n_new_faces"]].sum(axis=1) > 0
    changed = changes[moved | changes["significant"]].assign(_order=lambda t: -t["change"].abs().fillna(0))
    changed = changed.sort_values(["significant", "_order", "company"], ascending=[False, True, True])
    ok = data.ok_rows
    shared = [{"a": _photo(store, ok[(r.company_a, r.image_a)]), "b": _photo(store, ok[(r.company_b, r.image_b)]),
               "company_a": r.company_a, "company_b": r.company_b, "kind": r.kind}
              for r in data.newly_shared.itertuples() if (r.company_a, r.image_a) in ok and (r.company_b, r.image_b) in ok]  # fmt: skip
    faces = [pair for pair in shared if pair["kind"] == "face"]
    return {
        "previous": previous,
        "changed": [
            {
                "company": r.company,
                "page": layout.company_page(r.company),
                "summary": r.summary,
                "significant": bool(r.significant),
                "up": bool(r.significant) and float(r.change) > 0,
            }
            for r in changed.itertuples()
        ],  # fmt: skip
        "unchanged": sorted(changes.loc[~changes.index.isin(changed.index), "company"]),
        "copies": [pair for pair in shared if pair["kind"] == "copy"],
        "faces": faces[:MAX_NEW_FACE_PAIRS_SHOWN],
        "n_faces": len(faces),
    }


def _significant_history(data: RunData) -> list[dict[str, Any]]:
    """Every significant move of a page's index over the runs the trends join, newest first, in words."""
    history = data.change_history
    if history.empty or data.trends.empty:
        return []
    joined = set(data.trends["run_date"])
    moved = significant_rows(history[history["run_date"].isin(joined)])
    return [{"run_date": r.run_date, "company": r.company, "summary": r.summary, "up": float(r.change) > 0}
            for r in moved.sort_values(["run_date", "company"], ascending=[False, True]).itertuples()]  # fmt: skip


MAX_HISTORY = 12  # runs told in words on an audit page, newest first (the chart shows them all)


def _history(data: RunData, company: str) -> list[dict[str, str]]:
    """The company's changes run by run, in words, newest first."""
    return [{"run_date": r["run_date"], "summary": r["summary"]} for r in data.history_of_company.get(company, [])[:MAX_HISTORY]]


def _failures(data: RunData) -> dict[str, Any]:
    failed = data.images[data.images["status"] == "error"] if len(data.images) else data.images
    by_kind = failed.groupby(["company", "error_kind"]).size().reset_index(name="n") if len(failed) else pd.DataFrame()
    examples = (
        [{"company": r.company, "image": str(r.image), "error": str(r.error)} for r in failed.head(50).itertuples()] if len(failed) else []
    )
    crawl = data.crawl_log
    crawl_counts = []
    if len(crawl):
        images = crawl[crawl["kind"] == "image"]
        crawl_counts = [{"company": c, **{s: int((g["status"] == s).sum()) for s in ("kept", "skipped", "rejected", "error")}}
                        for c, g in images.groupby("company", sort=False)]  # fmt: skip
        # Pages that failed, and companies known by their domain where discovery found no staff page.
        unusable = ((crawl["kind"] == "page") & (crawl["status"] == "error")) | (
            (crawl["kind"] == "discovery") & crawl["reason"].fillna("").str.startswith("no staff page found")
        )
        crawl_counts += [{"company": r.company, "page_error": f"{r.url}: {r.reason}"} for r in crawl[unusable].itertuples()]
    return {
        "n_failed": len(failed),
        "by_kind": [{"company": r.company, "kind": r.error_kind, "n": int(r.n)} for r in by_kind.itertuples()] if len(by_kind) else [],
        "examples": examples,
        "crawl": crawl_counts,
    }


def _reading(row: pd.Series, rated: RatedPages, n_reused: int, embedder: str, offline: bool) -> list[str]:
    """The audit page's plain-language reading of the numbers, and of what they do not say."""
    lines = []
    if row["status"] != "ok":
        lines.append(f"This page had {int(row['n_images'])} usable photo(s): too few for a homogeneity index that means anything. "
                     "The numbers below describe the photos only.")  # fmt: skip
    else:
        below = rated.below(row["homogeneity_index"])  # the page itself is not below itself
        n_others = len(rated.rows) - (row["company"] in rated.rows)
        lines.append(f"The page's homogeneity index is {row['homogeneity_index']:.2f} (95% CI {row['ci_low']:.2f} to {row['ci_high']:.2f}): "
                     f"more homogeneous than {below} of the {n_others} other pages measured in this run.")  # fmt: skip
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


def template_signals(row: pd.Series, ascending_columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Each template signal of a page against the median of the other pages (`RunData.ascending_columns`:
    every page's values), with a plain reading."""
    signals = []
    for column, signal, direction, meaning in TEMPLATE_SIGNALS:
        value = finite(row.get(column))
        median = finite(median_without(ascending_columns[column], value)) if column in ascending_columns else None
        templated = value is not None and median is not None and (value < median if direction == "lower" else value > median)
        signals.append({"label": signal, "value": value, "median": median, "templated": templated, "reading": meaning if templated else ""})
    return signals


TEMPLATE_PARTS = [  # component, label, what it means when the part holds much of the index
    ("whole", "whole picture", "the pictures look alike as a whole (layout, colour, texture)"),
    ("framing", "framing", "the faces sit at one position and size"),
    ("backdrop", "backdrop", "one backdrop colour"),
    ("backdrop_texture", "backdrop texture", "backdrops alike in plainness and blur"),
    ("grade", "colour grade", "one colour grade"),
    ("skin", "skin finish", "alike, smooth skin and face symmetry"),
    ("departure", "departure from staff photos", "each photo's framing, backdrop, grade or skin lies far from real staff photos'"),
]


def template_index_view(row: pd.Series) -> dict[str, Any]:
    """The page's template index, its interval and the parts that move it, or why there is none."""
    index = finite(row.get("template_index"))
    components = {part: finite(row.get(f"template_from_{part}")) or 0.0 for part, _, _ in TEMPLATE_PARTS}
    if index is None:
        reason = (
            "too few photos for an index"
            if row.get("status") != "ok"
            else f"no template model ships for the embedder {row.get('embedder')}"
        )
        return {"index": None, "reason": reason, "drivers": "", "components": []}
    driving = drivers(components, len(components))
    labels = {part: label for part, label, _ in TEMPLATE_PARTS}
    return {
        "index": index, "ci_low": finite(row.get("template_ci_low")), "ci_high": finite(row.get("template_ci_high")),
        "model": row.get("template_model"), "validation": validation_of(str(row.get("template_model"))),
        "drivers": ", ".join(labels[part] for part in driving[:2]),
        "components": [{"label": label, "value": components[part], "reading": meaning if part in driving else ""}
                       for part, label, meaning in TEMPLATE_PARTS],
    }  # fmt: skip


def _zero_shot(row: pd.Series) -> dict[str, Any]:
    """The page's zero-shot style and AI-likely share (clip only), or why there is none."""
    status = row.get("zero_shot_status")
    if not isinstance(status, str) or status != "ok":
        return {"status": status if isinstance(status, str) else "not measured"}
    return {
        "status": "ok",
        "styles": [
            (attribute, row.get(f"{attribute}_top"), finite(row.get(f"{attribute}_share")))
            for attribute in ("backdrop", "attire", "framing")
        ],
        "ai_share": finite(row.get("ai_share")),
        "ai_ci_low": finite(row.get("ai_ci_low")),
        "ai_ci_high": finite(row.get("ai_ci_high")),
    }


# ------------------------------------------------------------------ rendering
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.report", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _company_table(data: RunData) -> list[dict[str, Any]]:
    rows = []
    ranked = data.companies.assign(_key=data.companies["homogeneity_index"].fillna(-1)).sort_values(
        ["_key", "company"], ascending=[False, True]
    )
    for row in ranked.itertuples():
        rows.append({
            "company": row.company, "page": layout.company_page(row.company), "status": row.status, "n_images": int(row.n_images),
            "index": finite(row.homogeneity_index), "ci_low": finite(row.ci_low), "ci_high": finite(row.ci_high),
            "near_dup_rate": finite(row.near_dup_rate), "n_clusters": int(row.n_clusters) if finite(row.n_clusters) is not None else 0,
            "largest_cluster_share": finite(row.largest_cluster_share), "n_reused": int(row.n_reused_images), "n_errors": int(row.n_errors),
            "spark": sparkline(_trend_values(data, row.company)), "change": _change(data, row.company),
            "signals": {column: finite(getattr(row, column, None)) for column, *_ in TEMPLATE_SIGNALS},
            "face_share": finite(getattr(row, "face_share", None)),
            "face_repeated": count(getattr(row, "n_face_repeated", None)), "face_shared": count(getattr(row, "n_face_shared", None)),
            "zero_shot": _zero_shot(pd.Series(row._asdict())), "template": template_index_view(pd.Series(row._asdict())),
        })  # fmt: skip
    return rows


def render_run_report(data: RunData, store: Warehouse, reports: Warehouse, workers: int = 1) -> dict[str, str]:
    """Write index.html, one audit page per company (in `workers` processes) and summary.json; returns their URIs."""
    env = _environment()
    offline = data.embedder.startswith("classic")
    ok = data.images[data.images["status"] == "ok"] if len(data.images) else data.images
    n_ok = len(ok)
    overall_near_dup = (
        float(np.nansum(data.companies["near_dup_rate"] * data.companies["n_images"]) / max(1, data.companies["n_images"].sum()))
        if len(data.companies)
        else 0.0
    )
    map_png, map_note = umap_map(store, data)
    companies = _company_table(data)
    failures = _failures(data)
    since = _since_previous(store, data)
    index_reference = str(data.companies["index_reference"].iloc[0]) if "index_reference" in data.companies and len(data.companies) else ""
    common = {
        "run_date": data.run_date, "embedder": data.embedder, "embedder_fallback": data.embedder_fallback, "offline": offline,
        "index_reference": index_reference,
    }  # fmt: skip
    # A company no longer in the run must not keep its old page beside the new ones.
    reports.remove(layout.company_pages_folder(data.run_date), recursive=True)
    index_uri = reports.write_bytes(layout.report_page(data.run_date), env.get_template("run_report.html.j2").render(
        **common, companies=companies, n_companies=len(companies), n_ok=n_ok, n_rows=len(data.images),
        overall_near_dup=overall_near_dup, n_pairs=len(data.pairs), reuse=_reuse_rows(store, data),
        groups=_group_rows(store, data), n_groups=int(data.groups["group_id"].nunique()) if len(data.groups) else 0,
        forest=forest_plot(data.companies) if len(data.companies) else None, umap=map_png, umap_note=map_note, failures=failures,
        signal_columns=[(column, signal) for column, signal, *_ in TEMPLATE_SIGNALS],
        n_rated=len(rated_pages(data.companies)), max_forest_rows=MAX_FOREST_ROWS,
        since=since, significant_history=_significant_history(data), trend_grid=trend_grid(data),
        n_trend_pages=len(pages_with_trend(data.trends)),
        changed_plot=changed_plot(data.trends) if len(data.trends) else None, max_changed_lines=MAX_CHANGED_LINES,
        n_significant_pages=len(pages_moved_significantly(data.trends)),
        population_over_time=population_over_time(data.trends) if len(data.trends) else None,
        n_runs_joined=int(data.trends["run_date"].nunique()) if len(data.trends) else 1,
        not_joined=data.not_joined.to_dict("records"),
    ).encode("utf-8"))  # fmt: skip
    render_audit_pages(data, store, reports, workers)
    summary = {
        **common, "report": index_uri, "n_rows": len(data.images), "n_ok": n_ok, "near_dup_rate": overall_near_dup,
        "n_pairs": len(data.pairs), "n_cross_company_pairs": len(data.reuse),
        "n_duplicate_groups": int(data.groups["group_id"].nunique()) if len(data.groups) else 0,
        "companies": [{k: v for k, v in c.items() if k not in ("spark",)} for c in companies],
        "failures": {"n_failed": failures["n_failed"]},
        "previous_run_date": since["previous"],
        "changes": [{k: c[k] for k in ("company", "summary", "significant", "up")} for c in since["changed"]],
        "n_significant_changes": sum(c["significant"] for c in since["changed"]),
        "n_new_copies": len(since["copies"]), "n_new_faces": since["n_faces"],
        "median_index": finite(rated_pages(data.companies)["homogeneity_index"].median()) if len(data.companies) else None,
    }  # fmt: skip
    summary_uri = reports.write_bytes(
        layout.report_summary(data.run_date), json.dumps(summary, indent=2, sort_keys=True, default=str).encode()
    )
    return {"report": index_uri, "summary": summary_uri, "runs_index": render_runs_index(reports, env)}


def _run_listing(key: str, summary: Any) -> dict[str, Any]:
    """One run of the runs index from its summary.json, which an older version may have written with
    fewer fields: what is missing is shown empty, never fatal."""
    if not isinstance(summary, dict) or not isinstance(summary.get("run_date"), str):
        return {"run_date": key.split("/", 1)[0], "broken": True}
    changes = summary.get("changes") if isinstance(summary.get("changes"), list) else []
    return {
        "run_date": summary["run_date"], "page": layout.report_page(summary["run_date"]), "broken": False,
        "embedder": summary.get("embedder", ""), "n_pages": len(summary.get("companies") or []),
        "n_ok": summary.get("n_ok"), "n_rows": summary.get("n_rows"), "median_index": finite(summary.get("median_index")),
        "near_dup_rate": finite(summary.get("near_dup_rate")), "n_cross_company_pairs": summary.get("n_cross_company_pairs"),
        "n_new_copies": summary.get("n_new_copies"), "n_new_faces": summary.get("n_new_faces"),
        "moved": [{"company": str(c.get("company", "")), "up": bool(c.get("up"))} for c in changes if isinstance(c, dict) and c.get("significant")],
    }  # fmt: skip


def render_runs_index(reports: Warehouse, env: Any = None) -> str:
    """`index.html` at the reports' root: every run with a report, newest first, with its headline figures."""
    env = env or _environment()
    runs = []
    for key in sorted(reports.keys_matching(layout.REPORT_SUMMARIES), reverse=True):
        try:
            summary = json.loads(reports.read_bytes(key))
        except (OSError, ValueError):  # a summary cut short or written by hand: listed as such
            summary = None
        runs.append(_run_listing(key, summary))
    page = env.get_template("runs_index.html.j2").render(runs=runs)
    return reports.write_bytes(layout.REPORTS_INDEX, page.encode("utf-8"))


# An audit page costs ~25-60 ms (thumbnails, three SVG charts, the template); an order of magnitude for
# `process_map`'s choice between worker processes and this one, not a tuning.
_SECONDS_PER_AUDIT_PAGE = 0.03


@dataclass(frozen=True)
class AuditJob:
    """Audit pages for one worker: the run's data (`RunData.for_pages`) travels once per job, so there is one job per worker."""

    data: RunData
    store: Warehouse
    reports: Warehouse
    rows: list[dict[str, Any]]  # the companies table's rows of these pages


def render_audit_job(job: AuditJob) -> int:
    env = _environment()
    for row in job.rows:
        render_audit_page(job.data, job.store, job.reports, pd.Series(row), env)
    return len(job.rows)


def render_audit_pages(data: RunData, store: Warehouse, reports: Warehouse, workers: int = 1) -> int:
    """Every company's audit page, in `workers` processes where there are enough pages to be worth
    them (pipeline/parallel.py): a page per company and night, ~840 pages and ~40 s a night at 20,000
    photos in one process. Returns how many were written."""
    from pipeline.parallel import process_map, split

    rows = [row._asdict() for row in data.companies.itertuples(index=False)]  # numpy scalars kept, as the pages read them
    chunks = split(rows, workers)
    parts = [data.for_pages([row["company"] for row in chunk]) for chunk in chunks] if len(chunks) > 1 else [data]
    jobs = [AuditJob(part, store, reports, chunk) for part, chunk in zip(parts, chunks)]
    return sum(process_map(render_audit_job, jobs, workers, _SECONDS_PER_AUDIT_PAGE * len(rows)))


def render_audit_page(data: RunData, store: Warehouse, reports: Warehouse, row: pd.Series, env: Any = None) -> str:
    env = env or _environment()
    company = row["company"]
    records = data.ok_records_of_company.get(company, [])
    clusters = data.clusters_of_company.get(company)
    cluster_of = {} if clusters is None else dict(zip(clusters["image"], clusters["cluster_id"]))
    sampled = len(records) > GALLERY_LIMIT
    shown = data.ok_of_company[company].sample(GALLERY_LIMIT, random_state=0).to_dict("records") if sampled else records
    described: dict[str, dict[str, Any]] = {}

    def photo_view(record: dict[str, Any]) -> dict[str, Any]:  # the page's photos are in its gallery and its extremes: read once
        if record["image"] not in described:
            described[record["image"]] = _photo(store, record)
        return described[record["image"]]

    groups: dict[int, list[dict[str, Any]]] = {}
    for photo in shown:
        groups.setdefault(int(cluster_of.get(photo["image"], -1)), []).append(photo_view(photo))
    shared = sorted(((c, p) for c, p in groups.items() if c != -1 and len(p) > 1), key=lambda item: (-len(item[1]), item[0]))
    alone = [photo for c, p in sorted(groups.items()) if c == -1 or len(p) == 1 for photo in p]
    gallery = [{"cluster": c, "photos": p} for c, p in shared] + ([{"cluster": -1, "photos": alone}] if alone else [])

    generic, distinctive = [], []
    if len(data.keys) and records:
        # In the index's own terms: the run's centre and each photo's cosine to it, reference taken out.
        first_rows: dict[str, dict] = {}
        for record in records:
            first_rows.setdefault(record["content_sha256"], record)  # each picture once, as its first row
        unique = list(first_rows.values())
        scores = data.centred[[data.row_of[record["content_sha256"]] for record in unique]] @ data.centre
        order = np.argsort(-scores)
        generic = [{**photo_view(unique[i]), "score": float(scores[i])} for i in order[:EXTREMES]]
        distinctive = [{**photo_view(unique[i]), "score": float(scores[i])} for i in order[::-1][:EXTREMES] if i not in order[:EXTREMES]]

    reuse = _reuse_rows(store, data, company)
    n_reused = len({r["a"]["file"] if r["company_a"] == company else r["b"]["file"] for r in reuse})
    offline = data.embedder.startswith("classic")
    page = env.get_template("audit_page.html.j2").render(
        run_date=data.run_date, embedder=data.embedder, embedder_fallback=data.embedder_fallback, offline=offline,
        company=company, row={k: (finite(v) if isinstance(v, (int, float, np.floating, np.integer)) else v) for k, v in row.items()},
        reading=_reading(row, data.rated, n_reused, data.embedder, offline),
        gallery=gallery, sampled=sampled, n_ok=len(records), generic=generic, distinctive=distinctive, reuse=reuse,
        groups=_group_rows(store, data, company),
        population=population_plot(data.rated, company), trend=company_trend_plot(data.trends_of_company.get(company), data.population_band),
        histogram=similarity_histogram(data, company), change=_change(data, company),
        history=_history(data, company),
        signals=template_signals(row, data.ascending_columns), face_share=finite(row.get("face_share")),
        face_repeated=count(row.get("n_face_repeated")), face_shared=count(row.get("n_face_shared")),
        zero_shot=_zero_shot(row), template=template_index_view(row),
        thumbnails_off=bool(records) and not any(isinstance(r["thumbnail_object"], str) and r["thumbnail_object"] for r in records),
        back_link="../index.html",
    )  # fmt: skip
    return reports.write_bytes(f"{data.run_date}/{layout.company_page(company)}", page.encode("utf-8"))


def render_report(ctx: RunContext) -> dict[str, Any]:
    """Render the run report and every company's audit page for the context's run from the warehouse."""
    from pipeline.parallel import worker_count

    data = load_run(ctx)
    written = render_run_report(data, ctx.warehouse, ctx.reports, worker_count(ctx.settings.compute.workers))
    return {**written, "audit_pages": len(data.companies)}

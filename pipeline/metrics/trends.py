"""Trends: each page's index over runs, and whether it moved more than its intervals explain."""

from __future__ import annotations

import numpy as np
import pandas as pd

TREND_COLUMNS = [
    "company", "embedder", "run_date", "n_images", "homogeneity_index", "ci_low", "ci_high", "near_dup_rate",
    "previous_run_date", "previous_index", "change", "z", "significant", "direction",
    "template_index", "template_change", "template_z", "template_significant",
]  # fmt: skip


def trends_table(history: pd.DataFrame, current: pd.DataFrame, run_date: str) -> pd.DataFrame:
    """Every run of each company with this run's embedder and index reference up to `run_date`, with
    the change since the previous one (indexes measured otherwise are not comparable, so not joined).
    A change is significant when |z| > 1.96, z = change / sqrt(se1^2 + se2^2), each se read off the
    95% bootstrap interval as (high - low) / (2 * 1.96)."""
    embedder = current["embedder"].iloc[0] if len(current) else ""
    reference = current["index_reference"].iloc[0] if len(current) else ""
    frames = [current.assign(run_date=run_date)]
    if not history.empty and "index_reference" in history:
        earlier = history[(history["run_date"] < run_date) & (history["embedder"] == embedder) & (history["index_reference"] == reference)]
        frames.insert(0, earlier)
    runs = pd.concat(frames, ignore_index=True)
    runs = runs[runs["status"] == "ok"].sort_values(["company", "run_date"], ignore_index=True)
    grouped = runs.groupby("company", sort=False)
    runs["previous_run_date"] = grouped["run_date"].shift(1)
    runs["previous_index"] = grouped["homogeneity_index"].shift(1)
    runs["change"], runs["z"] = _change_and_z(runs, "homogeneity_index", "ci_low", "ci_high")
    runs["significant"] = runs["z"].abs() > 1.96
    runs["direction"] = np.where(~runs["significant"], "", np.where(runs["change"] > 0, "more homogeneous", "less homogeneous"))
    _template_change(runs)
    return runs[TREND_COLUMNS].reset_index(drop=True)


def _template_change(runs: pd.DataFrame) -> None:
    """The template index's change since the previous run and its z, where both runs measured it with
    one template model (rows written before the template index, or with no model, have none)."""
    for column in ("template_index", "template_ci_low", "template_ci_high"):
        runs[column] = runs[column].astype(float) if column in runs else np.nan
    runs["template_model"] = runs["template_model"].fillna("none") if "template_model" in runs else "none"
    comparable = (runs["template_model"] != "none") & (
        runs["template_model"] == runs.groupby("company", sort=False)["template_model"].shift(1)
    )
    change, z = _change_and_z(runs, "template_index", "template_ci_low", "template_ci_high")
    runs["template_change"], runs["template_z"] = change.where(comparable), z.where(comparable)
    runs["template_significant"] = runs["template_z"].abs() > 1.96


def _change_and_z(runs: pd.DataFrame, index: str, low: str, high: str) -> tuple[pd.Series, pd.Series]:
    """Each run's change of `index` since the company's previous run, and z = change / sqrt(se1^2 +
    se2^2), each se read off the 95% bootstrap interval (`low`, `high`) as (high - low) / (2 * 1.96)."""
    grouped = runs.groupby("company", sort=False)
    se = (runs[high] - runs[low]).astype(float) / (2 * 1.96)
    change = runs[index].astype(float) - grouped[index].shift(1).astype(float)
    combined = np.sqrt(se**2 + se.groupby(runs["company"], sort=False).shift(1) ** 2)
    return change, change / combined.replace(0, np.nan)


# ------------------------------------------------------------------ what changed since the previous run
CHANGE_COLUMNS = [
    "company", "run_date", "previous_run_date", "n_photos", "n_kept", "n_replaced", "n_added", "n_removed", "n_new_copies",
    "n_new_faces", "homogeneity_index", "previous_index", "change", "significant", "summary",
]  # fmt: skip
SHARED_COLUMNS = ["company_a", "image_a", "company_b", "image_b", "kind", "first_seen"]


def _slot(images: pd.DataFrame) -> pd.Series:
    """Where a photo sits on its page: its URL there (crawled), else where it was read from. A slot
    whose photo changed was replaced; a new slot was added."""
    slot = pd.Series("", index=images.index)
    for column in ("image_url", "uri", "image"):
        if column in images:
            slot = slot.where(slot != "", images[column].fillna("").astype(str))
    return slot


def _photos(images: pd.DataFrame) -> dict[str, dict[str, str]]:
    """company -> slot -> content of its ok rows."""
    if images.empty:
        return {}
    ok = images[images["status"] == "ok"]
    ok = ok.assign(_where=_slot(ok))
    return {company: dict(zip(rows["_where"], rows["content_sha256"])) for company, rows in ok.groupby("company", sort=False)}


def _cross_company(images: pd.DataFrame, reuse: pd.DataFrame, identities: pd.DataFrame) -> dict[frozenset, dict]:
    """The run's photos and faces shown by two companies, keyed by what they are (the two companies'
    contents), so that the same sharing is recognised in another run whatever the rows are called."""
    from pipeline.ingest.intake import content_by_row

    content = content_by_row(images)
    found: dict[frozenset, dict] = {}
    for kind, pairs in (("copy", reuse), ("face", identities)):
        if pairs.empty:
            continue
        for pair in pairs[pairs["company_a"] != pairs["company_b"]].itertuples():
            a, b = content.get((pair.company_a, pair.image_a)), content.get((pair.company_b, pair.image_b))
            if a is None or b is None:
                continue
            key = frozenset(((pair.company_a, a), (pair.company_b, b)))
            found.setdefault(key, {"company_a": pair.company_a, "image_a": pair.image_a, "company_b": pair.company_b,
                                   "image_b": pair.image_b, "kind": kind})  # fmt: skip
    return found


def newly_shared_table(current: dict[str, pd.DataFrame], previous: dict[str, pd.DataFrame] | None, run_date: str) -> pd.DataFrame:
    """Photos (copies) and faces (the same person in another photo) that two companies show in this
    run, where at least one of the two photos is new on its page since the previous run: sharing that
    the night's change made, not a pair that matching found again among photos already there (nearest
    neighbour lists move when the population does). `current` and `previous` hold a run's images, reuse
    and identities tables; with no previous run every shared photo is new."""
    before = set()
    if previous and len(previous["images"]):
        shown = previous["images"][previous["images"]["status"] == "ok"]
        before = set(zip(shown["company"], shown["content_sha256"]))
    now = _cross_company(current["images"], current["reuse"], current["identities"])
    rows = [{**pair, "first_seen": run_date} for key, pair in now.items() if not key <= before]
    return pd.DataFrame(rows, columns=SHARED_COLUMNS).sort_values(["company_a", "company_b", "image_a"], ignore_index=True)


def _words(row: dict) -> str:
    """The change in a sentence, as the report and `homog trends` print it after the company's name."""
    if not row["previous_run_date"]:
        return f"first run: {row['n_photos']} photos"
    parts = []
    if row["n_replaced"]:
        parts.append(f"{row['n_replaced']} of {row['n_kept'] + row['n_replaced'] + row['n_removed']} photos replaced")
    if row["n_added"]:
        parts.append(f"{row['n_added']} photo{'s' * (row['n_added'] != 1)} added")
    if row["n_removed"]:
        parts.append(f"{row['n_removed']} photo{'s' * (row['n_removed'] != 1)} removed")
    if row["n_new_copies"]:
        parts.append(f"{row['n_new_copies']} photo{'s' * (row['n_new_copies'] != 1)} newly copied across companies")
    if row["n_new_faces"]:
        parts.append(f"{row['n_new_faces']} new photo{'s' * (row['n_new_faces'] != 1)} showing a face seen on another company's page")
    photos = ", ".join(parts) or "no photo changed"
    index, previous = row["homogeneity_index"], row["previous_index"]
    if not np.isfinite(index):
        return f"{photos}; too few photos for an index"
    if not np.isfinite(previous):  # too few photos then, or measured with another embedder or reference
        return f"{photos}; index {index:.2f}, none comparable the run before"
    if row["significant"]:
        return f"{photos}; index {previous:.2f} to {index:.2f}, a significant {'rise' if row['change'] > 0 else 'fall'}"
    if abs(row["change"]) < 0.005:
        return f"{photos}; index {index:.2f}, unchanged"
    return f"{photos}; index {previous:.2f} to {index:.2f}, within its intervals"


def changes_table(
    current: dict[str, pd.DataFrame], previous: dict[str, pd.DataFrame] | None, previous_run_date: str,
    trends: pd.DataFrame, newly_shared: pd.DataFrame, run_date: str,
) -> pd.DataFrame:  # fmt: skip
    """Per company of this run: its photos kept, replaced (same place on the page, another photo),
    added and removed since the previous run, photos newly shared with other companies, and the
    index's move as the trends table measured it, in words."""
    from pipeline.ingest.intake import content_by_row

    now, before = _photos(current["images"]), _photos(previous["images"]) if previous else {}
    index_now = trends[trends["run_date"] == run_date].set_index("company") if len(trends) else pd.DataFrame()
    sides = [newly_shared[[f"company_{s}", f"image_{s}", "kind"]].set_axis(["company", "image", "kind"], axis=1) for s in "ab"]
    shared = pd.concat(sides, ignore_index=True)
    content_of = content_by_row(current["images"])
    shared["content"] = [content_of.get(key, "") for key in zip(shared["company"], shared["image"])]
    companies = sorted(set(current["images"]["company"])) if len(current["images"]) else []
    rows = []
    for company in companies:
        photos, earlier = now.get(company, {}), before.get(company, {})
        kept_contents = set(photos.values()) & set(earlier.values())
        replaced = [s for s in photos if s in earlier and photos[s] != earlier[s] and photos[s] not in kept_contents]
        added = [s for s in photos if s not in earlier and photos[s] not in kept_contents]
        removed = [s for s in earlier if s not in photos and earlier[s] not in kept_contents]
        mine = shared[shared["company"] == company]
        # A copy concerns both pages (one of yours is elsewhere now, or you show another's); a face,
        # only the page whose photo is new (matching churns among photos that were already there).
        faces = mine[(mine["kind"] == "face") & ~mine["content"].isin(set(earlier.values()))]
        trend = index_now.loc[company] if company in index_now.index else None  # trends hold rated pages only
        comparable = trend is not None and trend["previous_run_date"] == previous_run_date  # joined with the run just before
        row = {
            "company": company, "run_date": run_date, "previous_run_date": previous_run_date if previous else "",
            "n_photos": len(set(photos.values())), "n_kept": len(kept_contents), "n_replaced": len(replaced), "n_added": len(added),
            "n_removed": len(removed),
            "n_new_copies": int(mine.loc[mine["kind"] == "copy", "content"].nunique()), "n_new_faces": int(faces["content"].nunique()),
            "homogeneity_index": float(trend["homogeneity_index"]) if trend is not None else np.nan,
            "previous_index": float(trend["previous_index"]) if comparable else np.nan,
            "change": float(trend["change"]) if comparable else np.nan,
            "significant": bool(trend["significant"]) if comparable else False,
        }  # fmt: skip
        row["summary"] = _words(row)
        rows.append(row)
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)

"""Trends: each page's index over runs, and whether it moved more than its intervals explain."""

from __future__ import annotations

import numpy as np
import pandas as pd

TREND_COLUMNS = [
    "company", "embedder", "run_date", "n_images", "homogeneity_index", "ci_low", "ci_high", "near_dup_rate",
    "previous_run_date", "previous_index", "change", "z", "significant", "direction",
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
    runs["se"] = (runs["ci_high"] - runs["ci_low"]).astype(float) / (2 * 1.96)
    grouped = runs.groupby("company", sort=False)
    runs["previous_run_date"] = grouped["run_date"].shift(1)
    runs["previous_index"] = grouped["homogeneity_index"].shift(1)
    runs["change"] = runs["homogeneity_index"] - runs["previous_index"]
    combined = np.sqrt(runs["se"] ** 2 + grouped["se"].shift(1) ** 2)
    runs["z"] = runs["change"] / combined.replace(0, np.nan)
    runs["significant"] = runs["z"].abs() > 1.96
    runs["direction"] = np.where(~runs["significant"], "", np.where(runs["change"] > 0, "more homogeneous", "less homogeneous"))
    return runs[TREND_COLUMNS].reset_index(drop=True)

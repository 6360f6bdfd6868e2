"""The report's plots, as PNG data URIs (pages are self-contained), and the trend sparkline as inline SVG."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pandas as pd

from pipeline.ingest.intake import distinct_ok
from pipeline.ingest.text import printable
from pipeline.report.data import RunData


def figure_and_axes(width: float = 7.0, height: float = 3.2, rows: int = 1, columns: int = 1, **options: Any):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.hashsalt": "homog"})
    return plt.subplots(rows, columns, figsize=(width, height), **options)


def png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def forest_plot(companies: pd.DataFrame) -> str | None:
    rated = companies[companies["status"] == "ok"].sort_values("homogeneity_index")
    if rated.empty:
        return None
    figure, axes = figure_and_axes(7, 0.35 * len(rated) + 1.2)
    y = np.arange(len(rated))
    axes.errorbar(rated["homogeneity_index"], y, xerr=[rated["homogeneity_index"] - rated["ci_low"], rated["ci_high"] - rated["homogeneity_index"]],
                  fmt="o", color="#1f4e79", ecolor="#8fb3d9", capsize=3)  # fmt: skip
    axes.set_yticks(y, [printable(name) for name in rated["company"]])
    axes.set_xlim(0, 1)
    axes.set_xlabel("homogeneity index (95% bootstrap CI)")
    axes.grid(axis="x", alpha=0.3)
    return png(figure)


def population_plot(companies: pd.DataFrame, company: str) -> str | None:
    rated = companies[companies["status"] == "ok"]
    if rated.empty:
        return None
    figure, axes = figure_and_axes(6, 2.6)
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
    return png(figure)


def _population_band(trends: pd.DataFrame) -> pd.DataFrame:
    """Per run date: the median and quartiles of every rated page's index (the population over time)."""
    rated = trends[trends["homogeneity_index"].notna()]
    quantiles = rated.groupby("run_date")["homogeneity_index"].quantile([0.25, 0.5, 0.75]).unstack()
    return quantiles.set_axis(["q1", "median", "q3"], axis=1).reset_index()


def trend_plot(trends: pd.DataFrame, company: str) -> str | None:
    """One page's index over runs with its intervals, beside the population's median and quartiles."""
    history = trends[(trends["company"] == company) & trends["homogeneity_index"].notna()].sort_values("run_date")
    if len(history) < 2:  # one run is a point, not a trend
        return None
    figure, axes = figure_and_axes(6, 2.6)
    band = _population_band(trends)
    band_dates = pd.to_datetime(band["run_date"])
    axes.fill_between(band_dates, band["q1"], band["q3"], color="#e3e7ec", label="all pages: middle half")
    axes.plot(band_dates, band["median"], color="#8796a5", linestyle="--", linewidth=1, label="all pages: median")
    dates = pd.to_datetime(history["run_date"])
    axes.fill_between(dates, history["ci_low"], history["ci_high"], color="#8fb3d9", alpha=0.5, label="this page: 95% CI")
    axes.plot(dates, history["homogeneity_index"], marker="o", color="#1f4e79", label="this page")
    _mark_significant(axes, history)
    axes.set_ylim(0, 1)
    axes.set_ylabel("homogeneity index")
    axes.legend(fontsize=7, frameon=False, ncol=2)
    figure.autofmt_xdate()
    return png(figure)


def _mark_significant(axes: Any, history: pd.DataFrame) -> None:
    """A triangle where the index moved more than the two runs' intervals explain (up: rise, down: fall)."""
    moved = history[history["significant"].fillna(False).astype(bool)]
    for marker, colour, rows in (("^", "#bc4b51", moved[moved["change"] > 0]), ("v", "#2d6a4f", moved[moved["change"] < 0])):
        if len(rows):
            axes.scatter(pd.to_datetime(rows["run_date"]), rows["homogeneity_index"], marker=marker, s=60, color=colour, zorder=3)


MAX_PANELS = 24  # small multiples: the pages whose index moved most first


def trend_grid(trends: pd.DataFrame) -> str | None:
    """Small multiples: every page's index over runs with its interval, significant moves marked."""
    rated = trends[trends["homogeneity_index"].notna()]
    if rated["run_date"].nunique() < 2:
        return None
    spread = rated.groupby("company")["homogeneity_index"].agg(lambda v: v.max() - v.min())
    companies = sorted(spread.index, key=lambda c: (-spread[c], c))[:MAX_PANELS]
    columns = min(4, len(companies))
    rows = (len(companies) + columns - 1) // columns
    figure, grid = figure_and_axes(2.3 * columns, 1.7 * rows + 0.3, rows, columns, sharex=True, sharey=True, squeeze=False)
    for axes, company in zip(grid.flat, companies):
        history = rated[rated["company"] == company].sort_values("run_date")
        dates = pd.to_datetime(history["run_date"])
        axes.fill_between(dates, history["ci_low"], history["ci_high"], color="#8fb3d9", alpha=0.5)
        axes.plot(dates, history["homogeneity_index"], marker=".", color="#1f4e79")
        _mark_significant(axes, history)
        axes.set_title(printable(company, 28), fontsize=8)
        axes.set_ylim(0, 1)
        axes.grid(axis="y", alpha=0.3)
    for axes in list(grid.flat)[len(companies) :]:
        axes.set_visible(False)
    figure.autofmt_xdate()
    return png(figure)


def changed_plot(trends: pd.DataFrame) -> str | None:
    """The pages whose index moved significantly at least once, on one chart."""
    rated = trends[trends["homogeneity_index"].notna()]
    moved = sorted(set(rated.loc[rated["significant"].fillna(False).astype(bool), "company"]))
    if not moved:
        return None
    figure, axes = figure_and_axes(7, 3.0)
    for company in moved:
        history = rated[rated["company"] == company].sort_values("run_date")
        axes.plot(pd.to_datetime(history["run_date"]), history["homogeneity_index"], marker="o", label=printable(company, 30))
        _mark_significant(axes, history)
    axes.set_ylim(0, 1)
    axes.set_ylabel("homogeneity index")
    axes.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.autofmt_xdate()
    return png(figure)


def population_over_time(trends: pd.DataFrame) -> str | None:
    """Every rated page's index per run: is the population as a whole converging?"""
    rated = trends[trends["homogeneity_index"].notna()]
    dates = sorted(rated["run_date"].unique())
    if len(dates) < 2:
        return None
    figure, axes = figure_and_axes(7, 2.8)
    values = [rated.loc[rated["run_date"] == date, "homogeneity_index"].to_numpy() for date in dates]
    axes.boxplot(values, positions=np.arange(len(dates)), widths=0.5, showfliers=True)
    band = _population_band(trends)
    axes.plot(np.arange(len(dates)), band["median"], color="#bc4b51", linewidth=1, label="median page")
    axes.set_xticks(np.arange(len(dates)), [f"{date}\n{len(v)} pages" for date, v in zip(dates, values)], fontsize=7)
    axes.set_ylim(0, 1)
    axes.set_ylabel("homogeneity index")
    axes.legend(fontsize=7, frameon=False)
    return png(figure)


def similarity_histogram(data: RunData, company: str) -> str | None:
    """Pairs on the page against random pairs of all pages, in the index's own similarity (reference-centred cosine)."""
    ok = distinct_ok(data.images)
    position = {key: row for row, key in enumerate(data.keys)}
    mine = [position[k] for k in ok.loc[ok["company"] == company, "content_sha256"]]
    if len(mine) < 2:
        return None
    vectors = data.centred
    inside = vectors[mine] @ vectors[mine].T
    inside = inside[np.triu_indices(len(mine), 1)]
    rng = np.random.default_rng(0)  # a seeded sample of population pairs: the same report every time
    a, b = rng.integers(0, len(vectors), 4000), rng.integers(0, len(vectors), 4000)
    population = np.einsum("ij,ij->i", vectors[a[a != b]], vectors[b[a != b]])
    figure, axes = figure_and_axes(6, 2.6)
    bins = np.linspace(min(population.min(), inside.min()), 1, 40)
    axes.hist(population, bins=bins, density=True, color="#c9d6e3", label="random pairs, all pages")
    axes.hist(inside, bins=bins, density=True, histtype="step", linewidth=2, color="#bc4b51", label="pairs on this page")
    centred = data.index_reference not in ("", "none")
    axes.set_xlabel(f"cosine similarity ({data.embedder}{', reference mean taken out, as in the index' if centred else ''})")
    axes.legend(fontsize=7, frameon=False)
    return png(figure)


def sparkline(values: list[float | None], width: int = 90, height: int = 22) -> str:
    """An inline SVG polyline of the index over runs (numbers only: nothing scraped goes in)."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(points) < 2:
        return ""
    step = (width - 4) / max(1, len(values) - 1)
    coords = " ".join(f"{2 + i * step:.1f},{height - 2 - v * (height - 4):.1f}" for i, v in points)
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="index over runs">'
            f'<polyline fill="none" stroke="#1f4e79" stroke-width="1.5" points="{coords}"/></svg>')  # fmt: skip

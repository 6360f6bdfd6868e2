"""The report's plots, as PNG data URIs (pages are self-contained), and the trend sparkline as inline SVG."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pandas as pd

from pipeline.ingest.intake import distinct_ok
from pipeline.report.data import RunData, plot_label


def figure_and_axes(width: float = 7.0, height: float = 3.2):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.hashsalt": "homog"})
    return plt.subplots(figsize=(width, height))


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
    axes.set_yticks(y, [plot_label(name) for name in rated["company"]])
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


def trend_plot(trends: pd.DataFrame, company: str) -> str | None:
    history = trends[(trends["company"] == company) & trends["homogeneity_index"].notna()].sort_values("run_date")
    if len(history) < 2:  # one run is a point, not a trend
        return None
    figure, axes = figure_and_axes(6, 2.4)
    dates = pd.to_datetime(history["run_date"])
    axes.fill_between(dates, history["ci_low"], history["ci_high"], color="#8fb3d9", alpha=0.4, label="95% CI")
    axes.plot(dates, history["homogeneity_index"], marker="o", color="#1f4e79", label="homogeneity index")
    axes.set_ylim(0, 1)
    axes.legend(fontsize=7, frameon=False)
    figure.autofmt_xdate()
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

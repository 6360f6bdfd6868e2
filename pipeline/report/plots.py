"""The report's plots: the run report's few large ones as PNG data URIs (matplotlib; pages are
self-contained), each audit page's and the trend sparkline as inline SVG (`pipeline.report.svg`:
there is one audit page per page and night, so its plots must cost milliseconds)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup

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


# ------------------------------------------------------------------ which pages a chart draws
# Each selection is one function, called by its chart and by the report that says how many pages
# the bounded chart leaves out.


def rated_pages(companies: pd.DataFrame) -> pd.DataFrame:
    """The rows of the pages with an index this run (enough photos for one)."""
    return companies[companies["status"] == "ok"] if len(companies) else companies


def significant_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows (of a trends or changes table) where the index moved more than the two runs' intervals explain."""
    return frame[frame["significant"].fillna(False).astype(bool)] if len(frame) else frame


def pages_with_trend(trends: pd.DataFrame) -> pd.Series:
    """How far each page's index moved over the runs (max - min), for the pages rated in two runs or
    more (one run is a point, not a trend), the largest spread first."""
    if not len(trends):
        return pd.Series(dtype=float)
    rated = trends[trends["homogeneity_index"].notna()]
    by_page = rated.groupby("company")
    spread = (by_page["homogeneity_index"].max() - by_page["homogeneity_index"].min())[by_page["run_date"].nunique() >= 2]
    return _largest_first(spread)


def pages_moved_significantly(trends: pd.DataFrame) -> pd.Series:
    """Each page's largest significant move of its index (absolute), the largest first."""
    if not len(trends):
        return pd.Series(dtype=float)
    moved = significant_rows(trends[trends["homogeneity_index"].notna()])
    largest = moved.assign(size=moved["change"].abs()).groupby("company")["size"].max()
    return _largest_first(largest)


def _largest_first(by_page: pd.Series) -> pd.Series:
    """Largest value first, ties by page name: the same pages are drawn night after night."""
    return by_page.loc[sorted(by_page.index, key=lambda page: (-by_page[page], page))]


MAX_FOREST_ROWS = 40  # a row per page: 4,000 pages would be a picture 160,000 px tall


def forest_plot(companies: pd.DataFrame) -> str | None:
    """Each rated page's index and interval, the `MAX_FOREST_ROWS` most homogeneous where there are more
    (the ranked table lists them all)."""
    rated = rated_pages(companies).sort_values(["homogeneity_index", "company"], ascending=[False, True])
    if rated.empty:
        return None
    rated = rated.head(MAX_FOREST_ROWS).iloc[::-1]  # drawn bottom-up: the most homogeneous on top
    figure, axes = figure_and_axes(7, 0.35 * len(rated) + 1.2)
    y = np.arange(len(rated))
    axes.errorbar(rated["homogeneity_index"], y, xerr=[rated["homogeneity_index"] - rated["ci_low"], rated["ci_high"] - rated["homogeneity_index"]],
                  fmt="o", color="#1f4e79", ecolor="#8fb3d9", capsize=3)  # fmt: skip
    axes.set_yticks(y, [printable(name) for name in rated["company"]])
    axes.set_xlim(0, 1)
    axes.set_xlabel("homogeneity index (95% bootstrap CI)")
    axes.grid(axis="x", alpha=0.3)
    return png(figure)


@dataclass(frozen=True)
class RatedPages:
    """Every rated page's index this run, as each audit page compares itself with it: made once a run
    (`RunData.rated`), where a filter of the companies table per page costs pages^2."""

    rows: dict[str, dict]  # company -> its companies row
    ascending: np.ndarray  # the rated pages' indexes, sorted
    counts: np.ndarray  # their histogram over `HISTOGRAM_EDGES`

    @classmethod
    def of(cls, companies: pd.DataFrame) -> RatedPages:
        rated = rated_pages(companies)
        values = rated["homogeneity_index"].to_numpy(float) if len(rated) else np.zeros(0)
        counts, _ = np.histogram(np.clip(values, 0, 1), bins=HISTOGRAM_EDGES)
        return cls({row["company"]: row for row in rated.to_dict("records")}, np.sort(values), counts)

    def below(self, index: float) -> int:
        """How many rated pages have an index below `index`."""
        return int(np.searchsorted(self.ascending, index, side="left"))


HISTOGRAM_EDGES = np.linspace(0, 1, 21)


def population_plot(rated: RatedPages, company: str) -> Markup | None:
    """This page's index and interval against the histogram of every rated page's index."""
    from pipeline.report.svg import Chart

    if not rated.rows:
        return None
    chart = Chart((0, 1), (0, max(1, int(rated.counts.max())) * 1.15), "homogeneity index", "pages",
                  "this page's index against the distribution of all pages")  # fmt: skip
    chart.bars(HISTOGRAM_EDGES, rated.counts, "#c9d6e3", "all pages this run")
    row = rated.rows.get(company)
    if row is not None:
        if np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"]):
            chart.vspan(row["ci_low"], row["ci_high"], "#f4a259", 0.35, "this page: 95% CI")
        chart.vline(row["homogeneity_index"], "#bc4b51", "this page")
    return chart.svg()


def median_without(ascending: np.ndarray, value: float | None) -> float | None:
    """The median of the finite values `ascending` (sorted) with one occurrence of `value` left out
    (where it is among them): the median of the other pages, from one sort a run instead of one a page."""
    position = int(np.searchsorted(ascending, value)) if value is not None and np.isfinite(value) else len(ascending)
    if position < len(ascending) and ascending[position] == value:
        ascending = np.delete(ascending, position)
    return float(np.median(ascending)) if len(ascending) else None


def population_band(trends: pd.DataFrame) -> pd.DataFrame:
    """Per run date: the median and quartiles of every rated page's index (the population over time)."""
    rated = trends[trends["homogeneity_index"].notna()]
    quantiles = rated.groupby("run_date")["homogeneity_index"].quantile([0.25, 0.5, 0.75]).unstack()
    return quantiles.set_axis(["q1", "median", "q3"], axis=1).reset_index()


def trend_plot(trends: pd.DataFrame, company: str) -> Markup | None:
    """One page's index over runs with its intervals, beside the population's median and quartiles;
    a triangle where the index moved more than the two runs' intervals explain (up: rise, down: fall)."""
    return company_trend_plot(trends[trends["company"] == company], population_band(trends))


def company_trend_plot(history: pd.DataFrame | None, band: pd.DataFrame, small: bool = False) -> Markup | None:
    """`trend_plot` from the company's trends rows and the population's band (`population_band`),
    which a report computes once for all its audit pages. `small`: a panel of the run report's small
    multiples, without axis titles and legend (the grid states them once)."""
    from pipeline.report.svg import Chart

    if history is None:
        return None
    history = history[history["homogeneity_index"].notna()].sort_values("run_date")
    if len(history) < 2:  # one run is a point, not a trend
        return None
    dates = sorted(set(band["run_date"]) | set(history["run_date"]))

    def days(values: Any) -> list[float]:
        """Run dates as days since the first, so that the x axis keeps time's proportions."""
        return [float((pd.Timestamp(value) - pd.Timestamp(dates[0])).days) for value in values]

    description = "homogeneity index of this page over runs beside all pages' median and middle half"
    size = {"width": 260, "height": 150} if small else {}
    chart = Chart((0, days(dates[-1:])[0]), (0, 1), "" if small else "run date", "" if small else "homogeneity index", description, **size)
    if small:  # no legend row above, no axis title below
        chart.top, chart.bottom = 10, 24
    ticks = 3 if small else 5
    shown = dates if len(dates) <= ticks else [dates[round(i * (len(dates) - 1) / (ticks - 1))] for i in range(ticks)]
    chart.x_ticks = list(zip(days(shown), shown))

    def label(text: str) -> str:  # the small panels share one legend, stated above the grid
        return "" if small else text

    band_days = days(band["run_date"])
    chart.band(band_days, band["q1"], band["q3"], "#e3e7ec", label=label("all pages: middle half"))
    chart.line(band_days, band["median"], "#8796a5", dashed=True, label=label("all pages: median"))
    mine = days(history["run_date"])
    chart.band(mine, history["ci_low"], history["ci_high"], "#8fb3d9", 0.5, label=label("this page: 95% CI"))
    chart.line(mine, history["homogeneity_index"], "#1f4e79", dots=True, label=label("this page"))
    for rise, colour, rows in _significant_moves(history):
        chart.triangles(days(rows["run_date"]), rows["homogeneity_index"].tolist(), colour, rise)
    return chart.svg()


def _significant_moves(history: pd.DataFrame) -> list[tuple[bool, str, pd.DataFrame]]:
    """(a rise?, its colour, the runs) where the index moved more than the two runs' intervals explain."""
    moved = significant_rows(history)
    return [(True, "#bc4b51", moved[moved["change"] > 0]), (False, "#2d6a4f", moved[moved["change"] < 0])]


def _mark_significant(axes: Any, history: pd.DataFrame) -> None:
    """A triangle where the index moved more than the two runs' intervals explain (up: rise, down: fall)."""
    for rise, colour, rows in _significant_moves(history):
        if len(rows):
            axes.scatter(
                pd.to_datetime(rows["run_date"]), rows["homogeneity_index"], marker="^" if rise else "v", s=60, color=colour, zorder=3
            )


MAX_PANELS = 24  # small multiples: the pages whose index moved most first


def trend_grid(data: RunData) -> list[dict[str, Any]]:
    """Small multiples: the pages whose index moved most (at most `MAX_PANELS`), each drawn as its
    audit page's trend chart at a small size ([{"company", "chart"}]); none before a second run.
    Inline SVG: a matplotlib grid of 24 panels cost ~2 s a night."""
    companies = pages_with_trend(data.trends).index[:MAX_PANELS]
    return [{"company": company, "chart": company_trend_plot(data.trends_of_company.get(company), data.population_band, small=True)}
            for company in companies]  # fmt: skip


MAX_CHANGED_LINES = 10  # lines on one chart that a legend can still name


def changed_plot(trends: pd.DataFrame) -> str | None:
    """The pages whose index moved significantly at least once, on one chart: the
    `MAX_CHANGED_LINES` whose largest significant move was largest, where more moved."""
    largest = pages_moved_significantly(trends)
    if largest.empty:
        return None
    rated = trends[trends["homogeneity_index"].notna()]
    moved = sorted(largest.index[:MAX_CHANGED_LINES])
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
    band = population_band(trends)
    axes.plot(np.arange(len(dates)), band["median"], color="#bc4b51", linewidth=1, label="median page")
    axes.set_xticks(np.arange(len(dates)), [f"{date}\n{len(v)} pages" for date, v in zip(dates, values)], fontsize=7)
    axes.set_ylim(0, 1)
    axes.set_ylabel("homogeneity index")
    axes.legend(fontsize=7, frameon=False)
    return png(figure)


def similarity_histogram(data: RunData, company: str) -> Markup | None:
    """Pairs on the page against random pairs of all pages, in the index's own similarity (reference-centred cosine)."""
    from pipeline.report.svg import Chart

    ok = data.ok_pictures_of_company.get(company)
    mine = [] if ok is None else [data.row_of[k] for k in ok["content_sha256"]]
    if len(mine) < 2:
        return None
    inside = data.centred[mine] @ data.centred[mine].T
    inside = inside[np.triu_indices(len(mine), 1)]
    population = data.population_similarities
    low = float(min(population.min(), inside.min()))
    edges = np.linspace(low, 1, 40)
    spread, _ = np.histogram(population, bins=edges, density=True)
    here, _ = np.histogram(inside, bins=edges, density=True)
    centred = data.index_reference not in ("", "none")
    chart = Chart((low, 1), (0, float(max(spread.max(), here.max(), 1e-9)) * 1.1),
                  f"cosine similarity ({data.embedder}{', reference mean taken out, as in the index' if centred else ''})", "density",
                  "similarity of pairs on this page against random pairs of all pages")  # fmt: skip
    chart.bars(edges, spread, "#c9d6e3", "random pairs, all pages")
    chart.outline(edges, here, "#bc4b51", "pairs on this page")
    return chart.svg()


def sparkline(values: list[float | None], width: int = 90, height: int = 22) -> str:
    """An inline SVG polyline of the index over runs (numbers only: nothing scraped goes in)."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(points) < 2:
        return ""
    step = (width - 4) / max(1, len(values) - 1)
    coords = " ".join(f"{2 + i * step:.1f},{height - 2 - v * (height - 4):.1f}" for i, v in points)
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="index over runs">'
            f'<polyline fill="none" stroke="#1f4e79" stroke-width="1.5" points="{coords}"/></svg>')  # fmt: skip

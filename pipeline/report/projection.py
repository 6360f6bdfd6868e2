"""The report's map: the run's photos on one fixed UMAP projection per embedder.

The projection is fitted on the first run that has enough photos, saved in the warehouse
(`pipeline.layout.projection_file`) and reused by every later run (`transform`), so the maps of
different runs can be laid side by side.
"""

from __future__ import annotations

import pickle

import numpy as np

from pipeline import layout
from pipeline.ingest.intake import distinct_ok
from pipeline.report.data import RunData, plot_label
from pipeline.report.plots import figure_and_axes, png
from pipeline.warehouse import Warehouse

MIN_MAP_POINTS = 10  # UMAP needs a neighbourhood; fewer photos get no map, with a note


def umap_map(store: Warehouse, data: RunData) -> tuple[str | None, str]:
    """The run's photos on the embedder's fixed UMAP projection; (PNG, note)."""
    if len(data.keys) < MIN_MAP_POINTS:
        return None, f"no map: UMAP needs at least {MIN_MAP_POINTS} distinct photos, this run has {len(data.keys)}"
    key = layout.projection_file(data.embedder)
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
    figure, axes = figure_and_axes(7, 5)
    colours = __import__("matplotlib").colormaps["tab20"]
    for index, company in enumerate(companies):
        mask = np.array([company_of[k] == company for k in data.keys])
        axes.scatter(points[mask, 0], points[mask, 1], s=14, color=colours(index % 20), label=plot_label(company, 30), alpha=0.8)
    axes.set_xticks([])
    axes.set_yticks([])
    if len(companies) <= 20:
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    return png(figure), note

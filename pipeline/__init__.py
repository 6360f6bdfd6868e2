"""Profile homogenization analytics: how indistinguishable are companies' staff headshots becoming?

The library follows the data flow: `ingest` (sources, crawl, intake) -> `features` (embeddings, index,
faces, verification, the index reference) -> `metrics` (near-duplicates, homogeneity, pages, trends)
-> `report`, run stage by stage by `stages` over one `context.RunContext`. `layout` says where
everything lives in the warehouse, `warehouse` writes it atomically, `config` is the one validated
settings object; `apps` (CLI, Airflow glue, brand audit, retention, demo) build on the library.
"""

__version__ = "0.1.0"

"""Report: what analysts and brand teams read. `data` loads a run back from the warehouse, `plots` and
`projection` draw it, `render` writes the run report, the audit pages and summary.json."""

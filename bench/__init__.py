"""Benchmarks, run by hand from the repository root as modules (`.venv/bin/python -m bench.NAME`).

Each prints its figures and writes them, with the commit, the date and the machine, to
`bench/results/NAME.json` (`bench.common.write_result`); the figures in docs/ come from those files.
"""

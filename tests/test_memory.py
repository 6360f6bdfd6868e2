"""A stage's peak memory in run.json: this process's and its workers', measured from the stage's start."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import memory
from pipeline.stages import timed

MB = 2**20


needs_linux = pytest.mark.skipif(not memory.reset_peaks(), reason="no per-process high-water mark to reset here")


def _holding(megabytes: int) -> dict:
    block = np.ones(megabytes * MB, np.uint8)  # touched: resident, not only reserved
    return {"counts": {"held": int(block[::4096].sum() > 0)}}


def holding_in_a_worker(megabytes: int) -> int:
    return _holding(megabytes)["counts"]["held"]


@needs_linux
def test_a_stage_reports_its_own_peak_not_an_earlier_stages() -> None:
    big = timed(_holding)(300)
    small = timed(_holding)(10)
    assert big["peak_rss_mb"] >= small["peak_rss_mb"] + 250  # the 300 MB of the first were freed before the second began
    assert big["seconds"] >= 0 and big["counts"] == {"held": 1}


@needs_linux
def test_a_stage_counts_what_its_worker_processes_held() -> None:
    from pipeline.parallel import process_map

    def in_workers(megabytes: int) -> dict:
        held = process_map(holding_in_a_worker, [megabytes, megabytes], workers=2, estimated_seconds=60)
        return {"counts": {"held": sum(held)}}

    alone = timed(_holding)(0)
    spread = timed(in_workers)(200)
    assert spread["counts"] == {"held": 2}
    assert spread["peak_rss_mb"] >= alone["peak_rss_mb"] + 300  # two workers held 200 MB each


def test_no_figure_where_the_peak_cannot_be_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lifetime peak would blame the stage for what an earlier one used: none is given instead."""
    monkeypatch.setattr(memory, "_reset", lambda pid: False)
    assert timed(_holding)(1)["peak_rss_mb"] is None

"""bench.template_index's choice of weights: a page index is linear in the weights, so the bench
scores every weighting on simulated ladders at once and keeps the one whose worst group passes most
often. Checked here on ladders built by hand, where the right answer is known."""

from __future__ import annotations

import numpy as np

from bench.template_index import FitFigures, choose_weights, ladder, pass_rates
from pipeline.metrics.template_index import COMPONENTS


def _figures() -> FitFigures:
    """Group "a" rises on the first part only, group "b" on the second only, and the third part falls
    on both as the template spreads; the real pages score 0 on every part."""
    steps = np.linspace(0, 0.4, 5)
    a, b = np.zeros((4, 5, len(COMPONENTS))), np.zeros((4, 5, len(COMPONENTS)))
    a[:, :, 0] = steps
    b[:, :, 1] = steps
    a[:, :, 2] = b[:, :, 2] = -steps
    return FitFigures({"a": a, "b": b}, np.zeros((4, 3, len(COMPONENTS))))


def test_the_weights_chosen_serve_every_group_and_leave_out_a_misleading_part() -> None:
    weights, score = choose_weights(_figures())
    assert weights[0] > 0 and weights[1] > 0 and weights[2] == 0
    assert score > 1.0  # every group passes every draw (1), plus the small tie-break on the mean
    assert np.isclose(sum(weights), 1.0)


def test_a_group_fails_where_its_part_has_no_weight() -> None:
    only_first = np.zeros((1, len(COMPONENTS)))
    only_first[0, 0] = 1.0
    figures = _figures()
    assert pass_rates(figures, "a", only_first)[0] == 1.0
    assert pass_rates(figures, "b", only_first)[0] == 0.0  # flat: neither rising nor above the real pages
    # Left out of the choice, a group no longer constrains it.
    weights, _ = choose_weights(figures, exclude="b")
    assert weights[0] > weights[2]  # what "a" needs, and all it needs


def test_a_ladder_replaces_a_growing_share_of_the_page() -> None:
    pages = ladder(list("abcdefgh"), list("ABCDEFGH"))
    assert pages[0] == list("abcdefgh") and pages[-1] == list("ABCDEFGH")
    assert [sum(p.isupper() for p in page) for page in pages] == [0, 2, 4, 6, 8]
    assert all(len(page) == 8 for page in pages)

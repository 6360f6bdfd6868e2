"""Kept nearest-neighbour lists: brought up to date night after night they equal a fresh search's,
they cost the photos that changed, and what cannot be brought up to date (nothing kept, other
vectors, an unreadable file, most of the population changed) is searched afresh, with the reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import layout
from pipeline.features.neighbours import depth_for, forget, kept_lists, search_lists
from pipeline.warehouse import Warehouse

NEED = 5
DIM = 12


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


class Population:
    """Photos as random vectors around a few dozen centres (neighbourhoods as on real pages), each
    with `n_views` query vectors near its own target (as region windows are near the whole view)."""

    def __init__(self, n_views: int, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = unit(self.rng.normal(size=(40, DIM)))
        self.n_views = n_views
        self.target: dict[str, np.ndarray] = {}
        self.queries: dict[str, np.ndarray] = {}
        self.made = 0

    def add(self, n: int) -> list[str]:
        names = []
        for _ in range(n):
            name = f"photo-{self.made:05d}"
            self.made += 1
            target = unit(self.centres[self.rng.integers(len(self.centres))] + 0.35 * self.rng.normal(size=DIM))
            self.target[name] = target
            self.queries[name] = unit(target + 0.2 * self.rng.normal(size=(self.n_views, DIM)))
            names.append(name)
        return names

    def arrays(self, contents: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([self.target[c] for c in contents]), np.stack([self.queries[c] for c in contents])


def assert_same_first_entries(kept, contents: list[str], population: Population) -> None:  # noqa: ANN001
    targets, queries = population.arrays(contents)
    fresh = search_lists(contents, targets, queries, depth_for(NEED), "flat")
    kept_rows, kept_sims = kept.first(NEED)
    fresh_rows, fresh_sims = fresh.first(NEED)
    assert kept.contents == contents
    assert np.array_equal(kept_rows, fresh_rows)
    assert np.allclose(kept_sims, fresh_sims, atol=1e-5)
    # The invariant behind it: every kept list, however long, is the start of the fresh one.
    held = kept.rows >= 0
    assert np.array_equal(held, np.cumsum(~held, axis=2) == 0)  # entries, then only padding
    assert np.array_equal(np.where(held, kept.rows, -1), np.where(held, fresh.rows, -1))


@pytest.mark.parametrize("n_views", [1, 3])
def test_lists_kept_over_nights_of_changes_equal_a_fresh_search_and_cost_what_changed(tmp_path: Path, n_views: int) -> None:
    warehouse = Warehouse(str(tmp_path / "w"))
    population = Population(n_views)
    contents = population.add(400)
    rng = np.random.default_rng(1)

    def night(contents: list[str]):  # noqa: ANN202
        lists, count = kept_lists(warehouse, "test", "basis-1", contents, *population.arrays(contents), NEED)
        assert_same_first_entries(lists, contents, population)
        return count

    first = night(contents)
    assert first.fresh and first.photos_searched == 400
    for _ in range(4):  # 1% to 3% of the photos replaced, the survivors reordered
        gone = set(rng.choice(contents, size=int(rng.integers(4, 13)), replace=False))
        contents = [c for c in contents if c not in gone] + population.add(len(gone))
        rng.shuffle(contents)
        count = night(contents)
        assert not count.fresh and count.photos_new == len(gone) and count.photos_gone == len(gone)
        assert count.photos_searched < 60  # the new photos and a few lists that ran short, not 400
    # Every photo near one photo leaves: its lists run short and it is searched again.
    lists, _ = kept_lists(warehouse, "test", "basis-1", contents, *population.arrays(contents), NEED)
    victim = contents[0]
    gone = {contents[row] for row in lists.rows[0].ravel() if row >= 0} - {victim}
    contents = [c for c in contents if c not in gone]
    count = night(contents)
    assert count.photos_searched_again >= 1 and count.photos_new == 0
    assert night(contents).photos_searched == 0  # nothing changed: nothing searched


def test_a_small_population_whose_lists_hold_everyone_stays_exact_as_it_grows_and_shrinks(tmp_path: Path) -> None:
    warehouse = Warehouse(str(tmp_path / "w"))
    population = Population(2)
    contents = population.add(4)  # fewer photos than a list's depth: every list is the whole population
    for change in (3, -2, 10, -9, 1):
        contents = contents + population.add(change) if change > 0 else contents[-change:]
        lists, _ = kept_lists(warehouse, "test", "basis-1", contents, *population.arrays(contents), NEED)
        assert_same_first_entries(lists, contents, population)


def test_what_cannot_be_brought_up_to_date_is_searched_afresh_with_the_reason(tmp_path: Path) -> None:
    warehouse = Warehouse(str(tmp_path / "w"))
    population = Population(1)
    contents = population.add(100)
    arrays = population.arrays(contents)
    assert kept_lists(warehouse, "test", "basis-1", contents, *arrays, NEED)[1].why_fresh == "none kept"
    # Other vectors (another embedder or version): the kept lists say nothing about these.
    other = kept_lists(warehouse, "test", "basis-2", contents, *arrays, NEED)[1]
    assert other.fresh and "other vectors (basis-1)" in other.why_fresh
    # Most of the population changed: a fresh search is as cheap.
    replaced = contents[:30] + population.add(70)
    count = kept_lists(warehouse, "test", "basis-2", replaced, *population.arrays(replaced), NEED)[1]
    assert count.fresh and "70 photo(s) new and 70 gone" in count.why_fresh
    # Lists kept for a shallower search: too short for this one.
    deeper = kept_lists(warehouse, "test", "basis-2", replaced, *population.arrays(replaced), NEED + 20)[1]
    assert deeper.fresh and "needed" in deeper.why_fresh
    # A damaged file is not trusted, and is replaced by good lists.
    warehouse.write_bytes(layout.neighbour_lists_file("test"), b"not an npz file")
    lists, count = kept_lists(warehouse, "test", "basis-2", replaced, *population.arrays(replaced), NEED)
    assert count.fresh and count.why_fresh.startswith("unreadable")
    assert_same_first_entries(lists, replaced, population)
    assert not kept_lists(warehouse, "test", "basis-2", replaced, *population.arrays(replaced), NEED)[1].fresh
    # A well-formed file whose lists name rows past the population is not trusted either.
    key = layout.neighbour_lists_file("test")
    with np.load(io.BytesIO(warehouse.read_bytes(key)), allow_pickle=False) as stored:
        tampered = {name: stored[name] for name in stored.files}
    tampered["rows"] = tampered["rows"] + len(replaced)
    buffer = io.BytesIO()
    np.savez(buffer, **tampered)
    warehouse.write_bytes(key, buffer.getvalue())
    lists, count = kept_lists(warehouse, "test", "basis-2", replaced, *population.arrays(replaced), NEED)
    assert count.fresh and "name no photo" in count.why_fresh
    assert_same_first_entries(lists, replaced, population)


def test_kept_lists_hold_row_numbers_and_similarities_not_vectors(tmp_path: Path) -> None:
    warehouse = Warehouse(str(tmp_path / "w"))
    population = Population(3)
    contents = population.add(50)
    kept_lists(warehouse, "test", "basis-1", contents, *population.arrays(contents), NEED)
    with np.load(io.BytesIO(warehouse.read_bytes(layout.neighbour_lists_file("test"))), allow_pickle=False) as stored:
        assert sorted(stored.files) == ["basis", "contents", "rows", "sims"]
        assert stored["rows"].dtype == np.int32 and stored["rows"].shape == (50, 3, depth_for(NEED))
        assert stored["contents"].tolist() == contents


def test_forgotten_photos_leave_every_kept_list_and_the_next_night_is_still_exact(tmp_path: Path) -> None:
    warehouse = Warehouse(str(tmp_path / "w"))
    population = Population(2)
    contents = population.add(200)
    kept_lists(warehouse, "test", "basis-1", contents, *population.arrays(contents), NEED)
    kept_lists(warehouse, "other", "basis-1", contents[:100], *population.arrays(contents[:100]), NEED)
    purged = set(contents[::7])
    assert forget(warehouse, purged) == len(purged)
    for source in ("test", "other"):
        with np.load(io.BytesIO(warehouse.read_bytes(layout.neighbour_lists_file(source))), allow_pickle=False) as stored:
            assert not purged & set(stored["contents"].tolist())
            assert stored["rows"].max() < len(stored["contents"])
    assert forget(warehouse, purged) == 0  # nothing left to take out
    # A damaged file may name them and cannot be edited: it goes (the next run searches afresh), the rest stays.
    warehouse.write_bytes(layout.neighbour_lists_file("damaged"), b"not an npz file")
    assert forget(warehouse, purged) == 0
    assert not warehouse.exists(layout.neighbour_lists_file("damaged")) and warehouse.exists(layout.neighbour_lists_file("test"))
    remaining = [c for c in contents if c not in purged]
    lists, count = kept_lists(warehouse, "test", "basis-1", remaining, *population.arrays(remaining), NEED)
    assert not count.fresh and count.photos_gone == 0
    assert_same_first_entries(lists, remaining, population)


def test_a_night_on_kept_lists_finds_the_near_duplicates_a_fresh_warehouse_finds(tmp_path: Path) -> None:
    from tests.conftest import encode
    from tests.test_regions import _crop, _near_duplicate_pairs, _population

    pictures = _population(11)

    def page(name: str, kept: range, cropped: int) -> Path:
        folder = tmp_path / name / "acme"
        folder.mkdir(parents=True)
        for i in kept:
            (folder / f"p{i}.jpg").write_bytes(encode(pictures[i], quality=95))
        (folder / f"p{cropped}-cropped.jpg").write_bytes(encode(_crop(pictures[cropped], 0.3, anchor=0.0), quality=90))
        return folder.parent

    _, first = _near_duplicate_pairs(page("night1", range(10), 4), tmp_path / "nightly")
    assert first["candidate_search_region_views_photos"] == first["candidate_search_embedding_photos"] == 11  # searched afresh
    # The next night: a photo and the crop gone, a new photo and a crop of it come.
    tonight = page("night2", range(1, 11), 10)
    kept, counts = _near_duplicate_pairs(tonight, tmp_path / "nightly")
    fresh, _ = _near_duplicate_pairs(tonight, tmp_path / "fresh")
    assert {(a, b) for a, b in zip(kept["image_a"], kept["image_b"])} == {("acme/p10-cropped.jpg", "acme/p10.jpg")}
    pd.testing.assert_frame_equal(kept, fresh)
    assert counts["candidate_search_embedding_photos"] == 2  # the new photos (the kept lists hold everyone), not all 11

"""Nearest-neighbour lists kept from one run to the next, so that a night's candidate search costs
what changed instead of the square of the population.

The near-duplicate search (pipeline/metrics/near_duplicates.py) asks, for every photo, which photos
are nearest to it by three sources: the whole-picture embedding, the face window, and each of its
nine region windows against every photo's whole view (pipeline/features/regions.py). Searched
afresh that is every photo against every other, every night: ~27 s of a 20,000-photo night on 2
cores, four times that at 40,000 while the index is exact, for a night that changed 1% of the photos.

So each source keeps, for every query vector of every photo, its `depth` nearest photos of the last
run's population, best first (`layout.neighbour_lists_file`), and a run brings them up to date:
- a photo that left the population leaves every list it was on, and its own lists go;
- a new photo's queries are searched against the whole population;
- every other list is searched against the new photos only (a small index) and keeps what it held
  plus the new photos that rank at or above its last surviving entry;
- a list left shorter than the search reads (it lost photos that left) is searched again.

Each step keeps one invariant: a list holds the |list| nearest photos of the population (or all of
them). Photos leaving take entries out of a list, and what stays is still the nearest of what is
left; a new photo below the list's last entry might rank below photos the list never held, so only
those above it join. The lists therefore equal a fresh search's up to ties at their last place and
floating-point rounding (tested against a fresh search over nights of additions and removals); the
near-duplicate candidates read only their first `need` entries, and `depth` is a few more so that a
list survives a few departures before it is searched again.

A fresh search runs where nothing is kept, where what is kept was made from other vectors
(`basis`: the embedder, the region views' or face signals' version) or too shallow, and where more
than half the population changed (then it is as cheap). With an approximate (IVF) index for the
whole population, kept lists are as good as a fresh search's or better: the kept photos' queries
meet the new photos in an exact index.

The lists hold row numbers and similarities, and the population's content hashes, which every
table of the run holds anyway; no vector. `forget` takes photos out of them (retention).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np

from pipeline import layout
from pipeline.features.index import IndexKind, VectorIndex, build_index, choose_kind, knn
from pipeline.warehouse import Warehouse

logger = logging.getLogger(__name__)

# Queries per search call: bounds the (queries, depth) result arrays and the float32 copy of a
# float16 block, whatever the population.
_QUERY_BLOCK = 8192


def depth_for(need: int) -> int:
    """How many neighbours a list keeps when the search reads `need`: a 1% night takes a photo out
    of a 16-entry list one night in ~6, so a list that may lose 5 is searched again after a month or so."""
    return need + max(4, need // 2)


@dataclass
class NeighbourLists:
    """Each photo's query vectors' nearest photos in one population, best first."""

    contents: list[str]  # the population: row i is the photo with this content hash
    rows: np.ndarray  # (photos, views, depth) int32 rows of `contents`, -1 past a list's end
    sims: np.ndarray  # (photos, views, depth) float32 similarities, -inf past a list's end

    def first(self, need: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, sims) of each list's first `need` entries, (photos, views, need)."""
        return self.rows[:, :, :need], self.sims[:, :, :need]


@dataclass(frozen=True)
class SearchCount:
    """What bringing a source's lists up to date searched."""

    photos_new: int  # photos whose queries were searched against the whole population
    photos_gone: int
    photos_searched_again: int  # kept photos a list of which lost too many entries: all their queries searched afresh
    fresh: bool  # nothing usable was kept: every query searched against the whole population
    why_fresh: str = ""

    @property
    def photos_searched(self) -> int:
        """Photos whose queries were searched against the whole population (a kept list searched
        again counts as its photo's)."""
        return self.photos_new + self.photos_searched_again

    def describe(self) -> str:
        if self.fresh:
            return f"searched afresh for {self.photos_new} photo(s) ({self.why_fresh or 'nothing kept'})"
        return f"{self.photos_new} photo(s) new, {self.photos_gone} gone, {self.photos_searched_again} searched again (lists too short)"


def _search(vindex: VectorIndex, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, sims) of `queries` (n, d), each (n, depth), padded with -1 / -inf."""
    rows = np.full((len(queries), depth), -1, np.int32)
    sims = np.full((len(queries), depth), -np.inf, np.float32)
    for start in range(0, len(queries), _QUERY_BLOCK):
        found_sims, found_rows = knn(vindex, queries[start : start + _QUERY_BLOCK], depth)
        width = min(depth, found_rows.shape[1])
        rows[start : start + len(found_rows), :width] = found_rows[:, :width]
        sims[start : start + len(found_rows), :width] = np.where(found_rows[:, :width] >= 0, found_sims[:, :width], -np.inf)
    return rows, sims


def _flat(queries: np.ndarray) -> np.ndarray:
    return queries.reshape(-1, queries.shape[-1])


def search_lists(
    contents: list[str], targets: np.ndarray, queries: np.ndarray, depth: int, kind: IndexKind = "auto", vindex: VectorIndex | None = None
) -> NeighbourLists:
    """A fresh search: each of `queries` (photos, views, d) against every target (photos, d), the
    target of row i being photo i's. `vindex`: an index of `targets` already built."""
    n, n_views = queries.shape[:2]
    vindex = vindex or build_index(targets, contents, kind)
    rows, sims = _search(vindex, _flat(queries), depth)
    return NeighbourLists(list(contents), rows.reshape(n, n_views, depth), sims.reshape(n, n_views, depth))


def update_lists(
    previous: NeighbourLists,
    contents: list[str],
    targets: np.ndarray,
    queries: np.ndarray,
    need: int,
    kind: IndexKind = "auto",
    vindex: VectorIndex | None = None,
) -> tuple[NeighbourLists, int]:
    """`previous` brought up to date for the population `contents` (module docstring), and how many
    kept photos were searched again (a list of theirs too short). `queries`, `targets` and `vindex` as for `search_lists`."""
    n, n_views = queries.shape[:2]
    depth = previous.rows.shape[2]
    new_row = {content: i for i, content in enumerate(contents)}
    old_to_new = np.array([new_row.get(content, -1) for content in previous.contents], np.int64)
    kept_old = np.flatnonzero(old_to_new >= 0)
    kept_new = old_to_new[kept_old]
    known = set(previous.contents)
    added = np.array([i for i, content in enumerate(contents) if content not in known], np.int64)

    # The kept photos' lists, their entries renumbered, those of departed photos dropped (order kept).
    complete = (previous.rows[kept_old] >= 0).sum(axis=2) == len(previous.contents)  # the list held the whole population
    rows, sims = _renumbered(previous.rows[kept_old], previous.sims[kept_old], old_to_new)
    survivors = (rows >= 0).sum(axis=2)
    last = np.take_along_axis(sims, np.maximum(survivors - 1, 0)[..., None], 2)[..., 0]
    # A new photo joins a list at or above its last surviving entry (anywhere, where the list held
    # everything); an emptied list takes none and is searched again below.
    floor = np.where(complete, -np.inf, np.where(survivors > 0, last, np.inf)).astype(np.float32)
    if len(added):
        small = build_index(targets[added], [contents[i] for i in added], "flat")
        found_rows, found_sims = _search(small, _flat(queries[kept_new]), min(depth, len(added)))
        found_rows = np.where(found_rows >= 0, added[np.maximum(found_rows, 0)], -1).reshape(len(kept_new), n_views, -1)
        found_sims = found_sims.reshape(len(kept_new), n_views, -1)
        joins = (found_rows >= 0) & (found_sims >= floor[..., None])
        rows = np.concatenate([rows, np.where(joins, found_rows, -1)], axis=2)
        sims = np.concatenate([sims, np.where(joins, found_sims, -np.inf)], axis=2).astype(np.float32)
        order = np.argsort(-sims, axis=2, kind="stable")[:, :, :depth]
        rows, sims = np.take_along_axis(rows, order, 2), np.take_along_axis(sims, order, 2)

    merged_rows = np.full((n, n_views, depth), -1, np.int64)
    merged_sims = np.full((n, n_views, depth), -np.inf, np.float32)
    merged_rows[kept_new], merged_sims[kept_new] = rows[:, :, :depth], sims[:, :, :depth]
    short = np.zeros((n, n_views), bool)
    short[kept_new] = (rows[:, :, :depth] >= 0).sum(axis=2) < min(need, n)
    short_photos = np.flatnonzero(short.any(axis=1))
    searched = np.union1d(added, short_photos).astype(np.int64)
    if len(searched):
        vindex = vindex or build_index(targets, contents, kind)
        fresh_rows, fresh_sims = _search(vindex, _flat(queries[searched]), depth)
        merged_rows[searched] = fresh_rows.reshape(len(searched), n_views, depth)
        merged_sims[searched] = fresh_sims.reshape(len(searched), n_views, depth)
    return NeighbourLists(list(contents), merged_rows.astype(np.int32), merged_sims), len(short_photos)


def kept_lists(
    warehouse: Warehouse,
    source: str,
    basis: str,
    contents: list[str],
    targets: np.ndarray,
    queries: np.ndarray,
    need: int,
    vindex: VectorIndex | None = None,
) -> tuple[NeighbourLists, SearchCount]:
    """The lists of one candidate source (`source`, e.g. "region-views") for the population `contents`,
    brought up to date from the last run's where they were made from the same vectors (`basis`),
    else searched afresh; kept for the next run. Targets, queries and `vindex` as for `search_lists`."""
    depth = depth_for(need)
    key = layout.neighbour_lists_file(source)
    previous, why = _read(warehouse, key, basis, depth, queries.shape[1]) if warehouse.exists(key) else (None, "none kept")
    n_new = n_gone = 0
    if previous is not None:
        known, now = set(previous.contents), set(contents)
        n_new, n_gone = len(now - known), len(known - now)
        if n_new + n_gone > len(contents) / 2:
            previous, why = None, f"{n_new} photo(s) new and {n_gone} gone of {len(contents)}"
    kind = (
        vindex.kind
        if vindex is not None
        else "flat"
        if previous is not None
        else choose_kind(len(contents), targets.shape[1], warehouse)[0]
    )
    if previous is None:
        lists = search_lists(contents, targets, queries, depth, kind, vindex)  # type: ignore[arg-type]
        count = SearchCount(len(contents), 0, 0, fresh=True, why_fresh=why)
    else:
        # Flat where no index is given: only the new photos and the lists that ran short meet the whole population.
        lists, searched_again = update_lists(previous, contents, targets, queries, need, kind, vindex)  # type: ignore[arg-type]
        count = SearchCount(n_new, n_gone, searched_again, fresh=False)
    if previous is None or count.photos_searched or count.photos_gone or lists.contents != previous.contents:
        _write(warehouse, key, basis, lists)  # else the kept file holds these very lists: a rerun rewrites nothing
    return lists, count


def _renumbered(rows: np.ndarray, sims: np.ndarray, new_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lists whose entries are renumbered by `new_row` (old row -> new row, -1: the photo left), the
    entries of photos that left dropped and the rest kept in their order, first."""
    rows = np.where(rows >= 0, new_row[np.maximum(rows, 0)], -1)
    sims = np.where(rows >= 0, sims, -np.inf).astype(np.float32)
    order = np.argsort(rows < 0, axis=2, kind="stable")
    return np.take_along_axis(rows, order, 2), np.take_along_axis(sims, order, 2)


def _load(warehouse: Warehouse, key: str) -> tuple[str, NeighbourLists]:
    """(basis, lists) as written by `_write`; OSError, ValueError or KeyError where the file is not one."""
    with np.load(io.BytesIO(warehouse.read_bytes(key)), allow_pickle=False) as stored:
        return str(stored["basis"]), NeighbourLists(stored["contents"].tolist(), stored["rows"], stored["sims"])


def _read(warehouse: Warehouse, key: str, basis: str, depth: int, n_views: int) -> tuple[NeighbourLists | None, str]:
    """The kept lists, or None and why they cannot be brought up to date."""
    try:
        kept_basis, kept = _load(warehouse, key)
    except (OSError, ValueError, KeyError) as error:
        return None, f"unreadable ({error})"
    rows, sims, contents = kept.rows, kept.sims, kept.contents
    if kept_basis != basis:
        return None, f"made from other vectors ({kept_basis})"
    if rows.ndim != 3 or rows.shape != sims.shape or rows.shape[0] != len(contents) or rows.shape[1] != n_views or rows.shape[2] < depth:
        return None, f"kept {rows.shape} lists, {n_views} view(s) of {depth} needed"
    if rows.size and (rows.min() < -1 or rows.max() >= len(contents)) or len(set(contents)) != len(contents):
        return None, "unreadable (rows that name no photo, or a photo twice)"
    return NeighbourLists(contents, rows[:, :, :depth], sims[:, :, :depth]), ""


def _write(warehouse: Warehouse, key: str, basis: str, lists: NeighbourLists) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, basis=np.array(basis), contents=np.array(lists.contents, dtype=str), rows=lists.rows, sims=lists.sims)
    warehouse.write_bytes(key, buffer.getvalue())


def forget(warehouse: Warehouse, contents: set[str]) -> int:
    """Take `contents` out of every kept list (their own lists and the entries that name them);
    how many photos were taken out. What is left keeps the invariant: a list that loses entries
    still holds the nearest of what is left, and is searched again when too short."""
    taken = 0
    for key in warehouse.keys_matching(layout.neighbour_lists_file("*")):
        try:
            basis, kept = _load(warehouse, key)
        except (OSError, ValueError, KeyError):
            warehouse.remove(key)  # it may name them and cannot be edited: the next run searches afresh
            logger.warning("neighbour lists %s unreadable: deleted", key)
            continue
        stay = np.array([content not in contents for content in kept.contents], bool)
        if stay.all():
            continue
        rows, sims = _renumbered(kept.rows[stay], kept.sims[stay], np.where(stay, np.cumsum(stay) - 1, -1))
        _write(warehouse, key, basis, NeighbourLists([c for c, s in zip(kept.contents, stay) if s], rows.astype(np.int32), sims))
        taken = max(taken, int((~stay).sum()))
    return taken

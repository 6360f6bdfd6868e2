"""One writer per run date: a lease in the warehouse (`pipeline.layout.run_lease`).

Two runs of one date on one warehouse at once would interleave their partitions (one crashed on a
missing key, or the last writer silently won). A run takes the lease before its first write and
gives it back when it finishes or fails. A lease whose holder is gone is stale: one taken on this
host by a process that no longer exists is taken over at once; any other is taken over once it has
expired (`MAX_HOLD`), or by hand: `homog lease clear --run-date D` (after checking that the holder
named in the error is really gone).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass

from pipeline import layout
from pipeline.warehouse import Warehouse

MAX_HOLD = dt.timedelta(hours=12)  # longer than any run on record; a lease older than this is stale


class LeaseHeld(RuntimeError):
    """Another run holds the run date; the message names it and says how to clear a stale lease."""


@dataclass(frozen=True)
class Lease:
    run_date: str
    holder: str  # who, in words: host, process, command
    host: str
    pid: int
    token: str
    taken_at: str
    expires_at: str
    # An orchestrator that keeps its own runs of the date apart (Airflow: one active run per DAG) takes
    # over a lease its own earlier run left; its tasks end with their processes, so pid is 0 (not checked).
    owner: str = ""

    def stale(self, now: dt.datetime) -> bool:
        if now >= dt.datetime.fromisoformat(self.expires_at):
            return True
        return bool(self.pid) and self.host == socket.gethostname() and not _alive(self.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def read_lease(warehouse: Warehouse, run_date: str) -> Lease | None:
    key = layout.run_lease(run_date)
    if not warehouse.exists(key):
        return None
    try:
        return Lease(**json.loads(warehouse.read_bytes(key)))
    except (ValueError, TypeError):  # unreadable: treated as held, never silently overwritten
        return Lease(run_date, "an unreadable lease file", "", 0, "", "", dt.datetime.max.replace(tzinfo=dt.UTC).isoformat())


def take_lease(warehouse: Warehouse, run_date: str, holder: str, owner: str = "") -> Lease:
    """Take the run date's lease, or raise LeaseHeld naming who has it. `owner`: see `Lease.owner`."""
    now = dt.datetime.now(dt.UTC)
    pid = 0 if owner else os.getpid()
    lease = Lease(run_date, holder, socket.gethostname(), pid, uuid.uuid4().hex, now.isoformat(), (now + MAX_HOLD).isoformat(), owner)
    key = layout.run_lease(run_date)
    for _ in range(2):
        if warehouse.create_exclusive(key, json.dumps(asdict(lease), indent=2).encode()):
            return lease
        held = read_lease(warehouse, run_date)
        if held is None:
            continue  # released meanwhile: try again
        if not held.stale(now) and not (owner and held.owner == owner):
            raise LeaseHeld(
                f"run date {run_date} in {warehouse.uri()} is being written by {held.holder} (host {held.host}, pid {held.pid}) "
                f"since {held.taken_at}; if that run is gone, clear its lease with `homog lease clear --run-date {run_date}`"
            )
        warehouse.remove(key)  # stale: its holder is gone
    raise LeaseHeld(f"could not take the lease of run date {run_date} in {warehouse.uri()}: another run took it just now")


def release_lease(warehouse: Warehouse, lease: Lease) -> None:
    """Give the lease back, if it is still ours (a cleared and re-taken lease is someone else's)."""
    held = read_lease(warehouse, lease.run_date)
    if held is not None and held.token == lease.token:
        warehouse.remove(layout.run_lease(lease.run_date))


def clear_lease(warehouse: Warehouse, run_date: str) -> Lease | None:
    """Remove the run date's lease whoever holds it (`homog lease clear`); returns what was there."""
    held = read_lease(warehouse, run_date)
    warehouse.remove(layout.run_lease(run_date))
    return held


def release_owned(warehouse: Warehouse, run_date: str, owner: str) -> None:
    """Give back the lease an orchestrator's run took in another task (`owner`), if it still holds it."""
    held = read_lease(warehouse, run_date)
    if held is not None and owner and held.owner == owner:
        warehouse.remove(layout.run_lease(run_date))

"""CPU-bound work spread over worker processes, sized by the machine that runs it.

Threads do not spread this work: dlib's face descriptor holds the GIL for its whole 60 ms (two
threads ran at 1.0x one), and verification is many short numpy and OpenCV calls between which the
GIL is held (two threads ran at 1.25x one). Processes do: each worker runs its own interpreter.

How many: `compute.workers` in the settings, 0 (the default) for every CPU this process may use
(its affinity mask, which a container or `taskset` narrows), never a number fitted to one machine.
Small jobs stay in this process, where a worker's start-up (~0.5 s: an interpreter and its imports)
would cost more than it saves. Where the workers fail as a whole (one is killed, or none can start),
the work is done in this process and the log says why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
logger = logging.getLogger(__name__)

# Below this many seconds of work in all, worker processes cost more than they save.
MIN_PARALLEL_SECONDS = 2.0
# What a worker pool leaves in shared memory when the process that started it is killed before the
# pool shuts down (a nightly killed for memory, or by a task's timeout): joblib's memmapping folders
# (the large arrays handed to workers) and loky's named semaphores, each named after that process's
# pid. Nothing else removes them, and what they hold is memory that no process's RSS shows.
POOL_LEFTOVER_PREFIXES = ("joblib_memmapping_folder_", "sem.loky-")
# Where joblib puts its memmapping folders: the shared-memory tmpfs where it has room, else
# $JOBLIB_TEMP_FOLDER or the temporary folder.
POOL_FOLDERS: tuple[str, ...] = ("/dev/shm",)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_count(setting: int) -> int:
    """`compute.workers` as a number of processes: 0 means every usable CPU."""
    return setting if setting > 0 else usable_cpus()


def split(items: Sequence[Item], parts: int) -> list[list[Item]]:
    """`items` in at most `parts` consecutive runs of nearly equal length (jobs for `process_map`)."""
    return chunked(items, -(-len(items) // max(1, parts)))


def chunked(items: Sequence[Item], size: int) -> list[list[Item]]:
    """`items` in consecutive runs of `size` (the last one shorter)."""
    size = max(1, size)
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def remove_abandoned(parents: Iterable[str], prefixes: Iterable[str]) -> int:
    """Delete the files and folders in `parents` named `<prefix><pid>-...` or `<prefix><pid>_...` whose
    process `pid` has ended: their maker was killed before its own clean-up ran. An entry of a live
    process, or of another user's, is left alone. Returns how many were deleted.

    This trusts a pid to name the same process for everyone who sees these folders: true on one
    machine or in one container, not where containers with pid namespaces of their own share
    /dev/shm (Docker's `--ipc=host`). There, a live run's entry could be taken for a dead one's."""
    import glob
    import re
    import shutil

    owner = re.compile(r"(\d+)[-_]")
    deleted = 0
    for parent in dict.fromkeys(parents):  # each folder once, in order
        for prefix in prefixes:
            for path in glob.glob(os.path.join(glob.escape(parent), f"{glob.escape(prefix)}*")):
                pid = owner.match(os.path.basename(path).removeprefix(prefix))
                if pid is None or _alive(int(pid.group(1))):
                    continue
                try:
                    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
                    deleted += 1
                except OSError:  # another user's, or gone meanwhile
                    continue
    return deleted


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to clean
        return True
    return True


def remove_abandoned_pools() -> int:
    """Delete what the worker pools of killed processes left (`POOL_LEFTOVER_PREFIXES`); run before a
    pool starts, so that a run after a killed one gets that memory back."""
    import tempfile

    parents = [*POOL_FOLDERS, os.environ.get("JOBLIB_TEMP_FOLDER") or tempfile.gettempdir()]
    deleted = remove_abandoned(parents, POOL_LEFTOVER_PREFIXES)
    if deleted:
        logger.info("deleted %d worker-pool leftover(s) of killed processes from shared memory", deleted)
    return deleted


def stop_workers() -> None:
    """Stop the worker processes that `process_imap` keeps up between calls, where there are any. A
    run does so after each stage: idle, they keep what their last jobs left in their heaps and
    modules (verification's, face identity's), and that counted in every later stage's peak, ~600 MB
    of the report's 1,336 MB at 2,000 photos. A stage that needs workers again starts fresh ones:
    ~1-2 s a stage (interpreters and their imports), 2-3 s a night in all."""
    from joblib.externals.loky import reusable_executor

    # The executor loky keeps between calls (a private name: its public getter would start one to
    # stop it). Where a joblib release renames it, workers stay up until their idle timeout.
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


def _in_worker(function: Callable[[Item], Result], item: Item) -> Result:
    """`function(item)` in a worker process, which owns one CPU: a library that starts threads of its
    own (OpenCV; joblib already caps OpenMP's and BLAS's in its workers) would otherwise run
    `workers` x `cpus` threads on `cpus` CPUs."""
    import cv2

    cv2.setNumThreads(1)
    return function(item)


def process_map(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    workers: int,
    estimated_seconds: float,
) -> list[Result]:
    """`[function(item) for item in items]`, in worker processes where there are several and the work
    is worth them (`process_imap`, all at once)."""
    return list(process_imap(function, items, workers, estimated_seconds))


def process_imap(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    workers: int,
    estimated_seconds: float,
) -> Iterator[Result]:
    """`function(item)` for each item, in worker processes where there are several and the work is
    worth them (`estimated_seconds` in one process, an order of magnitude: at least
    `MIN_PARALLEL_SECONDS`). Results come back in the items' order, each as soon as it and those
    before it are done (what a caller that saves its work as it goes needs); an exception in a job is
    raised here.

    joblib's loky workers: fresh interpreters (no lock or thread pool of this process copied into them
    half-held, as a fork could), which do not run the calling script's main module again, and which
    stay up for the next call (verification's next block) until `stop_workers`. `function` must be
    importable by name (module level) and the items must pickle."""
    from concurrent.futures import BrokenExecutor

    import joblib

    workers = min(workers, len(items))
    if workers < 2 or estimated_seconds < MIN_PARALLEL_SECONDS:
        yield from (function(item) for item in items)
        return
    remove_abandoned_pools()
    done = 0
    results = joblib.Parallel(n_jobs=workers, backend="loky", return_as="generator")(
        joblib.delayed(_in_worker)(function, item) for item in items
    )
    try:
        for result in results:
            done += 1
            yield result
    except (BrokenExecutor, AssertionError) as exc:
        # The pool broke (a worker killed, say out of memory) or could not start ("daemonic processes
        # are not allowed to have children"): what came back is kept, the rest is done here instead.
        # A job's own error is not caught: it is raised as the job raised it.
        if isinstance(exc, AssertionError) and "daemonic" not in str(exc):
            raise
        logger.warning("worker processes failed (%s): running the %d item(s) left in this process instead", exc, len(items) - done)
        yield from (function(item) for item in items[done:])
    finally:
        results.close()  # a caller that stops early (an error of its own) cancels the jobs not started

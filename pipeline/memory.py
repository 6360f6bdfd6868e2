"""A stage's peak memory, for run.json: so that a night that needs more memory says which stage did.

The figure is the largest resident set of this process while the stage ran, plus that of each of
its worker processes (pipeline/parallel.py: they hold memory of their own), read from Linux's
high-water mark (`VmHWM` in /proc/<pid>/status) after resetting it as the stage starts (writing 5 to
/proc/<pid>/clear_refs). Summing the workers' peaks can only overstate the moment when all peaked at
once, never understate it. Where the reset is not possible (another system, a kernel that refuses
it), there is no figure: a lifetime peak would blame a stage for what an earlier one used.
"""

from __future__ import annotations

from pathlib import Path


def _processes() -> list[int]:
    """This process and its worker processes (every descendant)."""
    import psutil

    me = psutil.Process()
    try:
        return [me.pid, *(child.pid for child in me.children(recursive=True))]
    except psutil.Error:
        return [me.pid]


def _reset(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _high_water_kb(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone since (a worker that finished): what it held is freed
        return None
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)


def reset_peaks() -> bool:
    """Start measuring: every process's high-water mark set to what it holds now. False where this
    process's cannot be (then `peak_mb` has no figure to give)."""
    own, *workers = _processes()
    for pid in workers:
        _reset(pid)  # a worker whose mark stays: its peak since it started, an overstatement at worst
    return _reset(own)


def peak_mb(measuring: bool) -> float | None:
    """The peak resident megabytes of this process and its workers since `reset_peaks` (None where it
    returned False)."""
    if not measuring:
        return None
    marks = [_high_water_kb(pid) for pid in _processes()]
    if marks[0] is None:
        return None
    return round(sum(mark for mark in marks if mark is not None) / 1024, 1)


def release_freed() -> None:
    """Hand the memory this process has freed back to the system: Python's unreachable cycles, Arrow's
    pool of freed buffers (where Arrow is loaded: it keeps them for reuse) and glibc's free heap
    pages (`malloc_trim`, where the C library is glibc). Freed memory that stays with the process
    counts in its resident set, and in the peak of every later stage of a run."""
    import ctypes
    import gc
    import sys

    gc.collect()
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    try:
        # The symbols already loaded in this process, the C library's among them: no search for it.
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        pass

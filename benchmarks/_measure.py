"""Timing and memory helpers shared by the ``bench_*`` modules."""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class NotSupportedError(Exception):
    """The store has no API for this operation; the table shows ``n/a`` with the reason."""


def percentile(samples: list[float], q: float) -> float:
    """Return the q-th percentile (0..100) by nearest rank; p99 of 200 samples is the 2nd worst."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def time_each(fn: Callable[[int], object], count: int) -> list[float]:
    """Call ``fn(i)`` for i in range(count) and return each call's wall time in seconds."""
    out: list[float] = []
    clock = time.perf_counter
    for i in range(count):
        t0 = clock()
        fn(i)
        out.append(clock() - t0)
    return out


def time_budgeted(fn: Callable[[], object], max_reps: int, budget_s: float) -> list[float]:
    """Time ``fn`` at least once, then again until ``max_reps`` runs or ``budget_s`` spent.

    Slow whole-history operations (a peer's load at 100,000 messages) then cost about one
    run instead of ``max_reps``, which keeps the full suite inside its time budget.
    """
    gc.collect()
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < max_reps:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return out


def median(samples: list[float]) -> float:
    """Return the median of samples."""
    return statistics.median(samples)


def peak_memory(fn: Callable[[], T]) -> tuple[int, T]:
    """Return (peak bytes allocated by Python while ``fn`` ran, its result), via tracemalloc.

    tracemalloc sees allocations made through Python's allocators (objects, bytes), not
    private buffers of C/Rust extensions; the figures compare stores, not RSS.
    """
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base, result


def drain(value: Any) -> list[Any]:
    """Materialise an iterator (or return a list) so lazy APIs are timed doing their work."""
    return value if isinstance(value, list) else list(value)

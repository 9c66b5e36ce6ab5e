"""The seed usage pattern: ``messages = load() or []``, then after every turn append + save().

Measures the per-save cost of ``codec.save(messages)`` (durability "fsync", encrypted) as the
history grows to 10,000 messages: at each point (100 / 1,000 / 5,000 / 10,000) the history is
first brought to size with one untimed save, then ``seed_turns`` turns are timed, each one
``messages.append(m); save(messages)``. Also times a restart at each point: open a new store
and ``load() or []``, as the seed code does at process start.

Data: the Taskmaster-4 corpus replayed as one long conversation (see bench_storage).
Peer: the whole-file approach (decrypt all, re-encrypt all, replace the file, fsync) — what
the seed code did before conversation-codec. Its save() is exactly that; ours should only
append the new tail.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._measure import median, percentile, time_each
from benchmarks._store import Store
from benchmarks._workload import Message, Workload
from benchmarks.bench_storage import Cell, Config


def _one(
    cls: type[Store], wl: Workload, cfg: Config, key: bytes, tmp: Path
) -> dict[str, dict[str, Cell]]:
    directory = tmp / f"seed-{cls.name}"
    store: Any = cls(directory, key)
    out: dict[str, dict[str, Cell]] = {}
    messages: list[Message] = []
    try:
        store.open("fsync")
        messages = store.load() or []
        for point in cfg.seed_points:
            start = max(len(messages), point - cfg.seed_turns)
            messages.extend(wl.take(len(messages), start))
            store.save(messages)
            turns = wl.take(start, start + cfg.seed_turns)

            def turn(i: int, turns: list[Message] = turns) -> None:
                messages.append(turns[i])
                store.save(messages)

            samples = time_each(turn, cfg.seed_turns)
            store.close()
            t0 = time.perf_counter()
            store.open("fsync")
            reloaded = store.load() or []
            reopen = time.perf_counter() - t0
            cell: dict[str, Cell] = {
                "save_median": median(samples),
                "save_p99": percentile(samples, 99),
                "reopen_load": reopen,
                "messages": len(messages),
            }
            if len(reloaded) != len(messages):
                cell["check"] = f"load() returned {len(reloaded)} of {len(messages)}"
            out[str(point)] = cell
        store.close()
    except Exception as exc:
        out["error"] = {"error": f"error: {type(exc).__name__}: {exc}"[:300]}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return out


def run(
    stores: list[type[Store]], wl: Workload, cfg: Config, key: bytes, tmp: Path
) -> dict[str, dict[str, dict[str, Cell]]]:
    """Return ``{store: {point: {metric: value}}}`` for the stores that have save()."""
    out = {}
    for cls in stores:
        t0 = time.perf_counter()
        out[cls.name] = _one(cls, wl, cfg, key, tmp)
        print(
            f"  seed-pattern {cls.name:<17} {time.perf_counter() - t0:6.1f}s",
            file=sys.stderr,
            flush=True,
        )
    return out

"""Per-history-size storage benchmark: conversation-codec against every peer, same process.

Measures, at each history size (100 / 1,000 / 10,000 / 100,000 messages): append latency
(median and p99 of a window of appends made once the history has reached the size,
interleaved across stores) under durability "fsync" and "flush"; extend() throughput while
building; open + first append; load() per message; tail(20); get(i) at random i; a
date-range query covering 1% of the history; a keyword search; bytes on disk / bytes of
plaintext message JSON; and tracemalloc peak of load() and of the search. Whole-history
reads report the best of a few runs (as timeit does): other processes share the CPUs.

Data: the Taskmaster-4 corpus (../shared/corpus/taskmaster4-chat.jsonl.gz) replayed as one
long conversation (cycled past its 36,080 messages), and a synthetic long-message variant
(seeded; 1-20 KB assistant answers with code), built with extend() in batches and stamped
one second apart from 2024-01-01.

Peers (benchmarks/_peers.py): openai-agents EncryptedSession over SQLiteSession and plain
SQLiteSession (file DB); LangChain FileChatMessageHistory and the whole-file Fernet approach
(both capped at 2,000 messages: they rewrite the file per message); hand-tuned sqlite3 (WAL,
zstd + Fernet per row); the floor (zstd + Fernet records os.write-appended to a bare file).
conversation-codec runs encrypted (the reference for every ratio) and plaintext.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._measure import (
    NotSupportedError,
    median,
    peak_memory,
    percentile,
    time_budgeted,
    time_each,
)
from benchmarks._store import Store
from benchmarks._workload import BASE_TS, SEARCH_KEYWORD, Message, Workload, timestamps

Cell = float | int | str  # a number, or "n/a: why" / "capped" / "error: why"
FIXED_RANGE = 20  # messages in the fixed-size date range
TAIL_N = 20
GET_SEED = 7


@dataclass(frozen=True)
class Config:
    """How much work each measurement does (``--quick`` shrinks all of it)."""

    sizes: tuple[int, ...]
    synthetic_sizes: tuple[int, ...]
    window: int  # appends timed per durability, once the history has reached the size
    reps: int  # max repetitions of a read operation
    budget_s: float  # stop repeating a read operation after this long
    get_samples: int  # random get(i) calls
    batch: int = 2_000  # messages per extend() while building
    seed_points: tuple[int, ...] = (100, 1_000, 5_000, 10_000)
    seed_turns: int = 20
    rounds: int = 10  # append windows are interleaved across stores in this many slices


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _guard(metrics: dict[str, Cell], keys: Sequence[str], fn: Callable[[], None]) -> None:
    """Run one measurement; on n/a or failure fill its keys with the reason instead."""
    try:
        fn()
    except NotSupportedError as exc:
        metrics.update(dict.fromkeys(keys, f"n/a: {exc}"))
    except Exception as exc:  # a peer failing must not sink the run; the table shows it
        metrics.update(dict.fromkeys(keys, f"error: {type(exc).__name__}: {exc}"[:200]))


def _build(store: Store, wl: Workload, size: int, cfg: Config) -> float:
    store.open("flush")
    t0 = time.perf_counter()
    for start in range(0, size, cfg.batch):
        stop = min(size, start + cfg.batch)
        store.extend(wl.take(start, stop), timestamps(start, stop))
    built = time.perf_counter() - t0
    store.close()
    # Write the build's dirty pages out now, or the first fsync measured would pay for them.
    os.sync()
    return built


def _appends(live: list[_Live], wl: Workload, cfg: Config) -> None:
    """Time ``cfg.window`` appends per store and durability, interleaving the stores.

    Appends run round-robin in ``cfg.rounds`` slices per store: fsync latency on a shared
    (virtual) disk drifts between ~0.1 and ~4 ms over seconds, and interleaving spreads
    those phases over every store instead of charging them to whichever ran at the time.
    """
    for dur in ("flush", "fsync"):
        keys = [f"append_{dur}_median", f"append_{dur}_p99", f"open_append_{dur}"]
        group = []
        for lv in live:
            if dur not in lv.store.durabilities:
                lv.m.update(dict.fromkeys(keys, f"n/a: no {dur} mode"))
                continue
            lv.pending = wl.take(lv.count, lv.count + cfg.window + 3)
            t0 = time.perf_counter()
            lv.store.open(dur)
            lv.store.append(lv.pending[0])
            lv.m[f"open_append_{dur}"] = time.perf_counter() - t0
            lv.store.append(lv.pending[1])  # warm-up, not timed
            lv.store.append(lv.pending[2])
            lv.samples = []
            group.append(lv)
        per_round = -(-cfg.window // cfg.rounds)
        for r in range(cfg.rounds):
            for lv in group:
                chunk = lv.pending[3 + r * per_round : 3 + min(cfg.window, (r + 1) * per_round)]

                def one(i: int, chunk: list[Message] = chunk, store: Store = lv.store) -> None:
                    store.append(chunk[i])

                lv.samples += time_each(one, len(chunk))
        for lv in group:
            lv.store.close()
            lv.m[f"append_{dur}_median"] = median(lv.samples)
            lv.m[f"append_{dur}_p99"] = percentile(lv.samples, 99)
            lv.count += len(lv.pending)


def _reads(
    store: Store, wl: Workload, size: int, count: int, cfg: Config, m: dict[str, Cell]
) -> None:
    def load() -> None:
        runs = time_budgeted(store.load, cfg.reps, cfg.budget_s)
        m["load_per_msg"] = min(runs) / count
        got = store.load()
        if len(got) != count:
            m["check"] = f"load returned {len(got)} of {count} messages"

    def tail() -> None:
        m["tail20"] = min(time_budgeted(lambda: store.tail(TAIL_N), cfg.reps * 4, cfg.budget_s))
        got = store.tail(TAIL_N)
        if store.returns_dicts and got != wl.take(count - TAIL_N, count):
            m["check"] = "tail(20) differs from the messages written"

    def get() -> None:
        rng = random.Random(GET_SEED)
        idx = [rng.randrange(count) for _ in range(cfg.get_samples)]
        runs: list[float] = []
        deadline = time.perf_counter() + cfg.budget_s
        for i in idx:
            t0 = time.perf_counter()
            store.get(i, count)
            runs.append(time.perf_counter() - t0)
            if time.perf_counter() > deadline and len(runs) >= 3:
                break
        m["get_random"] = median(runs)
        if store.returns_dicts and store.get(idx[0], count) != wl.take(idx[0], idx[0] + 1)[0]:
            m["check"] = f"get({idx[0]}) differs from the message written"

    since = BASE_TS + size // 2
    until = since + max(1, size // 100)

    def between() -> None:
        m["between"] = min(
            time_budgeted(lambda: store.between(since, until), cfg.reps, cfg.budget_s)
        )
        m["between_hits"] = hits = len(store.between(since, until))
        if hits != until - since:  # built messages are stamped one second apart
            m["check"] = f"date range returned {hits} messages, expected {until - since:.0f}"

    fixed_since = BASE_TS + size // 2
    fixed_until = fixed_since + min(size, FIXED_RANGE)

    def between_fixed() -> None:
        # A window of FIXED_RANGE messages whatever the history size: O(log n + k) shows flat.
        m["between_fixed"] = min(
            time_budgeted(
                lambda: store.between(fixed_since, fixed_until), cfg.reps * 4, cfg.budget_s
            )
        )
        hits = len(store.between(fixed_since, fixed_until))
        if hits != fixed_until - fixed_since:
            m["check"] = f"fixed date range returned {hits}, expected {fixed_until - fixed_since}"

    def search() -> None:
        runs = time_budgeted(lambda: store.search(SEARCH_KEYWORD), cfg.reps, cfg.budget_s)
        m["search"] = min(runs)
        m["search_hits"] = len(store.search(SEARCH_KEYWORD))

    def memory() -> None:
        m["load_peak_mem"] = peak_memory(store.load)[0]

    def search_memory() -> None:
        m["search_peak_mem"] = peak_memory(lambda: store.search(SEARCH_KEYWORD))[0]

    _guard(m, ["load_per_msg"], load)
    _guard(m, ["tail20"], tail)
    _guard(m, ["get_random"], get)
    _guard(m, ["between"], between)
    _guard(m, ["between_fixed"], between_fixed)
    _guard(m, ["search"], search)
    _guard(m, ["load_peak_mem"], memory)
    if isinstance(m.get("search"), float):
        _guard(m, ["search_peak_mem"], search_memory)
    else:
        m["search_peak_mem"] = m["search"]


@dataclass
class _Live:
    """A built store being measured, with its metrics and message count."""

    store: Store
    m: dict[str, Cell]
    count: int
    pending: list[Message] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)


def _fail(m: dict[str, Cell], exc: Exception) -> None:
    m["error"] = f"error: {type(exc).__name__}: {exc}"[:300]


def measure_size(
    classes: Sequence[type[Store]], wl: Workload, size: int, cfg: Config, key: bytes, tmp: Path
) -> dict[str, dict[str, Cell]]:
    """Build every store to ``size`` messages, measure them, delete their directories.

    :returns: ``{store: {metric: value}}``.
    """
    cells: dict[str, dict[str, Cell]] = {}
    live: list[_Live] = []
    try:
        for cls in classes:
            m: dict[str, Cell] = {}
            cells[cls.name] = m
            if cls.cap is not None and size > cls.cap:
                m["capped"] = f"capped: built to {cls.cap:,} messages max"
                continue
            store = cls(tmp / f"{cls.name}-{wl.name}-{size}", key)
            try:
                m["build_s"] = _build(store, wl, size, cfg)
                live.append(_Live(store, m, size))
            except Exception as exc:
                _fail(m, exc)
        try:
            _appends(live, wl, cfg)
        except Exception as exc:  # which store failed is in the message
            for lv in live:
                _fail(lv.m, exc)
            live = []
        for lv in live:
            t0 = time.perf_counter()
            try:
                _finish(lv, wl, size, cfg)
            except Exception as exc:
                _fail(lv.m, exc)
            status = lv.m.get("error") or lv.m.get("check") or "ok"
            _log(
                f"  {wl.name:>14} {size:>7,} {lv.store.name:<17} build {lv.m['build_s']:5.1f}s"
                f"  reads {time.perf_counter() - t0:5.1f}s  {status}"
            )
    finally:
        for cls in classes:
            shutil.rmtree(tmp / f"{cls.name}-{wl.name}-{size}", ignore_errors=True)
    return cells


def _finish(lv: _Live, wl: Workload, size: int, cfg: Config) -> None:
    lv.store.open("flush")
    try:
        _reads(lv.store, wl, size, lv.count, cfg, lv.m)
    finally:
        lv.store.close()
    on_disk, plain = lv.store.bytes_on_disk(), wl.plaintext_bytes(0, lv.count)
    lv.m.update(messages=lv.count, bytes_on_disk=on_disk, plaintext_bytes=plain)
    lv.m["bytes_ratio"] = on_disk / plain
    lv.m["extend_per_msg"] = float(lv.m["build_s"]) / size


def run(
    stores: Sequence[type[Store]],
    wl: Workload,
    sizes: Sequence[int],
    cfg: Config,
    key: bytes,
    tmp: Path,
) -> dict[str, dict[str, dict[str, Cell]]]:
    """Return ``{store: {size: {metric: value}}}`` for one workload."""
    out: dict[str, dict[str, dict[str, Cell]]] = {cls.name: {} for cls in stores}
    for size in sizes:
        for name, cell in measure_size(stores, wl, size, cfg, key, tmp).items():
            out[name][str(size)] = cell
    return out

"""Appends, interleaved: issue 15's append targets measured append by append against the floor.

The main suite (``python -m benchmarks``) times a window of appends of one store, then of the
next, so on a shared machine a burst of load (or a slow spell of the disk, for fsync) can land
on one store and not another. Here the contestants append in turn, one message each: the
i-th append of ours, then of the floor (zstd + Fernet appended to a bare file, ``os.write``
and ``fdatasync``), then of openai-agents' ``EncryptedSession``, then the (i+1)-th; each
store's figure is the median of its appends, and a run's ratio compares medians taken over the
same stretch of time. A run starts every store afresh (empty, then ``--warm`` messages so that
the log holds its zstd dictionary) and is repeated ``--runs`` times, each run in another of
the six orders of the contestants, so that over six runs each store appends after each other
store equally often; the ratios of every run are reported, since fsync figures move with the
disk from one minute to the next.

Targets: fsync append <= 1.25x the floor and >= 1.6x faster than EncryptedSession; flush
append <= 1.5x the floor.

    python -m benchmarks.bench_appends [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from benchmarks import _machine
from benchmarks._ours import Ours
from benchmarks._peers import AgentsEncrypted, Floor
from benchmarks._store import Store
from benchmarks._workload import DEFAULT_CORPUS, load_corpus, timestamps

CONTESTANTS: tuple[type[Store], ...] = (Ours, Floor, AgentsEncrypted)
TARGETS = {
    ("fsync", "floor"): 1.25,
    ("fsync", "agents-encrypted"): 1 / 1.6,
    ("flush", "floor"): 1.5,
}


def run_once(
    durability: str, messages: list[Any], warm: int, key: bytes, tmp: Path, shift: int
) -> dict[str, list[float]]:
    """One run: fresh stores, ``warm`` messages in batches, then each message of
    ``messages`` appended by every store in turn, in the ``shift``-th of the six orders;
    return each store's append times (s)."""
    # Every order in turn: in three runs each store follows each other store as often (an
    # append after a peer's fsync may find the disk or the caches in another state).
    order = list(itertools.permutations(CONTESTANTS))[shift % 6]
    stores: dict[str, Store] = {}
    for cls in order:
        store = cls(tmp / f"{cls.name}-{durability}-{shift}", key)
        store.open(durability)
        for i in range(0, warm, 500):
            stop = min(warm, i + 500)
            store.extend(messages[i:stop], timestamps(i, stop))
        stores[cls.name] = store
    times: dict[str, list[float]] = {name: [] for name in stores}
    clock = time.perf_counter
    try:
        for message in messages[warm:]:
            for name, store in stores.items():
                t0 = clock()
                store.append(message)
                times[name].append(clock() - t0)
    finally:
        for store in stores.values():
            store.close()
    return times


def main(argv: list[str] | None = None) -> None:
    """Run the rounds and write ``appends.json`` and ``appends.md`` (``appends_quick.*``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and appends")
    parser.add_argument("--runs", type=int, default=None, help="runs per durability (6)")
    parser.add_argument("--appends", type=int, default=None, help="timed appends per run")
    parser.add_argument("--warm", type=int, default=600, help="messages stored before timing")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    runs = args.runs or (2 if args.quick else 6)
    counts = {"fsync": 300 if args.quick else 1_500, "flush": 1_000 if args.quick else 3_000}
    if args.appends:
        counts = dict.fromkeys(counts, args.appends)
    key = Fernet.generate_key()
    wl = load_corpus(args.corpus)
    result: dict[str, Any] = {"loadavg_start": _machine.loadavg(), "warm": args.warm, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result["machine"] = _machine.describe(tmp)
        for durability in ("fsync", "flush"):
            messages = wl.take(0, args.warm + counts[durability])
            result["runs"][durability] = []
            for r in range(runs):
                times = run_once(durability, messages, args.warm, key, tmp / str(r), r)
                result["runs"][durability].append(
                    {
                        name: {
                            "median_us": statistics.median(ts) * 1e6,
                            "mean_us": statistics.fmean(ts) * 1e6,
                            "appends": len(ts),
                        }
                        for name, ts in times.items()
                    }
                )
    result["loadavg_end"] = _machine.loadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "appends_quick" if args.quick else "appends"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, " --quick" if args.quick else "")
    (args.out / f"{stem}.md").write_text(text)
    print(text)


def markdown(r: dict[str, Any], flags: str = "") -> str:
    """The report: each run's medians and ratios, then the median ratio against the targets."""
    m = r["machine"]
    lines = [
        "# Appends, interleaved (issue 15)",
        "",
        f"- commit: `{m.get('commit')}`; {m.get('cpu')}; {m.get('filesystem')}",
        f"- `python -m benchmarks.bench_appends{flags}`; load average {r['loadavg_start']} "
        f"at start, {r['loadavg_end']} at end (other processes share the CPUs)",
        f"- each run: fresh stores holding {r['warm']:,} corpus messages, then one append "
        "each in turn (each run in another order); figures are medians of a run's appends",
        "",
        "| durability | run | conversation-codec | floor | EncryptedSession | ours ÷ floor | "
        "ours ÷ ES |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    summary = []
    for durability, runs in r["runs"].items():
        floor_ratios, es_ratios = [], []
        for i, run in enumerate(runs, 1):
            ours, floor, es = (run[n]["median_us"] for n in ("ours", "floor", "agents-encrypted"))
            floor_ratios.append(ours / floor)
            es_ratios.append(ours / es)
            lines.append(
                f"| {durability} | {i} | {ours:.1f} µs | {floor:.1f} µs | {es:.1f} µs | "
                f"{ours / floor:.2f}x | {ours / es:.2f}x |"
            )
        summary.append((durability, floor_ratios, es_ratios))
    lines += [
        "",
        "| durability | ours ÷ floor: median (range) | target | ours ÷ ES: median (range) | "
        "target |",
        "|---|---|---|---|---|",
    ]
    for durability, fr, er in summary:
        ft = TARGETS.get((durability, "floor"))
        et = TARGETS.get((durability, "agents-encrypted"))
        lines.append(
            f"| {durability} | {_spread(fr)} | {f'≤ {ft:.2f}x' if ft else ''} | "
            f"{_spread(er)} | {f'≤ {et:.3f}x' if et else ''} |"
        )
    lines.append("")
    return "\n".join(lines)


def _spread(ratios: list[float]) -> str:
    """``median (min to max)`` of a run's ratios."""
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f} to {max(ratios):.2f})"


if __name__ == "__main__":
    main()

"""Append-cost scaling: conversation-codec's append latency at the largest history vs at 100.

An append-only log should append in constant time: the cost of one append to a
100,000-message history, divided by its cost at 100 messages, should stay near 1 for both
durability="fsync" and "flush". Measured by bench_storage (median and p99 of a window of
appends once the history has reached the size); this module turns those figures into ratios
for every store, so the codec's ratio can be read next to its peers' (the floor is ~1 by
construction; whole-file rewriting is O(n)).

Data: the Taskmaster-4 corpus replayed as one long conversation.
Run alone (codec + floor + hand-tuned sqlite only, corpus at 100 and 100,000 messages):
    python -m benchmarks.bench_append_scaling [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet

from benchmarks import bench_storage
from benchmarks._workload import DEFAULT_CORPUS, load_corpus
from benchmarks.bench_storage import Cell, Config

METRICS = ("append_fsync_median", "append_fsync_p99", "append_flush_median", "append_flush_p99")


def scaling(per_store: dict[str, dict[str, dict[str, Cell]]]) -> dict[str, dict[str, Cell]]:
    """Return ``{store: {metric: large/small ratio, "small": n, "large": n}}``."""
    out: dict[str, dict[str, Cell]] = {}
    for store, by_size in per_store.items():
        measured = sorted(
            int(size)
            for size, cell in by_size.items()
            if isinstance(cell.get("append_flush_median"), float)
        )
        if len(measured) < 2:
            continue
        small, large = by_size[str(measured[0])], by_size[str(measured[-1])]
        row: dict[str, Cell] = {"small": measured[0], "large": measured[-1]}
        for metric in METRICS:
            a, b = small.get(metric), large.get(metric)
            row[metric] = b / a if isinstance(a, float) and isinstance(b, float) else "n/a"
        out[store] = row
    return out


def render(table: dict[str, dict[str, Cell]]) -> str:
    """Return a markdown table of the scaling ratios."""
    lines = [
        "The floor does O(1) work per append by construction: its ratio is this machine's own "
        "drift with file size (page cache, extents), the baseline to read the others against.",
        "",
        "| store | sizes | fsync median | fsync p99 | flush median | flush p99 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for store, row in table.items():
        cells = [f"{v:.2f}x" if isinstance(v, float) else str(v) for v in (row[m] for m in METRICS)]
        lines.append(
            f"| {store} | {row['large']:,} vs {row['small']:,} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure the codec's append scaling alone and print the ratio table."""
    from benchmarks._ours import Ours, codec_available
    from benchmarks._peers import Floor, SQLiteTuned

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 instead of 100,000")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = parser.parse_args(argv)
    if not codec_available():
        parser.error("conversation_codec is not importable; pip install -e . first")
    large = 10_000 if args.quick else 100_000
    cfg = Config(
        sizes=(100, large), synthetic_sizes=(), window=200, reps=3, budget_s=0.5, get_samples=20
    )
    wl = load_corpus(args.corpus)
    key = Fernet.generate_key()
    with tempfile.TemporaryDirectory(prefix="cc-bench-") as tmp:
        per_store = bench_storage.run(
            [Ours, Floor, SQLiteTuned], wl, cfg.sizes, cfg, key, Path(tmp)
        )
    print(render(scaling(per_store)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

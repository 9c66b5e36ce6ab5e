"""Run the whole benchmark suite: ``python -m benchmarks [--quick] [--sizes ...] [--out DIR]``.

Example:
    python -m benchmarks --quick                 # under a minute: sizes 100 and 1,000
    python -m benchmarks                         # full: 100 .. 100,000 (~20 min on 2 cores)
    python -m benchmarks --sizes 100,10000 --stores ours,floor
    python -m benchmarks --quick --postgres      # also bench_postgres (starts its own server)
    python -m benchmarks --quick --store         # also bench_store (many short conversations)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from benchmarks import _machine, _report, bench_append_scaling, bench_seed_pattern, bench_storage
from benchmarks._ours import OURS, codec_available
from benchmarks._peers import PEERS, WholeFile
from benchmarks._store import Store
from benchmarks._workload import DEFAULT_CORPUS, REPO_ROOT, load_corpus, synthetic
from benchmarks.bench_storage import Config

FULL = Config(
    sizes=(100, 1_000, 10_000, 100_000),
    synthetic_sizes=(100, 1_000, 10_000),
    window=200,
    reps=5,
    budget_s=1.5,
    get_samples=200,
)
QUICK = Config(
    sizes=(100, 1_000),
    synthetic_sizes=(100,),
    window=50,
    reps=3,
    budget_s=0.1,
    get_samples=30,
    seed_points=(100, 1_000),
    seed_turns=10,
    rounds=5,
)


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(sorted({int(s.replace("_", "")) for s in text.split(",") if s.strip()}))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--quick", action="store_true", help="small sizes and windows, < 1 minute")
    p.add_argument("--sizes", type=_sizes, help="comma-separated history sizes (corpus)")
    p.add_argument(
        "--synthetic-sizes",
        type=_sizes,
        help="history sizes for the synthetic long-message workload ('' = skip)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results",
        help="results directory (default benchmarks/results/)",
    )
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="taskmaster4 jsonl.gz")
    p.add_argument("--stores", help="comma-separated store names to run (default: all)")
    p.add_argument("--no-seed", action="store_true", help="skip the seed-pattern benchmark")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--postgres",
        action="store_true",
        help="also run bench_postgres (a throwaway PostgreSQL server; +1-3 min quick, +2-5 full)",
    )
    p.add_argument(
        "--store",
        action="store_true",
        help="also run bench_store: many short conversations (+1 min quick, +5 full)",
    )
    p.add_argument(
        "--rerender",
        type=Path,
        metavar="JSON",
        help="only rewrite the .md and .png of an earlier run's JSON",
    )
    return p.parse_args(argv)


def _stores(selection: str | None) -> list[type[Store]]:
    available = [*OURS, *PEERS] if codec_available() else list(PEERS)
    if not codec_available():
        print("conversation_codec not importable: running the peers only", file=sys.stderr)
    if selection:
        wanted = selection.split(",")
        available = [c for c in available if c.name in wanted]
    return available


def _anomalies(results: dict[str, Any]) -> list[str]:
    found = []
    for wl, per_store in results["storage"].items():
        for store, by in per_store.items():
            for size, cell in by.items():
                for key in ("error", "check"):
                    if key in cell:
                        found.append(f"- {wl} {store} @{size}: {cell[key]}")
                found += [
                    f"- {wl} {store} @{size} {k}: {v}"
                    for k, v in cell.items()
                    if isinstance(v, str) and v.startswith("error") and k != "error"
                ]
        for size in results["workloads"][wl]["sizes"]:
            # Stores without an fsync mode hold fewer messages: compare like with like.
            groups: dict[Any, dict[str, Any]] = {}
            for store, by in per_store.items():
                cell = by.get(str(size), {})
                if "search_hits" in cell:
                    groups.setdefault(cell.get("messages"), {})[store] = cell["search_hits"]
            for count, hits in groups.items():
                if len(set(hits.values())) > 1:
                    found.append(f"- {wl} @{size} ({count} messages): search hits differ: {hits}")
    for store, by in results.get("seed_pattern", {}).items():
        found += [
            f"- seed-pattern {store} @{p}: {c.get('check') or c.get('error')}"
            for p, c in by.items()
            if "check" in c or "error" in c
        ]
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the suite and write ``<out>/latest.{md,json}`` (``quick.*`` with --quick) + PNGs."""
    args = _parse(argv)
    if args.rerender:
        earlier = json.loads(args.rerender.read_text())
        earlier["anomalies"] = _anomalies(earlier)
        return _write(earlier, args.rerender.parent, args.rerender.stem, args.no_plots)
    base = QUICK if args.quick else FULL
    cfg = dataclasses.replace(
        base,
        sizes=args.sizes or base.sizes,
        synthetic_sizes=(
            base.synthetic_sizes if args.synthetic_sizes is None else args.synthetic_sizes
        ),
    )
    stores = _stores(args.stores)
    started = time.perf_counter()
    key = Fernet.generate_key()
    corpus = load_corpus(args.corpus)
    needed = max(cfg.synthetic_sizes, default=0) + 2 * (cfg.window + 3)
    workloads = [(corpus, cfg.sizes)]
    if cfg.synthetic_sizes:
        workloads.append((synthetic(needed), cfg.synthetic_sizes))
    results: dict[str, Any] = {
        "config": {
            **cfg.__dict__,
            "quick": args.quick,
            "command": "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv),
        },
        "reference": stores[0].name,
        "stores": {c.name: {"label": c.label, "notes": c.notes} for c in stores},
        "workloads": {},
        "storage": {},
        "append_scaling": {},
    }
    with tempfile.TemporaryDirectory(prefix="cc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        results["meta"] = _machine.describe(tmp)
        for wl, sizes in workloads:
            print(f"{wl.name}: {len(wl.base):,} base messages", file=sys.stderr)
            results["workloads"][wl.name] = {"description": wl.description, "sizes": list(sizes)}
            per_store = bench_storage.run(stores, wl, sizes, cfg, key, tmp)
            results["storage"][wl.name] = per_store
            results["append_scaling"][wl.name] = bench_append_scaling.scaling(per_store)
        if not args.no_seed:
            savers = [c for c in stores if hasattr(c, "save")] or [WholeFile]
            results["seed_pattern"] = bench_seed_pattern.run(savers, corpus, cfg, key, tmp)
    results["wall_s"] = time.perf_counter() - started
    results["meta"]["loadavg_end"] = _machine.loadavg()
    results["anomalies"] = _anomalies(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else "latest"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    written = _write(results, args.out, stem, args.no_plots)
    if args.postgres:
        from benchmarks import bench_postgres

        bench_postgres.main([*(["--quick"] if args.quick else []), "--out", str(args.out)])
    if args.store:
        from benchmarks import bench_store

        bench_store.main([*(["--quick"] if args.quick else []), "--out", str(args.out)])
    return written


def _write(results: dict[str, Any], out: Path, stem: str, no_plots: bool) -> int:
    (out / f"{stem}.md").write_text(_report.markdown(results))
    written = [] if no_plots else _report.plots(results, out, stem)
    for path in [out / f"{stem}.md", out / f"{stem}.json", *written]:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

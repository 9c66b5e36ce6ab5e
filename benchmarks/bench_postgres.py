"""PostgreSQL: conversation-codec's PostgreSQL storage against the PostgreSQL peers (issue 14).

Starts a throwaway PostgreSQL server (``tests/_postgres.py``, Unix socket only, ``fsync=on``
unless ``--no-fsync``), gives every contestant its own database on it, and measures, in the
same run, on the Taskmaster-4 corpus messages:

* append latency: median per ``append`` of one message, on a 100-message conversation;
* ``tail(20)`` on a conversation of ``tail_size`` messages: median per call;
* bytes per message: ``pg_total_relation_size`` of the contestant's tables (heap, TOAST,
  indexes) ÷ messages, right after building that conversation (ANALYZEd, autovacuum off);
* 32 conversations written at once, one message per append: total messages per second;
* append scaling (ours): median append at ``large`` messages ÷ at 100.

Contestants (``_pg_stores.py``): ``ConversationStore("postgresql://…", encryption_key=…)``;
openai-agents ``SQLAlchemySession`` (asyncpg) plain and inside ``EncryptedSession``;
langchain-postgres ``PostgresChatMessageHistory`` (plaintext). Timed rounds alternate between
the contestants so that load from other processes falls on all of them alike.

    python -m benchmarks.bench_postgres [--quick] [--no-fsync] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from cryptography.fernet import Fernet

from benchmarks import _machine
from benchmarks._pg_stores import CONTESTANTS, Contestant, analyze, database_bytes, start_cluster
from benchmarks._workload import DEFAULT_CORPUS, REPO_ROOT, Workload, load_corpus

PACKAGES = ("SQLAlchemy", "asyncpg", "psycopg", "psycopg-pool", "langchain-postgres")
REFERENCE = "agents-sqlalchemy"
BUILD_BATCH = 500  # messages per extend()/add_items() while building histories


@dataclass(frozen=True)
class Config:
    small: int  # the base history size of the append-scaling ratio
    grown: int  # appends (one message each) to a new conversation: append latency, bytes
    tail_size: int  # history size for tail(20) and bytes per message
    large: int  # history size for the append-scaling figure (ours)
    rounds: int  # alternating timed rounds
    per_round: int  # appends or tails per contestant per round
    writers: int  # conversations written concurrently
    per_writer: int  # messages appended to each of them
    concurrent_reps: int  # runs of the concurrent writers (alternating; median reported)


FULL = Config(
    100,
    5_000,
    10_000,
    100_000,
    rounds=10,
    per_round=50,
    writers=32,
    per_writer=60,
    concurrent_reps=3,
)
QUICK = Config(
    100, 1_000, 2_000, 10_000, rounds=5, per_round=25, writers=32, per_writer=15, concurrent_reps=2
)


def _build(handle: Any, wl: Workload, start: int, count: int) -> None:
    for at in range(start, start + count, BUILD_BATCH):
        handle.extend(wl.take(at, min(at + BUILD_BATCH, start + count)))


def _timed(fn: Any, count: int, budget_s: float = float("inf")) -> list[float]:
    """Time ``fn(i)`` ``count`` times, or fewer (at least once) once ``budget_s`` is spent:
    langchain-postgres' tail reads the whole history, ~0.1 s a call at 2,000 messages."""
    out: list[float] = []
    start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
        if t0 - start > budget_s:
            break
    return out


def _alternate(
    jobs: dict[str, Any], cfg: Config, budget_s: float = float("inf")
) -> dict[str, float]:
    """Run ``jobs[name](i)`` ``per_round`` times per contestant per round, rounds
    alternating; return each contestant's median seconds per call."""
    samples: dict[str, list[float]] = {n: [] for n in jobs}
    for _ in range(cfg.rounds):
        for name, fn in jobs.items():
            samples[name] += _timed(fn, cfg.per_round, budget_s)
    return {n: statistics.median(s) for n, s in samples.items()}


def run(cfg: Config, wl: Workload, key: bytes, fsync: bool) -> dict[str, Any]:
    """Measure every figure; return the per-contestant results."""
    cluster = start_cluster(fsync=fsync)
    host = str(cluster.root)
    res: dict[str, Any] = {"_server_version": _server_version(cluster.url())}
    opened: list[Contestant] = []
    try:
        # Two databases each: one that holds nothing but the conversation grown one append
        # at a time (its size is the bytes figure), one for everything else.
        grown, main = {}, {}
        for cls in CONTESTANTS:
            db = cls.name.replace("-", "_")
            grown[cls.name] = cls(cluster.create_database(db + "_grown"), key, host)
            main[cls.name] = cls(cluster.create_database(db), key, host)
            opened += [grown[cls.name], main[cls.name]]
            res[cls.name] = {"label": cls.label, "notes": cls.notes}
        print(f"appending {cfg.grown:,} messages one at a time, alternating", file=sys.stderr)
        res_grown = _grow(grown, wl, cfg)
        for name in grown:
            res[name].update(res_grown[name])
        tails = {}
        for name, c in main.items():
            print(f"{name}: building {cfg.tail_size:,} messages", file=sys.stderr)
            big = c.conversation("tail")
            t0 = time.perf_counter()
            _build(big, wl, 0, cfg.tail_size)
            res[name]["build_per_msg"] = (time.perf_counter() - t0) / cfg.tail_size
            analyze(c.url)
            res[name]["built_bytes_per_msg"] = database_bytes(c.url) / cfg.tail_size
            tails[name] = lambda i, h=big: h.tail(20)
        for name, v in _alternate(tails, cfg, budget_s=0.5).items():
            res[name]["tail20"] = v
        total = cfg.writers * cfg.per_writer
        rates: dict[str, list[float]] = {n: [] for n in main}
        for rep in range(cfg.concurrent_reps):
            for name, c in main.items():
                print(f"{name}: {cfg.writers} writers x {cfg.per_writer}", file=sys.stderr)
                ids = [f"r{rep}w{i}" for i in range(cfg.writers)]
                elapsed = c.write_concurrently(ids, wl.take(0, cfg.per_writer))
                rates[name].append(total / elapsed)
        for name, got in rates.items():
            res[name]["concurrent_msgs_per_s"] = statistics.median(got)
            res[name]["concurrent_runs"] = got
        res["_rtt"] = _round_trip(main["ours"].url)
        res["ours"]["scaling"] = _scaling(main["ours"], wl, cfg)
    finally:
        for c in opened:
            c.close()
        cluster.destroy()
    return res


def _grow(contestants: dict[str, Contestant], wl: Workload, cfg: Config) -> dict[str, Any]:
    """Append ``cfg.grown`` messages one at a time to a new conversation of each contestant,
    in alternating rounds of ``per_round``; return the append median and the bytes."""
    handles = {n: c.conversation("grown") for n, c in contestants.items()}
    samples: dict[str, list[float]] = {n: [] for n in handles}
    first: dict[str, int] = {}
    half: dict[str, int] = {}
    for at in range(0, cfg.grown, cfg.per_round):
        for name, h in handles.items():
            samples[name] += _timed(lambda i, h=h, at=at: h.append(wl.base[at + i]), cfg.per_round)
            if not at:
                first[name] = database_bytes(contestants[name].url)
            if at + cfg.per_round == cfg.grown // 2:
                half[name] = database_bytes(contestants[name].url)
    out = {}
    for name, c in contestants.items():
        handles[name].close()
        analyze(c.url)
        size = database_bytes(c.url)
        out[name] = {
            "append_median": statistics.median(samples[name]),
            "append_p90": sorted(samples[name])[int(0.9 * len(samples[name]))],
            "db_bytes": size,
            "bytes_per_msg": size / cfg.grown,
            # Without the empty tables' fixed pages: growth past the first round.
            "marginal_bytes_per_msg": (size - first[name]) / (cfg.grown - cfg.per_round),
            # The second half alone: ours compresses with a dictionary trained from a log's
            # first 512 messages (compression.TRAIN_AFTER), so the first ones cost more.
            "second_half_bytes_per_msg": (size - half[name]) / (cfg.grown - cfg.grown // 2),
        }
    return out


def _round_trip(url: str) -> float:
    """Return the median seconds of an empty statement: one client-server round trip."""
    with psycopg.connect(url, autocommit=True) as conn:
        return statistics.median(_timed(lambda i: conn.execute(""), 300))


def _server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def _scaling(ours: Contestant, wl: Workload, cfg: Config) -> dict[str, float]:
    print(f"ours: building {cfg.large:,} messages for the scaling figure", file=sys.stderr)
    small, large = ours.conversation("scale-small"), ours.conversation("scale-large")
    _build(small, wl, 0, cfg.small)
    _build(large, wl, 0, cfg.large)
    jobs = {
        "small": lambda i: small.append(wl.base[i % len(wl.base)]),
        "large": lambda i: large.append(wl.base[i % len(wl.base)]),
    }
    got = _alternate(jobs, cfg)
    return {"small": got["small"], "large": got["large"], "ratio": got["large"] / got["small"]}


# -- report ----------------------------------------------------------------------------------

# (figure, title, unit, better, target): target is the ratio ours ÷ reference to meet,
# better "low" (ours at most target times the peer's) or "high" (at least).
FIGURES = (
    ("append_median", "append, median", "s", "low", 0.7),
    ("tail20", "tail(20), median", "s", "low", 0.5),
    ("bytes_per_msg", "bytes per message", "B", "low", 0.5),
    ("marginal_bytes_per_msg", "marginal bytes/msg", "B", "low", None),
    ("second_half_bytes_per_msg", "bytes/msg, 2nd half", "B", "low", None),
    ("concurrent_msgs_per_s", "32 writers, msgs/s", "/s", "high", 2.0),
)
TARGET_REF = {"bytes_per_msg": "agents-encrypted"}  # else REFERENCE


def _fmt(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v * 1e3:.3g} ms"
    if unit == "B":
        return f"{v:,.0f} B"
    return f"{v:,.0f}"


def verdicts(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the issue's targets with the measured ratio (ours ÷ the named peer)."""
    out = []
    for key, title, _unit, better, target in FIGURES:
        if target is None:
            continue
        ref = TARGET_REF.get(key, REFERENCE)
        ratio = res["ours"][key] / res[ref][key]
        met = ratio <= target if better == "low" else ratio >= target
        sign = "≤" if better == "low" else "≥"
        out.append({"figure": title, "vs": ref, "ratio": ratio, "target": f"{sign} {target}x",
                    "met": met})  # fmt: skip
    sc = res["ours"]["scaling"]
    out.append({"figure": "append at large ÷ at 100 (ours)", "vs": "ours", "ratio": sc["ratio"],
                "target": "≤ 1.2x", "met": sc["ratio"] <= 1.2})  # fmt: skip
    return out


def markdown(result: dict[str, Any]) -> str:
    """Return the report: figures per contestant with ratios, and the targets."""
    res, cfg, meta = result["results"], result["config"], result["machine"]
    names = [n for n in res]
    lines = [
        "# PostgreSQL benchmarks" + (" (--quick)" if cfg["quick"] else ""),
        "",
        f"- commit `{meta['commit']}`, {meta['date']}; {meta['cpu']}, {meta['cores']} cores; "
        f"load {meta['loadavg_start']} → {result['loadavg_end']}",
        f"- PostgreSQL {result['server_version']}, fsync={'on' if cfg['fsync'] else 'off'}, "
        f"Unix socket (one empty-statement round trip: {_fmt(result['round_trip_s'], 's')}); "
        + ", ".join(f"{k} {v}" for k, v in meta["packages"].items()),
        f"- command: `{cfg['command']}`; wall time {result['wall_s']:.0f} s",
        "",
        "Each cell: the figure, then ours ÷ this contestant (below 1: ours is faster or "
        "smaller; for msgs/s above 1: ours writes more).",
        "",
        "| contestant | " + " | ".join(f[1] for f in FIGURES) + " |",
        "|---|" + "---:|" * len(FIGURES),
    ]
    for n in names:
        cells = []
        for key, _t, unit, _b, _x in FIGURES:
            v = res[n][key]
            cells.append(_fmt(v, unit) + ("" if n == "ours" else f" · {res['ours'][key] / v:.2f}x"))
        lines.append(f"| {res[n]['label']} | " + " | ".join(cells) + " |")
    sc = res["ours"]["scaling"]
    lines += [
        "",
        f"Append: median over the {cfg['grown']:,} appends (one message each) that grow a new "
        "conversation in a database of its own; bytes: that database's tables ÷ "
        f"{cfg['grown']:,} (marginal: without the first {cfg['per_round']} messages, i.e. "
        f"without the empty tables' fixed pages; 2nd half: the growth from "
        f"{cfg['grown'] // 2:,} to {cfg['grown']:,} messages). "
        f"tail(20) on {cfg['tail_size']:,} messages; "
        f"{cfg['writers']} writers x {cfg['per_writer']} appends. "
        f"Scaling (ours): append median {_fmt(sc['small'], 's')} at {cfg['small']}, "
        f"{_fmt(sc['large'], 's')} at {cfg['large']:,} messages.",
        "",
        "| target (issue 14) | vs | measured | target | met |",
        "|---|---|---:|---:|---|",
        *(
            f"| {v['figure']} | {v['vs']} | {v['ratio']:.2f}x | {v['target']} | "
            f"{'yes' if v['met'] else '**no**'} |"
            for v in result["targets"]
        ),
        "",
        "## Contestants",
        "",
        *(f"- **{res[n]['label']}** (`{n}`): {res[n]['notes']}" for n in names),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write ``postgres[_quick][_nofsync].{json,md}``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (a minute or two)")
    p.add_argument("--no-fsync", action="store_true", help="run the server with fsync=off")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    wl = load_corpus(args.corpus)
    started = time.perf_counter()
    machine = _machine.describe(Path("/tmp"))
    from importlib import metadata

    for name in PACKAGES:
        try:
            machine["packages"][name] = metadata.version(name)  # type: ignore[index]
        except metadata.PackageNotFoundError:
            machine["packages"][name] = "not installed"  # type: ignore[index]
    res = run(cfg, wl, Fernet.generate_key(), fsync=not args.no_fsync)
    command = "python -m benchmarks.bench_postgres " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    result: dict[str, Any] = {
        "config": {
            **asdict(cfg),
            "quick": args.quick,
            "fsync": not args.no_fsync,
            "command": command.strip(),
        },
        "machine": machine,
        "server_version": res.pop("_server_version", "15"),
        "round_trip_s": res.pop("_rtt", None),
        "results": res,
        "wall_s": time.perf_counter() - started,
        "loadavg_end": _machine.loadavg(),
    }
    result["targets"] = verdicts(res)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "postgres" + ("_quick" if args.quick else "") + ("_nofsync" if args.no_fsync else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""asyncio on PostgreSQL: ``AsyncConversationStore`` (the sync codec in worker threads) vs
openai-agents ``SQLAlchemySession`` (native asyncio, asyncpg), 32 coroutines on one loop.

Why this exists: issue 14 sketched the async API on psycopg's async connections; ours runs
the sync engine in the loop's thread pool instead (README, "PostgreSQL storage"). This
measures what that costs where it would show: many coroutines writing at once. Each of
``--writers`` coroutines appends ``--appends`` corpus messages one at a time to its own
conversation (each append its own commit), all gathered on one event loop; the two
contestants alternate over ``--rounds`` rounds, each round on fresh conversation ids, and
the median messages/s is reported with the ratio, on one throwaway server (``fsync=on``).

Run: ``python -m benchmarks.bench_async`` (a minute); results go to
``benchmarks/results/async.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from benchmarks import _machine
from benchmarks._pg_stores import start_cluster
from benchmarks._workload import DEFAULT_CORPUS, REPO_ROOT, load_corpus

RESULTS = REPO_ROOT / "benchmarks" / "results"


async def _ours(url: str, key: bytes, ids: list[str], messages: list[Any]) -> float:
    from conversation_codec.aio import AsyncConversationStore

    store = AsyncConversationStore(url, encryption_key=key)

    async def one(cid: str) -> None:
        codec = await store.open(cid)
        try:
            for m in messages:
                await codec.append(m)
        finally:
            await codec.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(cid) for cid in ids))
    return time.perf_counter() - t0


async def _peer(engine: Any, ids: list[str], messages: list[Any]) -> float:
    from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession

    sessions = [SQLAlchemySession(cid, engine=engine, create_tables=True) for cid in ids]
    await sessions[0].get_items(limit=1)  # the tables exist before the clock starts

    async def one(session: Any) -> None:
        for m in messages:
            await session.add_items([m])

    t0 = time.perf_counter()
    await asyncio.gather(*(one(s) for s in sessions))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writers", type=int, default=32)
    p.add_argument("--appends", type=int, default=15)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    messages = load_corpus(DEFAULT_CORPUS).take(0, args.appends)
    key = Fernet.generate_key()
    cluster = start_cluster(fsync=True)
    try:
        url = cluster.create_database()
        host = str(cluster.root)
        dbname = url.split("///", 1)[1].split("?", 1)[0]
        from sqlalchemy.ext.asyncio import create_async_engine

        async def run() -> dict[str, list[float]]:
            engine = create_async_engine(f"postgresql+asyncpg://postgres@/{dbname}?host={host}")
            rates: dict[str, list[float]] = {"ours": [], "peer": []}
            total = args.writers * args.appends
            try:
                for r in range(args.rounds):
                    ids = [f"r{r}w{i}" for i in range(args.writers)]
                    rates["ours"].append(total / await _ours(url, key, ids, messages))
                    rates["peer"].append(total / await _peer(engine, ids, messages))
            finally:
                await engine.dispose()
            return rates

        load_start = _machine.loadavg()
        rates = asyncio.run(run())
    finally:
        from conversation_codec.storage.postgres import PostgresBackend

        PostgresBackend.shared(url).close()
        cluster.destroy()
    ours, peer = statistics.median(rates["ours"]), statistics.median(rates["peer"])
    result = {
        "config": vars(args) | {"out": str(args.out)},
        "machine": _machine.describe(Path("/tmp")),
        "loadavg": [load_start, _machine.loadavg()],
        "note": "ours: AsyncConversationStore (sync engine in the loop's default executor)",
        "msgs_per_s": rates,
        "median": {"ours": ours, "peer": peer, "ratio": ours / peer},
    }
    text = (
        "# asyncio on PostgreSQL: 32 coroutines on one loop\n\n"
        f"- load average {load_start} → {_machine.loadavg()}; {args.writers} coroutines x "
        f"{args.appends} appends, {args.rounds} alternating rounds, fsync=on\n\n"
        "| contestant | msgs/s, median | rounds |\n|---|---:|---|\n"
        f"| conversation-codec `AsyncConversationStore` (worker threads) | {ours:,.0f} | "
        + ", ".join(f"{x:,.0f}" for x in rates["ours"])
        + f" |\n| openai-agents `SQLAlchemySession` (asyncpg) | {peer:,.0f} | "
        + ", ".join(f"{x:,.0f}" for x in rates["peer"])
        + f" |\n\nOurs ÷ peer: **{ours / peer:.2f}x** the peer's throughput.\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "async.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "async.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Keyword search with the blind keyword index (FORMAT.md §17) vs the scan, in one run.

Measured on the Taskmaster-4 corpus replayed as one encrypted conversation (default 50,000
messages), side by side:

* a rare-word query (``SEARCH_KEYWORD``, ~20 hits), median of repeated searches on an open
  codec, with the index and with the scan (the same log without an index), and for the peer
  openai-agents ``EncryptedSession``, which can only load every item and filter;
* a common word (``"the"``) with ``limit=20, newest_first=True``;
* the index's first search after opening (the whole index decrypted once);
* the catch-up: appends leave the index alone (FORMAT.md §17.5), so the first search after
  building indexes the records the first batch did not (timed on its own), and the first
  search after a window of single appends indexes those, timed against the same search
  on the log without an index;
* one append at a time (durability "flush" and "fsync"), index on vs off, median and mean;
* bytes of the index vs the log: as appended in 1,000-message batches, after a window of
  single appends, and after ``compact()``;
* ``ConversationStore.search`` of the rare word over indexed conversations, each search
  after the first, with the store's ``IndexCache`` (unchanged indexes are not decrypted
  again) and with a cache of 0 bytes (every reopen decrypts its conversation's index).

Run: ``python -m benchmarks.bench_search_index [--messages N] [--quick]``; results go to
``benchmarks/results/search_index.{json,md}`` with the commit and the machine.

``--postgres`` measures the same on PostgreSQL (FORMAT.md §17.9) instead: a throwaway
server as ``bench_postgres`` starts (``fsync=on``), one ``ConversationStore`` with
``search_index=True`` and one without, on the same database, side by side: the rare and
common word with the index vs the scan (on an open codec, and opening the conversation for
each search as a store-wide search does), appends with the index vs without (interleaved
append by append, each its own transaction), and the index's bytes vs the records'; plus,
for the rejected layout of one opaque ``(conversation, token, block)`` row per posting, the
bytes the same postings take as such rows (``pg_total_relation_size`` after ``COPY``).
Results: ``benchmarks/results/search_index_postgres.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from benchmarks._machine import describe
from benchmarks._workload import DEFAULT_CORPUS, SEARCH_KEYWORD, load_corpus
from conversation_codec import ConversationCodec, ConversationStore, generate_key
from conversation_codec.index_cache import IndexCache

RESULTS = Path(__file__).resolve().parent / "results"
COMMON_WORD = "the"


def _median_ms(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, out


def _build(path: Path, key: str, messages: list[dict[str, Any]], *, index: bool) -> float:
    start = time.perf_counter()
    with ConversationCodec(path, encryption_key=key, search_index=index, durability="flush") as c:
        for i in range(0, len(messages), 1000):
            c.extend(messages[i : i + 1000])
    return time.perf_counter() - start


def _appends(folder: Path, key: str, messages: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """Per-append cost after a 5,000-message history, index on vs off, both durabilities."""
    out: dict[str, Any] = {}
    base, window = messages[:5000], messages[5000 : 5000 + count]
    for durability in ("flush", "fsync"):
        n = len(window) if durability == "flush" else max(1, len(window) // 4)
        for index in (False, True) * 3:  # interleaved: the machine drifts
            path = folder / f"append-{durability}-{index}-{time.monotonic_ns()}.log"
            with ConversationCodec(
                path, encryption_key=key, search_index=index, durability=durability
            ) as c:
                c.extend(base)
                times = []
                for m in window[:n]:
                    start = time.perf_counter()
                    c.append(m)
                    times.append(time.perf_counter() - start)
                start = time.perf_counter()  # with the index: indexes the window first
                list(c.search(SEARCH_KEYWORD))
                searched = time.perf_counter() - start
            first = out.setdefault(f"{durability}_first_search_ms_{'on' if index else 'off'}", [])
            first.append(searched * 1000)
            cell = out.setdefault(f"{durability}_{'on' if index else 'off'}", [])
            cell.append((statistics.median(times) * 1e6, statistics.mean(times) * 1e6))
    summary: dict[str, Any] = {"window": len(window)}
    for name, runs in list(out.items()):
        if "first_search" in name:
            summary[name] = min(runs)
            continue
        summary[name] = {
            "median_us": min(r[0] for r in runs),
            "mean_us": min(r[1] for r in runs),
        }
    for durability in ("flush", "fsync"):
        on, off = summary[f"{durability}_on"], summary[f"{durability}_off"]
        summary[f"{durability}_ratio_median"] = on["median_us"] / off["median_us"]
        summary[f"{durability}_ratio_mean"] = on["mean_us"] / off["mean_us"]
    return summary


def _store_search(
    folder: Path, key: str, messages: list[dict[str, Any]], conversations: int, reps: int
) -> dict[str, Any]:
    """Median store-wide rare-word search, the store's index cache on vs 0 bytes, interleaved."""
    root = folder / "store"
    stores = {
        "cached": ConversationStore(root, encryption_key=key, search_index=True),
        "uncached": ConversationStore(
            root, encryption_key=key, search_index=True, index_cache=IndexCache(max_bytes=0)
        ),
    }
    per = len(messages) // conversations
    for i in range(conversations):
        with stores["cached"].open(f"c{i:03d}") as codec:
            codec.extend(messages[i * per : (i + 1) * per])
    times: dict[str, list[float]] = {"cached": [], "uncached": []}
    hits: dict[str, int] = {}
    for _ in range(reps + 1):
        for name, store in stores.items():
            start = time.perf_counter()
            hits[name] = len(list(store.search(SEARCH_KEYWORD)))
            times[name].append(time.perf_counter() - start)
    assert hits["cached"] == hits["uncached"]
    out: dict[str, Any] = {"conversations": conversations, "messages_each": per}
    out["hits"] = hits["cached"]
    for name, runs in times.items():
        out[f"{name}_ms"] = statistics.median(runs[1:]) * 1000  # after the first search
    return out


def _peer_search(folder: Path, messages: list[dict[str, Any]], reps: int) -> float | str:
    """openai-agents EncryptedSession: load every item, filter (its only way to search)."""
    try:
        from benchmarks._peers import AgentsEncrypted
    except ImportError:
        return "not installed"
    try:
        peer = AgentsEncrypted(folder / "peer", Fernet.generate_key())
        peer.open("flush")
    except ImportError:
        return "not installed"
    try:
        for i in range(0, len(messages), 1000):
            peer.extend(messages[i : i + 1000], [])
        ms, _ = _median_ms(lambda: peer.search(SEARCH_KEYWORD), reps)
        return ms
    finally:
        peer.close()


def run(count: int, quick: bool) -> dict[str, Any]:
    corpus = load_corpus(DEFAULT_CORPUS)
    messages = corpus.take(0, count)
    key = generate_key()
    reps = 5 if quick else 21
    with tempfile.TemporaryDirectory(prefix="bench-kwi-") as tmp:
        folder = Path(tmp)
        result: dict[str, Any] = {"machine": describe(folder), "messages": count}
        on, off = folder / "indexed.log", folder / "scan.log"
        result["build_s"] = {
            "index_on": _build(on, key, messages, index=True),
            "index_off": _build(off, key, messages, index=False),
        }
        start = time.perf_counter()
        with ConversationCodec(on, encryption_key=key) as fresh:
            list(fresh.search(SEARCH_KEYWORD))  # indexes what the first batch did not
        result["catch_up_after_build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        with ConversationCodec(on, encryption_key=key) as fresh:
            first_hits = len(list(fresh.search(SEARCH_KEYWORD)))
        result["first_search_after_open_ms"] = (time.perf_counter() - start) * 1000
        with (
            ConversationCodec(on, encryption_key=key) as indexed,
            ConversationCodec(off, encryption_key=key) as scan,
        ):
            rare: dict[str, Any] = {}
            rare["index_ms"], hits = _median_ms(lambda: list(indexed.search(SEARCH_KEYWORD)), reps)
            rare["scan_ms"], scan_hits = _median_ms(
                lambda: list(scan.search(SEARCH_KEYWORD)), max(3, reps // 5)
            )
            assert [h.seq for h in hits] == [h.seq for h in scan_hits]  # type: ignore[attr-defined]
            rare["hits"] = first_hits
            common: dict[str, Any] = {}
            common["index_ms"], _ = _median_ms(
                lambda: list(indexed.search(COMMON_WORD, limit=20, newest_first=True)), reps
            )
            common["scan_ms"], _ = _median_ms(
                lambda: list(scan.search(COMMON_WORD, limit=20, newest_first=True)), reps
            )
            log_bytes = os.path.getsize(on)
            sizes = {"log_bytes": log_bytes, "batched": os.path.getsize(str(on) + ".kwi")}
            for m in corpus.take(count, count + (200 if quick else 2000)):
                indexed.append(m)
            list(indexed.search(SEARCH_KEYWORD))  # indexes them: one segment
            sizes["after_single_appends"] = os.path.getsize(str(on) + ".kwi") / os.path.getsize(on)
            indexed.compact()
            sizes["after_compact"] = os.path.getsize(str(on) + ".kwi") / os.path.getsize(on)
            sizes["batched"] = sizes["batched"] / log_bytes
        rare["peer_encrypted_session_ms"] = _peer_search(folder, messages, max(3, reps // 5))
        result.update(rare_word=rare, common_word_limit20_newest=common, index_size=sizes)
        result["append"] = _appends(folder, key, corpus.take(0, 7000), 200 if quick else 1000)
        result["store_search"] = _store_search(
            folder, key, corpus.take(0, 4000 if quick else 20_000), 20, reps
        )
    return result


def render(r: dict[str, Any]) -> str:
    rare, common, size, app, st = (
        r["rare_word"],
        r["common_word_limit20_newest"],
        r["index_size"],
        r["append"],
        r["store_search"],
    )
    peer = rare["peer_encrypted_session_ms"]
    peer_cell = f"{peer:.1f} ms" if isinstance(peer, float) else str(peer)
    m = r["machine"]
    return "\n".join(
        [
            f"# Keyword index: {r['messages']:,} encrypted messages (Taskmaster-4 corpus)",
            "",
            f"commit {m['commit']}, {m['cpu']}, {m['cores']} cores, {m['filesystem']}, "
            f"load {m['loadavg_start']}",
            "",
            "| measure | index | scan | ratio |",
            "|---|---:|---:|---:|",
            f"| rare word `{SEARCH_KEYWORD}` ({rare['hits']} hits), median | "
            f"{rare['index_ms']:.2f} ms | {rare['scan_ms']:.0f} ms | "
            f"{rare['scan_ms'] / rare['index_ms']:.0f}x faster |",
            f"| common word `{COMMON_WORD}`, limit=20, newest_first | "
            f"{common['index_ms']:.2f} ms | {common['scan_ms']:.2f} ms | |",
            f"| first search after opening (index decrypted once) | "
            f"{r['first_search_after_open_ms']:.1f} ms | | |",
            f"| first search after building in 1,000-message batches (indexes the "
            f"{r['messages'] - 1000:,} records appended after the first batch) | "
            f"{r['catch_up_after_build_s']:.2f} s | | |",
            f"| peer: openai-agents EncryptedSession, rare word (load + filter) | | "
            f"{peer_cell} | |",
            "",
            "| append (5,000-message log) | off | on | on/off |",
            "|---|---:|---:|---:|",
            *[
                f"| {d} {k} | {app[f'{d}_off'][f'{k}_us']:.0f} µs | "
                f"{app[f'{d}_on'][f'{k}_us']:.0f} µs | {app[f'{d}_ratio_{k}']:.2f}x |"
                for d in ("fsync", "flush")
                for k in ("median", "mean")
            ],
            "",
            f"First search after {app['window']:,} single appends (flush), with the index "
            f"(it indexes them first) vs without: "
            f"{app['flush_first_search_ms_on']:.1f} ms vs "
            f"{app['flush_first_search_ms_off']:.1f} ms.",
            "",
            f"Index size / log size: {size['batched']:.2f} as built in 1,000-message batches, "
            f"{size['after_single_appends']:.2f} after single appends, "
            f"{size['after_compact']:.2f} after compact().",
            "",
            f"ConversationStore.search(`{SEARCH_KEYWORD}`) over {st['conversations']} indexed "
            f"conversations of {st['messages_each']:,} messages ({st['hits']} hits), median "
            f"of the searches after the first: {st['cached_ms']:.1f} ms with the store's "
            f"index cache, {st['uncached_ms']:.1f} ms decrypting every index on each reopen "
            f"({st['uncached_ms'] / st['cached_ms']:.1f}x).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--postgres", action="store_true", help="on PostgreSQL (§17.9)")
    args = parser.parse_args()
    if args.postgres:
        from benchmarks._kwi_postgres import render_postgres, run_postgres

        result = run_postgres(args.messages, args.quick)
        stem, text = "search_index_postgres", render_postgres(result)
    else:
        result = run(args.messages, args.quick)
        stem, text = "search_index", render(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""The keyword index on PostgreSQL (``bench_search_index --postgres``; its docstring says what)."""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks._machine import describe
from benchmarks._pg_stores import start_cluster
from benchmarks._workload import DEFAULT_CORPUS, SEARCH_KEYWORD, load_corpus
from conversation_codec import ConversationStore, generate_key
from conversation_codec.keyword_builder import IndexBuilder
from conversation_codec.keyword_index import Tokenizer

COMMON_WORD = "the"
Message = dict[str, Any]


def _median_ms(fn: Any, reps: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, out


def _build(store: ConversationStore, cid: str, messages: list[Message]) -> float:
    start = time.perf_counter()
    with store.open(cid) as codec:
        for i in range(0, len(messages), 1000):
            codec.extend(messages[i : i + 1000])
    return time.perf_counter() - start


def _appends(
    stores: dict[bool, ConversationStore], base: list[Message], window: list[Message]
) -> dict[str, Any]:
    """Single appends after a ``len(base)``-message history, index off and on interleaved
    append by append (the order alternating): on an open codec, then as turns that open
    the conversation, append one message and close it."""
    cids = {index: f"append-{index}" for index in stores}
    times: dict[str, list[float]] = {}
    for index, store in stores.items():
        with store.open(cids[index]) as codec:
            codec.extend(base)
    with stores[True].open(cids[True]) as on, stores[False].open(cids[False]) as off:
        codecs = {True: on, False: off}
        for i, m in enumerate(window):
            for index in (True, False) if i % 2 else (False, True):
                start = time.perf_counter()
                codecs[index].append(m)
                times.setdefault(f"open_{'on' if index else 'off'}", []).append(
                    time.perf_counter() - start
                )
    for i, m in enumerate(window[: len(window) // 2]):
        for index in (True, False) if i % 2 else (False, True):
            start = time.perf_counter()
            with stores[index].open(cids[index]) as codec:
                codec.append(m)
            times.setdefault(f"turn_{'on' if index else 'off'}", []).append(
                time.perf_counter() - start
            )
    out: dict[str, Any] = {
        name: {"median_ms": statistics.median(got) * 1e3, "mean_ms": statistics.mean(got) * 1e3}
        for name, got in times.items()
    }
    for name in ("open", "turn"):
        on_, off_ = out[f"{name}_on"], out[f"{name}_off"]
        out[f"{name}_ratio_median"] = on_["median_ms"] / off_["median_ms"]
        out[f"{name}_ratio_mean"] = on_["mean_ms"] / off_["mean_ms"]
    return out


def _opaque_rows(url: str, messages: list[Message]) -> dict[str, int]:
    """The rejected layout: the same postings as one ``(conversation, token, block)`` row
    each, primary key on all three (a lookup by token), measured after ``COPY``."""
    builder = IndexBuilder(Tokenizer(b"k" * 32))
    for seq, message in enumerate(messages):
        builder.add(seq, message)
    pairs = builder.blocks()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE opaque_postings (conversation_id text, token integer, block integer, "
            "PRIMARY KEY (conversation_id, token, block))"
        )
        buf = io.StringIO()
        for token, blocks in pairs.items():
            value = int.from_bytes(token, "big", signed=True)
            buf.writelines(f"on\t{value}\t{b}\n" for b in blocks)
        with conn.cursor().copy("COPY opaque_postings FROM STDIN") as copy:
            copy.write(buf.getvalue())
        conn.execute("VACUUM ANALYZE opaque_postings")
        got = conn.execute("SELECT pg_total_relation_size('opaque_postings')").fetchone()
    assert got is not None
    return {"rows": sum(len(b) for b in pairs.values()), "bytes": int(got[0])}


def _sizes(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM FULL cc_kwi_segments")  # dead rows of merges (autovacuum is off)
        conn.execute("VACUUM ANALYZE cc_records")
        got = conn.execute(
            """
            SELECT (SELECT sum(octet_length(segment)) FROM cc_kwi_segments
                     WHERE conversation_id = 'on'),
                   (SELECT count(*) FROM cc_kwi_segments WHERE conversation_id = 'on'),
                   (SELECT body_bytes FROM cc_conversations WHERE id = 'on'),
                   pg_total_relation_size('cc_kwi_segments'),
                   pg_total_relation_size('cc_records')
            """
        ).fetchone()
    assert got is not None
    segments, rows, bodies, kwi_rel, records_rel = (int(v) for v in got)
    return {
        "segment_bytes": segments,
        "segment_rows": rows,
        "record_body_bytes": bodies,
        "kwi_relation_bytes": kwi_rel,
        "records_relation_bytes_per_conversation": records_rel // 2,  # 'on' and 'off'
    }


def run_postgres(count: int, quick: bool) -> dict[str, Any]:
    corpus = load_corpus(DEFAULT_CORPUS)
    messages = corpus.take(0, count)
    key = generate_key()
    reps = 5 if quick else 21
    cluster = start_cluster(fsync=True)
    try:
        url = cluster.create_database("kwi")
        result: dict[str, Any] = {"machine": describe(Path(tempfile.gettempdir()))}
        result["messages"] = count
        stores = {
            True: ConversationStore(url, encryption_key=key, search_index=True),
            False: ConversationStore(url, encryption_key=key),
        }
        result["build_s"] = {
            "index_on": _build(stores[True], "on", messages),
            "index_off": _build(stores[False], "off", messages),
        }
        start = time.perf_counter()
        with stores[True].open("on") as fresh:
            hits = len(list(fresh.search(SEARCH_KEYWORD)))
        result["first_search_after_open_ms"] = (time.perf_counter() - start) * 1000
        rare: dict[str, Any] = {"hits": hits}
        common: dict[str, Any] = {}
        with stores[True].open("on") as indexed, stores[False].open("off") as scan:
            for name, codec, n in (("index", indexed, reps), ("scan", scan, max(3, reps // 5))):
                rare[f"{name}_ms"], found = _median_ms(
                    lambda c=codec: [h.seq for h in c.search(SEARCH_KEYWORD)], n
                )
                rare[f"{name}_seqs"] = found
                common[f"{name}_ms"], _ = _median_ms(
                    lambda c=codec: list(c.search(COMMON_WORD, limit=20, newest_first=True)), n
                )
            assert rare.pop("index_seqs") == rare.pop("scan_seqs")

        def opened(store: ConversationStore, cid: str, query: str, **kw: Any) -> int:
            with store.open(cid) as codec:
                return len(list(codec.search(query, **kw)))

        rare["index_opened_ms"], _ = _median_ms(
            lambda: opened(stores[True], "on", SEARCH_KEYWORD), reps
        )
        common["index_opened_ms"], _ = _median_ms(
            lambda: opened(stores[True], "on", COMMON_WORD, limit=20, newest_first=True), reps
        )
        common["scan_opened_ms"], _ = _median_ms(
            lambda: opened(stores[False], "off", COMMON_WORD, limit=20, newest_first=True), reps
        )
        result.update(rare_word=rare, common_word_limit20_newest=common)
        result["sizes"] = _sizes(url)
        result["opaque_rows"] = _opaque_rows(url, messages)
        n = 200 if quick else 1000
        result["append"] = _appends(stores, corpus.take(0, 5000), corpus.take(5000, 5000 + n))
        result["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    finally:
        cluster.destroy()
    return result


def render_postgres(r: dict[str, Any]) -> str:
    rare, common, size, app = (
        r["rare_word"],
        r["common_word_limit20_newest"],
        r["sizes"],
        r["append"],
    )
    opaque = r["opaque_rows"]
    records = size["records_relation_bytes_per_conversation"]
    m = r["machine"]
    return "\n".join(
        [
            f"# Keyword index on PostgreSQL: {r['messages']:,} encrypted messages "
            "(Taskmaster-4 corpus)",
            "",
            f"commit {m['commit']}, {m['cpu']}, {m['cores']} cores, PostgreSQL 15 fsync=on, "
            f"load {m['loadavg_start']} (start) {' '.join(m['loadavg_end'])} (end)",
            "",
            "| measure | index | scan | scan ÷ index |",
            "|---|---:|---:|---:|",
            f"| rare word `{SEARCH_KEYWORD}` ({rare['hits']} hits), open codec, median | "
            f"{rare['index_ms']:.2f} ms | {rare['scan_ms']:.0f} ms | "
            f"{rare['scan_ms'] / rare['index_ms']:.0f}x |",
            f"| rare word, conversation opened for the search (a store-wide search) | "
            f"{rare['index_opened_ms']:.1f} ms | | "
            f"{rare['scan_ms'] / rare['index_opened_ms']:.0f}x |",
            f"| common word `{COMMON_WORD}`, limit=20, newest_first, open codec | "
            f"{common['index_ms']:.2f} ms | {common['scan_ms']:.2f} ms | "
            f"{common['scan_ms'] / common['index_ms']:.1f}x |",
            f"| common word, limit=20, newest_first, conversation opened | "
            f"{common['index_opened_ms']:.1f} ms | {common['scan_opened_ms']:.1f} ms | "
            f"{common['scan_opened_ms'] / common['index_opened_ms']:.1f}x |",
            f"| first search after opening (whole index read and decrypted) | "
            f"{r['first_search_after_open_ms']:.1f} ms | | |",
            "",
            "| append (5,000-message conversation), each its own transaction | off | on | "
            "on ÷ off |",
            "|---|---:|---:|---:|",
            *[
                f"| {label} {k} | {app[f'{n}_off'][f'{k}_ms']:.2f} ms | "
                f"{app[f'{n}_on'][f'{k}_ms']:.2f} ms | {app[f'{n}_ratio_{k}']:.2f}x |"
                for n, label in (("open", "on an open codec,"), ("turn", "open, append, close:"))
                for k in ("median", "mean")
            ],
            "",
            f"Index: {size['segment_rows']} segment rows, {size['segment_bytes']:,} B of "
            f"sealed segments = {size['segment_bytes'] / size['record_body_bytes']:.2f}x the "
            f"record bodies; `cc_kwi_segments` {size['kwi_relation_bytes']:,} B = "
            f"{size['kwi_relation_bytes'] / records:.2f}x the conversation's share of "
            f"`cc_records` ({records:,} B). Rejected layout, one opaque "
            f"`(conversation, token, block)` row per posting: {opaque['rows']:,} rows, "
            f"{opaque['bytes']:,} B = {opaque['bytes'] / records:.1f}x.",
            "",
            f"Build ({r['messages']:,} messages in 1,000-message batches): "
            f"{r['build_s']['index_on']:.1f} s with the index, "
            f"{r['build_s']['index_off']:.1f} s without.",
            "",
        ]
    )

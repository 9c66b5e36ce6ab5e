"""The blind keyword index on PostgreSQL (FORMAT.md §17.9): exact, transactional, sealed.

Searches with the index are compared with the scan of a conversation that has none and gets
the same operations; the segments in ``cc_kwi_segments`` are read back by a small reader
written from the spec (HKDF, HMAC and Fernet from ``cryptography``, no library code), so
deletion and key rotation are checked on the rows themselves.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.fernet import InvalidToken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests._postgres import Cluster
from tests.conftest import KEY, OTHER_KEY
from tests.test_keyword_index import (
    WORDS,
    IndexedPair,
    index_keys,
    op_st,
    query_st,
    segment_postings,
    token,
    varint,
)

import _children
import _store_writers
from conversation_codec import ConversationCodec, ConversationStore, indexing
from conversation_codec.index_cache import IndexCache
from conversation_codec.maintenance.copy import copy_conversations
from conversation_codec.storage import backend_for
from conversation_codec.storage.postgres import SCHEMA_VERSION, ensure_schema

pytestmark = pytest.mark.postgres

T0 = 1_700_000_000  # epoch seconds

# -- a reader of cc_kwi_segments written from FORMAT.md §17.3 and §17.9 ------------------------


def read_rows(url: str, cid: str) -> tuple[bytes | None, int, list[tuple[int, int, bytes]]]:
    """The conversation's log_id, index version and segment rows ``(lo, hi, frame)``."""
    with psycopg.connect(url) as conn:
        got = conn.execute("SELECT log_id, kwi FROM cc_conversations WHERE id = %s", (cid,))
        row = got.fetchone()
        rows = conn.execute(
            "SELECT lo, hi, segment FROM cc_kwi_segments WHERE conversation_id = %s ORDER BY hi",
            (cid,),
        ).fetchall()
    log_id = None if row is None or row[0] is None else bytes(row[0])
    return log_id, 0 if row is None else row[1], [(lo, hi, bytes(s)) for lo, hi, s in rows]


def read_postings(url: str, cid: str, master_b64: str) -> dict[bytes, set[int]]:
    """token -> blocks of the conversation's segments; raises InvalidToken when
    ``master_b64`` does not open them."""
    log_id, _, rows = read_rows(url, cid)
    assert log_id is not None
    fernet = index_keys(master_b64, log_id)[1]
    postings: dict[bytes, set[int]] = {}
    covered = 0
    for lo, hi, frame in rows:
        n, pos = varint(frame, 0)
        assert pos + n == len(frame)
        plain = fernet.decrypt(base64.urlsafe_b64encode(b"\x80" + frame[pos:]))
        got = segment_postings(plain, postings)
        assert got == (lo, hi) and lo == covered  # a chain, as the rows say
        covered = hi
    return postings


def expected_postings(texts: list[str], master_b64: str, log_id: bytes) -> dict[bytes, set[int]]:
    """What the index must hold for messages ``{"content": text}`` at seqs 0, 1, …"""
    out: dict[bytes, set[int]] = {}
    for seq, text in enumerate(texts):
        for gram in set(re.findall(r"(?=(\w{3}))", text.casefold())):
            out.setdefault(token(master_b64, log_id, gram), set()).add(seq >> 4)
    return out


def _id() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def _msg(text: str, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": text}


# -- results identical to the scan ---------------------------------------------------------


def _db_pair(url: str) -> IndexedPair:
    """The indexed conversation and its mirror in one database; the writer without the
    option opens them from a store of its own."""
    ids = (_id(), _id())
    return IndexedPair(
        ConversationStore(url, encryption_key=KEY, search_index=True).open(ids[0]),
        ConversationStore(url, encryption_key=KEY).open(ids[1]),
        lambda i, key: ConversationStore(url, encryption_key=key).open(ids[i]),
    )


# psycopg_pool's worker threads draw from the global ``random`` (jittered connection
# lifetimes) when the pool grows, which Hypothesis reports as a strategy using ``random``:
# not ours, and not a source of the test's data.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.parametrize(
    "max_examples", [20, pytest.param(300, marks=pytest.mark.slow)], ids=["default", "full"]
)
def test_indexed_search_equals_the_scan_on_postgres(postgres_url: str, max_examples: int) -> None:
    """Random histories (appends, pops, prunes, replaces, compactions, rotations, a writer
    without the option) and random queries (words, substrings, phrases, case, role, limit,
    newest first, time ranges): the indexed conversation answers exactly as the scan, and
    ``verify()`` finds its index equal to one rebuilt from the records."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(ops=st.lists(op_st, min_size=1, max_size=6), queries=st.lists(query_st, max_size=6))
    def run(ops: list[tuple[str, Any]], queries: list[Any]) -> None:
        _db_pair(postgres_url).replay(ops, queries)

    run()


QUERIES = [
    "refund",
    "REFUNDED",
    "straße",
    "ΣΑΣ",
    "A1042",
    "lookup_order",
    "the",
    '"parcel delayed"',
]


def test_a_fixed_history_answers_as_the_scan_across_many_blocks(postgres_url: str) -> None:
    """120 messages (8 blocks) in single appends and a batch, then a pop, a prune, a
    rotation and a writer without the option: every fixed query equals the scan."""
    pair = _db_pair(postgres_url)
    try:
        words = [f"{WORDS[(i * 7) % len(WORDS)]} {WORDS[(i * 3) % len(WORDS)]}" for i in range(120)]
        for i in range(20):
            pair.apply("extend", [_msg(words[i], "user" if i % 2 else "assistant")])
        pair.apply("extend", [_msg(w) for w in words[20:]])
        queries = [
            (q, case, role, limit, newest, None, None)
            for q in QUERIES
            for case, role, limit, newest in [
                (False, None, None, False),
                (True, "user", None, False),
                (False, None, 3, True),
                (False, "user", 1, False),
            ]
        ]
        pair.check(queries)
        for op, arg in [("pop", 2), ("prune", 30), ("rotate", None), ("other", _msg("refund"))]:
            pair.apply(op, arg)
        pair.check([*queries, ("refund", False, None, None, False, T0 + 50, T0 + 90)])
        assert pair.indexed.verify().problems == ()
    finally:
        pair.close()


def test_merges_keep_the_index_exact(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With merges every few segments (the thresholds lowered), single and batched appends
    from two handles keep the chain short and the postings exact."""
    monkeypatch.setattr(indexing, "MERGE_SEGMENTS", 4)
    monkeypatch.setattr(indexing, "MERGE_MIN_MESSAGES", 8)
    cid = _id()
    store = ConversationStore(postgres_url, encryption_key=KEY, search_index=True)
    texts = [f"gannet {i} " + WORDS[i % len(WORDS)] for i in range(60)]
    with store.open(cid) as a, store.open(cid) as b:
        for i, text in enumerate(texts[:40]):
            (a if i % 3 else b).append(_msg(text))
            assert len(read_rows(postgres_url, cid)[2]) <= 4
        a.extend([_msg(t) for t in texts[40:]])
        log_id, _, rows = read_rows(postgres_url, cid)
        assert log_id is not None and len(rows) <= 4
        assert read_postings(postgres_url, cid, KEY) == expected_postings(texts, KEY, log_id)
        for codec in (a, b):
            assert [h.seq for h in codec.search("gannet 37")] == [37]
            assert codec.verify().problems == ()


# -- every writer, every process ------------------------------------------------------------


def test_two_processes_appending_keep_the_index_exact(postgres_url: str) -> None:
    """One process opened with ``search_index=True``, one without: both keep the index in
    their transactions, so it equals the one rebuilt from the records and every search
    equals a filter of the loaded history."""
    cid = _id()
    with ConversationStore(postgres_url, encryption_key=KEY, search_index=True).open(cid) as c:
        c.append(_msg("start"))  # the index exists before the writers start
    procs = [
        _children.Popen(
            [
                sys.executable,
                _store_writers.__file__,
                "append_words",
                postgres_url,
                KEY,
                cid,
                f"w{w}",
                "60",
                "1" if w == 0 else "0",
            ],
            stderr=subprocess.PIPE,
        )
        for w in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    log_id, version, _ = read_rows(postgres_url, cid)
    assert version > 0 and log_id is not None
    with ConversationStore(postgres_url, encryption_key=KEY).open(cid) as codec:
        texts = [m["content"] for m in codec.load() or []]
        assert len(texts) == 121
        assert read_postings(postgres_url, cid, KEY) == expected_postings(texts, KEY, log_id)
        assert codec.verify().problems == ()
        for word in ("zanzibar3", "w1 zanzibar2", "item17", "w0"):
            want = [i for i, t in enumerate(texts) if all(p in t for p in word.split())]
            assert [h.seq for h in codec.search(word)] == want, word


# -- deletion is real ------------------------------------------------------------------------


def test_pop_prune_clear_and_delete_leave_no_postings_of_deleted_messages(
    postgres_url: str,
) -> None:
    """After each deletion the rows hold exactly the postings of the messages left (read
    back with an independent reader); after clear() and a store's delete() none at all."""
    cid = _id()
    store = ConversationStore(postgres_url, encryption_key=KEY, search_index=True)
    texts = [f"message {i} " + ("quokka" if i in (5, 33, 34) else "plain") for i in range(40)]
    with store.open(cid) as codec:
        codec.extend([_msg(t) for t in texts[:20]], timestamps=[T0 + i for i in range(20)])
        for i in range(20, 40):
            codec.append(_msg(texts[i]), timestamp=T0 + i)

        def check(left: list[str]) -> None:
            log_id = read_rows(postgres_url, cid)[0]
            assert log_id is not None
            got = read_postings(postgres_url, cid, KEY)
            assert got == expected_postings(left, KEY, log_id)
            quokka = token(KEY, log_id, "quo")
            assert (quokka in got) == any("quokka" in t for t in left)

        check(texts)
        for _ in range(6):
            codec.pop()
        check(texts[:34])
        codec.pop()  # message 33: the last quokka of block 2
        check(texts[:33])
        assert [h.seq for h in codec.search("quokka")] == [5]
        codec.prune(T0 + 10)  # message 5 goes: no quokka left anywhere
        check(texts[10:33])
        assert list(codec.search("quokka")) == []
        codec.replace([_msg("quokka again")])
        check(["quokka again"])
        codec.clear()
        assert read_rows(postgres_url, cid)[1:] == (0, [])
        codec.append(_msg("back"))  # the option still asks for one
        assert read_rows(postgres_url, cid)[1] > 0
    assert store.delete(cid)
    assert read_rows(postgres_url, cid)[1:] == (0, [])


def test_after_rotate_key_the_old_keys_tokens_are_gone(postgres_url: str) -> None:
    cid = _id()
    with ConversationStore(postgres_url, encryption_key=KEY, search_index=True).open(cid) as c:
        c.extend([_msg(f"wombat {i}") for i in range(30)])
        old_id = read_rows(postgres_url, cid)[0]
        assert old_id is not None
        old_token = token(KEY, old_id, "wom")
        assert old_token in read_postings(postgres_url, cid, KEY)
        c.rotate_key(OTHER_KEY)
        new_id = read_rows(postgres_url, cid)[0]
        assert new_id is not None and new_id != old_id
        with pytest.raises(InvalidToken):
            read_postings(postgres_url, cid, KEY)  # the old key opens no segment
        got = read_postings(postgres_url, cid, OTHER_KEY)
        assert old_token not in got and token(OTHER_KEY, new_id, "wom") in got
        assert [h.seq for h in c.search('"wombat 7"')] == [7]
        assert c.verify().problems == ()


def test_a_dump_holds_no_word_of_an_indexed_conversation(postgres_cluster: Cluster) -> None:
    url = postgres_cluster.create_database()
    cid = "dumped"
    with ConversationStore(url, encryption_key=KEY, search_index=True).open(cid) as c:
        c.extend([_msg(f"xylophone-canary {i} Straße") for i in range(50)])
        c.append(_msg("one more xylophone"))
    assert read_rows(url, cid)[1] > 0
    dump = postgres_cluster.dump(url)

    def holds(text: str) -> bool:  # as text, or in a bytea column's hex output
        return text.encode() in dump or text.encode().hex().encode() in dump

    assert b"cc_kwi_segments" in dump and holds(cid)  # the checks below can fail
    for needle in ("xylophone", "canary", "Straße", "straße", "xyl", KEY):
        assert not holds(needle), needle


# -- maintenance: verify, reindex, schema, copy ----------------------------------------------


def test_verify_reports_a_damaged_index_and_reindex_rebuilds_it(postgres_url: str) -> None:
    cid = _id()
    with ConversationStore(postgres_url, encryption_key=KEY).open(cid) as c:
        c.extend([_msg(f"heron {i}") for i in range(40)])
        assert read_rows(postgres_url, cid)[1] == 0  # no index unless asked
        assert c.reindex() == 40
        assert c.verify().problems == ()
        with psycopg.connect(postgres_url) as conn:  # an edit outside the library
            conn.execute("DELETE FROM cc_kwi_segments WHERE conversation_id = %s", (cid,))
        problems = c.verify().problems
        assert [p.kind for p in problems] == ["keyword-index"] and c.verify().ok
        assert [h.seq for h in c.search("heron 33")] == [33]  # uncovered: scanned
        c.reindex()
        assert c.verify().problems == ()
        c.append(_msg("heron 40"))
        assert [h.seq for h in c.search("heron 40")] == [40]


def test_a_version_2_schema_is_migrated_to_3_and_indexes_on_request(
    postgres_cluster: Cluster,
) -> None:
    """Version 3 added the keyword index's table and the row's ``kwi``: a version-2
    database is migrated in place, its records untouched, its logs without an index until
    one is asked for."""
    url = postgres_cluster.create_database()
    with ConversationStore(url, encryption_key=KEY).open("a") as codec:
        codec.extend([_msg(f"m{i} puffin") for i in range(3)])
    with psycopg.connect(url, autocommit=True) as conn:  # back to what version 2 made
        conn.execute("DROP TABLE cc_kwi_segments")
        conn.execute("ALTER TABLE cc_conversations DROP COLUMN kwi")
        conn.execute("UPDATE cc_schema_version SET version = 2")
        assert ensure_schema(conn) == 2
        assert conn.execute("SELECT version FROM cc_schema_version").fetchone() == (3,)
        assert SCHEMA_VERSION == 3
    store = ConversationStore(url, encryption_key=KEY, search_index=True)
    with store.open("a") as codec:
        assert [m["content"] for m in codec.load() or []] == ["m0 puffin", "m1 puffin", "m2 puffin"]
        assert read_rows(url, "a")[1] == 0
        codec.append(_msg("m3 puffin"))  # the option: built at this write
        assert read_rows(url, "a")[1] > 0
        assert [h.seq for h in codec.search("puffin")] == [0, 1, 2, 3]
        assert codec.verify().problems == ()


def _cli(*args: str, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conversation_codec", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "CONVERSATION_KEY": key},
        check=False,
    )


def test_copy_keeps_a_file_conversations_index_in_the_database(
    postgres_url: str, tmp_path: Path
) -> None:
    """``conversation-codec copy`` of an indexed file conversation to a database store
    (opened without ``search_index``) gives it an index there, and back again."""
    cid = _id()
    files = ConversationStore(tmp_path / "a", encryption_key=KEY, search_index=True)
    with files.open(cid) as c:
        c.extend([_msg(f"ibis {i}") for i in range(50)])
    done = _cli("copy", str(tmp_path / "a"), postgres_url, cid, key=KEY)
    assert done.returncode == 0, done.stderr
    log_id, version, _ = read_rows(postgres_url, cid)
    assert version > 0 and log_id is not None
    texts = [f"ibis {i}" for i in range(50)]
    assert read_postings(postgres_url, cid, KEY) == expected_postings(texts, KEY, log_id)
    with ConversationStore(postgres_url, encryption_key=KEY).open(cid) as c:
        assert [h.seq for h in c.search("ibis 42")] == [42]
        assert c.verify().problems == ()
    back = ConversationStore(tmp_path / "b", encryption_key=OTHER_KEY)
    report = copy_conversations(ConversationStore(postgres_url, encryption_key=KEY), back, [cid])
    assert report.copied == [cid]
    assert (tmp_path / "b" / f"{cid}.log.kwi").is_file()
    with back.open(cid) as c:
        assert [h.seq for h in c.search("ibis 42")] == [42] and c.verify().problems == ()


def test_a_store_search_reads_only_candidate_blocks(postgres_url: str) -> None:
    """``ConversationStore.search`` on a database uses each conversation's index: a record
    outside every candidate block is never read (here: made unreadable), while a search
    the index cannot answer (a regex) reads it and reports it."""
    ids = [_id(), _id()]
    store = ConversationStore(postgres_url, encryption_key=KEY, search_index=True)
    for cid in ids:
        with store.open(cid) as c:
            c.extend([_msg(f"{cid} zebra item{i}") for i in range(40)])
    with psycopg.connect(postgres_url) as conn:  # damage record 3 of the first (block 0)
        conn.execute(
            "UPDATE cc_records SET record = %s WHERE conversation_id = %s AND seq = 3",
            (b"x" * 120, ids[0]),
        )
    hits = list(store.search("zebra item33", conversation_ids=ids))
    assert sorted((cid, h.seq) for cid, h in hits) == sorted((cid, 33) for cid in ids)
    errors: list[str] = []
    found = list(
        store.search(
            "item33", regex=True, conversation_ids=ids, on_error=lambda c, e: errors.append(c)
        )
    )
    assert errors == [ids[0]] and ids[1] in {cid for cid, _ in found}


def test_a_rolled_back_transaction_takes_its_postings_with_it(postgres_url: str) -> None:
    """Appends and a pop inside a transaction that fails: the records and the segments roll
    back together, and the handle that wrote them forgets what it held."""
    cid = _id()
    with ConversationStore(postgres_url, encryption_key=KEY, search_index=True).open(cid) as c:
        c.extend([_msg(f"osprey {i}") for i in range(20)])
        before = read_rows(postgres_url, cid)
        with pytest.raises(RuntimeError, match="abandon"), c.transaction():
            c.append(_msg("osprey 20 kestrel"))
            c.pop()
            c.pop()
            c.append(_msg("kestrel again"))
            assert [h.seq for h in c.search("kestrel")] == [19]
            raise RuntimeError("abandon")
        assert read_rows(postgres_url, cid) == before
        assert list(c.search("kestrel")) == []
        assert [h.seq for h in c.search("osprey 19")] == [19]
        c.append(_msg("kestrel at last"))
        assert [h.seq for h in c.search("kestrel")] == [20]
        assert c.verify().problems == ()


def test_change_password_re_keys_the_index(postgres_url: str) -> None:
    cid = _id()
    store = ConversationStore(postgres_url, password="old pw", search_index=True)
    with store.open(cid) as c:
        c.extend([_msg(f"lemur {i}") for i in range(20)])
        before = read_rows(postgres_url, cid)
        c.change_password("old pw", "new pw")
        after = read_rows(postgres_url, cid)
        assert after[0] != before[0] and after[1] > before[1]  # a new log, a new index
        assert not {f for _, _, f in before[2]} & {f for _, _, f in after[2]}
        assert [h.seq for h in c.search('"lemur 13"')] == [13]
        assert c.verify().problems == ()


def test_an_index_cache_keeps_no_database_index(postgres_url: str) -> None:
    """A codec on a database conversation given an ``IndexCache`` hands it nothing (the
    index is rows, read again on ``(epoch, kwi)``: no file identity to vouch for a copy),
    and each reopen answers as the records say after appends, a pop and a rewrite."""
    cid, cache = _id(), IndexCache()
    store = ConversationStore(postgres_url, encryption_key=KEY, search_index=True)

    def reopen() -> ConversationCodec:
        where, storage = backend_for(postgres_url).locate(cid)
        return ConversationCodec(
            where, storage=storage, encryption_key=KEY, context=cid, index_cache=cache
        )

    with reopen() as c:
        c.extend([_msg(f"heron {i}") for i in range(40)])
    changes = [
        lambda c: c.extend([_msg("heron 3 again")] + [_msg(f"egret {i}") for i in range(40)]),
        lambda c: c.pop(),
        lambda c: c.append(_msg("heron 3 last")),
        lambda c: c.compact(),
    ]
    for change in changes:
        with reopen() as c:
            hits = [h.seq for h in c.search('"heron 3"')]
            assert hits == [i for i, m in enumerate(c.load()) if "heron 3" in m["content"]]
        with store.open(cid) as c:
            change(c)
    with reopen() as c:
        assert [h.seq for h in c.search('"heron 3 last"')] == [len(c) - 1]
        assert c.verify().problems == ()
    assert (len(cache), cache.hits, cache.misses) == (0, 0, 0)

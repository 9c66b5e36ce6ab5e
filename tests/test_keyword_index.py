"""The blind keyword index (FORMAT.md §17): exact results, real deletion, every writer.

Searches with the index are compared with the scan of a mirror log that has none and that
receives the same operations; the sidecar is read by a small reader written from the spec
(HKDF, HMAC and Fernet from ``cryptography``, no library code), so deletion and key
rotation are checked on the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests._writer import SCRIPT, subprocess_env
from tests.conftest import KEY, OTHER_KEY

import _children
from conversation_codec import ConversationCodec, ConversationStore

T0 = 1_700_000_000  # epoch seconds

# -- a reader of P.kwi written from FORMAT.md §17 ---------------------------------------------


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def index_keys(master_b64: str, log_id: bytes) -> tuple[bytes, Fernet]:
    master = base64.urlsafe_b64decode(master_b64)
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=log_id,
        info=b"conversation-codec/1 keyword index",
    ).derive(master)
    return okm[:32], Fernet(base64.urlsafe_b64encode(okm[32:]))


def _read_kwi(
    path: Path, master_b64: str
) -> tuple[bytes, list[tuple[int, int]], dict[bytes, set[int]]]:
    """Return (log_id, [(lo, hi)], token -> blocks) of ``P.kwi``; raises InvalidToken when
    ``master_b64`` does not open its segments."""
    data = path.read_bytes()
    assert data[:8] == b"\x89CCK\r\n\x1a\n"
    assert data[8:12] == bytes([1, 0, 4, 4])  # version 1, block_shift 4, token_bytes 4
    log_id = data[16:32]
    _, fernet = index_keys(master_b64, log_id)
    spans: list[tuple[int, int]] = []
    postings: dict[bytes, set[int]] = {}
    pos = 32
    while pos < len(data):
        n, pos = varint(data, pos)
        plain = fernet.decrypt(base64.urlsafe_b64encode(b"\x80" + data[pos : pos + n]))
        pos += n
        spans.append(segment_postings(plain, postings))
    return log_id, spans, postings


def segment_postings(plain: bytes, postings: dict[bytes, set[int]]) -> tuple[int, int]:
    """Add a decrypted segment's postings (token -> blocks) to ``postings``; return its
    ``(lo, hi)`` (FORMAT.md §17.3)."""
    lo, p = varint(plain, 0)
    hi, p = varint(plain, p)
    p += 16  # tag
    while p < len(plain):
        tok = plain[p : p + 4]
        first, p = varint(plain, p + 4)
        last, p = varint(plain, p)
        size, p = varint(plain, p)
        blocks, end = [first], p + size
        while p < end:
            gap, p = varint(plain, p)
            blocks.append(blocks[-1] + gap)
        assert blocks[-1] == last
        postings.setdefault(tok, set()).update(blocks)
    return lo, hi


def token(master_b64: str, log_id: bytes, gram: str) -> bytes:
    token_key, _ = index_keys(master_b64, log_id)
    return hmac.new(token_key, gram.encode(), hashlib.sha256).digest()[:4]


def hits(codec: ConversationCodec, query: str | None, **kw: Any) -> list[tuple[int, Any, Any]]:
    return [(h.seq, h.timestamp, h.message) for h in codec.search(query, **kw)]


def _msg(i: int, text: str, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": text}


# -- results identical to the scan ----------------------------------------------------------

WORDS = [
    "refund", "Refunds", "REFUNDED", "parcel", "delayed", "STRASSE", "straße", "İstanbul",
    "ΣΑΣ", "σας", "café", "CAFÉ", "naïve", "A1042", "lookup_order", "ab", "x", "the",
    "order_id", "日本語", "東京",
]  # fmt: skip
SHAPES = ["content", "parts", "tool", "agents"]


def _shaped(text: str, shape: str, role: str) -> dict[str, Any]:
    if shape == "parts":
        return {"role": role, "content": [{"type": "text", "text": text}]}
    if shape == "tool":
        return {
            "role": "assistant",
            "tool_calls": [{"id": "c", "function": {"name": "lookup_order", "arguments": text}}],
        }
    if shape == "agents":
        return {"type": "function_call_output", "call_id": "c", "output": text}
    return {"role": role, "content": text}


message_st = st.builds(
    _shaped,
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join),
    st.sampled_from(SHAPES),
    st.sampled_from(["user", "assistant"]),
)
op_st = st.one_of(
    st.tuples(st.just("extend"), st.lists(message_st, min_size=1, max_size=20)),
    st.tuples(st.just("pop"), st.integers(1, 3)),
    st.tuples(st.just("prune"), st.integers(0, 30)),
    st.tuples(st.just("replace"), st.lists(message_st, max_size=20)),
    st.tuples(st.just("compact"), st.none()),
    st.tuples(st.just("rotate"), st.none()),
    st.tuples(st.just("other"), message_st),  # a writer without the option
)
term_st = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(WORDS).flatmap(
        lambda w: st.tuples(st.integers(0, len(w)), st.integers(0, len(w))).map(
            lambda ij: w[min(ij) : max(ij)] or w
        )
    ),
    st.lists(st.sampled_from(WORDS), min_size=2, max_size=2).map(lambda ws: f'"{" ".join(ws)}"'),
)
query_st = st.tuples(
    st.lists(term_st, min_size=1, max_size=3).map(" ".join),
    st.booleans(),  # case_sensitive
    st.sampled_from([None, "user"]),
    st.sampled_from([None, 1, 3]),
    st.booleans(),  # newest_first
    st.sampled_from([None, T0 + 3, T0 + 17]),  # since
    st.sampled_from([None, T0 + 12, T0 + 40]),  # until
)


class IndexedPair:
    """The same history in an indexed log and in a mirror without an index; ``other(i,
    key)`` opens log ``i`` (0: indexed, 1: the mirror) as a writer without the option."""

    def __init__(
        self,
        indexed: ConversationCodec,
        scan: ConversationCodec,
        other: Callable[[int, str], ConversationCodec],
    ) -> None:
        self.now = T0
        self.key = KEY
        self.indexed, self.scan, self._other = indexed, scan, other

    def apply(self, op: str, arg: Any) -> None:
        both = (self.indexed, self.scan)
        if op == "extend" or op == "replace":
            stamps = [self.now + i for i in range(len(arg))]
            self.now += len(arg)
            for c in both:
                getattr(c, op)(arg, timestamps=stamps)
        elif op == "pop":
            for c in both:
                for _ in range(arg):
                    c.pop()
        elif op == "prune":
            for c in both:
                c.prune(T0 + arg)
        elif op == "compact":
            for c in both:
                c.compact()
        elif op == "rotate":
            self.key = OTHER_KEY if self.key == KEY else KEY
            for c in both:
                c.rotate_key(self.key)
        else:
            for i in (0, 1):
                with self._other(i, self.key) as other:
                    other.append(arg, timestamp=self.now)
            self.now += 1

    def check(self, queries: list[tuple[Any, ...]]) -> None:
        for text, case, role, limit, newest, since, until in queries:
            if since is not None and until is not None and since > until:
                since, until = until, since
            kw = {"case_sensitive": case, "role": role, "limit": limit, "newest_first": newest}
            kw.update(since=since, until=until)
            assert hits(self.indexed, text, **kw) == hits(self.scan, text, **kw), (text, kw)

    def replay(self, ops: list[tuple[str, Any]], queries: list[tuple[Any, ...]]) -> None:
        """Apply each op, checking every query against the scan after it; then verify."""
        try:
            for op, arg in ops:
                self.apply(op, arg)
                self.check(queries)
            assert self.indexed.verify().problems == ()
        finally:
            self.close()

    def close(self) -> None:
        self.indexed.close()
        self.scan.close()


def _file_pair(folder: Path) -> IndexedPair:
    paths = (folder / "indexed.log", folder / "scan.log")
    return IndexedPair(
        ConversationCodec(paths[0], encryption_key=KEY, search_index=True),
        ConversationCodec(paths[1], encryption_key=KEY),
        lambda i, key: ConversationCodec(paths[i], encryption_key=key),
    )


def _run_against_the_scan(tmp_path: Path, ops: list[tuple[str, Any]], queries: list[Any]) -> None:
    folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    _file_pair(folder).replay(ops, queries)


@pytest.mark.parametrize(
    "max_examples",
    [30, *(pytest.param(n, marks=pytest.mark.slow) for n in (60, 500))],
    ids=["default", "60", "full"],
)
def test_indexed_search_equals_the_scan(tmp_path: Path, max_examples: int) -> None:
    """Random histories (appends, pops, prunes, replaces, compactions, rotations, a writer
    without the option) and random queries (words, substrings, phrases, case, role, limit,
    newest first): the indexed log answers exactly as the scan of a log without an index."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(ops=st.lists(op_st, min_size=1, max_size=6), queries=st.lists(query_st, max_size=6))
    def run(ops: list[tuple[str, Any]], queries: list[Any]) -> None:
        _run_against_the_scan(tmp_path, ops, queries)

    run()


@pytest.mark.parametrize(
    ("text", "query", "case_sensitive", "found"),
    [
        ("Die STRASSE", "STRASSE", True, True),
        ("Die STRASSE", "strasse", True, False),
        ("Die Straße", "STRASSE", False, True),
        ("İstanbul", "i̇stanbul", False, True),
        ("ΣΑΣ", "σας", False, True),
        ('{"order_id": "A1042"}', "order_id A1042", True, True),
        ("parcel delayed", '"parcel delayed"', False, True),
        ("parcel  delayed", '"parcel delayed"', False, False),
    ],
)
def test_case_folding_and_phrases_match_as_the_scan(
    tmp_path: Path, text: str, query: str, case_sensitive: bool, found: bool
) -> None:
    with ConversationCodec(tmp_path / "c.log", encryption_key=KEY, search_index=True) as c:
        c.extend([_msg(0, "filler words") for _ in range(40)] + [_msg(0, text)])
        hits = [h.seq for h in c.search(query, case_sensitive=case_sensitive)]
        assert hits == ([40] if found else [])


def test_a_rare_word_decrypts_only_its_block(tmp_path: Path) -> None:
    with ConversationCodec(tmp_path / "c.log", encryption_key=KEY, search_index=True) as c:
        c.extend([_msg(i, f"message number {i} about parcels") for i in range(400)])
        c.append(_msg(0, "the zanzibar invoice"))
        cipher = c.storage.fmt.records.cipher  # type: ignore[union-attr, attr-defined]
        before = cipher.unseal_count
        assert [h.seq for h in c.search("ZANZIBAR")] == [400]
        assert cipher.unseal_count - before <= 16  # one block, not 401 records
        before = cipher.unseal_count
        assert [h.seq for h in c.search("parcels", limit=2, newest_first=True)] == [399, 398]
        assert cipher.unseal_count - before <= 32


def test_the_sidecar_holds_no_plaintext_and_follows_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        for i in range(65):  # single appends: the first creates the index, the rest wait
            c.append(_msg(i, f"zanzibar{i} umbrella"))
        assert _read_kwi(tmp_path / "c.log.kwi", KEY)[1] == [(0, 1)]
        assert [h.seq for h in c.search("zanzibar6")] == [6, *range(60, 65)]  # catches up
        for i in range(65, 70):
            c.append(_msg(i, f"zanzibar{i} umbrella"))
    data = (tmp_path / "c.log.kwi").read_bytes()
    assert b"zanzibar" not in data and b"umb" not in data
    log_id, spans, postings = _read_kwi(tmp_path / "c.log.kwi", KEY)
    assert spans == [(0, 1), (1, 65)]  # the last 5 were appended after the search
    assert postings[token(KEY, log_id, "umb")] == {0, 1, 2, 3, 4}  # blocks of 16 messages
    assert postings[token(KEY, log_id, "r39")] == {2}
    assert token(KEY, log_id, "r69") not in postings
    with ConversationCodec(path, encryption_key=KEY) as c:
        assert [h.seq for h in c.search("zanzibar69")] == [69]  # scanned past the index
        assert _read_kwi(tmp_path / "c.log.kwi", KEY)[1] == spans  # 5 < 32: not written
        assert c.verify().problems == ()


def test_pop_prune_and_replace_remove_the_postings_of_deleted_messages(tmp_path: Path) -> None:
    path, kwi = tmp_path / "c.log", tmp_path / "c.log.kwi"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.extend(
            [_msg(i, f"common words {i}") for i in range(20)] + [_msg(0, "a zanzibar secret")],
            timestamps=list(range(21)),
        )
        log_id, _, postings = _read_kwi(kwi, KEY)
        assert token(KEY, log_id, "zan") in postings
        c.pop()
        log_id, spans, postings = _read_kwi(kwi, KEY)
        assert spans == [(0, 20)] and token(KEY, log_id, "zan") not in postings
        assert list(c.search("zanzibar")) == []
        c.extend([_msg(0, "quokka one"), _msg(0, "quokka two")], timestamps=[21, 22])
        c.prune(21)  # the first 21 messages go
        log_id, spans, postings = _read_kwi(kwi, KEY)
        assert spans == [(0, 2)] and token(KEY, log_id, "wor") not in postings
        c.replace([_msg(0, "only this")])
        log_id, spans, postings = _read_kwi(kwi, KEY)
        assert spans == [(0, 1)] and token(KEY, log_id, "quo") not in postings
        c.clear()
    assert not kwi.exists()


def test_after_rotate_key_the_old_key_derives_no_valid_token(tmp_path: Path) -> None:
    path, kwi = tmp_path / "c.log", tmp_path / "c.log.kwi"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.extend([_msg(i, f"zanzibar {i}") for i in range(30)])
        old_id, _, _ = _read_kwi(kwi, KEY)
        c.rotate_key(OTHER_KEY)
        assert [h.seq for h in c.search("zanzibar 7")] == [7, 17, 27]  # substrings
    new_id, spans, postings = _read_kwi(kwi, OTHER_KEY)
    assert new_id != old_id and spans == [(0, 30)]
    with pytest.raises(InvalidToken):
        _read_kwi(kwi, KEY)
    assert token(KEY, new_id, "zan") not in postings
    assert token(OTHER_KEY, new_id, "zan") in postings


def test_every_writer_keeps_the_index_with_or_without_the_option(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as indexed:
        indexed.extend([_msg(i, f"alpha {i}") for i in range(10)])
        with ConversationCodec(path, encryption_key=KEY) as other:  # no option
            other.append(_msg(0, "bravo"))
            other.pop()
            other.append(_msg(0, "charlie"))
            other.compact()
        assert _read_kwi(tmp_path / "c.log.kwi", KEY)[1] == [(0, 11)]
        assert [h.seq for h in indexed.search("charlie")] == [10]
        assert list(indexed.search("bravo")) == []
        assert indexed.verify().problems == ()


def test_writers_in_other_processes_keep_the_index(tmp_path: Path) -> None:
    """A child process that never heard of the option appends and pops; the parent, with
    postings of its own still in memory, sees the file change and stays exact."""
    path = tmp_path / "c.log"

    def child(*argv: str) -> str:
        done = _children.run(
            [sys.executable, SCRIPT, "op", *argv, str(path)],
            env=subprocess_env(KEY),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.extend([_msg(i, f"alpha {i}") for i in range(20)])
        for i in range(3):
            c.append(_msg(i, f"bravo {i}"))  # held in memory (fewer than 32)
        assert child("append", "--message", json.dumps(_msg(0, "zanzibar"))) == "23"
        assert [h.seq for h in c.search("zanzibar")] == [23]
        assert [h.seq for h in c.search("bravo")] == [20, 21, 22]
        child("pop")
        assert list(c.search("zanzibar")) == []
        assert _read_kwi(tmp_path / "c.log.kwi", KEY)[1] == [(0, 20)]  # it took none of those
        c.append(_msg(0, "charlie"))
        assert [h.seq for h in c.search("charlie")] == [23]
        assert c.verify().problems == ()


def test_a_writer_that_saw_no_index_keeps_one_another_instance_created(tmp_path: Path) -> None:
    """Writers remember that a log has no ``P.kwi`` (an lstat per append otherwise): a
    ``reindex()`` elsewhere must reach them, so that their appends are indexed too."""
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY) as plain:
        plain.extend([_msg(i, f"alpha {i}") for i in range(5)])
        plain.append(_msg(0, "bravo"))  # looked for the sidecar: none
        with ConversationCodec(path, encryption_key=KEY) as other:
            assert other.reindex() == 6
        for i in range(40):  # more than one segment's worth: a search writes it
            plain.append(_msg(i, f"charlie {i}"))
        assert [h.seq for h in plain.search("charlie 39")] == [45]
        assert _read_kwi(tmp_path / "c.log.kwi", KEY)[1] == [(0, 6), (6, 46)]
        assert plain.verify().problems == ()


def test_max_messages_and_a_rotation_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.extend([_msg(i, f"alpha {i}") for i in range(40)])
    # A key list whose first key is new: records and the index stay keyed by the key
    # that opens the header until rotate_key() finishes the rotation.
    with ConversationCodec(path, encryption_key=[OTHER_KEY, KEY], max_messages=10) as c:
        c.append(_msg(0, "alpha zanzibar"))
        visible = list(range(9))  # seqs 31..39 ("alpha 31".."alpha 39") of the last 10
        assert [h.seq for h in c.search("alpha 3")] == visible
        assert [h.seq for h in c.search("zanzibar")] == [9]
        assert c.verify().problems == ()
        c.rotate_key(OTHER_KEY)  # keeps what max_messages hides, and re-keys the index
        assert [h.seq for h in c.search("alpha 3")] == visible
        assert _read_kwi(tmp_path / "c.log.kwi", OTHER_KEY)[1] == [(0, 41)]
        c.compact()  # drops what max_messages hides, and rewrites the index
        assert [h.seq for h in c.search("alpha 3")] == visible
        assert _read_kwi(tmp_path / "c.log.kwi", OTHER_KEY)[1] == [(0, 10)]


def test_a_stale_index_is_never_trusted(tmp_path: Path) -> None:
    """An index left behind by a writer that does not know it (restored here from a copy)
    covers records that were popped and replaced: searches fall back to the scan."""
    path, kwi = tmp_path / "c.log", tmp_path / "c.log.kwi"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.extend([_msg(i, f"alpha {i}") for i in range(5)] + [_msg(0, "zanzibar")])
        shutil.copy(kwi, tmp_path / "old")
        c.pop()
        c.append(_msg(0, "quokka"))
        shutil.copy(tmp_path / "old", kwi)
    with ConversationCodec(path, encryption_key=KEY) as reader:
        problems = reader.verify().problems
        assert [p.kind for p in problems] == ["keyword-index"]
        assert reader.verify().ok  # a cache: not damage
        assert reader.reindex() == 6
        assert reader.verify().problems == ()
    shutil.copy(tmp_path / "old", kwi)
    with ConversationCodec(path, encryption_key=KEY) as reader:  # a search rebuilds it
        assert [h.seq for h in reader.search("quokka")] == [5]
        assert list(reader.search("zanzibar")) == []
        assert reader.verify().problems == ()


@pytest.mark.parametrize("flip", [0, 20, 40, -1])
def test_a_damaged_index_is_reported_and_searches_stay_exact(tmp_path: Path, flip: int) -> None:
    path, kwi = tmp_path / "c.log", tmp_path / "c.log.kwi"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.extend([_msg(i, f"alpha {i}") for i in range(30)])
    data = bytearray(kwi.read_bytes())
    data[flip] ^= 0x01
    kwi.write_bytes(bytes(data))
    with ConversationCodec(path, encryption_key=KEY) as c:
        assert [p.kind for p in c.verify().problems] == ["keyword-index"]
        assert [h.seq for h in c.search("alpha 17")] == [17]  # and rebuilds it first
        assert c.verify().problems == ()


def test_a_torn_last_segment_keeps_the_chain_before_it(tmp_path: Path) -> None:
    path, kwi = tmp_path / "c.log", tmp_path / "c.log.kwi"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        for i in range(40):
            c.append(_msg(i, f"zanzibar{i} umbrella"))
        assert [h.seq for h in c.search("zanzibar33")] == [33]
    assert _read_kwi(kwi, KEY)[1] == [(0, 1), (1, 40)]
    with kwi.open("r+b") as f:  # a crash in the middle of writing the last segment
        f.truncate(kwi.stat().st_size - 20)
    with ConversationCodec(path, encryption_key=KEY) as c:
        assert "before 1 only" in c.verify().problems[0].detail
        assert [h.seq for h in c.search("zanzibar33")] == [33]  # overwrites the torn bytes
        assert [h.seq for h in c.search("zanzibar0")] == [0]
        assert _read_kwi(kwi, KEY)[1] == [(0, 1), (1, 40)]
        c.extend([_msg(0, f"more {i}") for i in range(40)])
        assert [h.seq for h in c.search("more 39")] == [79]
        assert _read_kwi(kwi, KEY)[1] == [(0, 1), (1, 40), (40, 80)]
        assert c.verify().problems == ()


def test_the_index_needs_an_encrypted_log_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="search_index"):
        ConversationCodec(tmp_path / "c.log", search_index=True)
    with pytest.raises(ValueError, match="search_index"):
        ConversationCodec(":memory:", encryption_key=KEY, search_index=True)
    with (
        ConversationCodec(tmp_path / "p.log", encryption_key=KEY) as c,
        pytest.raises(ValueError, match="keyword index"),
    ):
        c.reindex()  # no log yet
    with pytest.raises(ValueError, match="search_index"):
        ConversationStore(tmp_path / "store", search_index=True)


def test_a_password_log_may_have_an_index(tmp_path: Path) -> None:
    with ConversationCodec(tmp_path / "c.log", password="pw", search_index=True) as c:
        c.extend([_msg(i, f"alpha {i}") for i in range(20)])
        assert [h.seq for h in c.search("alpha 13")] == [13]
        c.change_password("pw", "new")
        assert [h.seq for h in c.search("alpha 13")] == [13]
        assert c.verify().problems == ()


def test_a_store_indexes_every_conversation_and_lists_no_sidecar(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path, encryption_key=KEY, search_index=True)
    for cid in ("a", "b"):
        with store.open(cid) as c:
            c.extend([_msg(i, f"{cid} zanzibar {i}") for i in range(3)])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".kwi"))
    assert [info.conversation_id for info in store.infos()] == ["a", "b"]
    hits = list(store.search("zanzibar 2"))
    assert len(hits) == 2
    store.delete("a")
    assert not any(p.name.startswith("a") for p in tmp_path.iterdir())

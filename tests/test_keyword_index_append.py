"""Appends with the keyword index on (FORMAT.md §17.5): the per-block word buffer, the
segment encoder built from set operations, and the skipped per-append checks.

The fast append path holds words, not tokens, and writes a segment every 32 messages
without looking at ``P.kwi`` in between; these tests check that it writes the same bytes
as the reference encoder, that grams come out as the spec defines them, and that another
writer's change to the sidecar or the log between two appends is never written over.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests._writer import subprocess_env
from tests.conftest import KEY

from conversation_codec import ConversationCodec, ConversationStore, FileIO
from conversation_codec.index_cache import IndexCache
from conversation_codec.keyword_index import (
    PendingIndex,
    Postings,
    Tokenizer,
    block_entries,
    encode_blocks,
    message_grams,
)

SPEC_GRAMS = re.compile(r"(?=(\w{3}))")  # FORMAT.md §17.1, spelt as directly as possible


def _msg(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ab cd",
        "abc",
        "Where is my refund? Order A1042, 2 items",
        "Die Straße İstanbul ΣΑΣ ﬁnance",
        "snake_case_words and x1y2z3 __init__",
        "a\u0301bc de\u0301f 日本語のテキスト",
        "tab\tnew\nline, end.",
    ],
)
def test_grams_are_the_trigrams_of_the_spec(text: str) -> None:
    folded = text.casefold()
    assert message_grams(_msg(text)) == set(SPEC_GRAMS.findall(folded))


@pytest.mark.parametrize("seed", range(6))
def test_the_set_encoder_writes_the_reference_bytes(seed: int) -> None:
    """``block_entries`` (set operations by block) == ``encode_blocks`` (token -> blocks),
    for 1 to 7 blocks, with gaps, empty blocks and tokens shared in every pattern."""
    rng = random.Random(seed)
    universe = [rng.randbytes(4) for _ in range(300)]
    for count in range(1, 8):
        start = rng.choice([0, 5, 127, 200, 16383])
        chosen = sorted(rng.sample(range(start, start + 3 * count), count))
        blocks = [(b, set(rng.sample(universe, rng.choice([0, 3, 40, 150])))) for b in chosen]
        reference: dict[bytes, list[int]] = {}
        for b, tokens in blocks:
            for t in tokens:
                reference.setdefault(t, []).append(b)
        assert block_entries(blocks) == list(encode_blocks(reference)), (seed, count)


def test_pending_words_fold_into_the_postings_of_their_grams() -> None:
    """Words held by block, folded twice in a block (a search in the middle of it), give
    the postings that adding each message's grams gives."""
    tokens = Tokenizer(bytes(range(32)))
    texts = [f"alpha bravo{i % 5} {'charlie' if i % 7 == 0 else 'delta'} x{i}yz" for i in range(40)]
    pending, folded = PendingIndex(3), Postings()
    expected = Postings()
    for seq, text in enumerate(texts[3:], start=3):
        pending.add(seq, _msg(text))
        if seq in (9, 20, 21, 35):
            pending.fold(folded, tokens)
        expected.add_tokens({tokens.token(g) for g in message_grams(_msg(text))}, seq >> 4)
    pending.fold(folded, tokens)
    assert folded.lists == expected.lists
    assert (pending.lo, pending.hi) == (3, 40)


def _check_against_scan(
    indexed: ConversationCodec, scan: ConversationCodec, words: list[str]
) -> None:
    for word in words:
        for newest in (False, True):
            got = [(h.seq, h.message) for h in indexed.search(word, newest_first=newest)]
            want = [(h.seq, h.message) for h in scan.search(word, newest_first=newest)]
            assert got == want, word


def test_a_sidecar_replaced_between_two_appends_is_not_written_over(tmp_path: Path) -> None:
    """Another codec rebuilds ``P.kwi`` (a new file) while this one holds postings: the
    next segment is not appended at the old offset of another file, and every search and
    ``verify()`` stay exact."""
    path, mirror = tmp_path / "c.log", tmp_path / "scan.log"
    words = ["alpha", "zanzibar", "quokka7", "lemur", "bravo"]
    with (
        ConversationCodec(path, encryption_key=KEY, search_index=True) as c,
        ConversationCodec(mirror, encryption_key=KEY) as scan,
    ):
        batch = [_msg(f"alpha bravo {i}") for i in range(40)]
        c.extend(batch)
        scan.extend(batch)
        for i in range(70):
            m = _msg(f"lemur {i} " + ("zanzibar" if i % 9 == 0 else "quokka7"))
            c.append(m)
            scan.append(m)
            if i in (5, 45):  # the held postings are written at i = 31 and i = 63
                with ConversationCodec(path, encryption_key=KEY) as other:
                    other.reindex()
            if i in (31, 63):  # right after those writes; no look at the file before them
                # (a search reloads a changed file; the next append would rebuild it)
                assert c.verify().problems == (), i
                _check_against_scan(c, scan, words)
        _check_against_scan(c, scan, words)
        assert c.verify().problems == ()
    with ConversationCodec(path, encryption_key=KEY) as fresh:
        assert fresh.verify().problems == ()
        with ConversationCodec(mirror, encryption_key=KEY) as scan:
            _check_against_scan(fresh, scan, words)


def test_appends_interleaved_with_another_writer_stay_exact(tmp_path: Path) -> None:
    """Two codecs on one log take turns (each append by one lands between the other's
    held postings), with pops: the index stays exact in both and on disk."""
    path, mirror = tmp_path / "c.log", tmp_path / "scan.log"
    words = ["alpha", "turn0", "turn1", "kiwi", "mango"]
    with (
        ConversationCodec(path, encryption_key=KEY, search_index=True) as a,
        ConversationCodec(path, encryption_key=KEY) as b,
        ConversationCodec(mirror, encryption_key=KEY) as scan,
    ):
        a.append(_msg("alpha start"))
        scan.append(_msg("alpha start"))
        for i in range(90):
            writer = a if i % 3 else b
            m = _msg(f"turn{i % 2} {'kiwi' if i % 4 else 'mango'} {i}")
            writer.append(m)
            scan.append(m)
            if i % 17 == 16:
                writer.pop()
                scan.pop()
            if i % 10 == 0:
                _check_against_scan(a, scan, words)
                _check_against_scan(b, scan, words)
        assert a.verify().problems == () and b.verify().problems == ()


def test_written_postings_join_the_memory_index_before_anything_reads_it(tmp_path: Path) -> None:
    """Segments this codec wrote are added to its in-memory postings only when needed: a
    search, ``verify()``, a pop, another writer's segments read after them, or the store's
    cache on close; each sees them, in order."""
    path, mirror = tmp_path / "c.log", tmp_path / "scan.log"
    words = ["alpha", "kiwi3", "mango", "papaya", "quince"]
    with (
        ConversationCodec(path, encryption_key=KEY, search_index=True) as a,
        ConversationCodec(mirror, encryption_key=KEY) as scan,
    ):
        a.append(_msg("alpha start"))
        scan.append(_msg("alpha start"))
        for i in range(64):  # two segments written, none read back
            m = _msg(f"kiwi{i % 5} {'mango' if i % 3 else 'papaya'} {i}")
            a.append(m)
            scan.append(m)
        _check_against_scan(a, scan, words)
        for i in range(64, 96):  # and one more, before another writer's
            m = _msg(f"kiwi{i % 5} {'mango' if i % 3 else 'papaya'} {i}")
            a.append(m)
            scan.append(m)
        with ConversationCodec(path, encryption_key=KEY) as b:  # segments after a's
            for i in range(40):
                m = _msg(f"quince {i} {'mango' if i % 2 else 'alpha'}")
                b.append(m)
                scan.append(m)
        _check_against_scan(a, scan, words)  # a reads b's segment after its own
        assert a.verify().problems == ()
        for i in range(40):
            m = _msg(f"papaya {i}")
            a.append(m)
            scan.append(m)
        a.pop()
        scan.pop()
        _check_against_scan(a, scan, words)
        assert a.verify().problems == ()
    cache = IndexCache()
    root = tmp_path / "store"
    store = ConversationStore(
        root, encryption_key=KEY, search_index=True, index_cache=cache, durability="flush"
    )
    with store.open("c") as c:
        for i in range(1100):  # past UNFOLDED_MAX blocks held: they join the postings
            c.append(_msg(f"kiwi{i % 4} {i}"))
    hits = cache.hits
    with store.open("c") as c:  # the state the first codec handed to the cache
        assert [h.seq for h in c.search("kiwi3")] == list(range(3, 1100, 4))
        assert cache.hits == hits + 1
        assert c.verify().problems == ()


def test_a_search_between_two_segment_writes_leaves_the_postings_exact(tmp_path: Path) -> None:
    """A search takes the held messages into the in-memory postings (up to block 3 here);
    the segment written next must not add its earlier blocks (2) after them again."""
    path, mirror = tmp_path / "c.log", tmp_path / "scan.log"
    words = ["alpha", "kiwi", "mango", "zebra"]
    with (
        ConversationCodec(path, encryption_key=KEY, search_index=True) as c,
        ConversationCodec(mirror, encryption_key=KEY) as scan,
    ):
        for i in range(130):
            m = _msg(f"kiwi alpha {i} {'mango' if i % 2 else 'zebra'}")
            c.append(m)
            scan.append(m)
            if i in (60, 61, 100):  # a search between two segment writes (seqs 33 and 65)
                _check_against_scan(c, scan, words)
        _check_against_scan(c, scan, words)
        assert c.verify().problems == ()
    with ConversationCodec(path, encryption_key=KEY) as fresh:
        assert fresh.verify().problems == ()


def _spans(kwi: Path) -> list[tuple[int, int]]:
    """The ``(lo, hi)`` of each segment of ``P.kwi`` (FORMAT.md §17.3), read with the key."""
    from tests.test_keyword_index import _read_kwi

    return _read_kwi(kwi, KEY)[1]


def test_appends_leave_the_sidecar_alone_and_a_search_catches_it_up(tmp_path: Path) -> None:
    """An append does no index work (FORMAT.md §17.5): the sidecar keeps its bytes through
    100 single appends; the first search that finds 32 or more records past it indexes them
    (one segment) and answers from the index, and fewer are scanned, not written."""
    path, kwi, mirror = tmp_path / "c.log", tmp_path / "c.log.kwi", tmp_path / "scan.log"
    words = ["alpha", "kiwi", "mango", "zebra7"]
    with (
        ConversationCodec(path, encryption_key=KEY, search_index=True) as c,
        ConversationCodec(mirror, encryption_key=KEY) as scan,
    ):
        first = [_msg(f"alpha {i}") for i in range(10)]
        c.extend(first)  # the option creates the index with the first write
        scan.extend(first)
        assert _spans(kwi) == [(0, 10)]
        before = kwi.read_bytes()
        for i in range(100):
            m = _msg(f"kiwi {i} {'mango' if i % 3 else 'zebra7'}")
            c.append(m)
            scan.append(m)
        assert kwi.read_bytes() == before
        _check_against_scan(c, scan, words)
        assert _spans(kwi) == [(0, 10), (10, 110)]
        caught_up = kwi.read_bytes()
        for i in range(20):  # fewer than 32: scanned past the index, nothing written
            m = _msg(f"mango {i}")
            c.append(m)
            scan.append(m)
        _check_against_scan(c, scan, words)
        assert kwi.read_bytes() == caught_up
        assert c.verify().problems == ()
    with ConversationCodec(path, encryption_key=KEY) as other:  # no option: the file's there
        for i in range(40):
            other.append(_msg(f"zebra7 {i}"))
        assert len([h.seq for h in other.search("zebra7")]) == 34 + 40
        assert _spans(kwi) == [(0, 10), (10, 110), (110, 170)]


class _NoSidecarWrites(FileIO):
    """Refuses every write of a file whose name holds ``.kwi`` (a full disk, say)."""

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        if ".kwi" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(28, "No space left on device")
        return super().pwrite(fd, data, offset)


def test_a_search_that_cannot_write_the_index_scans_what_it_lacks(tmp_path: Path) -> None:
    path, kwi = tmp_path / "c.log", tmp_path / "c.log.kwi"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.extend([_msg(f"alpha {i}") for i in range(5)])
        for i in range(50):
            c.append(_msg(f"kiwi {i}"))
    before = kwi.read_bytes()
    with ConversationCodec(path, encryption_key=KEY, io=_NoSidecarWrites()) as c:
        assert [h.seq for h in c.search('"kiwi 4"')] == [9, *range(45, 55)]
        assert [h.seq for h in c.search("alpha")] == [0, 1, 2, 3, 4]
    assert kwi.read_bytes() == before


def test_a_pop_past_what_the_index_covers_leaves_it_alone(tmp_path: Path) -> None:
    """The index covers seqs 0..9; popping seq 12 removes nothing it holds, so the sidecar
    is not rewritten (a pop used to rebuild the whole index when it lagged)."""
    path, kwi = tmp_path / "c.log", tmp_path / "c.log.kwi"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.extend([_msg(f"alpha {i}") for i in range(10)])
        for i in range(3):
            c.append(_msg(f"kiwi {i}"))
        before = kwi.read_bytes()
        c.pop()
        assert kwi.read_bytes() == before
        assert [h.seq for h in c.search("kiwi")] == [10, 11]
        c.pop(), c.pop(), c.pop()  # seq 9 goes: its block's postings are derived again
        assert _spans(kwi) == [(0, 9)]
        assert list(c.search("alpha 9")) == [] and c.verify().problems == ()


def test_a_search_the_index_cannot_answer_does_not_catch_it_up(tmp_path: Path) -> None:
    """A date range, ``search(None)``, a regex and a query of no three-character run are
    scans whatever the index holds: they neither take the writer lock to index the records
    appended since nor write the sidecar."""
    path, kwi = tmp_path / "c.log", tmp_path / "c.log.kwi"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.append(_msg("alpha"), timestamp=1_000)
        for i in range(100):
            c.append(_msg(f"kiwi {i}"), timestamp=2_000 + i)
        before = kwi.read_bytes()
        assert len(c.between(2_000, 2_010)) == 10
        assert len(list(c.search(None, newest_first=True, limit=5))) == 5
        assert len(list(c.search(r"kiwi \d+", regex=True))) == 100
        assert len(list(c.search("7"))) == 19
        assert kwi.read_bytes() == before
        assert len(list(c.search("kiwi"))) == 100  # one the index answers: it catches up
        assert _spans(kwi) == [(0, 1), (1, 101)]


def test_a_sidecar_deleted_by_hand_is_not_brought_back_by_a_search(tmp_path: Path) -> None:
    """Deleting ``P.kwi`` turns the index off for codecs not asked for one: a codec that
    saw it before (and remembers it) scans, and writes no new one."""
    path, kwi = tmp_path / "c.log", tmp_path / "c.log.kwi"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.extend([_msg(f"alpha {i}") for i in range(5)])
    with ConversationCodec(path, encryption_key=KEY) as c:
        assert [h.seq for h in c.search("alpha 3")] == [3]  # saw the sidecar
        kwi.unlink()
        for i in range(40):
            c.append(_msg(f"kiwi {i}"))
        assert len(list(c.search("kiwi"))) == 40
        assert not kwi.exists()
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.append(_msg("bravo"))  # a codec asked for one creates it at its next append
        assert _spans(kwi) == [(0, 46)]


def test_a_pop_rewrites_a_sidecar_with_a_torn_tail(tmp_path: Path) -> None:
    """Bytes a crash left past the chain may hold the sealed postings of the message a pop
    removes: the pop rewrites the sidecar even when the chain covers none of it."""
    path, kwi = tmp_path / "c.log", tmp_path / "c.log.kwi"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.extend([_msg(f"alpha {i}") for i in range(10)])
        for i in range(39):
            c.append(_msg(f"kiwi {i}"))
        c.append(_msg("secretword"))
        assert [h.seq for h in c.search("secretword")] == [49]  # indexes 10..49
        assert _spans(kwi) == [(0, 10), (10, 50)]
    with kwi.open("r+b") as f:  # a power loss tore the unsynced segment
        f.truncate(kwi.stat().st_size - 20)
    torn = kwi.read_bytes()
    with ConversationCodec(path, encryption_key=KEY) as c:
        c.pop()
        assert kwi.read_bytes() != torn and _spans(kwi) == [(0, 10)]
        assert list(c.search("secretword")) == [] and c.verify().problems == ()


def test_verify_says_how_many_records_the_index_covers(tmp_path: Path) -> None:
    """The records past the index are scanned until a search indexes them: verify() says
    how far it reaches (``keyword_index``, and the CLI's ``verify``), None without one."""
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.extend([_msg(f"alpha {i}") for i in range(10)])
        for i in range(40):
            c.append(_msg(f"kiwi {i}"))
        report = c.verify()
        assert (report.records, report.keyword_index, report.problems) == (50, 10, ())
        assert report.as_dict()["keyword_index"] == 10
        list(c.search("kiwi"))
        assert c.verify().keyword_index == 50
    (tmp_path / "c.log.kwi").write_bytes(b"not an index")
    with ConversationCodec(path, encryption_key=KEY) as c:
        report = c.verify()
        assert report.keyword_index == 0 and [p.kind for p in report.problems] == ["keyword-index"]
    with ConversationCodec(tmp_path / "plain.log", encryption_key=KEY) as c:
        c.append(_msg("no index"))
        assert c.verify().keyword_index is None
    done = subprocess.run(
        [sys.executable, "-m", "conversation_codec", "verify", str(tmp_path / "c.log")],
        env={**subprocess_env(None), "CONVERSATION_KEY": KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "keyword index: covers 0 of 50 records" in done.stdout, done.stdout + done.stderr

"""The keyword index's catch-up (FORMAT.md §17.5 step 1, §17.6) against real processes.

Appends leave ``P.kwi`` alone; a search that finds 32 records past it (or a damaged one)
takes the writer lock and indexes them. Here several OS processes append, search (and so
catch up), pop, compact and reindex the same log at once, some with ``search_index=True``
and some without; a catch-up is SIGKILLed at each write of the sidecar; and (slow) seeded
random histories mix every writer with searches. Each search is compared with a scan of
what ``load()`` returns, and the sidecar is audited from its bytes by a reader written
from the spec (``tests.test_keyword_index``): its chain must describe a prefix of the log
(§17.4) and post exactly the grams of the messages it covers, so none of a popped one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import selectors
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import InvalidToken
from tests import _spec_reader
from tests._kwi_child import SCRIPT as CHILD
from tests._writer import subprocess_env
from tests.conftest import KEY, OTHER_KEY
from tests.test_keyword_index import index_keys, segment_postings, token, varint

import _children
from conversation_codec import ConversationCodec

WORDS = ["refund", "refunds", "parcel", "delayed", "cinnamon", "alphabet", "alpha", "bet", "ab"]
QUERIES = ["refund", "refunds", "cinnamon", "alpha", "alphabet", "bet", "ab", "parcel", "nope"]
SPEC_GRAMS = re.compile(r"(?=(\w{3}))")  # FORMAT.md §17.1
KWI_MAGIC = b"\x89CCK\r\n\x1a\n"
slow = pytest.mark.slow
FLUSH = 32  # FORMAT.md §17.5: records past the sidecar that make a search index them


def _msg(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _scan(messages: list[dict[str, Any]], word: str) -> list[dict[str, Any]]:
    """What a single-word, letters-only query matches: a case-folded substring."""
    return [m for m in messages if word.casefold() in m["content"].casefold()]


def _searched(codec: ConversationCodec, word: str) -> list[dict[str, Any]]:
    return [h.message for h in codec.search(word)]


def audit(path: Path, key: str, *, torn_ok: bool = False) -> int:
    """Check ``P.kwi`` against ``P`` from the bytes; return the records it covers.

    The chain of segments (§17.3-17.4: authentic, each ``lo`` the previous ``hi``) must end
    inside the log at a record whose stored body ends with its tag, and post, token by
    token, exactly the blocks of the messages it covers. ``torn_ok``: a damaged segment
    (a torn write) may end the chain, as readers allow; otherwise every byte must parse."""
    data = path.read_bytes()
    ends, grams = _parsed(data, key)
    raw = Path(f"{path}.kwi").read_bytes()
    assert raw[:8] == KWI_MAGIC and raw[8:12] == bytes([1, 0, 4, 4])
    log_id = raw[16:32]
    assert log_id == data[16:32], "the sidecar names another log"
    _, fernet = index_keys(key, log_id)
    postings: dict[bytes, set[int]] = {}
    covered, tag, pos = 0, bytes(16), 32
    while pos < len(raw):
        try:
            size, start = varint(raw, pos)
            if start + size > len(raw):
                raise InvalidToken
            body = base64.urlsafe_b64encode(b"\x80" + raw[start : start + size])
            plain = fernet.decrypt(body)
        except (IndexError, InvalidToken):
            assert torn_ok, f"a damaged segment at byte {pos} of {len(raw)}"
            break
        found: dict[bytes, set[int]] = {}
        lo, hi = segment_postings(plain, found)
        if lo != covered:
            assert torn_ok, f"segment {lo}..{hi} after {covered}"
            break
        _, p = varint(plain, 0)
        _, p = varint(plain, p)
        covered, tag, pos = hi, plain[p : p + 16], start + size
        for tok, blocks in found.items():
            postings.setdefault(tok, set()).update(blocks)
    assert covered <= len(ends), f"the sidecar covers {covered} of {len(ends)}"
    if covered:
        end = ends[covered - 1]
        assert data[end - 16 : end] == tag, "the chain does not end at its record"
    assert postings == _expected(grams[:covered], key, log_id), "postings != messages"
    return covered


_PARSED: dict[tuple[bytes, str], tuple[list[int], list[set[str]]]] = {}
_TOKENS: dict[tuple[str, bytes, str], bytes] = {}


def _parsed(data: bytes, key: str) -> tuple[list[int], list[set[str]]]:
    """Where each message record's stored body ends, and its grams: the log read by the
    spec's reader (remembered for the same bytes: audits repeat while only P.kwi changes)."""
    digest = (hashlib.sha256(data).digest(), key)
    if digest not in _PARSED:
        log = _spec_reader.read(data, key=key)
        ends = [r.end for r in log.records if not r.control]
        grams = [set(SPEC_GRAMS.findall(m["content"].casefold())) for m in log.messages]
        _PARSED.clear()
        _PARSED[digest] = ends, grams
    return _PARSED[digest]


def _expected(grams: list[set[str]], key: str, log_id: bytes) -> dict[bytes, set[int]]:
    out: dict[bytes, set[int]] = {}
    for seq, found in enumerate(grams):
        for gram in found:
            tok = _TOKENS.get((key, log_id, gram))
            if tok is None:
                tok = _TOKENS[key, log_id, gram] = token(key, log_id, gram)
            out.setdefault(tok, set()).add(seq >> 4)
    return out


def checkpoint(
    path: Path, key: str = KEY, *, torn_ok: bool = False, queries: list[str] = QUERIES
) -> int:
    """Audit the sidecar as the processes left it (``torn_ok``: as a crash left it), search
    every query as a fresh reader (catching up), compare with the scan, verify, and audit
    again, every byte; return the count."""
    audit(path, key, torn_ok=torn_ok)
    with ConversationCodec(path, encryption_key=key) as codec:
        messages = codec.load() or []
        for word in queries:
            assert _searched(codec, word) == _scan(messages, word), word
        assert codec.verify().problems == ()
    covered = audit(path, key)
    assert len(messages) - FLUSH < covered <= len(messages), (covered, len(messages))
    return len(messages)


# -- processes appending, searching and popping at once ---------------------------------------


class Racer:
    """One child process racing the others (``tests/_kwi_child.py race``)."""

    def __init__(self, path: Path, who: int) -> None:
        cfg = {"path": str(path), "who": who, "words": WORDS, "queries": QUERIES}
        cfg["lock"] = str(path.parent / "ops.lock")
        self.proc = _children.Popen(
            [sys.executable, CHILD, "race", json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(KEY),
        )

    def start(self, seed: int, ops: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"round {seed} {ops}\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> dict[str, int]:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("done "):
            self.proc.kill()
            pytest.fail(f"racer failed ({line!r}):\n{self.proc.stderr.read()}")
        stats: dict[str, int] = json.loads(line[5:])
        return stats

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


def _race(tmp_path: Path, seed: int, rounds: int, ops: int) -> dict[str, int]:
    path = tmp_path / "race.log"
    (tmp_path / "ops.lock").touch()
    rng = random.Random(seed)
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as codec:
        codec.extend([_msg(f"{' '.join(rng.choices(WORDS, k=3))} seed{i}") for i in range(40)])
    racers = [Racer(path, who) for who in range(3)]
    last: list[dict[str, int]] = []
    try:
        for r in range(rounds):
            for racer in racers:
                racer.start(seed * 1000 + r, ops)
            last = [racer.finish() for racer in racers]  # each child's running totals
            checkpoint(path)
    finally:
        for racer in racers:
            racer.close()
    return {k: sum(s[k] for s in last) for k in last[0]}


@pytest.mark.parametrize(
    ("seed", "rounds"), [(1, 3), *[pytest.param(s, 6, marks=slow) for s in range(2, 10)]]
)
def test_processes_appending_searching_and_popping_keep_search_exact(
    tmp_path: Path, seed: int, rounds: int
) -> None:
    """Three processes (with the option, without it, and one that toggles it and pops,
    compacts and reindexes) race on one log; every checked search in them equals the
    scan of a prefix between its two loads, and at each checkpoint the sidecar posts
    exactly the messages it covers, searches equal the scan and verify() is clean."""
    totals = _race(tmp_path, seed=seed, rounds=rounds, ops=30)
    assert totals["checked"] >= 10 and totals["popped"] and totals["rewrites"], totals


# -- a catch-up SIGKILLed at each write of the sidecar ----------------------------------------


def _backlog(path: Path, indexed: int, unindexed: int, *, noisy: bool) -> None:
    """A log whose sidecar covers ``indexed`` records, and ``unindexed`` more past it.
    ``noisy``: a random six-letter word in each message makes thousands of distinct grams,
    so the first catch-up segment outweighs the first and is written as a merge (temp
    file, rename); without, it is appended to the sidecar."""
    rng = random.Random(7)

    def message(i: int) -> dict[str, Any]:
        noise = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=6)) if noisy else ""
        return _msg(f"{' '.join(rng.choices(WORDS, k=2))} {noise} u{i}")

    with ConversationCodec(path, encryption_key=KEY, search_index=True) as codec:
        codec.extend([message(i) for i in range(indexed)])
    with ConversationCodec(path, encryption_key=KEY) as codec:  # appends leave P.kwi alone
        codec.extend([message(i) for i in range(indexed, indexed + unindexed)])


def _kill_catch_up(path: Path, point: tuple[str, int, bool]) -> list[str]:
    """Search in a child that SIGKILLs itself at ``point`` (``tests/_kwi_child.py kill``)."""
    proc = _children.run(
        [sys.executable, CHILD, "kill", str(path), json.dumps(point)],
        capture_output=True,
        text=True,
        env=subprocess_env(KEY),
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout.split("\n")


BACKLOG_QUERIES = ["cinnamon", "refunds", "bet"]  # a rare word, a common one, a short one
# (indexed, unindexed, noisy): 40 records appended as one segment; 4,150 (a catch-up segment
# of 4,096 written as a merge, then one of 54 appended). Kill points (call, number, torn).
SMALL, LARGE = (100, 40, False), (100, 4150, True)
KILLS = [
    (SMALL, ("pwrite", 1, True)),
    (SMALL, ("pwrite", 1, False)),
    (LARGE, ("pwrite", 1, True)),  # the merge's temp file
    (LARGE, ("rename", 1, False)),  # the merge's rename
    (LARGE, ("pwrite", 2, False)),  # the next segment
    (LARGE, ("pwrite", 2, True)),
]


@pytest.mark.parametrize(
    ("backlog", "point", "then"),
    [
        pytest.param(
            b,
            p,
            t,
            id=f"{'small' if b == SMALL else 'large'}-{p[0]}{p[1]}{'-torn' if p[2] else ''}-{t}",
            marks=() if b == SMALL else slow,
        )
        for b, p in KILLS
        for t in ("search", "pop")
    ],
)
def test_a_catch_up_killed_at_a_write_leaves_searches_exact(
    tmp_path: Path, backlog: tuple[int, int, bool], point: tuple[str, int, bool], then: str
) -> None:
    """A search catching up a backlog is SIGKILLed at a write of the sidecar. What it left
    is a usable chain (maybe torn at its end) posting only what it covers. Then (``pop``:
    after popping down to what it covers, at most 60, pops that leave P.kwi alone) the
    next search equals the scan and leaves verify() clean; pops into what it covers leave
    no posting of the messages they deleted."""
    path = tmp_path / "backlog.log"
    indexed, unindexed, noisy = backlog
    _backlog(path, indexed, unindexed, noisy=noisy)
    _kill_catch_up(path, point)
    covered = audit(path, KEY, torn_ok=True)
    assert indexed <= covered < indexed + unindexed
    if then == "pop":
        with ConversationCodec(path, encryption_key=KEY, durability="flush") as codec:
            for _ in range(min(indexed + unindexed - covered, 60)):
                codec.pop()
        assert audit(path, KEY, torn_ok=True) == covered
    count = checkpoint(path, torn_ok=True, queries=BACKLOG_QUERIES)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        for _ in range(3):
            codec.pop()
    assert checkpoint(path, queries=BACKLOG_QUERIES) == count - 3


@pytest.mark.parametrize("grows", [True, False], ids=["grown", "same-size"])
def test_a_sidecar_replaced_under_a_reused_inode_is_read_again(tmp_path: Path, grows: bool) -> None:
    """Each whole write of P.kwi (a pop's) renames a temp file over it, and the filesystem
    may give the next temp file the inode the last one freed: a codec that read the sidecar
    before must not take the new file for the one it read, whether it then grew (it was
    parsed from the old size: "a segment is truncated" in verify()) or has the same size
    (pops in one block of identical messages: taken as unchanged, covering popped seqs)."""
    path, kwi = tmp_path / "reuse.log", tmp_path / "reuse.log.kwi"
    writer = ConversationCodec(path, encryption_key=KEY, search_index=True)
    other = ConversationCodec(path, encryption_key=KEY)
    with writer, other:
        writer.extend([_msg("cinnamon parcel" + (f" u{i}" if grows else "")) for i in range(99)])
        reused = False  # ext4 and tmpfs reuse it within a few tries; the checks below hold
        for _ in range(45):  # either way, but only a reused inode makes them bite
            _searched(other, "cinnamon")  # it holds the sidecar as it is now
            seen = kwi.stat()
            writer.pop()  # each a whole write of P.kwi: temp file, rename
            writer.pop()
            now = kwi.stat()
            if now.st_ino == seen.st_ino and (grows or now.st_size == seen.st_size):
                reused = True
                break
        if grows:
            writer.extend([_msg(f"cinnamon refund v{i}") for i in range(100)])
            assert len(_searched(writer, "refund")) == 100  # a catch-up: P.kwi grows in place
            assert kwi.stat().st_ino == seen.st_ino or not reused
            assert kwi.stat().st_size > seen.st_size
        assert other.verify().problems == ()  # before a search: one would read it afresh
        messages = other.load() or []
        assert _searched(other, "cinnamon") == _scan(messages, "cinnamon")
    audit(path, KEY)


# -- (slow) seeded histories mixing every writer -------------------------------------------

T0 = 1_700_000_000


class Explorer:
    """One log and two codecs on it, ``codecs[0]`` with the option and ``codecs[1]``
    without, driven by a seeded random walk; every search is compared with the scan."""

    def __init__(self, path: Path, seed: int) -> None:
        self.path, self.rng, self.key, self.now, self.n = path, random.Random(seed), KEY, T0, 0
        self.codecs = self._open()
        self.searches = 0

    def _open(self) -> list[ConversationCodec]:
        return [
            ConversationCodec(self.path, encryption_key=self.key, search_index=wanted)
            for wanted in (True, False)
        ]

    def close(self) -> None:
        for codec in self.codecs:
            codec.close()

    def message(self) -> dict[str, Any]:
        self.n += 1
        return _msg(f"{' '.join(self.rng.choices(WORDS, k=self.rng.randint(1, 3)))} u{self.n}")

    def stamps(self, n: int) -> list[int]:
        self.now += n
        return list(range(self.now - n, self.now))

    def search(self, codec: ConversationCodec) -> None:
        want_all = codec.load() or []
        for word in self.rng.sample(QUERIES, 3):
            want = _scan(want_all, word)
            assert _searched(codec, word) == want, word
            got = [h.message for h in codec.search(word, limit=3, newest_first=True)]
            assert got == want[::-1][:3], word
        self.searches += 1

    def step(self) -> None:
        rng, codec = self.rng, self.rng.choice(self.codecs)
        op = rng.choices(
            [
                "append",
                "search",
                "fresh",
                "pop",
                "prune",
                "replace",
                "rotate",
                "compact",
                "reindex",
            ],
            weights=[30, 25, 5, 10, 3, 3, 2, 4, 3],
        )[0]
        if op == "append":
            for _ in range(rng.choice([0, 1, 5, 20, 31, 32, 33, 60, 80])):
                codec.append(self.message(), timestamp=self.stamps(1)[0])
        elif op == "search":
            self.search(codec)
        elif op == "fresh":  # a codec of its own: reads the sidecar anew, catches up alone
            with ConversationCodec(self.path, encryption_key=self.key) as other:
                self.search(other)
        elif op == "pop":
            for _ in range(rng.choice([1, 2, 17, 40])):
                codec.pop()
        elif op == "prune":
            codec.prune(rng.randint(T0, self.now))
        elif op == "replace":
            kept = (codec.load() or [])[: rng.randint(0, 50)]
            given = kept + [self.message() for _ in range(rng.randint(0, 20))]
            codec.replace(given, timestamps=self.stamps(len(given)))
        elif op == "rotate":
            new = OTHER_KEY if self.key == KEY else KEY
            codec.rotate_key(new)
            self.close()
            self.key = new
            self.codecs = self._open()
        elif op == "compact":
            codec.compact()
        elif self.path.exists():  # reindex() refuses a log that does not exist yet
            codec.reindex()


@slow
@pytest.mark.parametrize("seed", range(12))
def test_seeded_histories_keep_search_equal_to_the_scan(tmp_path: Path, seed: int) -> None:
    """Runs of 0-80 appends, searches (from either codec or a fresh one), pops, prunes,
    replaces, key rotations, compactions and reindexes by a codec with the option and one
    without: every search equals the scan; every tenth step the sidecar is audited from
    its bytes and verify() is clean."""
    walk = Explorer(tmp_path / "walk.log", seed)
    try:
        for i in range(150):
            walk.step()
            if i % 10 == 9 and Path(f"{walk.path}.kwi").exists():
                audit(walk.path, walk.key)
                assert walk.codecs[1].verify().problems == ()
        checkpoint(walk.path, walk.key)
    finally:
        walk.close()
    assert walk.searches > 20

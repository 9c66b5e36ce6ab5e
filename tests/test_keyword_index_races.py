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
import json
import os
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
from tests._writer import subprocess_env
from tests.conftest import KEY, OTHER_KEY
from tests.test_keyword_index import index_keys, segment_postings, token, varint

from conversation_codec import ConversationCodec

WORDS = ["refund", "refunds", "parcel", "delayed", "cinnamon", "alphabet", "alpha", "bet", "ab"]
QUERIES = ["refund", "refunds", "cinnamon", "alpha", "alphabet", "bet", "ab", "parcel", "nope"]
SPEC_GRAMS = re.compile(r"(?=(\w{3}))")  # FORMAT.md §17.1
KWI_MAGIC = b"\x89CCK\r\n\x1a\n"
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
    log = _spec_reader.read(data, key=key)
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
    messages = [r for r in log.records if not r.control]
    assert covered <= len(messages), f"the sidecar covers {covered} of {len(messages)}"
    if covered:
        last = messages[covered - 1]
        assert data[last.end - 16 : last.end] == tag, "the chain does not end at its record"
    assert postings == _expected(log.messages[:covered], key, log_id), "postings != messages"
    return covered


_TOKENS: dict[tuple[str, bytes, str], bytes] = {}


def _expected(messages: list[dict[str, Any]], key: str, log_id: bytes) -> dict[bytes, set[int]]:
    out: dict[bytes, set[int]] = {}
    for seq, m in enumerate(messages):
        for gram in set(SPEC_GRAMS.findall(m["content"].casefold())):
            tok = _TOKENS.get((key, log_id, gram))
            if tok is None:
                tok = _TOKENS[key, log_id, gram] = token(key, log_id, gram)
            out.setdefault(tok, set()).add(seq >> 4)
    return out


def checkpoint(path: Path, key: str = KEY) -> int:
    """Audit the sidecar as the processes left it, search every query as a fresh reader
    (catching up), compare with the scan, verify, and audit again; return the count."""
    audit(path, key)
    with ConversationCodec(path, encryption_key=key) as codec:
        messages = codec.load() or []
        for word in QUERIES:
            assert _searched(codec, word) == _scan(messages, word), word
        assert codec.verify().problems == ()
    covered = audit(path, key)
    assert len(messages) - FLUSH < covered <= len(messages), (covered, len(messages))
    return len(messages)


# -- processes appending, searching and popping at once ---------------------------------------

# One process of the race: reads "round SEED OPS" lines, runs OPS seeded operations and
# answers "done {stats}". A checked search holds a shared flock on ``lock`` around
# load/search/load, and pops hold it exclusively: the log seen by the search then lies
# between the two loads (appends only), so its hits are the scan's over a prefix of the
# second load that holds the first. Catch-ups, compactions and reindexes race freely.
CHILD = r"""
import fcntl, json, os, random, sys
from conversation_codec import ConversationCodec, LogReplacedError

cfg = json.loads(sys.argv[1])
who, words, queries = cfg["who"], cfg["words"], cfg["queries"]
key = os.environ["CC_TEST_KEY"]
ops_lock = os.open(cfg["lock"], os.O_RDWR)
stats = {"checked": 0, "retried": 0, "appended": 0, "popped": 0, "rewrites": 0}
counter = 0

def text(rng):
    global counter
    counter += 1
    return " ".join([*rng.choices(words, k=rng.randint(1, 4)), f"u{who}n{counter}"])

def scan(messages, word):
    return [m for m in messages if word.casefold() in m["content"].casefold()]

def search(codec, word):
    while True:
        try:
            return [h.message for h in codec.search(word)]
        except LogReplacedError:  # a compaction while it streamed: allowed, try again
            stats["retried"] += 1

def check(codec, word):
    fcntl.flock(ops_lock, fcntl.LOCK_SH)
    try:
        before = codec.load() or []
        got = search(codec, word)
        after = codec.load() or []
    finally:
        fcntl.flock(ops_lock, fcntl.LOCK_UN)
    assert after[: len(before)] == before, "the log lost messages under the ops lock"
    want = scan(after, word)
    assert got == want[: len(got)], (word, len(got), len(want), len(after))
    assert len(got) >= len(scan(before, word)), (word, len(got), len(before))
    stats["checked"] += 1

def run(codec, rng, wanted):
    r = rng.random()
    if r < 0.35:
        n = rng.choice([0, 1, 1, 2, 3, 5, 8, 40 if who == 1 else 4])
        for _ in range(n):
            codec.append({"role": "user", "content": text(rng)})
        stats["appended"] += n
    elif r < 0.6:
        check(codec, rng.choice(queries))
    elif r < 0.75:
        search(codec, rng.choice(queries))
    elif who == 2 and r < 0.88:
        fcntl.flock(ops_lock, fcntl.LOCK_EX)
        try:
            for _ in range(rng.randint(1, 5)):
                stats["popped"] += codec.pop() is not None
        finally:
            fcntl.flock(ops_lock, fcntl.LOCK_UN)
    elif who == 2 and r < 0.94:
        codec.compact()
        stats["rewrites"] += 1
    elif who == 2:
        codec.reindex()
        stats["rewrites"] += 1
    else:
        codec.close()
        return ConversationCodec(cfg["path"], encryption_key=key, search_index=wanted,
                                 durability="flush")
    return codec

for line in sys.stdin:
    _, seed, ops = line.split()
    rng = random.Random(int(seed) * 7 + who)
    wanted = who == 0 or (who == 2 and rng.random() < 0.5)
    codec = ConversationCodec(cfg["path"], encryption_key=key, search_index=wanted,
                              durability="flush")
    for _ in range(int(ops)):
        codec = run(codec, rng, wanted)
    codec.close()
    print("done", json.dumps(stats), flush=True)
"""


class Racer:
    """One child process running :data:`CHILD`."""

    def __init__(self, path: Path, who: int) -> None:
        cfg = {"path": str(path), "who": who, "words": WORDS, "queries": QUERIES}
        cfg["lock"] = str(path.parent / "ops.lock")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(cfg)],
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


def test_processes_appending_searching_and_popping_keep_search_exact(tmp_path: Path) -> None:
    """Three processes (with the option, without it, and one that toggles it and pops,
    compacts and reindexes) race on one log; every checked search in them equals the
    scan of a prefix between its two loads, and at each checkpoint the sidecar posts
    exactly the messages it covers, searches equal the scan and verify() is clean."""
    totals = _race(tmp_path, seed=1, rounds=3, ops=30)
    assert totals["checked"] >= 10 and totals["popped"] and totals["rewrites"], totals

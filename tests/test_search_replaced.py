"""A search while another process compacts, pops or rewrites the log (reviewer's defect 1).

A child process changes the log on command, between two batches of a search (a pipe
handshake: the search has read its first batch when the command is sent, and reads the
next one after the child has answered), so these tests cannot pass by luck.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import _children
from conversation_codec import ConversationCodec, ConversationStore, LogReplacedError
from conversation_codec.search_progress import MAX_REPLANS, SearchProgress

from conftest import KEY

N = 600  # three scan batches (256), many index batches

CHILD = textwrap.dedent(
    """
    import sys
    from conversation_codec import ConversationCodec
    from conversation_codec import ConversationStore
    key, indexed = sys.argv[1], sys.argv[2] == "1"
    print("ready", flush=True)
    for line in sys.stdin:
        op, path, *arg = line.split()  # arg: a count, a seq, or max_messages
        k = int(arg[0]) if arg else 1
        if path.startswith("store:"):  # conversation "a" of the store at that path
            store = ConversationStore(path[6:], encryption_key=key, search_index=indexed)
            opened = store.open("a")
        else:
            most = k if op == "compact" and arg else None
            opened = ConversationCodec(
                path, encryption_key=key, search_index=indexed, max_messages=most
            )
        with opened as c:
            if op == "compact":
                c.compact()
            elif op == "pop":
                c.pop()
            elif op == "popappend":
                for _ in range(k):
                    c.pop()
                for _ in range(k):
                    c.append({"role": "user", "content": "zebra re-appended"})
            elif op == "append":
                c.extend([{"role": "user", "content": "zebra late"}] * k)
            elif op == "rewrite":
                c.load()
                c.save([{"role": "user", "content": "zebra rewritten"}])
            elif op == "edit":  # save() with message k changed
                ms = c.load()
                ms[k] = {"role": "user", "content": "zebra edited"}
                c.save(ms)
            elif op == "prune":  # the messages before message k
                print("pruned", c.prune(c.timestamp(k)), file=sys.stderr)
        print("ok", flush=True)
    """
)


class Child:
    """A process that changes a log when told, and answers once it has."""

    def __init__(self, indexed: bool) -> None:
        self.proc = _children.Popen(
            [sys.executable, "-c", CHILD, KEY, "1" if indexed else "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"

    def do(self, op: str, path: Path | str, arg: int | None = None) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{op} {path} {'' if arg is None else arg}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n"

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture(scope="module", params=[False, True], ids=["scan", "index"])
def indexed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture(scope="module")
def child(indexed: bool) -> Iterator[Child]:
    c = Child(indexed)  # one per module and kind: a process start costs ~0.3 s
    yield c
    c.close()


T0 = 1_700_000_000


def filled(
    path: Path, indexed: bool, n: int = N, *, timed: bool = False, most: int | None = None
) -> ConversationCodec:
    """A log of ``n`` messages (one time for all, or ``timed``: one second apart)."""
    codec = ConversationCodec(path, encryption_key=KEY, search_index=indexed, max_messages=most)
    codec.clear()
    tss = [T0 + i for i in range(n)] if timed else None
    codec.extend([{"role": "user", "content": f"zebra {i}"} for i in range(n)], timestamps=tss)
    if indexed:
        codec.reindex()
    return codec


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest", "newest"])
def test_compactions_between_batches_lose_no_hit(
    tmp_path: Path, indexed: bool, child: Child, newest_first: bool
) -> None:
    path = tmp_path / "c.log"
    codec = filled(path, indexed)
    hits = codec.search("zebra", newest_first=newest_first)
    got = [next(hits)]  # the first batch is read
    child.do("compact", path)
    got += [next(hits) for _ in range(299)]  # past the next batch or two
    child.do("compact", path)
    child.do("compact", path)
    got += list(hits)
    order = list(range(N))[::-1] if newest_first else list(range(N))
    assert [h.seq for h in got] == order
    assert [h.message["content"] for h in got] == [f"zebra {i}" for i in order]
    codec.close()


def test_compaction_with_a_limit(tmp_path: Path, indexed: bool, child: Child) -> None:
    path = tmp_path / "c.log"
    codec = filled(path, indexed)
    hits = codec.search("zebra", limit=400)
    got = [next(hits)]
    child.do("compact", path)
    got += list(hits)
    assert [h.seq for h in got] == list(range(400))
    codec.close()


def test_pop_and_append_not_reached_yet_is_read_as_it_now_is(
    tmp_path: Path, indexed: bool, child: Child
) -> None:
    path = tmp_path / "c.log"
    codec = filled(path, indexed)
    hits = codec.search("zebra")
    got = [next(hits)]
    child.do("popappend", path)
    got += list(hits)
    assert [h.seq for h in got] == list(range(N))
    assert got[-1].message["content"] == "zebra re-appended"
    hits = codec.search("zebra")  # popped while the search reads: the message is not there
    got = [next(hits)]
    child.do("pop", path)
    got += list(hits)
    assert [h.seq for h in got] == list(range(N - 1))
    codec.close()


def test_pop_and_append_already_read_raises(tmp_path: Path, indexed: bool, child: Child) -> None:
    # The last message read is replaced: a save() that edits a message near the end leaves
    # the same log (reviewer 2 defect 3), so this is a rewrite of what was read too.
    path = tmp_path / "c.log"
    codec = filled(path, indexed)
    hits = codec.search("zebra", newest_first=True)
    got = [next(hits)]  # the newest batch, holding the last message, is read
    child.do("popappend", path)
    child.do("compact", path)
    with pytest.raises(LogReplacedError, match="already read were rewritten"):
        got += list(hits)
    assert [h.seq for h in got] == list(range(N))[::-1][: len(got)]  # no position twice
    assert got[0].message["content"] == f"zebra {N - 1}"  # as it was when read
    codec.close()


def test_rewrite_of_what_was_read_raises(tmp_path: Path, indexed: bool, child: Child) -> None:
    path = tmp_path / "c.log"
    codec = filled(path, indexed)
    hits = codec.search("zebra")
    got = [next(hits)]
    child.do("rewrite", path)
    with pytest.raises(LogReplacedError, match="already read were rewritten"):
        got += list(hits)
    assert [h.seq for h in got] == list(range(len(got)))  # what came first is right
    codec.close()


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest", "newest"])
def test_save_that_edits_what_was_read_raises(
    tmp_path: Path, indexed: bool, child: Child, newest_first: bool
) -> None:
    # reviewer 2, defect 3: newest-first missed it (the edit leaves its first record read)
    path = tmp_path / "c.log"
    codec = filled(path, indexed)
    hits = codec.search("zebra", newest_first=newest_first)
    got = [next(hits)]
    child.do("edit", path, N - 10 if newest_first else 10)  # in the first batch read
    with pytest.raises(LogReplacedError, match="already read were rewritten"):
        got += list(hits)
    order = list(range(N))[::-1] if newest_first else list(range(N))
    assert [h.message["content"] for h in got] == [f"zebra {i}" for i in order[: len(got)]]
    codec.close()


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest", "newest"])
def test_compaction_under_max_messages_loses_no_hit(
    tmp_path: Path, indexed: bool, child: Child, newest_first: bool
) -> None:
    # reviewer 2, defect 2: it drops the 200 hidden records, which renumbers the rest
    path = tmp_path / "c.log"
    codec = filled(path, indexed, most=400)
    hits = codec.search("zebra", newest_first=newest_first)
    got = [next(hits)]
    child.do("compact", path, 400)
    got += list(hits)
    order = list(range(400))[::-1] if newest_first else list(range(400))
    assert [h.seq for h in got] == order
    assert [h.message["content"] for h in got] == [f"zebra {200 + i}" for i in order]
    codec.close()


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest", "newest"])
def test_prune_keeps_the_numbering_and_loses_no_hit(
    tmp_path: Path, indexed: bool, child: Child, newest_first: bool
) -> None:
    # reviewer 2, defect 2: a prune of what the search has not reached (newest-first), or
    # of part of what it read (oldest-first): the rest is read, numbered as at the start
    path = tmp_path / "c.log"
    codec = filled(path, indexed, timed=True)
    hits = codec.search("zebra", newest_first=newest_first)
    got = [next(hits)]
    child.do("prune", path, 300 if newest_first else 20)
    got += list(hits)
    # newest-first: the first batch (all it read) came before; 0..299 went
    order = list(range(300, N))[::-1] if newest_first else list(range(N))
    assert [h.seq for h in got] == order
    assert [h.message["content"] for h in got] == [f"zebra {i}" for i in order]
    codec.close()
    codec = filled(path, indexed, timed=True)  # (a new log: filled() clears it first)
    hits = codec.search("zebra")  # a prune past all it has read: found from its end
    got = [next(hits)]
    child.do("prune", path, 450)
    got += list(hits)
    read = [h.seq for h in got if h.seq < 450]
    assert read == list(range(len(read)))  # its first batch or more
    assert [h.seq for h in got] == read + list(range(450, N))
    assert [h.message["content"] for h in got] == [f"zebra {h.seq}" for h in got]
    codec.close()


def test_store_search_loses_no_hit_across_compactions(
    tmp_path: Path, indexed: bool, child: Child
) -> None:
    store = ConversationStore(tmp_path / "s", encryption_key=KEY, search_index=indexed)
    for cid in ("a", "b"):
        with store.open(cid) as c:
            c.extend([{"role": "user", "content": f"zebra {cid} {i}"} for i in range(N)])
            if indexed:
                c.reindex()
    path = f"store:{tmp_path / 's'}"
    errors: list[tuple[str, Exception]] = []
    hits = store.search("zebra", on_error=lambda cid, e: errors.append((cid, e)))
    got = [next(hits)]
    for step in range(4):  # between the store's chunks (64, 256, 1024 hits)
        child.do("compact", path)
        got += [next(hits) for _ in range(100 * (step + 1))]
    got += list(hits)
    assert errors == []
    for cid in ("a", "b"):
        assert [h.seq for c, h in got if c == cid] == list(range(N))


def store_of(tmp_path: Path, indexed: bool, n: int = 300) -> ConversationStore:
    """A store whose conversation "a" holds ``n`` messages: the first 10 one second apart,
    the rest at one time (a bulk import), past the first chunk of a store search (64)."""
    store = ConversationStore(tmp_path / "s", encryption_key=KEY, search_index=indexed)
    with store.open("a") as c:
        tss = [T0 + min(i, 10) for i in range(n)]
        c.extend([{"role": "user", "content": f"zebra {i}"} for i in range(n)], timestamps=tss)
        if indexed:
            c.reindex()
    return store


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest", "newest"])
@pytest.mark.parametrize("op", ["append", "prune"])
def test_store_search_goes_on_across_its_reopens(
    tmp_path: Path, indexed: bool, child: Child, newest_first: bool, op: str
) -> None:
    # reviewer 2, defect 1: each chunk (the log reopened) started a new search: later
    # appends were reported, and a prune lost hits of messages there throughout
    store = store_of(tmp_path, indexed)
    hits = store.search("zebra", newest_first=newest_first)
    got = [next(hits)]
    child.do(op, f"store:{tmp_path / 's'}", 50 if op == "append" else 10)
    got += list(hits)
    order = list(range(300))
    if op == "prune" and newest_first:  # 0..9 went before the search reached them
        order = order[10:]
    order = order[::-1] if newest_first else order
    assert [h.seq for _, h in got] == order
    assert [h.message["content"] for _, h in got] == [f"zebra {i}" for i in order]


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest", "newest"])
def test_store_search_raises_when_what_it_read_was_replaced(
    tmp_path: Path, indexed: bool, child: Child, newest_first: bool
) -> None:
    # pop() of 260 messages, some already read, and 260 new ones: no seq twice, an error
    store = store_of(tmp_path, indexed)
    hits = store.search("zebra", newest_first=newest_first)
    got = [next(hits)]
    child.do("popappend", f"store:{tmp_path / 's'}", 260)
    with pytest.raises(LogReplacedError, match="already read were rewritten"):
        got += list(hits)
    order = list(range(300))[::-1] if newest_first else list(range(300))
    assert [h.message["content"] for _, h in got] == [f"zebra {i}" for i in order[: len(got)]]


def test_replacements_in_a_row_give_up_with_a_clear_error() -> None:
    progress = SearchProgress()
    progress.plan(0, 0, 10, lambda seq: None, lambda seq, text: None, lambda ts, top: iter(()))
    replaced = LogReplacedError("the log was replaced or truncated during a search")
    for _ in range(MAX_REPLANS):
        progress.retry(replaced)
    progress.passed(0, 5, newest_first=False)  # a batch read: the count starts again
    for _ in range(MAX_REPLANS):
        progress.retry(replaced)
    with pytest.raises(LogReplacedError, match="replaced 9 times in a row"):
        progress.retry(replaced)


LOOP = textwrap.dedent(
    """
    import sys, time
    from conversation_codec import ConversationStore
    indexed = sys.argv[4] == "1"
    store = ConversationStore(sys.argv[1], encryption_key=sys.argv[2], search_index=indexed)
    print("go", flush=True)
    end = time.monotonic() + float(sys.argv[5])
    while time.monotonic() < end:
        with store.open("a") as c:
            if sys.argv[3] == "compact":
                c.compact()
            else:
                c.append(c.pop())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("op", ["compact", "popappend"])
def test_store_and_codec_search_under_a_writer_loop(tmp_path: Path, indexed: bool, op: str) -> None:
    root = tmp_path / "s"
    store = ConversationStore(root, encryption_key=KEY, search_index=indexed)
    n = 6000
    for cid in ("a", "b"):
        with store.open(cid) as c:
            c.extend([{"role": "user", "content": f"zebra {i}"} for i in range(n)])
            if indexed:
                c.reindex()
    proc = _children.Popen(
        [sys.executable, "-c", LOOP, str(root), KEY, op, "1" if indexed else "0", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "go\n"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            got = list(store.search("zebra", on_error=lambda cid, e: pytest.fail(repr(e))))
            seqs = [h.seq for cid, h in got if cid == "a"]
            assert seqs == sorted(set(seqs))
            assert len(seqs) == n or (op == "popappend" and len(seqs) == n - 1)
            with store.open("a") as c:
                for newest_first in (False, True):
                    seqs = [h.seq for h in c.search("zebra", newest_first=newest_first)]
                    assert seqs == sorted(set(seqs), reverse=newest_first)
                    assert len(seqs) == n or (op == "popappend" and len(seqs) == n - 1)
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()

"""Reads on PostgreSQL in one round trip (``storage/postgres/snapshot.py``), and their races.

``tail(n)`` and ``len()`` are one statement under autocommit: the conversation's row, what
the handle's cached view lacks and the last n records. The round trips are counted in
libpq's protocol trace of the pool's only connection (a regression guard: they were 3-4).
The caches (header, timestamps, dictionary, counters) are guarded by the row's epoch: a
long-lived reader facing another process that deletes, replaces, rotates, compacts and
pops never returns a mix of two logs.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import _children
from _pg_writer import Conversation, message
from _postgres import Cluster
from _writer import subprocess_env
from conversation_codec import ConversationStore
from conversation_codec.errors import LogReplacedError
from conversation_codec.storage.postgres import PostgresBackend

from conftest import KEY, OTHER_KEY

pytestmark = pytest.mark.postgres


@contextlib.contextmanager
def _round_trips(backend: PostgresBackend) -> Iterator[list[int]]:
    """Count the client-server round trips on the backend's single pooled connection
    while the block runs (libpq trace: each turn from frontend to backend messages)."""
    assert backend.pool.max_size == 1
    counted: list[int] = []
    with tempfile.TemporaryFile("w+") as trace:
        conn = backend.pool.getconn()
        conn.pgconn.trace(trace.fileno())
        backend.putconn(conn)
        try:
            yield counted
        finally:
            again = backend.pool.getconn()
            assert again is conn
            conn.pgconn.untrace()
            backend.putconn(conn)
            trace.seek(0)
            sides = [line.split("\t")[1] for line in trace if line.count("\t") >= 2]
    counted.append(sum(1 for a, b in itertools.pairwise(sides) if (a, b) == ("F", "B")))


def test_a_warm_tail_and_len_are_one_round_trip_each(postgres_cluster: Cluster) -> None:
    url = postgres_cluster.create_database()
    backend = PostgresBackend.shared(url, min_size=1, max_size=1)
    store = ConversationStore(url, encryption_key=KEY)
    with store.open("c") as codec, store.open("c") as other:
        codec.extend([{"role": "user", "content": f"m{i}"} for i in range(600)])  # a dictionary
        for _ in range(6):  # psycopg prepares a statement on its 5th run
            codec.tail(20)
        with _round_trips(backend) as tail_trips:
            got = codec.tail(20)
        assert [m["content"] for m in got] == [f"m{i}" for i in range(580, 600)]
        with _round_trips(backend) as len_trips:
            assert len(codec) == 600
        other.append({"role": "user", "content": "new"})  # appended by another handle
        with _round_trips(backend) as caught_up:
            assert codec.tail(2)[-1]["content"] == "new"
        other.compact()  # a new epoch: the whole view again, still one statement
        with _round_trips(backend) as reloaded:
            assert [m["content"] for m in codec.tail(3)] == ["m598", "m599", "new"]
    assert (tail_trips, len_trips, caught_up, reloaded) == ([1], [1], [1], [1])
    backend.close()


def test_a_read_past_the_prefetched_records_never_mixes_two_logs(
    postgres_backend: PostgresBackend,
) -> None:
    cid = f"t-{uuid.uuid4().hex[:12]}"
    reader, writer = (Conversation(postgres_backend, cid, KEY) for _ in range(2))
    writer.extend([message(0, i) for i in range(5)])
    with reader.log.transaction(write=False, tail=2):
        assert [seq for seq, _ in reader.log.read_bodies(3, 5)] == [3, 4]  # prefetched
        writer.extend([message(0, 5)])  # same epoch: the older records are still these
        assert [seq for seq, _ in reader.log.read_bodies(0, 5)] == [0, 1, 2, 3, 4]
    with reader.log.transaction(write=False, tail=1):
        assert writer.pop() == message(0, 5)  # a new epoch, committed meanwhile
        with pytest.raises(LogReplacedError, match="replaced while it was read"):
            list(reader.log.read_bodies(0, 6))
    assert [m for _, m, _ in reader.messages()] == [message(0, i) for i in range(5)]


# A child that changes the log every way but appending, for a reader in the parent: each
# round writes "version" v (n_v messages, tagged) by deleting and re-creating it, replacing
# it, rotating its key, compacting it, or popping its last message and putting it back.
_CHANGER = r"""
import sys
from conversation_codec import ConversationStore
url, cid, k1, k2, rounds = sys.argv[1:]
store = ConversationStore(url, encryption_key=[k1, k2])
def version(v):
    n = 30 + v % 7
    return [{"role": "user", "content": f"v{v} i{i}", "v": v, "i": i, "n": n} for i in range(n)]
with store.open(cid) as codec:
    codec.replace(version(0))
print("ready", flush=True)
sys.stdin.readline()
v = 0
for r in range(int(rounds)):
    op = r % 5
    if op == 0:
        store.delete(cid)
        v += 1
    with store.open(cid) as codec:
        if op == 0:
            codec.extend(version(v))
        elif op == 1:
            v += 1
            codec.replace(version(v))
        elif op == 2:
            codec.rotate_key(k2 if r % 2 else k1)
        elif op == 3:
            codec.compact()
        else:
            last = codec.pop()
            codec.append(last)
print("done", flush=True)
"""


def _consistent(got: list[dict[str, Any]], n: int) -> bool:
    """The last ``n`` of one version (or nothing: deleted), in order, ending at its last
    message or the one before (popped)."""
    if not got:
        return True
    v, total = got[0]["v"], got[0]["n"]
    ids = [m["i"] for m in got]
    return (
        all(m["v"] == v for m in got)
        and ids == list(range(ids[0], ids[0] + len(ids)))
        and ids[-1] in (total - 1, total - 2)
        and len(got) == min(n, ids[-1] + 1)
    )


def test_tail_and_len_during_deletes_rewrites_rotations_in_another_process(
    postgres_url: str,
) -> None:
    cid = "raced"
    child = _children.Popen(
        [sys.executable, "-c", _CHANGER, postgres_url, cid, KEY, OTHER_KEY, "100"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(None),
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        store = ConversationStore(postgres_url, encryption_key=[KEY, OTHER_KEY])
        seen, bad = set(), []
        with store.open(cid) as codec:
            child.stdin.write("go\n")
            child.stdin.flush()
            while child.poll() is None:
                got = codec.tail(20)
                if not _consistent(got, 20):
                    bad.append(got)
                seen.add(got[0]["v"] if got else None)
                count = len(codec)
                if count and not 29 <= count <= 36:
                    bad.append([{"len": count}])
            assert _consistent(codec.tail(20), 20)
        assert child.wait(60) == 0 and child.stdout.read().strip() == "done"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()
    assert not bad, bad[:3]
    assert len(seen) > 3  # the reader did see the log change under it

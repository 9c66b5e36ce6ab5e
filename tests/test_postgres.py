"""The PostgreSQL storage on a real server: processes, crashes, dumps, schema, errors.

Beyond the conformance suite (test_storage.py), which every backend passes. Writers are
separate processes (tests/_pg_writer.py) that seal and append through the codec's own
layers, as ``ConversationCodec`` does. The invariants after concurrent writers, killed
connections and an immediate server stop: the seqs are exactly 0..N-1 (every record
authenticates at its seq), every acknowledged append is stored exactly once, each
writer's own order is kept, and timestamps never go backwards.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest

import _children
from _pg_writer import Conversation, message
from _postgres import Cluster
from _writer import subprocess_env
from conversation_codec import ConversationStore
from conversation_codec.encoding import encode_json
from conversation_codec.errors import DatabaseError, LockTimeoutError, UnsupportedVersionError
from conversation_codec.storage.postgres import (
    SCHEMA_VERSION,
    PostgresBackend,
    PostgresLog,
    display_url,
    ensure_schema,
)

from conftest import KEY

pytestmark = pytest.mark.postgres

WRITER = Path(__file__).resolve().parent / "_pg_writer.py"
TIMEOUT = 120  # seconds; a hung lock fails the test instead of the run


def _id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def conversation(postgres_backend: PostgresBackend) -> Callable[..., Conversation]:
    def make(cid: str, key: str | None = KEY) -> Conversation:
        return Conversation(postgres_backend, cid, key)

    return make


class Child:
    """One ``_pg_writer.py`` process; ``lines`` collects what it printed."""

    def __init__(self, mode: str, url: str, cid: str, writer: int, count: int) -> None:
        self.proc = _children.Popen(
            [sys.executable, str(WRITER), mode, url, cid, str(writer), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(KEY),
        )
        self.writer = writer
        self.lines: list[str] = []
        self.errors: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=_collect, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=_collect, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @classmethod
    def start(cls, *argss: tuple[str, str, str, int, int]) -> list[Child]:
        """Start processes together (an interpreter takes ~0.3 s to start); wait until each
        is ready."""
        children = [cls(*args) for args in argss]
        try:
            for child in children:
                child.ready()
        except BaseException:
            for child in children:
                child.kill()
            raise
        return children

    def ready(self) -> None:
        _wait(lambda: bool(self.lines) or self.proc.poll() is not None, "the writer to start")
        if self.lines[:1] != ["ready"]:
            self.finish()
            raise AssertionError(f"writer did not start: {self.lines} {self.errors}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def acks(self) -> list[tuple[int, int]]:
        """``(i, seq)`` of each acknowledged append."""
        return [
            (int(w[1]), int(w[2])) for w in (x.split() for x in list(self.lines)) if w[0] == "ack"
        ]

    def kill(self) -> None:
        self.proc.kill()
        with contextlib.suppress(AssertionError):
            self.finish()

    def finish(self) -> None:
        """Close its stdin (a ``loop`` stops), wait for it; it must have exited cleanly."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for t in self._threads:
                t.join(TIMEOUT)
            for f in (self.proc.stdout, self.proc.stderr):
                if f is not None:
                    f.close()
        assert self.proc.returncode == 0, "\n".join(self.errors[-30:])


def _collect(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line.strip())


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _check_log(
    stored: list[tuple[int, dict[str, Any], int]],
    acked: dict[int, list[int]],
    popped: list[dict[str, Any]] = [],  # noqa: B006
) -> None:
    """The invariants: seqs 0..N-1, each acknowledged append stored (or popped) exactly
    once, nothing stored twice, each writer's order kept, timestamps non-decreasing."""
    assert [seq for seq, _, _ in stored] == list(range(len(stored)))
    tss = [ts for _, _, ts in stored]
    assert tss == sorted(tss)
    keys = [(m["writer"], m["i"]) for _, m, _ in stored]
    assert len(keys) == len(set(keys)), "a message is stored twice"
    gone = [(m["writer"], m["i"]) for m in popped]
    assert not set(keys) & set(gone)
    seen = set(keys) | set(gone)
    for writer, ids in acked.items():
        missing = [i for i in ids if (writer, i) not in seen]
        assert not missing, f"writer {writer}: acknowledged appends lost: {missing[:10]}"
        mine = [i for w, i in keys if w == writer]
        assert mine == sorted(mine), f"writer {writer}: order not kept"
    for seq, m, _ in stored:
        assert m == message(m["writer"], m["i"]), f"record {seq} does not hold what was sent"


# -- concurrency -----------------------------------------------------------------------------


def _writers_and_poppers(url: str, conv: Conversation, writers: int, count: int, pops: int) -> None:
    cid = conv.log.conversation_id
    started = Child.start(
        *(("append", url, cid, w, count) for w in range(writers)),
        *((("pop", url, cid, 99, pops),) if pops else ()),
    )
    children, poppers = started[:writers], started[writers:]
    try:
        for child in started:
            child.go()
    finally:
        for child in started:
            child.finish()
    acked = {c.writer: [i for i, _ in c.acks()] for c in children}
    assert all(len(ids) == count for ids in acked.values())
    for c in children:  # pops aside, a writer's seqs only grow
        seqs = [seq for _, seq in c.acks()]
        assert pops or (seqs == sorted(seqs) and len(set(seqs)) == len(seqs))
    popped = [json.loads(x[4:]) for p in poppers for x in p.lines if x.startswith("pop ")]
    popped = [m for m in popped if m is not None]
    stored = conv.messages()
    assert len(stored) + len(popped) == writers * count
    _check_log(stored, acked, popped)


def test_processes_append_and_pop_concurrently(
    postgres_url: str, conversation: Callable[..., Conversation]
) -> None:
    _writers_and_poppers(postgres_url, conversation(_id()), writers=2, count=25, pops=8)


@pytest.mark.slow
def test_eight_processes_append_and_pop_concurrently(
    postgres_url: str, conversation: Callable[..., Conversation]
) -> None:
    _writers_and_poppers(postgres_url, conversation(_id()), writers=8, count=250, pops=100)


def test_a_writer_waits_for_the_lock_at_most_lock_timeout(
    postgres_backend: PostgresBackend,
) -> None:
    cid = _id()
    holder = Conversation(postgres_backend, cid, KEY)
    holder.extend([message(0, 0)])
    waiter = PostgresLog(postgres_backend, cid, attach=holder.secrets.attach, lock_timeout=0.2)
    with holder.log.transaction(write=True):
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match="lock"), waiter.transaction(write=True):
            pass
        assert 0.15 < time.monotonic() - started < 5
        with waiter.transaction(write=False):  # readers never wait for a writer
            assert len(waiter.index) == 1
    with waiter.transaction(write=True):
        assert len(waiter.index) == 1


@pytest.mark.parametrize("seconds", [float("inf"), 1e7, 1e300])
def test_a_lock_timeout_longer_than_the_server_takes_still_writes(
    postgres_backend: PostgresBackend, seconds: float
) -> None:
    """``inf`` waits for ever (as None); a finite timeout past PostgreSQL's bound (INT_MAX
    ms) is that bound: neither is an OverflowError nor a refused set_config."""
    cid = _id()
    holder = Conversation(postgres_backend, cid, KEY)
    holder.extend([message(0, 0)])
    log = PostgresLog(postgres_backend, cid, attach=holder.secrets.attach, lock_timeout=seconds)
    with log.transaction(write=True):
        assert len(log.index) == 1


# -- crashes ---------------------------------------------------------------------------------


def _backend_pids(url: str, cid: str) -> list[int]:
    """Backends of writer processes (they connect with application_name=cid)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (cid,)
        ).fetchall()
    return [int(r[0]) for r in rows]


def _terminate(url: str, pids: list[int]) -> None:
    """End these server processes and wait until they are gone: ``pg_terminate_backend``
    alone only signals, and a COMMIT already on its way could still be served (a race that
    failed 1 run in a few under load)."""
    assert pids, "no server process to terminate"
    with psycopg.connect(url, autocommit=True) as conn:
        for pid in pids:
            row = conn.execute("SELECT pg_terminate_backend(%s, 60000)", (pid,)).fetchone()
            assert row is not None and row[0], f"server process {pid} did not end"


@pytest.mark.parametrize("kills", [3, pytest.param(50, marks=pytest.mark.slow)])
def test_terminated_connections_mid_append_leave_no_gap_or_duplicate(
    postgres_url: str, postgres_backend: PostgresBackend, kills: int
) -> None:
    cid = _id()
    conv = Conversation(postgres_backend, cid, KEY)
    conv.extend([message(9, 0)])
    (child,) = Child.start(("loop", f"{postgres_url}&application_name={cid}", cid, 1, 0))
    try:
        # Deterministic: hold the row lock, let the writer block on it mid-transaction,
        # then kill its connection.
        for _ in range(2):
            with psycopg.connect(postgres_url, autocommit=True) as conn, conn.transaction():
                conn.execute("SELECT 1 FROM cc_conversations WHERE id = %s FOR UPDATE", (cid,))
                _wait(
                    lambda: _waiting_on_lock(postgres_url, cid), "the writer to wait for the lock"
                )
                _terminate(postgres_url, _backend_pids(postgres_url, cid))
            _wait_for_acks(child, 1)
        # And at whatever point each append has reached.
        for _ in range(kills):
            _terminate(postgres_url, _backend_pids(postgres_url, cid))
            _wait_for_acks(child, 2)
    finally:
        child.finish()
    errors = [x for x in child.lines if x.startswith("error")]
    assert len(errors) >= 2, child.lines[-5:]
    assert all("DatabaseError" in e for e in errors), errors[:3]
    stored = conv.messages()
    _check_log(stored, {1: [i for i, _ in child.acks()], 9: [0]})
    for i, seq in child.acks():
        assert stored[seq][1] == message(1, i)


def test_a_connection_killed_before_the_commit_loses_that_append_alone(
    postgres_url: str,
) -> None:
    cid = _id()
    with PostgresBackend(f"{postgres_url}&application_name={cid}") as backend:
        conv = Conversation(backend, cid, KEY)
        conv.extend([message(0, 0)])
        with pytest.raises(DatabaseError, match="commit"), conv.log.transaction(write=True):
            assert conv.writer.append([encode_json(message(0, 1))], None) == 1
            _terminate(postgres_url, _backend_pids(postgres_url, cid))  # inserted, uncommitted
        assert conv.extend([message(0, 2)]) == 1  # not acknowledged, not stored: no gap
        assert [m for _, m, _ in conv.messages()] == [message(0, 0), message(0, 2)]


def _wait_for_acks(child: Child, more: int) -> None:
    before = len(child.acks())
    _wait(lambda: len(child.acks()) >= before + more, "the writer to recover")


def _waiting_on_lock(url: str, cid: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND wait_event_type = 'Lock'",
            (cid,),
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("writers", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_an_immediate_server_stop_under_load_loses_no_acknowledged_append(
    postgres_cluster: Cluster, postgres_url: str, writers: int
) -> None:
    cid = _id()
    backend = PostgresBackend(postgres_url)
    conv = Conversation(backend, cid, KEY)
    conv.extend([message(9, 0)])
    idle = [backend.pool.getconn() for _ in range(5)]  # connections the stop will kill
    for conn in idle:
        backend.pool.putconn(conn)
    pool = backend.pool
    children = Child.start(*(("loop", postgres_url, cid, w, 0) for w in range(writers)))
    try:
        _wait(lambda: all(len(c.acks()) >= 10 for c in children), "appends before the stop")
        postgres_cluster.stop_server("immediate")  # as a crash: no checkpoint, no goodbye
        time.sleep(0.2)
        postgres_cluster.start_server()
        counts = [len(c.acks()) for c in children]
        # This process's pool recovers at once, the very same object (no restart of the
        # application), though every idle connection in it is dead: checked one by one
        # with the pool's back-off, five would take 0 + 1 + 2 + 4 = 7 s (or more): the
        # bound is below that, with room for a loaded machine.
        started = time.monotonic()
        conv.extend([message(9, 1)])
        assert time.monotonic() - started < 6 and backend.pool is pool
        _wait(
            lambda: all(len(c.acks()) >= n + 5 for c, n in zip(children, counts, strict=True)),
            "appends after the restart",
        )
    finally:
        for c in children:
            c.finish()
        backend.close()
    stored = Conversation(PostgresBackend.shared(postgres_url), cid, KEY).messages()
    acked = {c.writer: [i for i, _ in c.acks()] for c in children}
    _check_log(stored, {**acked, 9: [0, 1]})


# -- at rest ---------------------------------------------------------------------------------


def test_a_dump_of_the_database_holds_no_plaintext(postgres_cluster: Cluster) -> None:
    url = postgres_cluster.create_database()
    canary = "refund-canary-7f3a"
    with PostgresBackend(url) as backend:
        sealed = Conversation(backend, "sealed", KEY)
        msgs = [{"role": "user", "content": f"{canary} order {i} shipped"} for i in range(600)]
        sealed.extend(msgs)  # past TRAIN_AFTER: a dictionary record is stored too
        plain = Conversation(backend, "plain", None)
        plain.extend([{"role": "user", "content": "plain-canary-51c9"}])
        again = Conversation(backend, "sealed", KEY)  # a fresh view: loads the dictionary
        assert [m for _, m, _ in again.messages()] == msgs
    dump = postgres_cluster.dump(url)

    def holds(text: str) -> bool:  # as text, or in a bytea column's hex output
        return text.encode() in dump or text.encode().hex().encode() in dump

    assert holds("plain-canary-51c9")  # the dump holds the rows: the checks below can fail
    assert b"cc_dictionaries" in dump
    for needle in (canary, "shipped", "order 5", KEY):
        assert not holds(needle), needle


# -- the view ----------------------------------------------------------------------------------


def test_a_view_notices_a_pop_and_reappend_of_the_same_length(
    conversation: Callable[..., Conversation],
) -> None:
    cid = _id()
    a, b = conversation(cid), conversation(cid)
    a.extend([message(0, i) for i in range(5)])
    changes: list[int] = []
    a.log.on_change = lambda: changes.append(1)
    with a.log.transaction(write=False):
        seen, old_tss = a.log.seen, list(a.log.index.tss)
    assert b.pop() == message(0, 4)
    time.sleep(0.002)
    b.extend([message(1, 0)])  # same count, another record, a later time
    with a.log.transaction(write=False):
        assert a.log.seen != seen and changes
        assert list(a.log.index.tss) != old_tss
        assert a.log.index.tss == [ts for _, _, ts in b.messages()]
    assert [m for _, m, _ in a.messages()] == [*(message(0, i) for i in range(4)), message(1, 0)]


def test_a_view_reads_only_the_timestamps_appended_since(
    postgres_url: str, conversation: Callable[..., Conversation]
) -> None:
    cid = _id()
    a, b = conversation(cid), conversation(cid)
    a.extend([message(0, i) for i in range(50)])
    with a.log.transaction(write=False):
        cached = list(a.log.index.tss)
    # Change the stored times behind the library's back: a view that read every timestamp
    # again would see it; one that reads only what was appended does not.
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE cc_records SET ts = ts - 1 WHERE conversation_id = %s", (cid,))
    b.extend([message(1, 0)])
    with a.log.transaction(write=False):
        assert a.log.index.tss[:50] == cached  # not read again
        assert len(a.log.index) == 51
    b.pop()  # a new epoch: the next transaction reads them all
    with a.log.transaction(write=False):
        assert a.log.index.tss == [ts - 1 for ts in cached]


def test_a_failed_write_transaction_rolls_back_everything(
    conversation: Callable[..., Conversation],
) -> None:
    conv = conversation(_id())
    conv.extend([message(0, 0)])
    with pytest.raises(KeyError), conv.log.transaction(write=True):
        conv.writer.append([b'{"role":"user","n":1}'], None)
        conv.log.truncate(0)
        raise KeyError("boom")
    assert [m for _, m, _ in conv.messages()] == [message(0, 0)]
    assert conv.extend([message(0, 1)]) == 1


def test_a_removed_log_stays_removed_for_a_late_writer(
    postgres_backend: PostgresBackend, conversation: Callable[..., Conversation]
) -> None:
    cid = _id()
    late, other = conversation(cid), conversation(cid)
    late.extend([message(0, i) for i in range(3)])
    with late.log.transaction(write=False):
        seen = late.log.seen
    assert cid in postgres_backend.conversations()
    with other.log.transaction(write=True):
        other.log.remove()
    assert cid not in postgres_backend.conversations()
    with late.log.transaction(write=True):  # its view held 3 records: it reloads, finds none
        assert late.log.fmt is None and len(late.log.index) == 0 and late.log.seen != seen
    assert not postgres_backend.delete(cid)
    assert late.extend([message(1, 0)]) == 0  # a new log, not the old one brought back
    assert [m for _, m, _ in other.messages()] == [message(1, 0)]
    assert postgres_backend.delete(cid) and cid not in postgres_backend.conversations()


def test_summaries_describe_every_conversation_in_one_query(postgres_cluster: Cluster) -> None:
    with PostgresBackend(postgres_cluster.create_database()) as backend:
        full, empty = Conversation(backend, "b-full", KEY), Conversation(backend, "a-empty", None)
        full.extend([message(0, i) for i in range(3)])
        with empty.log.transaction(write=True):
            empty.writer.ensure_log()
        gone = Conversation(backend, "c-gone", KEY)
        gone.extend([message(0, 0)])
        assert backend.delete("c-gone")
        got = backend.summaries()
        tss = [ts for _, _, ts in full.messages()]
    assert [s.conversation_id for s in got] == ["a-empty", "b-full"]
    assert (got[0].message_count, got[0].first_ts_us, got[0].last_ts_us) == (0, None, None)
    assert got[0].header.startswith(b"{")  # plain header line
    assert (got[1].message_count, got[1].first_ts_us, got[1].last_ts_us) == (3, tss[0], tss[2])
    assert got[1].size_bytes == full.log.size() > 0


def test_a_large_rewrite_may_read_the_log_it_replaces(
    conversation: Callable[..., Conversation],
) -> None:
    conv = conversation(_id())
    n = 2500  # more than one staging batch
    conv.extend([message(0, i) for i in range(n)])
    log = conv.log
    with log.transaction(write=True):
        header, fmt = conv.secrets.new_log()
        kept = ((text, ts) for seq, text, ts in conv.reader.payloads(0, n) if seq % 2 == 0)
        log.rewrite(
            header,
            fmt,
            ((fmt.records.encode(seq, ts, text), ts) for seq, (text, ts) in enumerate(kept)),
        )
    again = conversation(conv.log.conversation_id)
    assert [m for _, m, _ in again.messages()] == [message(0, i) for i in range(0, n, 2)]


@pytest.mark.parametrize(
    "cid", ["o'brien\"; DROP TABLE cc_records; --", "ünï/../x ✓", " ", "%s", "x" * 1024]
)
def test_any_id_is_a_conversation_of_its_own(
    postgres_backend: PostgresBackend, conversation: Callable[..., Conversation], cid: str
) -> None:
    conversation(cid).extend([message(0, 0)])
    assert cid in postgres_backend.conversations()
    assert [m for _, m, _ in conversation(cid).messages()] == [message(0, 0)]
    assert postgres_backend.delete(cid)


@pytest.mark.parametrize(
    ("cid", "error"),
    [
        ("", ValueError),
        ("a\0b", ValueError),
        ("\ud800", ValueError),
        ("x" * 1025, ValueError),
        (42, TypeError),
    ],
)
def test_an_unusable_id_is_refused(
    postgres_backend: PostgresBackend, cid: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="conversation_id"):
        PostgresLog(postgres_backend, cid, attach=lambda header: None)  # type: ignore[arg-type, return-value]


# -- schema and connections ----------------------------------------------------------------------


def test_schema_creation_is_safe_when_processes_start_at_once(postgres_cluster: Cluster) -> None:
    url = postgres_cluster.create_database()
    found: list[int] = []

    def start() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            found.append(ensure_schema(conn))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(found) == [0, *([SCHEMA_VERSION] * 5)]  # one created it, the rest found it
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE cc_schema_version SET version = version + 1")
    with pytest.raises(UnsupportedVersionError, match="upgrade"):
        PostgresBackend(url)


def test_a_version_1_schema_is_migrated_and_keeps_its_records(postgres_cluster: Cluster) -> None:
    """Version 2 dropped the unused (conversation_id, ts) index: a version-1 database (the
    index present, version 1 recorded) is migrated in place, its records untouched."""
    url = postgres_cluster.create_database()
    store = ConversationStore(url, encryption_key=KEY)
    with store.open("a") as codec:
        codec.extend([{"role": "user", "content": f"m{i}"} for i in range(3)])
    with psycopg.connect(url, autocommit=True) as conn:  # back to what version 1 made
        conn.execute("CREATE INDEX cc_records_ts ON cc_records (conversation_id, ts)")
        conn.execute("UPDATE cc_schema_version SET version = 1")
        assert ensure_schema(conn) == 1
        assert conn.execute("SELECT version FROM cc_schema_version").fetchone() == (SCHEMA_VERSION,)
        index = conn.execute("SELECT to_regclass('cc_records_ts')").fetchone()
        assert index == (None,)
    with ConversationStore(url, encryption_key=KEY).open("a") as codec:
        assert [m["content"] for m in codec.load() or []] == ["m0", "m1", "m2"]


def test_errors_never_show_the_password(postgres_cluster: Cluster) -> None:
    url = postgres_cluster.url("no_such_db").replace(":///", "://postgres:s3cr3t-pw@/")
    assert "s3cr3t-pw" not in display_url(url)
    with pytest.raises(DatabaseError, match="no_such_db") as info:
        PostgresBackend(url)
    assert "s3cr3t-pw" not in str(info.value) and "s3cr3t-pw" not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert display_url("postgresql://u:p%40w@h:5432/d?sslmode=require&password=q") == (
        "postgresql://u@h:5432/d?sslmode=require"
    )
    assert display_url("postgresql:///d?host=/tmp/s&password=q") == "postgresql:///d?host=/tmp/s"
    shown = display_url("host=x password=pw1 dbname=d")
    assert "pw1" not in shown and "host=x" in shown

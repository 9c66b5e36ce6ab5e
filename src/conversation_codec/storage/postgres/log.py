"""``PostgresLog``: one conversation's log in a PostgreSQL database (the storage seam).

Transactions are database transactions on one pooled connection, held from the outermost
``transaction()`` to its end:

- a *write* transaction (READ COMMITTED) first locks the conversation's row
  (``SELECT … FOR UPDATE``; for a conversation without a row, a transaction-level advisory
  lock on its id until ``create`` inserts one). Every writer on every host takes that lock,
  so a writer reads ``next_seq`` and assigns the next seqs with no other writer in between:
  seqs are gap-free and never assigned twice, and the records written commit together at
  the end of the outermost transaction. Acknowledged means committed: an ``append`` inside
  a longer transaction is durable when that transaction ends. A transaction left by an
  exception rolls back everything written in it.
- a *read* transaction is REPEATABLE READ READ ONLY: one snapshot, so the counters and every
  record read in it agree, without blocking or waiting for writers. A read that says what
  it reads (``tail=n``: at most the last n records) is one statement instead, under
  autocommit (``snapshot``): one round trip, one snapshot all the same.

Rejected alternatives for the seq: a SERIAL or identity column (its values are not rolled
back, and they commit out of order, so readers would see gaps that later fill), and
``max(seq) + 1`` with retries (a retry loop under contention, and a unique-key error as the
normal path). The codec seals each record's seq into its body, so the seq must be known
before the body is made: the row lock, taken at the start of the write transaction, is what
lets it read ``next_seq`` and then write.

The cached view (``fmt``, ``index.tss``, the dictionary: ``view``) is refreshed at the
start of each transaction from the row's ``(epoch, next_seq)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterable, Iterator

from ...errors import DatabaseError, LogReplacedError, StorageError
from ..base import Hold, IndexMismatch, LogFormat, LogStorage, Polling, adopt_dictionary
from .backend import Connection, PostgresBackend, check_id, check_new_id
from .kwi import PostgresSegments
from .notify import commit_and_notify
from .queries import (
    NO_ROW,
    Row,
    append_records,
    begin,
    read_range,
    read_row,
    remove_rows,
    replace_log,
    truncate_records,
)
from .snapshot import Snapshot, read_range_at, read_snapshot
from .view import CachedView, Incomplete, PostgresIndex

__all__ = ["READ_ROWS", "PostgresIndex", "PostgresLog"]

READ_ROWS = 256  # records fetched per query when reading a range


class PostgresLog(CachedView):
    """One conversation's log in the database of ``backend``, by ``conversation_id``.

    ``attach`` reads a header into a ``LogFormat`` (as for ``FileLog``); ``lock_timeout``:
    seconds a writer waits for the conversation's lock before ``LockTimeoutError`` (None:
    as long as it takes).

    :raises ValueError: ``conversation_id`` is empty, too long, holds a NUL character or a
        lone surrogate (``backend.check_id``: the database stores text as UTF-8); from
        ``create``/``rewrite``, too long for a new conversation (``backend.check_new_id``).
    """

    def __init__(
        self,
        backend: PostgresBackend,
        conversation_id: str,
        *,
        attach: Callable[[bytes], LogFormat],
        lock_timeout: float | None = None,
    ) -> None:
        check_id(conversation_id)
        if lock_timeout is not None and lock_timeout < 0:
            raise ValueError("lock_timeout must be >= 0 seconds or None")
        self.backend = backend
        self.conversation_id = conversation_id
        self.fmt: LogFormat | None = None
        self.index = PostgresIndex()
        self.on_change: Callable[[], None] = lambda: None
        self._attach = attach
        self._lock_timeout = lock_timeout
        self._header: bytes | None = None
        self._row: Row | None = None  # the row as of the current transaction; None: reload
        self._dict_id = 0  # the dictionary fmt.records holds (0: none)
        self._dict_body: bytes | None = None
        self._snap: Snapshot | None = None  # a one-statement read's (``snapshot``)
        self._tail = 0  # the bodies it prefetched: the last ``_tail`` records
        self._mutex = threading.RLock()
        self._depth = 0
        self._writable = False
        self._conn: Connection | None = None
        self._pid = 0  # the process whose transaction holds ``_conn`` (see ``_owned``)
        self._wrote = False  # this transaction changed the database
        self._after_commit: list[Callable[[], None]] = []
        self._undo: list[Callable[[], None]] = []  # on_rollback()
        self._where = f"conversation {conversation_id!r}"
        self._commit = commit_and_notify(conversation_id)  # a write's COMMIT wakes waiters
        self._segments = PostgresSegments(backend, conversation_id, self._session)

    def __repr__(self) -> str:
        return f"<PostgresLog {self.backend.name!r} {self.conversation_id!r}>"

    @property
    def seen(self) -> tuple[int, int, int] | None:
        """``(epoch, generation, next_seq)`` of the row as of the current transaction (after
        this handle's own writes); None before the first. Equal values mean no writer
        changed the log in between."""
        row = self._row
        return None if row is None else (row.epoch, row.generation, row.next_seq)

    def probe(self) -> None:
        """Identify an existing log from its header (fail fast on a wrong key)."""
        with self._mutex:
            row = self.backend.run(
                f"read {self._where}", lambda conn: read_row(conn, self.conversation_id, lock=False)
            )
        if row is not None and row.header is not None:
            self._attach(row.header)

    # -- transactions ----------------------------------------------------------------------

    def transaction(self, *, write: bool, tolerant: bool = False, tail: int | None = None) -> Hold:
        """Return a context holding a database transaction (and, for ``write``, the
        conversation's row lock) with the cached view brought up to date.

        Re-entrant within one thread; a nested transaction must not upgrade to write.
        ``tolerant`` changes nothing here: a database holds no torn records. A read with
        ``tail=n`` reads at most the last ``n`` records (0: none): it is one statement
        (``snapshot``) that brings them with the row.
        """
        if tail is not None and tail < 0:
            raise ValueError("tail must be >= 0")
        return Hold(lambda w: self._begin(w, tail), self._end, write)

    def _begin(self, write: bool, tail: int | None = None) -> None:
        self._mutex.acquire()
        try:
            if self._depth:
                if write and not self._writable:
                    raise RuntimeError("cannot upgrade a read transaction to a write")
                self._depth += 1
                return
            self._open(write, None if write else tail)
        except BaseException:
            self._mutex.release()
            raise

    def _open(self, write: bool, tail: int | None) -> None:
        """Take a connection, start the transaction, lock and read the row, refresh (for
        ``tail``: read the snapshot instead).

        A connection that just came back is lent unchecked (``backend.RECHECK_AFTER``): if
        the server went away since, the first round trip fails on a dead connection before
        anything was done, and this retries once on a checked one.
        """
        what = ("write " if write else "read ") + self._where
        snap: Snapshot | None = None
        for retry in (True, False):
            conn = None  # taken inside the try: an interrupt right after it loses no connection
            try:
                with self.backend.errors(what):
                    conn = self.backend.pool.getconn()
                    if tail is not None:
                        snap = self._snapshot(conn, tail, full=False)
                        row = None if snap is None else snap.row
                    else:
                        row = begin(
                            conn, self.conversation_id, write=write, lock_timeout=self._lock_timeout
                        )
            except DatabaseError as exc:
                if conn is None:
                    raise
                # Dead before the server said a word (no SQLSTATE): it died idle in the pool.
                # A connection the server ended while this waited (e.g. terminated) is an
                # error of this call, reported as such.
                dead = (conn.broken or conn.closed) and exc.sqlstate is None
                self._give_back(conn, rollback=tail is None)
                if retry and dead:
                    with self.backend.errors(what):
                        self.backend.pool.check()  # drop every dead idle connection now
                    continue
                raise
            except BaseException:
                if conn is not None:
                    self._give_back(conn, rollback=tail is None)
                raise
            break
        assert conn is not None  # the loop ends with a connection or raises
        try:
            with self.backend.errors(what):
                self._conn, self._depth, self._writable = conn, 1, write
                self._pid = os.getpid()
                if tail is None:
                    self._refresh(conn, row)
                else:
                    self._apply(conn, snap, tail)
        except BaseException:
            self._conn, self._depth, self._writable, self._snap = None, 0, False, None
            self._give_back(conn, rollback=tail is None)
            raise

    def _snapshot(self, conn: Connection, tail: int, *, full: bool) -> Snapshot | None:
        """Read the row and what the view lacks, and the last ``tail`` bodies, in one
        statement (``full``: every timestamp and the dictionary, whatever is cached)."""
        row = None if full or self.fmt is None else self._row
        return read_snapshot(
            conn,
            self.conversation_id,
            epoch=-1 if row is None else row.epoch,
            known=0 if row is None else len(self.index),
            dict_id=0 if row is None else self._dict_id,
            tail=tail,
        )

    def _apply(self, conn: Connection, snap: Snapshot | None, tail: int) -> None:
        """Refresh the view from ``snap``; one lacking something (the view was not what it
        was asked against) is read again in full."""
        try:
            self._refresh(conn, None if snap is None else snap.row, snap)
        except Incomplete:
            snap = self._snapshot(conn, tail, full=True)
            self._refresh(conn, None if snap is None else snap.row, snap)
        self._snap = snap or Snapshot(NO_ROW, True, 0, [], None, [])
        self._tail = tail

    def _end(self, exc: BaseException | None) -> None:
        try:
            self._depth -= 1
            if self._depth:
                return
            conn, snap = self._conn, self._snap
            self._conn, self._writable, self._snap = None, False, None
            if self._pid != os.getpid():  # a forked child leaving the parent's transaction:
                self._wrote, self._after_commit, self._undo = False, [], []  # its session is
                return  # the parent's, never ended (nor rolled back) from here
            wrote, self._wrote = self._wrote, False
            after, self._after_commit = self._after_commit, []
            undo, self._undo = self._undo, []
            assert conn is not None
            if snap is not None:  # one statement under autocommit: nothing to end
                self._give_back(conn, rollback=False)
                return
            if exc is None:
                try:
                    with self.backend.errors(f"commit {self._where}"):
                        conn.execute(self._commit if wrote else "COMMIT", prepare=False)
                except BaseException:
                    self._row = None  # whether it committed is unknown: reload next time
                    self._give_back(conn, rollback=True)
                    for call in reversed(undo):
                        call()
                    raise
            else:  # rolled back, written or not: a rotation of no log yet swaps only the
                # codec's secrets, which its undo must restore all the same (r2, defect 1)
                if wrote:
                    self._row = None  # the cached view is ahead of the database
                for call in reversed(undo):
                    call()
            self._give_back(conn, rollback=exc is not None)
            if exc is None:
                for call in after:
                    call()
        finally:
            self._mutex.release()

    def _give_back(self, conn: Connection, *, rollback: bool) -> None:
        """Roll back whatever is open and return the connection to the pool (which drops
        a broken one and makes a new one)."""
        if rollback and not conn.closed:
            with contextlib.suppress(Exception):  # a broken connection: the pool drops it
                conn.execute("ROLLBACK")
        with contextlib.suppress(Exception):  # the pool was closed meanwhile
            self.backend.putconn(conn)

    # -- writes ------------------------------------------------------------------------------

    def _writing(self) -> Connection:
        if not (self._depth and self._writable) or self._conn is None:
            raise RuntimeError("write outside a write transaction")
        self._wrote = True
        return self._owned(self._conn)

    def _owned(self, conn: Connection) -> Connection:
        if self._pid != os.getpid():
            raise StorageError(
                f"{self._where}: this process was forked while a transaction held it; that "
                "transaction (and its database session) belongs to the parent (end it, and "
                "start another here)"
            )
        return conn

    def _check_write(self) -> tuple[Connection, LogFormat, Row]:
        conn = self._writing()
        if self.fmt is None or self._row is None:
            raise RuntimeError("no log yet: create() it first")
        return conn, self.fmt, self._row

    def create(self, header: bytes, fmt: LogFormat) -> None:
        self.rewrite(header, fmt, ())

    def append(
        self, bodies: list[bytes], tss: list[int], dictionary: tuple[int, bytes] | None = None
    ) -> None:
        """Insert records at ``next_seq`` onwards (and the dictionary record before
        ``bodies[at]`` for ``dictionary=(at, body)``) with one statement."""
        conn, fmt, row = self._check_write()
        if len(bodies) != len(tss):
            raise ValueError("one timestamp per body")
        last = self.index.tss[-1] if self.index.tss else 0
        if any(b < a for a, b in zip([last, *tss], tss, strict=False)):
            raise ValueError("timestamps in a log never go backwards")
        dict_row = None
        if dictionary is not None:
            self._adopt(fmt, dictionary[1], 1, have_one=self._dict_id != 0)
            dict_row = (1, len(self.index) + dictionary[0], dictionary[1])
        segment = self._segments.staged()  # the keyword index's, in the same statement
        try:
            with self.backend.errors(f"append to {self._where}"):
                self._row, counted = append_records(
                    conn, row, self.conversation_id, bodies, tss, dict_row, segment
                )
            self._segments.written(segment, counted)
        except BaseException:
            if dictionary is not None:
                self._drop_dictionary()
            raise
        self.index.tss.extend(tss)

    def truncate(self, count: int) -> None:
        """Delete the records from ``count`` on (and the dictionary if it stood there)."""
        conn, _, row = self._check_write()
        if count < 0:
            raise ValueError("count must be >= 0")
        count = min(count, len(self.index))
        last = self.index.tss[count - 1] if count else 0
        with self.backend.errors(f"truncate {self._where}"):
            self._row = truncate_records(conn, row, self.conversation_id, count, last)
        del self.index.tss[count:]
        if not self._row.dict_id:
            self._drop_dictionary()  # the dictionary goes too

    def rewrite(
        self,
        header: bytes,
        fmt: LogFormat,
        records: Iterable[tuple[bytes, int]],
        dictionary: bytes | None = None,
    ) -> None:
        """Replace the whole log in this transaction: a reader sees the old one until the
        commit, then the new one. ``records`` may read this log while it is consumed
        (``queries.replace_log``). Creating a log where records are stored without one is
        refused (``CorruptRecordError``: view), the transaction rolled back."""
        conn = self._writing()
        fresh = self._row is None or self._row.header is None
        if self._row is None or self._row is NO_ROW:  # no row (``_refresh``): one is inserted
            check_new_id(self.conversation_id)
        if dictionary is not None:
            adopt_dictionary(fmt, dictionary, have_one=False)
        with self.backend.errors(f"rewrite {self._where}"):
            row, tss, removed = replace_log(
                conn, self.conversation_id, header, fmt.log_id, iter(records), dictionary
            )
        if fresh and removed:
            raise self._damaged()
        self._forget_log()
        self.fmt, self._header, self.index.tss = fmt, header, tss
        self._dict_id, self._dict_body, self._row = row.dict_id, dictionary, row

    def remove(self, also: Callable[[], None] = lambda: None) -> None:
        """Delete the log in this transaction; ``also`` runs once that has committed. The
        row stays as a tombstone with its epoch bumped (``PostgresBackend.delete``)."""
        conn = self._writing()
        with self.backend.errors(f"remove {self._where}"):
            self._row = remove_rows(conn, self.conversation_id)
        self._forget_log()
        self._after_commit.append(also)

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Call ``undo`` if this transaction's COMMIT fails or it ends in an exception."""
        self._undo.append(undo)

    def stored(self) -> tuple[bytes, bytes | None] | None:
        """The header's bytes and the dictionary record's body, as the database holds them
        (as of this transaction: the view keeps both)."""
        if self._header is None:
            return None
        self._reading()
        return self._header, self._dict_body

    def remove_stale_temps(self) -> None:
        """Nothing is ever left over: a rewrite's staging table dies with its transaction."""

    def rebuild_index(self) -> None:
        """Read every timestamp and the dictionary again (they disagreed with a record)."""
        conn, row = self._conn, self._row
        if conn is None or row is None or row.header is None:
            raise RuntimeError("rebuild_index() outside a transaction on a log")
        self._owned(conn)
        with self.backend.errors(f"read {self._where}"):
            if self._snap is None:
                self._reload(conn, row)
                return
            snap = self._snapshot(conn, self._tail, full=True)  # a later snapshot: same log?
            if snap is None or (snap.row.epoch, snap.row.header) != (row.epoch, row.header):
                raise LogReplacedError(f"{self._where} was replaced while it was read; read again")
            self._reload(conn, snap.row, snap)
            self._row, self._snap = snap.row, snap

    # -- reads -------------------------------------------------------------------------------

    def _reading(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("read outside a transaction")
        return self._owned(self._conn)

    def read_body(self, seq: int) -> bytes:
        """Return the stored body of record ``seq``."""
        self.index.span(seq)
        for _, body in self.read_bodies(seq, seq + 1):
            return body
        raise IndexMismatch(seq)  # pragma: no cover  # read_bodies raises first

    def read_bodies(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(seq, body)`` for ``start <= seq < stop``, ``READ_ROWS`` per query (an
        index range scan; no cursor stays open between chunks, so the caller may run
        other statements on this transaction in between, as a rewrite does)."""
        if start < stop:
            self.index.span(start)  # IndexError past the end, as every storage
            self.index.span(stop - 1)
        snap = self._snap
        if snap is not None and snap.bodies_from <= start and stop <= snap.row.next_seq:
            for seq in range(start, stop):  # prefetched with the row
                yield seq, snap.bodies[seq - snap.bodies_from]
            return
        seq = start
        while seq < stop:
            upto = min(stop, seq + READ_ROWS)
            rows = self._read_range(seq, upto)
            for got, body in rows:
                if got != seq:
                    raise IndexMismatch(seq)  # the reader rebuilds the view and retries
                yield seq, body
                seq += 1
            if seq < upto:
                raise IndexMismatch(seq)

    def _read_range(self, start: int, stop: int) -> list[tuple[int, bytes]]:
        """Read records ``start .. stop - 1`` in this transaction; in a one-statement read,
        guarded by its epoch (a later statement sees a later snapshot)."""
        with self.backend.errors(f"read {self._where}"):
            conn = self._reading()
            if self._snap is None:
                return read_range(conn, self.conversation_id, start, stop)
            rows = read_range_at(conn, self.conversation_id, self._snap.row.epoch, start, stop)
        if rows is None:
            raise LogReplacedError(f"{self._where} was replaced while it was read; read again")
        return rows

    def keyword_index(self) -> PostgresSegments:
        """The keyword index's segments (``cc_kwi_segments``, FORMAT.md §17.9)."""
        return self._segments

    def _session(self, write: bool, kwi: int | None = None) -> tuple[Connection, Row]:
        """This transaction's connection and row, for the keyword index (which sets
        the row's ``kwi`` when it replaced or removed the index)."""
        conn = self._writing() if write else self._reading()
        if kwi is not None and self._row is not None:
            self._row = dataclasses.replace(self._row, kwi=kwi)
        return conn, self._row or NO_ROW

    def size(self) -> int:
        """Bytes held: the header and every record body."""
        row = self._row
        return 0 if row is None or row.header is None else len(row.header) + row.body_bytes

    def watch(self) -> Polling:
        """A waiter's pauses, woken by the notification of a write that committed."""
        return self.backend.watch(self.conversation_id)

    def close(self) -> None:
        """Forget the cached view (connections go back to the pool after each transaction;
        the pool belongs to the backend)."""
        with self._mutex:
            if not self._depth:
                self._forget_log()
                self._row = None


_CONFORMS: type[LogStorage] = PostgresLog  # mypy checks PostgresLog against the protocol

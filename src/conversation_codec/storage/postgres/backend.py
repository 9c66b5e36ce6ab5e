"""A PostgreSQL database as a store of conversations: one connection pool per URL.

``PostgresBackend.shared(url)`` gives every caller in a process the same backend (and so the
same ``psycopg_pool.ConnectionPool``) for one URL; no call opens a connection of its own.
The pool checks a connection before handing it out (``ConnectionPool.check_connection``),
and on the first dead one checks every idle one: after a server restart the stale
connections are dropped and new ones made at once, and the application keeps its pool.
The schema is created or migrated once, when the backend opens.

Errors of psycopg and of the pool become the library's (``database_errors``) in every
statement, and no message shows the password of a URL. A connection lent unchecked (it came
back just now) that the server has ended since, while it sat idle, is found by a poll of its
socket, and one found dead at the first statement all the same is replaced once (``run``).

Conversation ids (``check_id``): 1 to ``MAX_ID_CHARS`` characters, no NUL (a ``text``
value cannot hold one), no lone surrogate. An id outside these is refused by
``PostgresLog`` (and ``locate``) with ``ValueError``; every other method answers for it as
for an absent conversation. A NEW conversation (no row yet) also needs an id of at most
``MAX_ID_BYTES`` bytes of UTF-8 (``check_new_id``: a btree index entry holds about 2.7 kB,
and a longer id fails at its first write unless it compresses well); one stored before
that limit, by a release that allowed any 1024 characters, is read, written, listed,
deleted and pruned as any other.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import psycopg
import psycopg_pool
from psycopg import conninfo, sql
from psycopg.rows import TupleRow

from ...errors import ConflictError, DatabaseError, LockTimeoutError
from .notify import Listener, Watch
from .queries import STORED, remove_rows
from .schema import ensure_schema

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_ID_BYTES",
    "MAX_ID_CHARS",
    "POLL_INTERVAL",
    "Connection",
    "ConversationSummary",
    "PostgresBackend",
    "check_id",
    "check_new_id",
    "database_errors",
    "display_url",
    "id_fits",
    "is_database_url",
]

Connection = psycopg.Connection[TupleRow]
T = TypeVar("T")

_SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT = 10.0  # seconds to wait for a connection (the pool's timeout too)
# A connection given back less than this many seconds ago is lent without a check round
# trip: it just worked. One idle longer is checked (a server restart, a dropped link).
RECHECK_AFTER = 1.0
# Seconds between two polls of a waiter (codec.wait) while notifications arrive: a fallback
# for a lost one (notify.py). Without the listener, waiters poll every 100 ms at most.
POLL_INTERVAL = 1.0
MAX_ID_CHARS = 1024  # a conversation id longer than this is a mistake, not an id
MAX_ID_BYTES = 2048  # of UTF-8, for a new row: a btree entry (the primary keys) holds ~2.7 kB
# The server ended the connection (terminated, shutting down, idle timeout): on a connection
# lent from the pool, that happened while it sat idle, before this used it.
_ENDED = frozenset({"57P01", "57P02", "57P05"})


def id_fits(conversation_id: str) -> bool:
    """Whether ``conversation_id`` can name a conversation in a database (``check_id``)."""
    try:
        check_id(conversation_id)
    except (TypeError, ValueError):
        return False
    return True


def check_id(conversation_id: str) -> None:
    """Refuse an id no conversation in a database can have (module docstring).

    :raises TypeError: not a str.
    :raises ValueError: empty, too long, holds NUL or a lone surrogate.
    """
    if not isinstance(conversation_id, str):
        raise TypeError("conversation_id must be a str")
    try:
        conversation_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("conversation_id is not valid Unicode (a lone surrogate)") from None
    if not 0 < len(conversation_id) <= MAX_ID_CHARS or "\0" in conversation_id:
        raise ValueError(
            f"conversation_id must be 1 to {MAX_ID_CHARS} characters without NUL in a "
            "PostgreSQL store"
        )


def check_new_id(conversation_id: str) -> None:
    """Refuse the id of a conversation about to get its row (``check_id`` passed): over
    ``MAX_ID_BYTES`` bytes of UTF-8 (module docstring).

    :raises ValueError: too long for a new conversation.
    """
    if len(conversation_id.encode("utf-8")) > MAX_ID_BYTES:
        raise ValueError(
            f"conversation_id of a new conversation must be at most {MAX_ID_BYTES} bytes of "
            "UTF-8 in a PostgreSQL store"
        )


def _quiet(conn: Connection) -> bool:
    """Whether an idle connection has nothing to read (one poll, no round trip): a server
    that ended it meanwhile has sent its reason or closed the socket."""
    try:
        fd = conn.fileno()
    except Exception:
        return False
    if not hasattr(select, "poll"):  # pragma: no cover  # Windows
        return not select.select([fd], [], [], 0)[0]
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return not poller.poll(0)


def is_database_url(root: object) -> bool:
    """True when ``root`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return isinstance(root, str) and root.lower().startswith(_SCHEMES)


def _secrets(url: str) -> list[str]:
    """The password a URL or connection string carries, in every spelling it may appear."""
    found: set[str] = set()
    with contextlib.suppress(Exception):
        password = conninfo.conninfo_to_dict(url).get("password")
        if password:
            found.add(str(password))
    with contextlib.suppress(ValueError):
        raw = urllib.parse.urlsplit(url)
        if raw.password:
            found |= {raw.password, urllib.parse.unquote(raw.password)}
        for key, value in urllib.parse.parse_qsl(raw.query):
            if key == "password" and value:
                found.add(value)
    return sorted((s for s in found if s), key=len, reverse=True)


def display_url(url: str) -> str:
    """Return ``url`` without its password: what messages and reprs show."""
    if is_database_url(url):
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc.rpartition("@")
        host = netloc[2]
        user = netloc[0].partition(":")[0]
        query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "password"]
        shown = f"{parts.scheme}://{user + '@' if user else ''}{host}{parts.path}"
        return shown + (f"?{urllib.parse.urlencode(query, safe='/')}" if query else "")
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "<unparsable connection string>"
    params.pop("password", None)
    return conninfo.make_conninfo("", **params)


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


@contextlib.contextmanager
def database_errors(where: str, secrets: Sequence[str] = ()) -> Iterator[None]:
    """Turn psycopg's and the pool's errors into the library's, ``where`` naming the place.

    A lock wait past ``lock_timeout`` is ``LockTimeoutError``; a duplicate record key (two
    writers that claimed the same seq, which the row lock rules out) is ``ConflictError``;
    everything else is ``DatabaseError``. The psycopg error is not chained: its text can
    carry connection details, and the message kept here says what happened.
    """
    try:
        yield
    except psycopg.errors.LockNotAvailable:
        raise LockTimeoutError(f"{where}: another writer held the lock past the timeout") from None
    except psycopg.errors.UniqueViolation:
        raise ConflictError(f"{where}: another writer stored a record at the same seq") from None
    except psycopg.Error as exc:
        text = _redact(str(exc).strip() or type(exc).__name__, secrets)
        raise DatabaseError(f"{where}: {text}", sqlstate=exc.sqlstate) from None
    except psycopg_pool.PoolTimeout:
        raise DatabaseError(
            f"{where}: no database connection in time (is the server up, the pool big enough?)"
        ) from None
    except psycopg_pool.PoolClosed:
        raise DatabaseError(f"{where}: the connection pool is closed") from None


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """One conversation as its row tells it (``PostgresBackend.summaries``)."""

    conversation_id: str
    message_count: int  # records stored (a codec's max_messages may hide some)
    first_ts_us: int | None  # None: no record
    last_ts_us: int | None
    size_bytes: int  # header and record bodies
    header: bytes  # the log's header (FORMAT.md §3, §6): sealed or plain, its log id


class PostgresBackend:
    """The conversations in one PostgreSQL database, through one connection pool.

    ``url``: a ``postgresql://`` URL or a libpq connection string. The schema is created
    (or migrated) on opening. ``min_size``/``max_size``: the pool's bounds (connections);
    ``timeout``: seconds to wait for a connection. ``poll_interval``: seconds between two
    polls of a waiting ``codec.wait`` while notifications wake it (``watch``). Prefer
    ``shared(url)``, which keeps one backend per URL for the whole process.

    :raises DatabaseError: the database cannot be reached or refused the schema.
    :raises UnsupportedVersionError: the database holds a newer schema than this library.
    """

    _shared: ClassVar[dict[str, PostgresBackend]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = CONNECT_TIMEOUT,
        prepare_threshold: int | None = 5,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise TypeError("url must be a non-empty str (postgresql://user@host/database)")
        if not poll_interval > 0:
            raise ValueError("poll_interval must be > 0 seconds")
        self.poll_interval = poll_interval
        self._url, self._timeout = url, timeout
        self._listener: Listener | None = None
        self._listener_lock = threading.Lock()
        self.name = display_url(url)
        self.secrets = _secrets(url)
        # Autocommit: the storage sends BEGIN/COMMIT itself, and chooses each transaction's
        # isolation. prepare_threshold=None turns prepared statements off (PgBouncer
        # before 1.21 in transaction mode).
        kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": prepare_threshold}
        self._back: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
        with database_errors(f"cannot open {self.name}", self.secrets):
            # One connection of its own, once, so that a bad URL or password fails here with
            # the server's reason (a pool only reports a timeout).
            with psycopg.connect(url, connect_timeout=max(1, round(timeout)), **kwargs) as conn:
                ensure_schema(conn)
            self._pool_options: dict[str, Any] = {
                "min_size": min_size,
                "max_size": max_size,
                "kwargs": kwargs,
                "timeout": timeout,
            }
            self._pool: psycopg_pool.ConnectionPool[Connection] | None = self._new_pool()
        _LIVE.add(self)

    def _new_pool(self) -> psycopg_pool.ConnectionPool[Connection]:
        return psycopg_pool.ConnectionPool(
            self._url, check=self._check, name=self.name, open=True, **self._pool_options
        )

    @property
    def pool(self) -> psycopg_pool.ConnectionPool[Connection]:
        """The connection pool: this process's own (a forked child opens one at first use)."""
        pool = self._pool
        if pool is None:
            with self._listener_lock:
                if self._pool is None:
                    with database_errors(f"cannot open {self.name}", self.secrets):
                        self._pool = self._new_pool()
                pool = self._pool
        return pool

    def _forget_inherited(self) -> None:
        """In a child just forked (``_after_fork``): leave the parent's connections to it."""
        if self._pool is not None and self._pool.closed:
            return  # closed before the fork: stays closed
        _INHERITED.append((self._pool, self._listener))
        self._pool, self._listener = None, None
        self._listener_lock = threading.Lock()
        self._back = weakref.WeakKeyDictionary()

    def putconn(self, conn: Connection) -> None:
        """Give ``conn`` back to the pool, noting when (it worked until then).

        Not the pool's ``reset`` hook: with one, the pool hands every returned connection
        to a worker thread (measured: ~0.15 ms of a 0.4 ms tail, and the next call may
        find the connection not back yet).
        """
        self._back[conn] = time.monotonic()
        self.pool.putconn(conn)

    def _check(self, conn: Connection) -> None:
        """Check a connection before lending it (a round trip), unless it came back less
        than ``RECHECK_AFTER`` seconds ago and its socket has nothing to read (a tail is 3
        round trips instead of 4); on the first dead one, check every idle one at once. A
        dead connection means the server restarted or the network broke, so the others
        are dead too: met one by one, the pool would wait 1, 2, 4… s between them (its
        back-off) and time out with a few stale ones."""
        if time.monotonic() - self._back.get(conn, -RECHECK_AFTER) < RECHECK_AFTER and _quiet(conn):
            return
        try:
            psycopg_pool.ConnectionPool.check_connection(conn)
        except Exception:
            self.pool.check()
            raise

    @classmethod
    def shared(cls, url: str, **options: Any) -> PostgresBackend:
        """Return this process's backend for ``url``, opening it on first use with
        ``options`` (``min_size``, ``max_size``, ``timeout``, ``prepare_threshold``,
        ``poll_interval``); later
        calls return that one whatever options they pass."""
        with cls._shared_lock:
            backend = cls._shared.get(url)
            if backend is None or backend.pool.closed:
                backend = cls._shared[url] = cls(url, **options)
            return backend

    def errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        """``database_errors`` for an operation ``what`` on this database."""
        return database_errors(f"{self.name}: {what}", self.secrets)

    @contextlib.contextmanager
    def connection(self, what: str) -> Iterator[Connection]:
        """Lend a pooled connection for ``what`` (named in errors, which become the
        library's); it goes back at the end."""
        conn = None  # taken inside the try: an interrupt right after it loses no connection
        try:
            with self.errors(what):
                conn = self.pool.getconn()
                yield conn
        finally:
            if conn is not None:
                with self.errors(what):
                    self.putconn(conn)

    def run(self, what: str, read: Callable[[Connection], T]) -> T:
        """Return ``read(conn)`` on a pooled connection (``connection``). ``read`` only
        reads: when the connection proves dead at it (the server ended it while it sat in
        the pool), it runs once more on a checked one, as ``PostgresLog`` begins a
        transaction."""
        for retry in (True, False):
            with self.connection(what) as conn:
                try:
                    with self.errors(what):
                        return read(conn)
                except DatabaseError as exc:
                    ended = exc.sqlstate is None or exc.sqlstate in _ENDED
                    if not (retry and ended and (conn.broken or conn.closed)):
                        raise
            with self.errors(what):
                self.pool.check()  # drop every dead idle connection now
        raise AssertionError("unreachable")  # pragma: no cover

    def watch(self, conversation_id: str) -> Watch:
        """Return a waiter's pauses between polls of a conversation, woken by notifications
        (``notify.py``); the process's one listening connection to this database starts
        with the first waiter."""
        with self._listener_lock:
            if self._listener is None:
                self._listener = Listener(self._url, self.poll_interval, self._timeout)
        return self._listener.watch(conversation_id)

    @property
    def listening(self) -> bool:
        """Whether this process's listener receives notifications now (see ``watch``)."""
        listener = self._listener
        return listener is not None and listener.listening

    def conversations(self) -> list[str]:
        """Return the ids of the conversations that hold a log, sorted: also those whose
        row was damaged by hand (no header, yet records counted or stored: opening them
        says so; ``queries.STORED``), not those whose id ``check_id`` refuses (none can be
        stored since it does).

        One of the few queries that cross conversations (listings and retention).
        """
        rows = self.run(
            "list conversations",
            lambda conn: conn.execute(
                sql.SQL(
                    "SELECT c.id FROM cc_conversations c WHERE ({}) "
                    "AND char_length(c.id) <= %s ORDER BY c.id"
                ).format(STORED),
                (MAX_ID_CHARS,),
            ).fetchall(),
        )
        return [str(row[0]) for row in rows]

    def summaries(self) -> list[ConversationSummary]:
        """Describe every conversation that holds a log, sorted by id, in one query: no
        record is read, no header authenticated (for a store's listing; the codec's
        ``info()`` checks the header with the key)."""
        rows = self.run(
            "list conversations",
            lambda conn: conn.execute(
                """
                SELECT c.id, c.next_seq, c.last_ts, c.header,
                       octet_length(c.header) + c.body_bytes,
                       (SELECT r.ts FROM cc_records r WHERE r.conversation_id = c.id AND r.seq = 0)
                  FROM cc_conversations c
                 WHERE c.header IS NOT NULL AND char_length(c.id) <= %s
                 ORDER BY c.id
                """,
                (MAX_ID_CHARS,),
            ).fetchall(),
        )
        return [
            ConversationSummary(str(c), n, first, last if n else None, size, bytes(header))
            for c, n, last, header, size, first in rows
        ]

    def delete(self, conversation_id: str) -> bool:
        """Delete a conversation's log in one transaction; return False when it had none.

        The row stays with its epoch bumped, so a writer that still holds an old view
        reloads rather than writes after the deletion (``PostgresLog.remove``). An id no
        conversation can have (``check_id``) has none.
        """
        if not id_fits(conversation_id):
            return False
        with self.connection(f"delete {conversation_id!r}") as conn, conn.transaction():
            row = conn.execute(
                "SELECT header IS NOT NULL FROM cc_conversations WHERE id = %s FOR UPDATE",
                (conversation_id,),
            ).fetchone()
            if row is None or not row[0]:
                return False
            remove_rows(conn, conversation_id)
        return True

    def close(self) -> None:
        """Close the pool (and forget it as the shared backend of its URL)."""
        with self._shared_lock:
            for url, backend in list(self._shared.items()):
                if backend is self:
                    del self._shared[url]
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._pool is not None:
            self._pool.close()
        else:  # a forked child that never used it: a pool never opened is a closed one
            self._pool = psycopg_pool.ConnectionPool(self._url, open=False, **self._pool_options)

    def __enter__(self) -> PostgresBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never the password
        return f"<PostgresBackend {self.name!r}>"


# A pool's connections are sockets to the server, with a session each; a forked child that
# used the parent's would interleave its statements with the parent's on the same sessions
# (a store opened before the fork of a server's workers hung or failed both). So a child
# leaves every inherited pool and listener to the parent, never closing them (closing
# would end the parent's sessions; psycopg does not end a connection that another process
# opened when it is collected) and opens its own at first use. Kept here so that nothing
# of theirs runs in the child.
_LIVE: weakref.WeakSet[PostgresBackend] = weakref.WeakSet()
_INHERITED: list[object] = []


def _after_fork() -> None:
    PostgresBackend._shared_lock = threading.Lock()
    for backend in list(_LIVE):
        backend._forget_inherited()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

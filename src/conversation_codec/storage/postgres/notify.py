"""LISTEN/NOTIFY: a wake-up hint for ``ConversationCodec.wait`` on PostgreSQL.

Each process keeps one ``Listener`` per database (``PostgresBackend.watch``): one dedicated
connection, not from the pool, that LISTENs on ``CHANNEL`` in a daemon thread and wakes the
waiters of the conversation a notification names. A woken waiter polls: the row, not the
notification, says whether a message arrived. Polling stays the source of truth:

- while the listener is up, a waiter polls every ``poll_interval`` seconds anyway (a
  notification can be lost, e.g. when the server ends the connection);
- while it is down, waiters poll as without it (backing off from 1 ms to 100 ms), and it
  reconnects (backing off to 5 s); once up again it wakes every waiter, since
  notifications sent in between were lost.

Only a watched conversation's writers notify. NOTIFY takes a lock that serialises the
commits of every notifying transaction in the cluster, WAL flush included (measured: 32
concurrent writers, fsync on, 1,350 -> 700 messages/s when every write notified). So while
a conversation has waiters, the listener holds the session advisory lock ``lock_key(id)``
in shared mode, and a write's COMMIT is sent as ``SELECT pg_notify(…) WHERE NOT
pg_try_advisory_xact_lock(key); COMMIT`` (one round trip, as COMMIT alone): the exclusive
try fails exactly when someone watches, and otherwise holds the key until that COMMIT. The
notification is delivered only if, and once, the write commits. Writers of one
conversation take the key one at a time (they hold its row lock), so only watchers make
the try fail. A waiter is subscribed (the lock held) before its first poll.

The payload is not the conversation id but ``payload(id)``: 16 hex digits of
SHA-256("conversation-codec notify\\0" + id). Any role that may connect to the database may
LISTEN on any channel, with no privilege on the tables, and payloads may end up in logs;
the hash tells such a listener when some conversation changed, but not which one, unless it
can guess the id and hash its guess. A role that can read ``cc_conversations`` sees the ids
anyway. Rejected: a keyed hash (HMAC): writers and waiters share no key (each store has its
own, and keys rotate), so a waiter could miss its writers' notifications; a channel per
conversation: channel names show in ``pg_listening_channels()``, and a LISTEN per
conversation is no cheaper than the lock. 64 bits make a collision (a spurious poll)
negligible.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import select
import socket
import threading

import psycopg
from psycopg import pq

from ..base import Polling

__all__ = ["APPLICATION_NAME", "CHANNEL", "Listener", "Watch", "commit_and_notify", "payload"]

CHANNEL = "cc_changes"
APPLICATION_NAME = "conversation-codec listener"  # pg_stat_activity.application_name
RECONNECT_MAX = 5.0  # seconds between two attempts to reconnect, at most
SUBSCRIBE_WAIT = 1.0  # seconds a new waiter waits for its lock before it polls anyway
_SLICE = 0.5  # seconds the listener waits before looking at its stop flag


def _digest(conversation_id: str) -> bytes:
    return hashlib.sha256(b"conversation-codec notify\0" + conversation_id.encode()).digest()


def payload(conversation_id: str) -> str:
    """The notification payload of a conversation: a short hash of its id (see above)."""
    return _digest(conversation_id)[:8].hex()


def lock_key(conversation_id: str) -> int:
    """The advisory lock key a conversation's watchers hold (same 64 bits as the payload)."""
    return int.from_bytes(_digest(conversation_id)[:8], "big", signed=True)


def _key_lock(key: str) -> int:
    """The lock key of a payload (the same 64 bits)."""
    return int.from_bytes(bytes.fromhex(key), "big", signed=True)


def commit_and_notify(conversation_id: str) -> str:
    """The COMMIT of a write transaction, notifying the conversation's watchers if it has
    any: one simple query. Only hex digits and an integer are inlined."""
    return (
        f"SELECT pg_notify('{CHANNEL}', '{payload(conversation_id)}') "
        f"WHERE NOT pg_try_advisory_xact_lock({lock_key(conversation_id)}); COMMIT"
    )


class Listener:
    """One process's listening connection to a database (``url``), in a daemon thread;
    ``watch(conversation_id)`` gives a waiter its ``Watch``."""

    def __init__(self, url: str, poll_interval: float, connect_timeout: float) -> None:
        self.poll_interval = poll_interval
        self._url, self._connect_timeout = url, connect_timeout
        self._changed = threading.Condition()
        self._waiters: dict[str, set[Bell]] = {}  # payload -> its waiters
        self._held: set[str] = set()  # payloads whose lock the connection holds
        self._up = False  # LISTENing now
        self._stop = False
        self._tried = threading.Event()  # the first attempt to connect is over
        # A byte on it wakes the thread: the waiters changed, or stop (a socket pair, not a
        # pipe: no file is written outside _fsio.py).
        self._bell, self._rung = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="cc-listener", daemon=True)
        self._thread.start()
        self._tried.wait(connect_timeout)

    @property
    def listening(self) -> bool:
        """Whether notifications arrive now (else waiters poll as without them)."""
        return self._up

    def watch(self, conversation_id: str) -> Watch:
        return Watch(self, conversation_id)

    def subscribe(self, conversation_id: str, event: Bell) -> None:
        """Add a waiter; return once its conversation is watched (or the listener is
        down, or after ``SUBSCRIBE_WAIT``)."""
        key = payload(conversation_id)
        with self._changed:
            self._waiters.setdefault(key, set()).add(event)
            if key not in self._held:
                self._bell.send(b"s")
                self._changed.wait_for(lambda: key in self._held or not self._up, SUBSCRIBE_WAIT)

    def unsubscribe(self, conversation_id: str, event: Bell) -> None:
        key = payload(conversation_id)
        with self._changed:
            events = self._waiters.get(key, set())
            events.discard(event)
            if not events:
                self._waiters.pop(key, None)
                self._bell.send(b"u")

    def _wake(self, key: str | None) -> None:
        """Wake the waiters of ``key`` (None: all of them)."""
        with self._changed:
            if key is None:
                events = [e for es in self._waiters.values() for e in es]
            else:
                events = list(self._waiters.get(key, ()))
        for event in events:
            event.set()

    def _run(self) -> None:
        pause = 0.1
        while not self._stop:
            try:
                with psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=max(1, round(self._connect_timeout)),
                    application_name=APPLICATION_NAME,
                ) as conn:
                    # Notifications that come in with a statement's results (_locks):
                    conn.add_notify_handler(lambda note: self._wake(note.payload))
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._locks(conn)
                    with self._changed:
                        self._up = True
                        self._changed.notify_all()
                    self._tried.set()
                    self._wake(None)  # what was sent while down was lost: look again
                    pause = 0.1
                    self._listen(conn)
            except (psycopg.Error, OSError):
                pass  # the server went away, or is not there yet
            finally:
                with self._changed:
                    was_up, self._up = self._up, False
                    self._held.clear()  # the session's locks went with it
                    self._changed.notify_all()
                if was_up:
                    self._wake(None)  # from now on they poll as without notifications
                self._tried.set()
            if not self._stop:
                select.select([self._rung], [], [], pause)
                pause = min(pause * 2, RECONNECT_MAX)

    def _listen(self, conn: psycopg.Connection[psycopg.rows.TupleRow]) -> None:
        """Deliver notifications, and hold the locks of the watched conversations."""
        server = conn.pgconn.socket
        while not self._stop:
            ready, _, _ = select.select([server, self._rung.fileno()], [], [], _SLICE)
            if self._rung.fileno() in ready:
                self._rung.recv(4096)
                self._locks(conn)
            if server in ready:
                conn.pgconn.consume_input()
                if conn.pgconn.status != pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the listening connection was lost")
                while (note := conn.pgconn.notifies()) is not None:
                    self._wake(note.extra.decode("ascii", "replace"))

    def _locks(self, conn: psycopg.Connection[psycopg.rows.TupleRow]) -> None:
        """Take the lock of each newly watched conversation, release the others', until
        the locks held match the waiters: one that subscribed while a key it wants was
        being released (still in ``_held``, so it rang no bell) is locked on the next
        round, not left unwatched."""
        while True:
            with self._changed:
                wanted, held = set(self._waiters), set(self._held)
                if wanted == held:
                    self._changed.notify_all()
                    return
            for key in held - wanted:
                conn.execute("SELECT pg_advisory_unlock_shared(%s)", (_key_lock(key),))
            for key in wanted - held:
                conn.execute("SELECT pg_advisory_lock_shared(%s)", (_key_lock(key),))
            with self._changed:
                self._held = wanted
                self._changed.notify_all()

    def close(self) -> None:
        """Stop listening (within ``_SLICE`` seconds)."""
        self._stop = True
        self._bell.send(b"x")
        self._thread.join(_SLICE + self._connect_timeout + 1)
        if not self._thread.is_alive():
            self._bell.close()
            self._rung.close()


class Bell:
    """What the listener rings for one waiter: wakes a thread's ``sleep`` and, once a
    coroutine paused on it, that coroutine's ``pause`` (through its event loop)."""

    __slots__ = ("_aevent", "_loop", "event")

    def __init__(self) -> None:
        self.event = threading.Event()
        self._aevent: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def set(self) -> None:
        self.event.set()
        aevent, loop = self._aevent, self._loop
        if aevent is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: no one waits
                loop.call_soon_threadsafe(aevent.set)

    def for_loop(self) -> asyncio.Event:
        """The event a coroutine of the running loop waits on (one loop per waiter)."""
        if self._aevent is None:
            self._aevent = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        return self._aevent

    def clear(self) -> None:
        self.event.clear()
        if self._aevent is not None:
            self._aevent.clear()


class Watch(Polling):
    """A waiter's pauses between polls on PostgreSQL: woken by a notification naming its
    conversation; ``poll_interval`` long while the listener is up, else backing off."""

    def __init__(self, listener: Listener, conversation_id: str) -> None:
        super().__init__()
        self._listener, self._id = listener, conversation_id
        self._bell = Bell()
        listener.subscribe(conversation_id, self._bell)

    def _seconds(self, most: float | None) -> float:
        if not self._listener.listening:
            return self.backoff(most)
        pause = self._listener.poll_interval
        return pause if most is None else min(pause, most)

    def sleep(self, most: float | None) -> None:
        self._bell.event.wait(self._seconds(most))
        self._bell.clear()  # before the poll that follows: a later notification sets it

    async def pause(self, most: float | None) -> None:
        seconds, rung = self._seconds(most), self._bell.for_loop()
        if not self._bell.event.is_set():  # rung before the coroutine's event existed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(rung.wait(), seconds)
        self._bell.clear()

    def close(self) -> None:
        self._listener.unsubscribe(self._id, self._bell)

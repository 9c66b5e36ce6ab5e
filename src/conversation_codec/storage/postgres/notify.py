"""LISTEN/NOTIFY: a wake-up hint for ``ConversationCodec.wait`` on PostgreSQL.

A write transaction sends ``pg_notify(CHANNEL, payload)`` with its COMMIT (one round trip,
as COMMIT alone), so the notification is delivered only if, and once, the write commits.
Each process keeps one ``Listener`` per database (``PostgresBackend.watch``): one dedicated
connection, not from the pool, that LISTENs on ``CHANNEL`` in a daemon thread and wakes the
waiters of the conversation a notification names. A woken waiter polls: the row, not the
notification, says whether a message arrived. Polling stays the source of truth:

- while the listener is up, a waiter polls every ``poll_interval`` seconds anyway (a
  notification can be lost, e.g. when the server ends the connection);
- while it is down, waiters poll as without it (backing off from 1 ms to 100 ms), and it
  reconnects (backing off to 5 s); once up again it wakes every waiter, since
  notifications sent in between were lost.

The payload is not the conversation id but ``payload(id)``: 16 hex digits of
SHA-256("conversation-codec notify\\0" + id). Any role that may connect to the database may
LISTEN on any channel, with no privilege on the tables, and payloads may end up in logs;
the hash tells such a listener when some conversation changed, but not which one, unless it
can guess the id and hash its guess. A role that can read ``cc_conversations`` sees the ids
anyway. Rejected: a keyed hash (HMAC): writers and waiters share no key (each store has its
own, and keys rotate), so a waiter could miss its writers' notifications; a channel per
conversation: a LISTEN/UNLISTEN round trip per waiter, and channel names show in
``pg_listening_channels()``. 64 bits make a collision (a spurious poll) negligible.
"""

from __future__ import annotations

import hashlib
import threading

import psycopg

from ..base import Polling

__all__ = ["CHANNEL", "Listener", "Watch", "commit_and_notify", "payload"]

CHANNEL = "cc_changes"
APPLICATION_NAME = "conversation-codec listener"  # pg_stat_activity.application_name
RECONNECT_MAX = 5.0  # seconds between two attempts to reconnect, at most
_LISTEN_SLICE = 0.5  # seconds the listener waits before looking at its stop flag


def payload(conversation_id: str) -> str:
    """The notification payload of a conversation: a short hash of its id (see above)."""
    digest = hashlib.sha256(b"conversation-codec notify\0" + conversation_id.encode("utf-8"))
    return digest.hexdigest()[:16]


def commit_and_notify(conversation_id: str) -> str:
    """The COMMIT of a write transaction, notifying its waiters: two statements sent as
    one simple query (one round trip). The payload is hex digits: safe to inline."""
    return f"SELECT pg_notify('{CHANNEL}', '{payload(conversation_id)}'); COMMIT"


class Listener:
    """One process's listening connection to a database (``url``), in a daemon thread;
    ``watch(conversation_id)`` gives a waiter its ``Watch``."""

    def __init__(self, url: str, poll_interval: float, connect_timeout: float) -> None:
        self.poll_interval = poll_interval
        self._url, self._connect_timeout = url, connect_timeout
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._up = threading.Event()  # LISTENing now
        self._tried = threading.Event()  # the first attempt to connect is over
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cc-listener", daemon=True)
        self._thread.start()
        self._tried.wait(connect_timeout)

    @property
    def listening(self) -> bool:
        """Whether notifications arrive now (else waiters poll as without them)."""
        return self._up.is_set()

    def watch(self, conversation_id: str) -> Watch:
        return Watch(self, payload(conversation_id))

    def subscribe(self, key: str, event: threading.Event) -> None:
        with self._lock:
            self._waiters.setdefault(key, set()).add(event)

    def unsubscribe(self, key: str, event: threading.Event) -> None:
        with self._lock:
            events = self._waiters.get(key, set())
            events.discard(event)
            if not events:
                self._waiters.pop(key, None)

    def _wake(self, key: str | None) -> None:
        """Wake the waiters of ``key`` (None: all of them)."""
        with self._lock:
            if key is None:
                events = [e for es in self._waiters.values() for e in es]
            else:
                events = list(self._waiters.get(key, ()))
        for event in events:
            event.set()

    def _run(self) -> None:
        pause = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=max(1, round(self._connect_timeout)),
                    application_name=APPLICATION_NAME,
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._up.set()
                    self._tried.set()
                    self._wake(None)  # what was sent while down was lost: look again
                    pause = 0.1
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_LISTEN_SLICE):
                            self._wake(note.payload)
            except (psycopg.Error, OSError):
                pass  # the server went away, or is not there yet
            finally:
                if self._up.is_set():
                    self._up.clear()
                    self._wake(None)  # from now on they poll as without notifications
                self._tried.set()
            self._stop.wait(pause)
            pause = min(pause * 2, RECONNECT_MAX)

    def close(self) -> None:
        """Stop listening (within ``_LISTEN_SLICE`` seconds)."""
        self._stop.set()
        self._thread.join(_LISTEN_SLICE + self._connect_timeout + 1)


class Watch(Polling):
    """A waiter's pauses between polls on PostgreSQL: woken by a notification naming its
    conversation; ``poll_interval`` long while the listener is up, else backing off."""

    def __init__(self, listener: Listener, key: str) -> None:
        super().__init__()
        self._listener, self._key = listener, key
        self._event = threading.Event()
        listener.subscribe(key, self._event)

    def sleep(self, most: float | None) -> None:
        if self._listener.listening:
            pause = self._listener.poll_interval
            seconds = pause if most is None else min(pause, most)
        else:
            seconds = self.backoff(most)
        self._event.wait(seconds)
        self._event.clear()  # before the poll that follows: a later notification sets it

    def close(self) -> None:
        self._listener.unsubscribe(self._key, self._event)

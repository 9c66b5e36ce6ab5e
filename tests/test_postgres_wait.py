"""``codec.wait`` on PostgreSQL: LISTEN/NOTIFY wakes a waiter, polling stays the truth.

The appends come from another process. The backend's fallback poll interval is 30 s, so a
wait that returns within seconds was woken by the notification of the append's commit (a
functional check, not a performance one: without the notification it takes 30 s). The
listener's own connection is then killed on the server (``pg_terminate_backend``): the
waiters poll as without it, it reconnects, and ``wait`` still returns.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import _children
from _postgres import Cluster
from _writer import subprocess_env
from conversation_codec import ConversationStore
from conversation_codec.storage.postgres import PostgresBackend
from conversation_codec.storage.postgres.notify import APPLICATION_NAME, payload

from conftest import KEY

pytestmark = pytest.mark.postgres

POLL = 30.0  # seconds: the fallback poll interval, far longer than a woken wait takes
PROMPT = 20.0  # seconds: a wait woken by its notification returns well before POLL

_APPENDER = r"""
import sys
from conversation_codec import ConversationStore
url, cid, key, text = sys.argv[1:]
with ConversationStore(url, encryption_key=key).open(cid) as codec:
    print(codec.append({"role": "user", "content": text}), flush=True)
"""


def _append_in_another_process(url: str, cid: str, text: str) -> int:
    done = _children.run(
        [sys.executable, "-c", _APPENDER, url, cid, KEY, text],
        capture_output=True,
        text=True,
        env=subprocess_env(None),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def _until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class _Waiter(threading.Thread):
    """``codec.wait(after, 60)`` in a thread; ``result`` and ``seconds`` once it returned."""

    def __init__(self, store: ConversationStore, cid: str, after: int) -> None:
        super().__init__(daemon=True)
        self.codec = store.open(cid)
        self.after = after
        self.result: bool | None = None
        self.seconds = 0.0

    def run(self) -> None:
        t0 = time.monotonic()
        self.result = self.codec.wait(self.after, timeout=2 * POLL)
        self.seconds = time.monotonic() - t0


def _listener_pids(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND datname = current_database()",
            (APPLICATION_NAME,),
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def _advisory_locks(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_wait_is_woken_by_the_commit_of_another_process(postgres_cluster: Cluster) -> None:
    postgres_url = postgres_cluster.create_database()  # its own backend: poll_interval
    backend = PostgresBackend.shared(postgres_url, poll_interval=POLL)
    store = ConversationStore(postgres_url, encryption_key=KEY)
    try:
        with store.open("live") as codec:
            codec.append({"role": "user", "content": "first"})
        waiter = _Waiter(store, "live", after=0)
        waiter.start()
        _until(lambda: backend.listening, "the listener")
        assert _append_in_another_process(postgres_url, "live", "second") == 1
        waiter.join(2 * POLL + 10)
        assert waiter.result is True and waiter.seconds < PROMPT
        assert [m["content"] for m in waiter.codec.tail(5)] == ["first", "second"]
        assert len(_listener_pids(postgres_url)) == 1  # one per process, not per waiter
        waiter.codec.close()
    finally:
        backend.close()


def test_wait_outlives_the_listeners_connection_being_terminated(
    postgres_cluster: Cluster,
) -> None:
    postgres_url = postgres_cluster.create_database()
    backend = PostgresBackend.shared(postgres_url, poll_interval=POLL)
    store = ConversationStore(postgres_url, encryption_key=KEY)
    try:
        waiters = [_Waiter(store, "live", after=-1) for _ in range(2)]  # two, one listener
        for waiter in waiters:
            waiter.start()
        _until(lambda: backend.listening and len(_listener_pids(postgres_url)) == 1, "listener")
        (old,) = _listener_pids(postgres_url)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (old,))
        _until(lambda: _listener_pids(postgres_url) not in ([], [old]), "a reconnection")
        _until(lambda: backend.listening, "the listener to listen again")
        assert _append_in_another_process(postgres_url, "live", "after the kill") == 0
        for waiter in waiters:
            waiter.join(2 * POLL + 10)
            assert waiter.result is True and waiter.seconds < PROMPT
            assert waiter.codec.tail(1) == [{"role": "user", "content": "after the kill"}]
            waiter.codec.close()
    finally:
        backend.close()


def test_the_payload_does_not_name_the_conversation() -> None:
    assert payload("user-42") != payload("user-43")
    assert len(payload("user-42")) == 16 and "user" not in payload("user-42")


def test_only_a_watched_conversations_writes_notify(postgres_cluster: Cluster) -> None:
    """NOTIFY serialises the commits of every notifying transaction: an unwatched
    conversation's writers must not pay for it."""
    url = postgres_cluster.create_database()
    backend = PostgresBackend.shared(url, poll_interval=POLL)
    store = ConversationStore(url, encryption_key=KEY)
    try:
        with psycopg.connect(url, autocommit=True) as spy, store.open("loud") as loud:
            spy.execute("LISTEN cc_changes")
            loud.append({"role": "user", "content": "nobody waits"})
            assert list(spy.notifies(timeout=0.3)) == []
            with loud.storage.watch():  # as wait() does
                loud.append({"role": "user", "content": "somebody waits"})
                got = [n.payload for n in spy.notifies(timeout=10, stop_after=1)]
            assert got == [payload("loud")]
            _until(lambda: _advisory_locks(spy) == 0, "the listener to let go")
            loud.append({"role": "user", "content": "nobody again"})
            assert list(spy.notifies(timeout=0.3)) == []
    finally:
        backend.close()


def test_async_wait_is_woken_by_the_commit_of_another_process(postgres_cluster: Cluster) -> None:
    """``AsyncConversationCodec.wait`` is woken by the notification too, and its pauses hold
    no worker thread: the loop and the executor stay free while it waits."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from conversation_codec.aio import AsyncConversationStore

    postgres_url = postgres_cluster.create_database()
    backend = PostgresBackend.shared(postgres_url, poll_interval=POLL)

    async def run() -> tuple[bool, float, list[str]]:
        with ThreadPoolExecutor(max_workers=1) as pool:  # one thread: a sleeping pause would hog it
            store = AsyncConversationStore(postgres_url, encryption_key=KEY, executor=pool)
            codec = await store.open("live")
            await codec.append({"role": "user", "content": "first"})
            waiting = asyncio.ensure_future(codec.wait(0, timeout=2 * POLL))
            for _ in range(3000):  # the waiter's watch starts the listener
                if backend.listening:
                    break
                await asyncio.sleep(0.01)
            assert backend.listening, "the async waiter started no listener"
            await asyncio.sleep(0.2)  # the waiter subscribed and paused
            assert await codec.message_count() == 1  # the single worker is free meanwhile
            appended = asyncio.get_running_loop().run_in_executor(
                None, _append_in_another_process, postgres_url, "live", "second"
            )
            t0 = time.monotonic()
            result = await waiting
            seconds = time.monotonic() - t0
            assert await appended == 1
            texts = [m["content"] for m in await codec.tail(5)]
            await codec.close()
            return result, seconds, texts

    try:
        result, seconds, texts = asyncio.run(run())
        assert result is True and seconds < PROMPT
        assert texts == ["first", "second"]
    finally:
        backend.close()


def test_an_async_wait_cancelled_while_it_subscribes_lets_go(postgres_cluster: Cluster) -> None:
    """A coroutine cancelled while its subscription is being made in a worker thread: the
    subscription, made anyway, is closed (found by review: it stayed, and every write of
    that conversation kept paying for NOTIFY for the life of the process)."""
    import asyncio

    from conversation_codec.aio import AsyncConversationStore

    url = postgres_cluster.create_database()
    backend = PostgresBackend.shared(url, poll_interval=POLL)

    async def run() -> None:
        store = AsyncConversationStore(url, encryption_key=KEY)
        codec = await store.open("quiet")
        await codec.append({"role": "user", "content": "first"})
        waiting = asyncio.ensure_future(codec.wait(0, timeout=2 * POLL))
        await asyncio.sleep(0)  # the wait hands its subscription to a worker thread
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0.5)  # the subscription finishes in its thread, then closes
        await codec.close()

    try:
        asyncio.run(run())
        with psycopg.connect(url, autocommit=True) as spy:
            _until(lambda: _advisory_locks(spy) == 0, "the cancelled waiter's lock to go")
    finally:
        backend.close()

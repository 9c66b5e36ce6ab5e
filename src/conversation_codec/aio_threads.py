"""The thread plumbing of ``aio``: run a blocking call in a worker thread, drain a blocking
iterator in batches, and hand a worker's progress callbacks back to the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from itertools import islice
from typing import Any, TypeVar

from .storage.base import Polling

__all__ = [
    "Progress",
    "deferred",
    "on_loop",
    "run_in_thread",
    "stream_in_threads",
    "wait_until",
]

_T = TypeVar("_T")
_BATCH = 256  # items pulled from a sync iterator per worker hop
Progress = Callable[[int, int], None]


async def run_in_thread(
    executor: Executor | None, fn: Callable[..., _T], *args: Any, **kwargs: Any
) -> _T:
    """Run ``fn`` in a worker thread (with the caller's contextvars), as ``to_thread`` does."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await loop.run_in_executor(executor, call)


async def stream_in_threads(executor: Executor | None, items: Iterator[_T]) -> AsyncIterator[_T]:
    """Drain a blocking iterator from worker threads, ``_BATCH`` items per hop."""
    busy = threading.Lock()  # held by the worker while it pulls a batch

    def pull() -> list[_T]:
        with busy:
            return list(islice(items, _BATCH))

    try:
        while True:
            batch = await run_in_thread(executor, pull)
            for item in batch:
                yield item
            if len(batch) < _BATCH:
                return
    finally:
        # Generators of the codec and store hold no lock or file between items, so
        # closing one early does no I/O and may run on the loop — unless a cancelled
        # await left a worker still pulling a batch: closing a running generator raised
        # ValueError in the cancelled task. Then a worker closes it once the batch is done.
        close = getattr(items, "close", None)
        if close is not None:
            if busy.acquire(blocking=False):
                try:
                    close()
                finally:
                    busy.release()
            else:
                asyncio.get_running_loop().run_in_executor(executor, _after(busy, close))


def _after(busy: threading.Lock, close: Callable[[], object]) -> Callable[[], None]:
    """``close`` once ``busy`` is free (in a worker thread)."""

    def run() -> None:
        with busy:
            close()

    return run


def on_loop(progress: Progress | None) -> Progress | None:
    """A ``progress(done, total)`` a worker thread may call: each call is scheduled on the
    running event loop, in order (the caller's callback may touch asyncio objects). Calls
    still queued when the awaited call returns run before the coroutine resumes."""
    if progress is None:
        return None
    loop = asyncio.get_running_loop()

    def report(done: int, total: int) -> None:
        loop.call_soon_threadsafe(progress, done, total)

    return report


def deferred(make: Callable[[], Iterator[_T]]) -> Iterator[_T]:
    """Build the iterator only at the first ``next()`` (i.e. inside a worker thread)."""
    yield from make()


async def wait_until(
    watch: Callable[[], Awaitable[Polling]],
    arrived: Callable[[], Awaitable[bool]],
    timeout: float | None,
) -> bool:
    """``ConversationCodec.wait`` for a coroutine: True once ``arrived()`` (one look, in a
    thread) is, False when ``timeout`` seconds pass first. Between two looks it pauses
    on the event loop (``Polling.pause``: no thread held; on PostgreSQL a writer's
    commit wakes it). ``watch()`` subscribes (in a thread: it may block); a wait cancelled
    meanwhile still closes what it opened."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    watching = asyncio.ensure_future(watch())
    try:
        pauses = await asyncio.shield(watching)
    except asyncio.CancelledError:
        watching.add_done_callback(_close_watch)
        raise
    try:
        while not await arrived():
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            await pauses.pause(left)
    finally:
        pauses.close()
    return True


def _close_watch(done: asyncio.Future[Polling]) -> None:
    if not done.cancelled() and done.exception() is None:
        done.result().close()

"""Async wrappers: the codec and the store as coroutines that never block the event loop.

Every call that touches the disk (reads, writes, fsync, encryption, waiting for another
process's lock) runs in a worker thread; the event loop only awaits it. The codec is
thread-safe (a lock per instance plus the file lock), so concurrent coroutines on one
``AsyncConversationCodec`` are safe and run one at a time inside it.

Threads come from ``executor`` when given, else the loop's default executor. A call waiting
on a lock held by another process occupies its thread until the lock is free (or
``lock_timeout`` expires): give the codec its own executor if many calls may wait at once.
A cancelled call is not undone: the worker finishes the write it started.

Iteration and search stream in batches, one worker hop per batch of messages.

>>> import asyncio, tempfile, os
>>> async def main(path):
...     async with await AsyncConversationCodec.open(path) as codec:
...         await codec.append({"role": "user", "content": "hi"})
...         return [m async for m in codec]
>>> asyncio.run(main(os.path.join(tempfile.mkdtemp(), "chat.log")))
[{'role': 'user', 'content': 'hi'}]
"""

from __future__ import annotations

import builtins
import functools
import os
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Executor
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ._fsio import FileIO
from .aio_threads import (
    Progress,
    deferred,
    on_loop,
    run_in_thread,
    stream_in_threads,
    wait_until,
)
from .codec import ConversationCodec, LogInfo, Message, TimeInput, TimestampInput
from .crypto import KeyInput
from .index_cache import IndexCache
from .maintenance.compact import CompactionReport
from .maintenance.pack import PackReport
from .maintenance.transfer import ImportReport
from .options import CodecOptions, check_seconds
from .search import Hit
from .storage.base import LogStorage, StorageOpener, StoreBackend
from .storage.file.check import VerifyReport
from .store import ConversationInfo, ConversationStore, KeyFn, OnError

_T = TypeVar("_T")

__all__ = ["AsyncConversationCodec", "AsyncConversationStore", "run_in_thread"]


class AsyncConversationCodec:
    """A ``ConversationCodec`` whose every method is a coroutine run in a worker thread.

    Build one with ``await AsyncConversationCodec.open(path, ...)`` (opening reads the
    header, so it is I/O too), or wrap a codec you already have.
    """

    def __init__(self, codec: ConversationCodec, *, executor: Executor | None = None) -> None:
        self._codec = codec
        self._executor = executor

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        encryption_key: KeyInput | None = None,
        redact_fn: Callable[[Message], Message] | None = None,
        durability: str = "fsync",
        *,
        clock: Callable[[], int] | None = None,
        lock_timeout: float | None = None,
        executor: Executor | None = None,
        context: str | None = None,
        password: str | None = None,
        max_messages: int | None = None,
        attachments: str = "keep",
        io: FileIO | None = None,
        storage: StorageOpener | None = None,
        search_index: bool = False,
        index_cache: IndexCache | None = None,
    ) -> AsyncConversationCodec:
        """Open a log as ``ConversationCodec(...)`` with the same arguments would."""
        codec = await run_in_thread(
            executor,
            ConversationCodec,
            path,
            encryption_key,
            redact_fn,
            durability,
            clock=clock,
            lock_timeout=lock_timeout,
            context=context,
            password=password,
            max_messages=max_messages,
            attachments=attachments,
            storage=storage,
            search_index=search_index,
            index_cache=index_cache,
            **({} if io is None else {"io": io}),
        )
        return cls(codec, executor=executor)

    @property
    def sync(self) -> ConversationCodec:
        """The wrapped blocking codec (``sync.transaction()``, in one worker thread: an
        exception leaving it rolls back on PostgreSQL only; ``ConversationCodec``)."""
        return self._codec

    @property
    def path(self) -> Path:
        """The log file's path."""
        return self._codec.path

    @property
    def encrypted(self) -> bool:
        """True when this codec writes sealed records."""
        return self._codec.encrypted

    async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await run_in_thread(self._executor, fn, *args, **kwargs)

    async def load(self) -> list[Message] | None:
        """Return the whole history in order, or None when there is none."""
        return await self._call(self._codec.load)

    async def save(self, messages: Sequence[Message]) -> None:
        """Make the stored history equal ``messages`` (see ``ConversationCodec.save``)."""
        await self._call(self._codec.save, messages)

    async def append(self, message: Message, *, timestamp: TimestampInput | None = None) -> int:
        """Append one message; return its seq."""
        return await self._call(self._codec.append, message, timestamp=timestamp)

    async def extend(
        self, messages: Iterable[Message], *, timestamps: Sequence[TimestampInput] | None = None
    ) -> list[int]:
        """Append many messages under one lock and one sync; return their seqs."""
        batch = list(messages)  # a lazy iterable must not run in the worker thread
        return await self._call(self._codec.extend, batch, timestamps=timestamps)

    async def get(self, seq: int) -> Message:
        """Return one message by position (negative counts from the end)."""
        return await self._call(self._codec.get, seq)

    async def tail(self, n: int) -> list[Message]:
        """Return the last ``n`` messages, oldest first."""
        return await self._call(self._codec.tail, n)

    async def wait(self, after: int, timeout: float | None = None) -> bool:
        """Wait until a message newer than the one at seq ``after`` is stored (-1: any),
        as ``ConversationCodec.wait`` (under ``max_messages``: a window position); False on
        timeout. Holds no thread between polls: the event loop runs while it pauses, and on
        PostgreSQL a writer's commit wakes it."""
        watch = functools.partial(self._call, self._codec.storage.watch)
        arrived = functools.partial(self._call, self._codec._arrival(after))  # checks after
        check_seconds(timeout, "timeout")
        return await wait_until(watch, arrived, timeout)

    async def pop(self) -> Message | None:
        """Remove and return the last message (None when empty)."""
        return await self._call(self._codec.pop)

    async def clear(self) -> None:
        """Delete the whole history."""
        await self._call(self._codec.clear)

    async def message_count(self) -> int:
        """Return the number of messages, from the index."""
        return await self._call(self._codec.message_count)

    async def timestamp(self, seq: int) -> datetime:
        """Return the UTC time record ``seq`` was written."""
        return await self._call(self._codec.timestamp, seq)

    async def info(self) -> LogInfo:
        """Describe the log from its header and index alone."""
        return await self._call(self._codec.info)

    async def compact(
        self, *, encryption_key: KeyInput | None = None, progress: Progress | None = None
    ) -> CompactionReport:
        """Rewrite the log (see ``ConversationCodec.compact``); ``progress`` runs on the loop."""
        return await self._call(
            self._codec.compact, encryption_key=encryption_key, progress=on_loop(progress)
        )

    async def rotate_key(self, new_key: KeyInput) -> CompactionReport:
        """Re-encrypt the whole log under ``new_key``."""
        return await self._call(self._codec.rotate_key, new_key)

    async def replace(
        self, messages: Sequence[Message], *, timestamps: Sequence[TimestampInput] | None = None
    ) -> None:
        """Replace the whole history (see ``ConversationCodec.replace``)."""
        batch = list(messages)
        await self._call(self._codec.replace, batch, timestamps=timestamps)

    async def prune(self, before: TimeInput) -> int:
        """Permanently delete the messages written before ``before``; return how many."""
        return await self._call(self._codec.prune, before)

    async def change_password(self, old: str, new: str) -> CompactionReport:
        """Re-seal the log under a new password (see ``ConversationCodec.change_password``)."""
        return await self._call(self._codec.change_password, old, new)

    async def verify(self) -> VerifyReport:
        """Check every record and the index; report each problem (reads only)."""
        return await self._call(self._codec.verify)

    async def reindex(self, progress: Progress | None = None) -> int:
        """Build the keyword index again (see ``ConversationCodec.reindex``)."""
        return await self._call(self._codec.reindex, on_loop(progress))

    async def export(
        self,
        dst: str | os.PathLike[str],
        format: str = "jsonl",
        with_timestamps: bool = True,
        progress: Progress | None = None,
    ) -> int:
        """Write the history **unencrypted** to ``dst`` (see ``ConversationCodec.export``)."""
        return await self._call(
            self._codec.export,
            dst,
            format=format,
            with_timestamps=with_timestamps,
            progress=on_loop(progress),
        )

    async def import_(
        self,
        src: str | os.PathLike[str],
        merge: bool = False,
        *,
        replace: bool = False,
        legacy_key: KeyInput | None = None,
        password: str | None = None,
    ) -> ImportReport:
        """Add the messages of a JSONL/JSON/legacy file (see ``ConversationCodec.import_``)."""
        return await self._call(
            self._codec.import_,
            src,
            merge,
            replace=replace,
            legacy_key=legacy_key,
            password=password,
        )

    async def to_openai_messages(
        self, system_prompt: str | None = None, max_context: int | None = None
    ) -> list[Message]:
        """The history (or a window of it) as an OpenAI chat ``messages`` list."""
        return await self._call(self._codec.to_openai_messages, system_prompt, max_context)

    async def to_ollama_messages(
        self, system_prompt: str | None = None, max_context: int | None = None
    ) -> list[Message]:
        """The history (or a window of it) as an Ollama chat ``messages`` list."""
        return await self._call(self._codec.to_ollama_messages, system_prompt, max_context)

    async def to_anthropic_messages(
        self, max_context: int | None = None
    ) -> tuple[str | None, list[Message]]:
        """The history (or a window of it) as Anthropic's ``(system, messages)``."""
        return await self._call(self._codec.to_anthropic_messages, max_context)

    @property
    def options(self) -> CodecOptions:
        """The options the wrapped codec was opened with."""
        return self._codec.options

    @property
    def storage(self) -> LogStorage:
        """The wrapped codec's storage (read-only; see ``ConversationCodec.storage``)."""
        return self._codec.storage

    async def between(self, since: TimeInput, until: TimeInput) -> list[Hit]:
        """Return every message with ``since <= timestamp < until``."""
        return await self._call(self._codec.between, since, until)

    def search(
        self,
        query: str | None = None,
        *,
        since: TimeInput | None = None,
        until: TimeInput | None = None,
        role: str | Iterable[str] | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        regex: bool = False,
        case_sensitive: bool = False,
    ) -> AsyncIterator[Hit]:
        """Stream hits as ``ConversationCodec.search`` would (``async for hit in ...``).

        Arguments are checked now (bad ones raise here); records are read as you iterate.
        """
        hits = self._codec.search(
            query,
            since=since,
            until=until,
            role=role,
            limit=limit,
            newest_first=newest_first,
            regex=regex,
            case_sensitive=case_sensitive,
        )
        return stream_in_threads(self._executor, hits)

    def __aiter__(self) -> AsyncIterator[Message]:
        """Stream the messages in order (``async for m in codec``), in batches."""
        return stream_in_threads(self._executor, iter(self._codec))

    async def close(self) -> None:
        """Release file descriptors."""
        await self._call(self._codec.close)

    async def __aenter__(self) -> AsyncConversationCodec:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncConversationCodec {self._codec!r}>"


class AsyncConversationStore:
    """A ``ConversationStore`` whose every method is a coroutine run in a worker thread.

    Takes the arguments of ``ConversationStore`` (plus ``executor``), or wraps one with
    ``AsyncConversationStore.wrap(store)``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        encryption_key: KeyInput | None = None,
        key_fn: KeyFn | None = None,
        durability: str = "fsync",
        redact_fn: Callable[[Message], Message] | None = None,
        clock: Callable[[], int] | None = None,
        lock_timeout: float | None = None,
        password: str | None = None,
        max_messages: int | None = None,
        attachments: str = "keep",
        io: FileIO | None = None,
        executor: Executor | None = None,
        search_index: bool = False,
    ) -> None:
        self._store = ConversationStore(  # does no I/O
            root,
            encryption_key=encryption_key,
            key_fn=key_fn,
            durability=durability,
            redact_fn=redact_fn,
            clock=clock,
            lock_timeout=lock_timeout,
            password=password,
            max_messages=max_messages,
            attachments=attachments,
            io=io,
            search_index=search_index,
        )
        self._executor = executor

    @classmethod
    def wrap(
        cls, store: ConversationStore, *, executor: Executor | None = None
    ) -> AsyncConversationStore:
        """Wrap an existing store."""
        self = cls.__new__(cls)
        self._store, self._executor = store, executor
        return self

    @property
    def sync(self) -> ConversationStore:
        """The wrapped blocking store."""
        return self._store

    @property
    def root(self) -> Path | str:
        """The directory holding the logs (for a database: its URL, without a password)."""
        return self._store.root

    @property
    def backend(self) -> StoreBackend:
        """Where the conversations live (``FileStore``, or a database's backend)."""
        return self._store.backend

    async def open(self, conversation_id: str) -> AsyncConversationCodec:
        """Open a conversation's log; close it after (``async with``)."""
        codec = await run_in_thread(self._executor, self._store.open, conversation_id)
        return AsyncConversationCodec(codec, executor=self._executor)

    def path(self, conversation_id: str) -> Path:
        """Where a conversation's log lives (no I/O)."""
        return self._store.path(conversation_id)

    async def ids(self, *, on_error: OnError | None = None) -> builtins.list[str]:
        """Return the ids of every conversation with a log, sorted (``on_error``: as sync)."""
        return await run_in_thread(self._executor, self._store.ids, on_error=on_error)

    async def infos(
        self, *, keyless: bool = False, on_error: OnError | None = None
    ) -> builtins.list[ConversationInfo]:
        """Describe every conversation from headers and indexes alone."""
        store = self._store
        return await run_in_thread(self._executor, store.infos, keyless=keyless, on_error=on_error)

    async def list(self) -> builtins.list[ConversationInfo]:
        """Deprecated alias of :meth:`infos` (it shadowed the builtin); kept for one release."""
        warnings.warn(
            "AsyncConversationStore.list() is deprecated: call infos()",
            DeprecationWarning,
            stacklevel=2,
        )
        return await self.infos()

    async def delete(self, conversation_id: str) -> bool:
        """Delete every file of a conversation; return False when it had none."""
        return await run_in_thread(self._executor, self._store.delete, conversation_id)

    async def prune(
        self, older_than: datetime | timedelta, *, on_error: OnError | None = None
    ) -> builtins.list[str]:
        """Delete conversations whose last message is older than a cutoff; return their ids.

        ``on_error`` is called (in a worker thread) for each conversation skipped.
        """
        return await run_in_thread(self._executor, self._store.prune, older_than, on_error=on_error)

    async def pack(
        self,
        older_than: datetime | timedelta | None = None,
        *,
        max_bytes: int = 16 * 1024 * 1024,
        max_log_bytes: int = 64 * 1024,
    ) -> PackReport:
        """Move small, cold conversations into packs (``ConversationStore.pack``)."""
        return await run_in_thread(
            self._executor,
            self._store.pack,
            older_than,
            max_bytes=max_bytes,
            max_log_bytes=max_log_bytes,
        )

    def search(
        self,
        query: str | None = None,
        *,
        since: TimeInput | None = None,
        until: TimeInput | None = None,
        role: str | Iterable[str] | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        regex: bool = False,
        case_sensitive: bool = False,
        conversation_ids: Iterable[str] | None = None,
        on_error: OnError | None = None,
    ) -> AsyncIterator[tuple[str, Hit]]:
        """Stream ``(conversation_id, Hit)`` as ``ConversationStore.search`` would.

        The root is listed in the first worker hop, so bad arguments raise at the first
        ``async for`` step rather than here. ``on_error`` runs in a worker thread.
        """
        hits = deferred(
            lambda: self._store.search(
                query,
                since=since,
                until=until,
                role=role,
                limit=limit,
                newest_first=newest_first,
                regex=regex,
                case_sensitive=case_sensitive,
                conversation_ids=conversation_ids,
                on_error=on_error,
            )
        )
        return stream_in_threads(self._executor, hits)

"""Drop-in conversation memory for agent frameworks, backed by a ``ConversationStore``.

Each adapter lives in its own module and imports its framework, so importing this package
needs neither; install the extra you use:

* ``conversation_codec.integrations.openai_agents.CodecSession`` — an openai-agents
  ``Session`` (``pip install "conversation-codec[openai-agents]"``).
* ``conversation_codec.integrations.langchain.CodecChatMessageHistory`` — a LangChain
  ``BaseChatMessageHistory`` (``pip install "conversation-codec[langchain]"``).

Both keep one conversation per session id in a store: pass a ``ConversationStore`` (or an
``AsyncConversationStore``), or a directory, which becomes
``ConversationStore(directory, encryption_key=..., key_fn=..., durability=..., clock=...)``.

Both take the same session options:

* ``password=`` (a directory only): each log is sealed with a scrypt-derived key, as
  ``ConversationCodec(password=...)``; exclusive with ``encryption_key``/``key_fn``.
* ``max_messages=N``: reads see only the newest N items; ``prune()`` deletes the rest.
* ``max_age=timedelta``: reads hide items older than that (by their record time, against
  ``clock`` or the wall clock), and ``prune()`` deletes them: EncryptedSession's ``ttl``,
  with real deletion (``ConversationCodec.prune``: their ciphertext leaves the file).
* ``in_memory(...)``: a session for tests, like ``SQLiteSession(":memory:")``. Until the
  storage seam gives the store an in-memory backend, it keeps its log in a private
  temporary directory (0700, under an ephemeral random key) that ``close()`` removes.

A bad key or password raises ``InvalidKeyError`` at construction. ``close()`` is final, as
``SQLiteSession``'s: later calls raise ``SessionClosedError`` (a ``ClosedError`` and a
``RuntimeError``). A cancelled write is settled before the cancellation is re-raised, as the
SDK's sessions do: when the caller sees ``CancelledError`` the write has committed or failed,
never still running.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from ..aio import AsyncConversationStore, run_in_thread
from ..codec import ConversationCodec, Message
from ..crypto import KeyInput, generate_key
from ..errors import ClosedError, InvalidKeyError, KeyTypeError
from ..store import ConversationStore, KeyFn, encode_id

__all__ = [
    "LazyCodec",
    "SessionClosedError",
    "StoreOrPath",
    "scratch_store",
]  # the adapters use all four

_T = TypeVar("_T")
StoreOrPath = ConversationStore | AsyncConversationStore | str | os.PathLike[str]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class SessionClosedError(ClosedError, RuntimeError):
    """A session or chat history was used after ``close()``, which is final."""


def _resolve_store(store_or_path: StoreOrPath, **options: Any) -> ConversationStore:
    """Return the store an adapter reads; ``options`` build one from a directory."""
    if isinstance(store_or_path, AsyncConversationStore):
        store_or_path = store_or_path.sync
    if isinstance(store_or_path, ConversationStore):
        given = [name for name, value in options.items() if value is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} configure a store built from a directory; "
                "set them on the ConversationStore you passed instead"
            )
        return store_or_path
    if isinstance(store_or_path, (str, os.PathLike)):
        kwargs = {name: value for name, value in options.items() if value is not None}
        return ConversationStore(store_or_path, **kwargs)
    raise TypeError(
        "pass a ConversationStore, an AsyncConversationStore or a directory path, "
        f"not {type(store_or_path).__name__}"
    )


class _Retention:
    """What a session shows: the newest ``max_messages`` items not older than ``max_age``."""

    def __init__(
        self,
        max_messages: int | None,
        max_age: timedelta | None,
        clock: Callable[[], int] | None,
    ) -> None:
        if max_messages is not None and (
            not isinstance(max_messages, int) or isinstance(max_messages, bool) or max_messages < 1
        ):
            raise ValueError(f"max_messages must be a positive int or None, not {max_messages!r}")
        if max_age is not None and (not isinstance(max_age, timedelta) or max_age <= timedelta(0)):
            raise ValueError(f"max_age must be a positive timedelta or None, not {max_age!r}")
        self.max_messages = max_messages
        self.max_age = max_age
        self._clock = clock

    def cutoff(self) -> datetime | None:
        """The oldest record time still shown (None: no age limit)."""
        if self.max_age is None:
            return None
        now = (
            datetime.now(timezone.utc)
            if self._clock is None
            else _EPOCH + timedelta(microseconds=self._clock())
        )
        return now - self.max_age

    def read(self, codec: ConversationCodec, limit: int | None) -> list[Message]:
        """The last ``limit`` shown items, oldest first (only those records are read)."""
        counts = [n for n in (limit, self.max_messages) if n is not None]
        n = min(counts) if counts else None
        cutoff = self.cutoff()
        if cutoff is None:
            return (codec.load() or []) if n is None else codec.tail(n)
        hits = list(codec.search(None, since=cutoff, newest_first=True, limit=n))
        return [hit.message for hit in reversed(hits)]

    def pop(self, codec: ConversationCodec) -> Message | None:
        """Remove and return the newest item, unless it is hidden by ``max_age``."""
        cutoff = self.cutoff()
        if cutoff is not None and (not len(codec) or codec.timestamp(-1) < cutoff):
            return None
        return codec.pop()

    def prune(self, codec: ConversationCodec) -> int:
        """Delete the hidden items; return how many went. Items sharing the record time of
        the oldest one kept by ``max_messages`` stay on disk (still hidden)."""
        removed = 0
        cutoff = self.cutoff()
        if cutoff is not None:
            removed += codec.prune(cutoff)
        count = len(codec)
        if self.max_messages is not None and count > self.max_messages:
            removed += codec.prune(codec.timestamp(count - self.max_messages))
        return removed

    def describe(self) -> str:
        parts = [] if self.max_messages is None else [f"max_messages={self.max_messages}"]
        return " ".join(parts + ([] if self.max_age is None else [f"max_age={self.max_age}"]))


def _check_password(password: object) -> str:
    if not isinstance(password, str):
        raise KeyTypeError(f"password must be a non-empty str, not {type(password).__name__}")
    if not password:
        raise InvalidKeyError("password must be a non-empty str")
    return password


class LazyCodec:
    """One conversation's codec, opened on first use (opening is I/O) and kept open until
    ``close()``, which is final."""

    def __init__(
        self,
        store_or_path: StoreOrPath,
        conversation_id: str,
        executor: Executor | None,
        *,
        owner: str,
        encryption_key: KeyInput | None = None,
        key_fn: KeyFn | None = None,
        durability: str | None = None,
        password: str | None = None,
        max_messages: int | None = None,
        max_age: timedelta | None = None,
        clock: Callable[[], int] | None = None,
        scratch: str | None = None,
        **codec_options: Any,
    ) -> None:
        if password is not None:
            if encryption_key is not None or key_fn is not None:
                raise ValueError("pass password= or encryption_key=/key_fn=, not both")
            if not isinstance(store_or_path, (str, os.PathLike)):
                raise ValueError(
                    "password= configures a store built from a directory; for a store you "
                    "pass, give it to the store: ConversationStore(root, password=...)"
                )
            _check_password(password)
        store = _resolve_store(
            store_or_path,
            encryption_key=encryption_key,
            key_fn=key_fn,
            durability=durability,
            # With a store passed, clock= is only "now" for max_age (the store has its own).
            clock=clock if isinstance(store_or_path, (str, os.PathLike)) else None,
            password=password,
            **codec_options,  # redact_fn, lock_timeout, attachments, io: as ConversationCodec
        )
        encode_id(conversation_id)  # refuse a bad id now, on any backend
        self.retention = _Retention(max_messages, max_age, clock)
        self.store = store
        self.owner = owner
        self._id = conversation_id
        self._executor = executor
        self._password = password
        self._durability = durability or "fsync"
        self._clock = clock
        self._codec: ConversationCodec | None = None
        self._closed = False
        self._mutex = threading.Lock()
        self.scratch = scratch
        self._cleanup = (
            None if scratch is None else weakref.finalize(self, shutil.rmtree, scratch, True)
        )

    def _open(self) -> ConversationCodec:
        return self.store.open(self._id)  # a password, when given, is the store's

    def check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(f"{self.owner} is closed")

    def get(self) -> ConversationCodec:
        """Return the open codec, opening it first (thread-safe; call off the event loop)."""
        with self._mutex:
            self.check_open()
            if self._codec is None:
                self._codec = self._open()
            return self._codec

    async def run(self, fn: Callable[[ConversationCodec], _T]) -> _T:
        """Run ``fn(codec)`` in a worker thread."""
        self.check_open()
        return await run_in_thread(self._executor, lambda: fn(self.get()))

    async def write(self, fn: Callable[[ConversationCodec], _T]) -> _T:
        """Run a write in a worker thread; a cancelled caller waits for its outcome first."""
        return await _settled(self.run(fn))

    def close(self) -> None:
        """Close the codec (and remove an in-memory session's directory); final."""
        with self._mutex:
            self._closed = True
            if self._codec is not None:
                self._codec.close()
                self._codec = None
        if self._cleanup is not None:
            self._cleanup()

    def describe(self) -> str:
        where = "in memory" if self.scratch is not None else f"root={str(self.store.root)!r}"
        extra = [self.retention.describe(), "password" if self._password else ""]
        extra.append("closed" if self._closed else "")
        return " ".join([where, *(e for e in extra if e)])


def scratch_store(clock: Callable[[], int] | None) -> tuple[str, ConversationStore]:
    """A private temporary directory and a store in it under an ephemeral random key."""
    scratch = tempfile.mkdtemp(prefix="conversation-codec-memory-")  # 0700
    key = generate_key()
    return scratch, ConversationStore(scratch, encryption_key=key, durability="flush", clock=clock)


async def _settled(awaitable: Awaitable[_T]) -> _T:
    """Await a write to its end even when the caller is cancelled meanwhile, then re-raise
    that cancellation: ``CancelledError`` never arrives while the write may still land."""
    task = asyncio.ensure_future(awaitable)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # retrieved: asyncio logs no "exception was never retrieved"
        raise cancelled
    return task.result()

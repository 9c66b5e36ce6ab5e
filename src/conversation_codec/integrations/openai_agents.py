"""An openai-agents ``Session`` that keeps each session's items in a conversation-codec log.

``CodecSession`` implements the SDK's ``Session`` protocol (``isinstance(s,
agents.memory.Session)`` holds), so it is a drop-in for ``SQLiteSession``::

    store = ConversationStore("histories/", key_fn=lambda user: keys[user])
    session = CodecSession("user-42", store)
    result = await Runner.run(agent, "Where is my order?", session=session)

Each input item (a JSON dict: a message, a function call, its output, ...) is one record, so
``add_items`` is one ``extend`` (one lock, one fsync), ``get_items(limit)`` reads only the
last ``limit`` records, and ``pop_item`` is an O(1) truncation. Every call runs in a worker
thread; the event loop never waits on the disk, a lock or the crypto.

Items are stored as given: a value that does not round-trip through JSON exactly raises
``NotSerializableError`` rather than being silently changed.

As the SDK's own sessions: ``session_settings`` may be a ``SessionSettings`` or a dict,
normalized by the SDK's ``coerce_session_settings`` (an unknown key raises ``TypeError``);
``close()`` is final; a cancelled ``add_items`` (or ``pop_item``, ``clear_session``) waits
for its write to settle before re-raising. Any non-empty string is a session id: one whose
encoded file name would be too long maps to a hashed file name (``encode_id``), bound to it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

try:
    from agents.memory import SessionSettings
except ModuleNotFoundError as exc:  # tests: test_integrations.py, in a process without it
    raise ModuleNotFoundError(
        f"{exc}: the openai-agents integration needs "
        'pip install "conversation-codec[openai-agents]"',
        name=exc.name,
    ) from None

from .._fsio import FileIO
from ..codec import Message
from ..crypto import KeyInput
from ..store import KeyFn
from . import LazyCodec, StoreOrPath, scratch_store

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

try:
    from agents.memory.session_settings import coerce_session_settings as _coerce
except ImportError:  # pragma: no cover - openai-agents before coerce_session_settings

    def _coerce(value: SessionSettings | dict[str, Any]) -> SessionSettings:
        if isinstance(value, SessionSettings):
            return value
        if not isinstance(value, dict):
            raise TypeError(
                f"session must be a SessionSettings instance or a dict, got {type(value).__name__}"
            )
        unknown = sorted(str(k) for k in value if k not in SessionSettings.__dataclass_fields__)
        if unknown:
            raise TypeError(f"Unknown session settings: {', '.join(unknown)}")
        return SessionSettings(**value)


__all__ = ["CodecSession"]


class CodecSession:
    """Conversation memory for the openai-agents ``Runner``, one log per ``session_id``.

    :param session_id: the conversation id in the store (any non-empty string: ``""``
        raises ``ValueError``; see ``encode_id``).
    :param store_or_path: a ``ConversationStore`` / ``AsyncConversationStore``, or a
        directory to build one in with ``encryption_key`` or ``password``, ``key_fn``,
        ``durability`` and ``clock``.
    :param session_settings: ``SessionSettings(limit=N)`` or ``{"limit": N}`` makes
        ``get_items()`` return the last N items, as the SDK's own sessions do.
    :param password: seal the log with a scrypt-derived key (a directory only).
    :param max_messages: ``get_items`` sees only the newest N items; ``prune()`` deletes
        the older ones.
    :param max_age: a ``timedelta``: older items are hidden, and ``prune()`` deletes them.
    :param clock: microseconds since the epoch: "now" for ``max_age`` (and, with a
        directory, the time new items are stamped with); default: the wall clock.
    :param executor: threads for the blocking calls; default: the loop's executor.
    :raises InvalidKeyError: ``encryption_key`` or ``password`` is unusable.
    :raises TypeError: ``session_settings`` has an unknown key.
    """

    session_id: str
    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        store_or_path: StoreOrPath,
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        encryption_key: KeyInput | None = None,
        password: str | None = None,
        key_fn: KeyFn | None = None,
        durability: str | None = None,
        max_messages: int | None = None,
        max_age: timedelta | None = None,
        clock: Callable[[], int] | None = None,
        redact_fn: Callable[[Message], Message] | None = None,
        lock_timeout: float | None = None,
        attachments: str | None = None,
        io: FileIO | None = None,
        executor: Executor | None = None,
        search_index: bool | None = None,
        _scratch: str | None = None,
    ) -> None:
        self.session_settings = (
            _coerce(session_settings) if session_settings is not None else SessionSettings()
        )
        if (self.session_settings.limit or 0) < 0:  # now, not at the first get_items()
            raise ValueError("limit must be >= 0 or None")
        self._codec = LazyCodec(
            store_or_path,
            session_id,
            executor,
            owner="CodecSession",
            encryption_key=encryption_key,
            key_fn=key_fn,
            durability=durability,
            password=password,
            max_messages=max_messages,
            max_age=max_age,
            clock=clock,
            scratch=_scratch,
            redact_fn=redact_fn,
            lock_timeout=lock_timeout,
            attachments=attachments,
            io=io,
            search_index=search_index,
        )
        self.session_id = session_id

    @classmethod
    def in_memory(
        cls,
        session_id: str = "memory",
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        max_messages: int | None = None,
        max_age: timedelta | None = None,
        clock: Callable[[], int] | None = None,
    ) -> CodecSession:
        """A session for tests, like ``SQLiteSession(session_id)`` (``":memory:"``).

        Its log lives in a private temporary directory (0700) under a random key that
        exists only in this process; ``close()`` (or garbage collection) removes it.
        """
        scratch, store = scratch_store(clock)
        return cls(
            session_id,
            store,
            session_settings=session_settings,
            max_messages=max_messages,
            max_age=max_age,
            clock=clock,
            _scratch=scratch,
        )

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """Return the session's items, oldest first; with ``limit``, only the last ``limit``.

        Without ``limit`` the ``session_settings.limit`` applies (None: every item).
        ``max_messages`` and ``max_age`` hide items in both cases.
        """
        if limit is None and self.session_settings is not None:
            limit = _coerce(self.session_settings).limit
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0 or None")
        retention = self._codec.retention
        items = await self._codec.run(lambda codec: retention.read(codec, limit))
        return cast("list[TResponseInputItem]", items)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append items as records, all under one lock with one fsync."""
        self._codec.check_open()
        if not isinstance(items, (list, tuple)):  # a dict or str would iterate its keys/chars
            raise TypeError(f"items must be a list of items, not {type(items).__name__}")
        batch = cast("list[dict[str, Any]]", list(items))
        if batch:
            await self._codec.write(lambda codec: codec.extend(batch))

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the most recent item (None when empty); O(1)."""
        retention = self._codec.retention
        item = await self._codec.write(retention.pop)
        return cast("TResponseInputItem | None", item)

    async def clear_session(self) -> None:
        """Delete every item of this session (its files are removed)."""
        await self._codec.write(lambda codec: codec.clear())

    async def prune(self) -> int:
        """Delete the items ``max_age`` and ``max_messages`` hide; return how many went."""
        return await self._codec.write(self._codec.retention.prune)

    def close(self) -> None:
        """Release the log's file descriptors. Final: later calls raise
        ``SessionClosedError`` (a ``RuntimeError``, as ``SQLiteSession``'s)."""
        self._codec.close()

    def __repr__(self) -> str:
        settings = _coerce(self.session_settings or SessionSettings())
        limit = "" if settings.limit is None else f" limit={settings.limit}"
        return f"<CodecSession {self.session_id!r} {self._codec.describe()}{limit}>"

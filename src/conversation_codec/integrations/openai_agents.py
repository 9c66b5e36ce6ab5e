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
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, cast

from agents.memory import SessionSettings

from ..crypto import KeyInput
from ..store import KeyFn
from . import StoreOrPath, _LazyCodec, _resolve_store

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

__all__ = ["CodecSession"]


class CodecSession:
    """Conversation memory for the openai-agents ``Runner``, one log per ``session_id``.

    :param session_id: the conversation id in the store (any string; see ``encode_id``).
    :param store_or_path: a ``ConversationStore`` / ``AsyncConversationStore``, or a
        directory to build one in with ``encryption_key``, ``key_fn`` and ``durability``.
    :param session_settings: ``SessionSettings(limit=N)`` makes ``get_items()`` return
        the last N items, as the SDK's own sessions do.
    :param executor: threads for the blocking calls; default: the loop's executor.
    """

    session_id: str
    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        store_or_path: StoreOrPath,
        *,
        session_settings: SessionSettings | None = None,
        encryption_key: KeyInput | None = None,
        key_fn: KeyFn | None = None,
        durability: str | None = None,
        executor: Executor | None = None,
    ) -> None:
        store = _resolve_store(
            store_or_path, encryption_key=encryption_key, key_fn=key_fn, durability=durability
        )
        self.session_id = session_id
        self.session_settings = (
            session_settings if session_settings is not None else SessionSettings()
        )
        self._codec = _LazyCodec(store, session_id, executor)

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """Return the session's items, oldest first; with ``limit``, only the last ``limit``.

        Without ``limit`` the ``session_settings.limit`` applies (None: every item).
        """
        if limit is None and self.session_settings is not None:
            limit = self.session_settings.limit
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0 or None")
        if limit is None:
            items = await self._codec.run(lambda codec: codec.load() or [])
        else:
            n = limit
            items = await self._codec.run(lambda codec: codec.tail(n))
        return cast("list[TResponseInputItem]", items)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append items as records, all under one lock with one fsync."""
        batch = cast("list[dict[str, Any]]", list(items))
        if batch:
            await self._codec.run(lambda codec: codec.extend(batch))

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the most recent item (None when empty); O(1)."""
        item = await self._codec.run(lambda codec: codec.pop())
        return cast("TResponseInputItem | None", item)

    async def clear_session(self) -> None:
        """Delete every item of this session (its files are removed)."""
        await self._codec.run(lambda codec: codec.clear())

    def close(self) -> None:
        """Release the log's file descriptors; the session reopens it when used again."""
        self._codec.close()

    def __repr__(self) -> str:
        return f"<CodecSession {self.session_id!r}>"

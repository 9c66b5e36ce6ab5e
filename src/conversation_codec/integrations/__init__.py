"""Drop-in conversation memory for agent frameworks, backed by a ``ConversationStore``.

Each adapter lives in its own module and imports its framework, so importing this package
needs neither; install the extra you use:

* ``conversation_codec.integrations.openai_agents.CodecSession`` — an openai-agents
  ``Session`` (``pip install "conversation-codec[openai-agents]"``).
* ``conversation_codec.integrations.langchain.CodecChatMessageHistory`` — a LangChain
  ``BaseChatMessageHistory`` (``pip install "conversation-codec[langchain]"``).

Both keep one conversation per session id in a store: pass a ``ConversationStore`` (or an
``AsyncConversationStore``), or a directory, which becomes
``ConversationStore(directory, encryption_key=..., key_fn=..., durability=...)``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from ..aio import AsyncConversationStore, _run
from ..codec import ConversationCodec
from ..store import ConversationStore

__all__: list[str] = []

_T = TypeVar("_T")
StoreOrPath = ConversationStore | AsyncConversationStore | str | os.PathLike[str]


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


class _LazyCodec:
    """One conversation's codec, opened on first use (opening is I/O) and kept open."""

    def __init__(
        self, store: ConversationStore, conversation_id: str, executor: Executor | None
    ) -> None:
        store.path(conversation_id)  # refuse a bad id now
        self._store = store
        self._id = conversation_id
        self._executor = executor
        self._codec: ConversationCodec | None = None
        self._mutex = threading.Lock()

    def get(self) -> ConversationCodec:
        """Return the open codec, opening it first (thread-safe; call off the event loop)."""
        with self._mutex:
            if self._codec is None:
                self._codec = self._store.open(self._id)
            return self._codec

    async def run(self, fn: Callable[[ConversationCodec], _T]) -> _T:
        """Run ``fn(codec)`` in a worker thread."""
        return await _run(self._executor, lambda: fn(self.get()))

    def close(self) -> None:
        """Close the codec; the next call opens it again."""
        with self._mutex:
            if self._codec is not None:
                self._codec.close()
                self._codec = None

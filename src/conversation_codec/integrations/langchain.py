"""A LangChain ``BaseChatMessageHistory`` backed by a conversation-codec store.

``CodecChatMessageHistory(session_id, store)`` keeps one conversation per session id::

    RunnableWithMessageHistory(
        chain, lambda session_id: CodecChatMessageHistory(session_id, store)
    )

How a message is stored, and why: one record per message holding the message's own fields
(``message.model_dump()``, which carries its ``type``) plus an OpenAI-style ``role``
(``human`` -> ``user``, ``ai`` -> ``assistant``, ...). That is lossless — tool calls, ids,
``additional_kwargs`` (``None`` values included), ``response_metadata``, usage, artifacts
and chunk classes come back equal — and, unlike ``message_to_dict``'s nested
``{"type", "data"}`` (the rejected alternative), it leaves ``role`` and ``content`` at the
top level, where ``search()`` and the CLI look. Records without a LangChain ``type`` (plain
OpenAI-style messages, or LangChain histories converted by ``migrate``) are read through
``langchain_core.messages.convert_to_messages``; fields ``migrate`` kept under its
``"langchain"`` key are restored.

``add_messages`` writes the whole batch as one ``extend`` (one lock, one fsync). The async
variants run in a worker thread and never block the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage, convert_to_messages, messages_from_dict

from ..codec import Message
from ..crypto import KeyInput
from ..store import KeyFn
from . import StoreOrPath, _LazyCodec, _resolve_store

__all__ = ["CodecChatMessageHistory", "message_from_record", "message_to_record"]

# LangChain message type -> OpenAI role; "chat" messages carry their own role.
_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "function",
    "remove": "remove",
}
_CHUNKS = {
    "HumanMessageChunk": "human",
    "AIMessageChunk": "ai",
    "SystemMessageChunk": "system",
    "ToolMessageChunk": "tool",
    "FunctionMessageChunk": "function",
    "ChatMessageChunk": "chat",
}


def message_to_record(message: BaseMessage) -> Message:
    """Return the stored form of a LangChain message (see the module docstring).

    >>> from langchain_core.messages import HumanMessage
    >>> message_to_record(HumanMessage("hi"))["role"]
    'user'
    """
    fields = message.model_dump()
    kind = _CHUNKS.get(message.type, message.type)
    if kind == "chat":
        return fields  # ChatMessage's own "role" field is the role
    return {"role": _ROLES.get(kind, kind), **fields}


def message_from_record(record: Message) -> BaseMessage:
    """Rebuild the LangChain message from a stored record (the inverse of ``message_to_record``).

    >>> from langchain_core.messages import AIMessage
    >>> m = AIMessage("", tool_calls=[{"name": "f", "args": {"x": 1}, "id": "c1"}])
    >>> message_from_record(message_to_record(m)) == m
    True
    """
    kind = record.get("type")
    if isinstance(kind, str) and _CHUNKS.get(kind, kind) in (*_ROLES, "chat"):
        data = dict(record)
        if _CHUNKS.get(kind, kind) != "chat":
            data.pop("role", None)
        return messages_from_dict([{"type": kind, "data": data}])[0]
    return _from_openai(record)


def _from_openai(record: Message) -> BaseMessage:
    data = dict(record)
    kept = data.pop("langchain", None)  # what ``migrate`` kept of a LangChain history
    message = convert_to_messages([data])[0]
    if isinstance(kept, dict) and kept:
        update = dict(kept)
        if isinstance(update.get("additional_kwargs"), dict):
            update["additional_kwargs"] = {
                **message.additional_kwargs,
                **update["additional_kwargs"],
            }
        message = type(message).model_validate({**message.model_dump(), **update})
    return message


class CodecChatMessageHistory(BaseChatMessageHistory):
    """LangChain chat history: one conversation-codec log per ``session_id``.

    :param session_id: the conversation id in the store (any string; see ``encode_id``).
    :param store_or_path: a ``ConversationStore`` / ``AsyncConversationStore``, or a
        directory to build one in with ``encryption_key``, ``key_fn`` and ``durability``.
    :param executor: threads for the async variants; default: the loop's executor.
    """

    def __init__(
        self,
        session_id: str,
        store_or_path: StoreOrPath,
        *,
        encryption_key: KeyInput | None = None,
        key_fn: KeyFn | None = None,
        durability: str | None = None,
        executor: Executor | None = None,
    ) -> None:
        store = _resolve_store(
            store_or_path, encryption_key=encryption_key, key_fn=key_fn, durability=durability
        )
        self.session_id = session_id
        self._codec = _LazyCodec(store, session_id, executor)

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]  # base: plain attribute
        """Every message of the session, oldest first."""
        return [message_from_record(r) for r in self._codec.get().load() or []]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Store ``messages`` as one batch: one lock, one write, one fsync."""
        records = [message_to_record(m) for m in messages]
        if records:
            self._codec.get().extend(records)

    def clear(self) -> None:
        """Delete the session's history (its files are removed)."""
        self._codec.get().clear()

    async def aget_messages(self) -> list[BaseMessage]:
        """Async ``messages``, read in a worker thread."""
        records: list[Any] = await self._codec.run(lambda codec: codec.load() or [])
        return [message_from_record(r) for r in records]

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Async ``add_messages``, written in a worker thread."""
        records = [message_to_record(m) for m in messages]
        if records:
            await self._codec.run(lambda codec: codec.extend(records))

    async def aclear(self) -> None:
        """Async ``clear``, in a worker thread."""
        await self._codec.run(lambda codec: codec.clear())

    def close(self) -> None:
        """Release the log's file descriptors; the history reopens it when used again."""
        self._codec.close()

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
variants run in a worker thread and never block the event loop. ``password=``,
``max_messages=``, ``max_age=``, ``in_memory()`` and the final ``close()`` work as for
``CodecSession`` (see ``conversation_codec.integrations``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from datetime import timedelta
from typing import Any

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import BaseMessage, convert_to_messages, messages_from_dict
except ModuleNotFoundError as exc:  # tests: test_integrations.py, in a process without it
    raise ModuleNotFoundError(
        f'{exc}: the LangChain integration needs pip install "conversation-codec[langchain]"',
        name=exc.name,
    ) from None

from .._fsio import FileIO
from ..chat_formats import LANGCHAIN_CHUNK_TYPES
from ..codec import Message
from ..crypto import KeyInput
from ..errors import ConversionError
from ..store import KeyFn
from . import LazyCodec, StoreOrPath, scratch_store

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


def message_to_record(message: BaseMessage) -> Message:
    """Return the stored form of a LangChain message (see the module docstring).

    >>> from langchain_core.messages import HumanMessage
    >>> message_to_record(HumanMessage("hi"))["role"]
    'user'
    """
    fields = message.model_dump()
    kind = LANGCHAIN_CHUNK_TYPES.get(message.type, message.type)
    if kind == "chat":
        return fields  # ChatMessage's own "role" field is the role
    return {"role": _ROLES.get(kind, kind), **fields}


def message_from_record(record: Message) -> BaseMessage:
    """Rebuild the LangChain message from a stored record (the inverse of ``message_to_record``).

    >>> from langchain_core.messages import AIMessage
    >>> m = AIMessage("", tool_calls=[{"name": "f", "args": {"x": 1}, "id": "c1"}])
    >>> message_from_record(message_to_record(m)) == m
    True

    :raises ConversionError: LangChain cannot read the record (its message never shows it).
    """
    try:
        return _from_record(record)
    except Exception:  # noqa: S110 (LangChain's error shows the record: not chained)
        pass
    # Raised outside the handler, so that not even __context__ holds LangChain's error.
    raise ConversionError(
        "a stored message is not one LangChain can read: it needs a LangChain 'type' or an "
        "OpenAI-style 'role' with 'content' (and a tool message its 'tool_call_id'); was it "
        "written by another integration under the same id?"
    )


def _from_record(record: Message) -> BaseMessage:
    kind = record.get("type")
    if isinstance(kind, str) and LANGCHAIN_CHUNK_TYPES.get(kind, kind) in (*_ROLES, "chat"):
        data = dict(record)
        if LANGCHAIN_CHUNK_TYPES.get(kind, kind) != "chat":
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

    :param session_id: the conversation id in the store (any non-empty string: ``""``
        raises ``ValueError``; see ``encode_id``).
    :param store_or_path: a ``ConversationStore`` / ``AsyncConversationStore``, or a
        directory to build one in with ``encryption_key`` or ``password``, ``key_fn``,
        ``durability`` and ``clock``.
    :param password: seal the log with a scrypt-derived key (a directory only).
    :param max_messages: ``messages`` holds only the newest N; ``prune()`` deletes the rest.
    :param max_age: a ``timedelta``: older messages are hidden, and ``prune()`` deletes them.
    :param clock: microseconds since the epoch: "now" for ``max_age`` (and, with a
        directory, the time new messages are stamped with); default: the wall clock.
    :param executor: threads for the async variants; default: the loop's executor.
    :raises InvalidKeyError: ``encryption_key`` or ``password`` is unusable.
    """

    def __init__(
        self,
        session_id: str,
        store_or_path: StoreOrPath,
        *,
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
        self._codec = LazyCodec(
            store_or_path,
            session_id,
            executor,
            owner="CodecChatMessageHistory",
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
        max_messages: int | None = None,
        max_age: timedelta | None = None,
        clock: Callable[[], int] | None = None,
    ) -> CodecChatMessageHistory:
        """A history for tests: its log lives in a private temporary directory (0700) under
        a random key that exists only in this process; ``close()`` removes it."""
        scratch, store = scratch_store(clock)
        return cls(
            session_id,
            store,
            max_messages=max_messages,
            max_age=max_age,
            clock=clock,
            _scratch=scratch,
        )

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]  # base: plain attribute
        """Every message of the session (that ``max_messages``/``max_age`` show), oldest first."""
        records = self._codec.retention.read(self._codec.get(), None)
        return [message_from_record(r) for r in records]

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
        retention = self._codec.retention
        records: list[Any] = await self._codec.run(lambda codec: retention.read(codec, None))
        return [message_from_record(r) for r in records]

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Async ``add_messages``, written in a worker thread."""
        records = [message_to_record(m) for m in messages]
        if records:
            await self._codec.write(lambda codec: codec.extend(records))

    async def aclear(self) -> None:
        """Async ``clear``, in a worker thread."""
        await self._codec.write(lambda codec: codec.clear())

    def prune(self) -> int:
        """Delete the messages ``max_age`` and ``max_messages`` hide; return how many went."""
        return self._codec.retention.prune(self._codec.get())

    async def aprune(self) -> int:
        """Async ``prune``, in a worker thread."""
        return await self._codec.write(self._codec.retention.prune)

    def close(self) -> None:
        """Release the log's file descriptors. Final: later calls raise
        ``SessionClosedError``."""
        self._codec.close()

    def __repr__(self) -> str:
        return f"<CodecChatMessageHistory {self.session_id!r} {self._codec.describe()}>"

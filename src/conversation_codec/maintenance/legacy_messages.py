"""What ``migrate`` and ``import_`` require of a legacy file's objects, beyond JSON.

* :func:`looks_like_message`: whether an object is a chat message of a layout this library
  knows (``chat_formats``), so that an application's own JSON files (settings, session
  lists) are not taken for histories;
* :func:`clamp_times`: record times that never decrease in the file's order, which is kept
  (a log's times do not decrease, and a conversation's order is its meaning).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..chat_formats import LANGCHAIN_CHUNK_TYPES

__all__ = ["MESSAGE_KEYS", "clamp_note", "clamp_times", "looks_like_message"]

#: Keys that make a JSON object a chat message in the layouts this library knows
#: (``chat_formats``: OpenAI chat completions, Anthropic, Ollama, and LangChain records).
MESSAGE_KEYS = frozenset(("role", "content", "tool_calls", "tool_call_id", "function_call"))
_LANGCHAIN_TYPES = frozenset(
    ("human", "ai", "system", "tool", "function", "chat", *LANGCHAIN_CHUNK_TYPES)
)


def looks_like_message(value: dict[str, Any]) -> bool:
    """Whether a JSON object looks like a chat message: it has a key of :data:`MESSAGE_KEYS`,
    or a LangChain message ``type`` (``human``, ``ai``, ..., or a ``{"type", "data"}`` record).

    >>> looks_like_message({"role": "user", "content": "hi"}), looks_like_message({"model": "x"})
    (True, False)
    """
    if not MESSAGE_KEYS.isdisjoint(value):
        return True
    kind = value.get("type")
    return isinstance(kind, str) and (kind in _LANGCHAIN_TYPES or "data" in value)


def clamp_times(stamps: Sequence[int | None]) -> tuple[list[int | None], int]:
    """Raise each time earlier than a time before it to the latest such one, so that
    times never decrease in file order (a log's record times do not); return the times
    and how many were raised. ``None`` (untimed) is left as it is.

    >>> clamp_times([5, 3, None, 4, 6])
    ([5, 5, None, 5, 6], 2)
    """
    out: list[int | None] = []
    latest: int | None = None
    moved = 0
    for ts in stamps:
        if ts is not None and latest is not None and ts < latest:
            ts, moved = latest, moved + 1
        latest = latest if ts is None else ts
        out.append(ts)
    return out, moved


def clamp_note(moved: int) -> str:
    """The report's note for ``moved`` times raised by :func:`clamp_times`."""
    return (
        f"{moved} timestamp(s) earlier than the message before (clocks out of step) stored "
        "as that message's, so that the conversation keeps the file's order"
    )

"""Convert LangChain ``FileChatMessageHistory`` files (``LANGCHAIN_JSON``: the output of
``messages_to_dict``) into OpenAI-style messages, for ``legacy``.
"""

from __future__ import annotations

import json
from typing import Any

from ..chat_formats import LANGCHAIN_CHUNK_TYPES
from ..errors import FormatError

__all__ = ["from_langchain", "is_langchain"]

# LangChain message "type" -> OpenAI role; "chat" carries its own role.
_LANGCHAIN_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "function",
    "chat": "",
}


def is_langchain(array: list[Any]) -> bool:
    """Judge by the first element: messages_to_dict emits exactly {"type", "data"}."""
    first = array[0] if array else None
    return isinstance(first, dict) and first.keys() == {"type", "data"}


def from_langchain(item: Any, index: int, where: str) -> dict[str, Any]:
    """Map one messages_to_dict entry to an OpenAI-style message.

    Mapped: type -> role, content, name, tool_call_id, tool_calls (OpenAI shape, args as
    a JSON string, as langchain_openai sends them), additional_kwargs' function_call and
    __openai_role__. Everything else that is not a default (id, response_metadata,
    usage_metadata, invalid_tool_calls, leftover additional_kwargs, ...) is kept under
    one ``"langchain"`` key rather than dropped or mixed into the OpenAI keys.
    """
    item = item if isinstance(item, dict) else {}
    kind = item.get("type") if isinstance(item.get("type"), str) else ""
    kind = LANGCHAIN_CHUNK_TYPES.get(kind, kind)
    data = dict(item["data"]) if isinstance(item.get("data"), dict) else {}
    role = data.pop("role", None) if kind == "chat" else _LANGCHAIN_ROLES.get(kind)
    if not isinstance(role, str) or "content" not in data:
        raise FormatError(
            f"{where}: element {index} is not a LangChain message with content and a known "
            f"type ({', '.join(_LANGCHAIN_ROLES)}); remove it and retry"
        )
    data.pop("type", None)
    kwargs = data.pop("additional_kwargs", None)
    if kwargs and not isinstance(kwargs, dict):
        data["additional_kwargs"] = kwargs  # not LangChain's shape: keep it as it is
    extras = {k: v for k, v in kwargs.items() if v is not None} if isinstance(kwargs, dict) else {}
    if kind == "system" and extras.get("__openai_role__") == "developer":
        role = extras.pop("__openai_role__")
    message: dict[str, Any] = {"role": role, "content": data.pop("content")}
    for key in ("name", "tool_call_id"):
        if data.get(key) is not None:
            message[key] = data.pop(key)
    calls = data.pop("tool_calls", None) if kind == "ai" else None
    if calls and not isinstance(calls, list):
        raise FormatError(f"{where}: element {index} has tool_calls that are not a list")
    raw_calls = extras.pop("tool_calls", None)  # the raw OpenAI form; a duplicate when both
    if calls:
        message["tool_calls"] = [_openai_tool_call(call, index, where) for call in calls]
    elif raw_calls:
        message["tool_calls"] = raw_calls
    if "function_call" in extras:
        message["function_call"] = extras.pop("function_call")
    if extras:
        data["additional_kwargs"] = extras
    defaults = (("status", "success"), ("example", False))
    kept = {k: v for k, v in data.items() if v not in (None, {}, []) and (k, v) not in defaults}
    if kept:
        message["langchain"] = kept
    return message


def _openai_tool_call(call: Any, index: int, where: str) -> dict[str, Any]:
    if not isinstance(call, dict) or "name" not in call:
        raise FormatError(f"{where}: element {index} has a tool call without a name")
    args = call.get("args", {})
    try:
        arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    except RecursionError:
        raise FormatError(f"{where}: element {index} has tool call args nested too deep") from None
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": call["name"], "arguments": arguments},
    }

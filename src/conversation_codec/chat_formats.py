"""Turn stored OpenAI-style messages into the request shapes of chat APIs.

Pure functions: no I/O, inputs never modified, outputs share no mutable parts with them.
The input is what agents store: OpenAI chat-completions messages (``system``/``developer``,
``user``, ``assistant`` with ``tool_calls``, ``tool`` results), whose ``content`` is a
string, None, or a list of parts (``text``, ``image_url``, ``file``, ``input_audio``,
``refusal``). Keys the target API does not know are dropped (OpenAI rejects unknown
message fields), including ``_cc_attachments`` and other bookkeeping.

An attachment removed by ``attachments="strip"`` becomes a text part such as
``[image/png attachment removed: 2048 bytes]``: the model learns something was there,
and the request stays valid. A part no target can carry raises ``ValueError`` naming the
message, rather than being dropped silently.

``max_context=n`` sends the newest ``n`` messages, **widened backwards** so that no tool
result is cut from the assistant turn that called it (the chat APIs reject a ``tool``
message whose call they were not shown): see ``context_window``. Orphans are never dropped
(that would change what the model is told); the window grows instead.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from typing import Any

from .attachments import BLOB_PREFIX, stripped_note
from .format.record import MAX_DEPTH, nests_deeper_than

__all__ = [
    "LANGCHAIN_CHUNK_TYPES",
    "context_window",
    "to_anthropic_messages",
    "to_ollama_messages",
    "to_openai_messages",
]

Message = dict[str, Any]
_OPENAI_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "function_call")
_OPENAI_KEYS_MORE = ("refusal", "audio")  # assistant-only extras the API accepts back
_TEXT_PARTS = ("text", "input_text", "output_text")
_ANTHROPIC_BLOCKS = ("text", "image", "document", "tool_use", "tool_result", "thinking")
_ANTHROPIC_BLOCKS_MORE = ("redacted_thinking", "search_result")
# LangChain's streaming chunk classes, by the message type each stands for (the legacy reader
# and the LangChain adapter both meet them in stored records).
LANGCHAIN_CHUNK_TYPES = {
    "HumanMessageChunk": "human",
    "AIMessageChunk": "ai",
    "SystemMessageChunk": "system",
    "ToolMessageChunk": "tool",
    "FunctionMessageChunk": "function",
    "ChatMessageChunk": "chat",
}
_SYSTEM_ROLES = ("system", "developer")


# -- shared helpers ------------------------------------------------------------------------


def _attachment_value(part: dict[str, Any]) -> str | None:
    """Return the data string of an attachment part (any shape ``attachments`` knows)."""
    image = part.get("image_url")
    if isinstance(image, dict):
        image = image.get("url")
    nested = [part.get(k) for k in ("file", "input_audio", "source")]
    file, audio, source = (n if isinstance(n, dict) else {} for n in nested)
    inner = file or part
    for value in (image, inner.get("file_data"), audio.get("data"), source.get("data")):
        if isinstance(value, str):
            return value
    return None


def _removed_note(part: dict[str, Any], where: str) -> str | None:
    """Return the text standing in for a stripped attachment part, or None."""
    value = _attachment_value(part)
    if value is None:
        return None
    if value.startswith(BLOB_PREFIX):
        raise ValueError(
            f"{where} refers to an external attachment blob; read messages through the "
            "codec (which restores them) before converting"
        )
    return stripped_note(value)


def _parts(message: Message) -> list[Any]:
    """Return the content of a message as a list of parts."""
    content = message.get("content")
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        return content
    raise ValueError(
        f"content must be a string, a list of parts or None, not {type(content).__name__}"
    )


def _text_of(message: Message, where: str) -> str:
    """Join a message's text parts with newlines (for fields that take a string only)."""
    texts = []
    for part in _parts(message):
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") in (*_TEXT_PARTS, "refusal"):
            texts.append(str(part.get("text", part.get("refusal", ""))))
        else:
            raise ValueError(f"{where}: only text parts can go here, not {_kind(part)}")
    return "\n".join(texts)


def _label(value: Any) -> str:
    """A role, tool name or call id for an error, shown only if a short word (else it may
    be text a user or the model wrote): errors never show a message's content."""
    if isinstance(value, str) and len(value) <= 64 and value.replace("-", "_").isidentifier():
        return repr(value)
    return f"a {type(value).__name__}" if not isinstance(value, str) else "an unusual string"


def _kind(part: Any) -> str:  # a part named by its type, never its content
    if isinstance(part, dict):
        kind = part.get("type")
        return (repr(kind) if isinstance(kind, str) and len(kind) <= 40 else "untyped") + " parts"
    return f"a {type(part).__name__}"


def _data_url(url: str) -> tuple[str, str] | None:
    """Split ``data:<media>;base64,<data>`` into ``(media type, base64)``; else None."""
    head, comma, data = url.partition(",")
    if not (comma and head.startswith("data:") and head.endswith(";base64")):
        return None
    return head[5:-7].split(";")[0] or "application/octet-stream", data


def _arguments(call: Any, where: str) -> tuple[str, str | None, dict[str, Any]]:
    """Return ``(name, id, arguments as an object)`` of an OpenAI tool call."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError(f"{where}: a tool call without function.name")
    raw = function.get("arguments")
    args: Any = None
    if isinstance(raw, dict):
        args = copy.deepcopy(raw)
    elif raw is None or (isinstance(raw, str) and not raw.strip()):
        args = {}  # some providers send "" for a tool without parameters
    elif isinstance(raw, str):
        if nests_deeper_than(raw.encode("utf-8", "surrogatepass"), MAX_DEPTH):
            # json.loads recurses per level: a deep string would raise RecursionError.
            raise ValueError(
                f"{where}: tool call {_label(call.get('id'))} has arguments nested more than "
                f"{MAX_DEPTH} levels deep; the target API needs a plain object"
            )
        try:
            args = json.loads(raw)
        except ValueError:
            args = None
    if not isinstance(args, dict):
        raise ValueError(
            f"{where}: tool call {_label(call.get('id'))} has arguments that are not a JSON "
            "object; the target API needs an object — fix the stored message"
        )
    name: str = function["name"]
    call_id = call.get("id")
    return name, call_id if isinstance(call_id, str) else None, args


# -- context windows -----------------------------------------------------------------------


def context_window(tail: Callable[[int], Sequence[Message]], max_context: int) -> list[Message]:
    """Return the newest ``max_context`` messages, widened so that tool pairs stay whole.

    ``tail(n)`` returns the last ``n`` messages of the history, oldest first (as
    ``ConversationCodec.tail`` does: only those records are read). The rule the chat APIs
    enforce holds in the window returned: every tool result (an OpenAI ``tool`` message, an
    Anthropic ``tool_result`` block) follows the assistant message holding its call id (the
    nearest one before it), and every call in the window has its results, because a window
    is a suffix of the history. When the newest ``max_context`` messages start inside a tool
    exchange, the window starts earlier instead, at that exchange's assistant message; the
    orphan result is never dropped. A result whose call is nowhere in the history stays as
    stored (no window can fix that history). The window is the shortest suffix that holds
    the newest ``max_context`` messages and keeps the rule; to find a call it reads
    ``tail()`` again with twice the count.

    >>> history = [{"role": "user", "content": "add 1"},
    ...            {"role": "assistant", "tool_calls": [
    ...                {"id": "c1", "type": "function",
    ...                 "function": {"name": "add", "arguments": "{}"}}]},
    ...            {"role": "tool", "tool_call_id": "c1", "content": "2"},
    ...            {"role": "assistant", "content": "It is 2."}]
    >>> [m["role"] for m in context_window(lambda n: history[-n:], 2)]
    ['assistant', 'tool', 'assistant']
    """
    if not isinstance(max_context, int) or isinstance(max_context, bool) or max_context < 0:
        raise ValueError(f"max_context must be an int >= 0 or None, not {max_context!r}")
    n = max_context
    while n:
        got = list(tail(n))
        start = _paired_start(got, max(0, len(got) - max_context), complete=len(got) < n)
        if start is not None:
            return got[start:]
        n *= 2
    return []


def _window(messages: Sequence[Message], max_context: int | None) -> Sequence[Message]:
    if max_context is None:
        return messages
    return context_window(lambda n: messages[max(0, len(messages) - n) :], max_context)


def _paired_start(messages: list[Message], start: int, *, complete: bool) -> int | None:
    """Return the latest start <= ``start`` at which no result is cut from its call; None
    when a call lies before ``messages`` (read more), unless ``messages`` is ``complete``."""
    while True:
        need = start
        for i in range(start, len(messages)):
            for call_id in _result_ids(messages[i]):
                j = next(
                    (j for j in range(i - 1, -1, -1) if call_id in _call_ids(messages[j])), None
                )
                if j is None and not complete:
                    return None
                need = min(need, i if j is None else j)
        if need == start:
            return start
        start = need


def _result_ids(message: Message) -> list[str]:
    """The call ids a message answers: an OpenAI ``tool`` message, Anthropic results."""
    if message.get("role") == "tool":
        call_id = message.get("tool_call_id")
        return [call_id] if isinstance(call_id, str) else []
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [
        p["tool_use_id"]
        for p in content
        if isinstance(p, dict)
        and p.get("type") == "tool_result"
        and isinstance(p.get("tool_use_id"), str)
    ]


def _call_ids(message: Message) -> set[str]:
    """The call ids an assistant message holds: OpenAI ``tool_calls``, Anthropic blocks."""
    if message.get("role") != "assistant":
        return set()
    calls = message.get("tool_calls")
    ids = (
        {c["id"] for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str)}
        if isinstance(calls, list)
        else set()
    )
    content = message.get("content")
    if isinstance(content, list):
        ids.update(
            p["id"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "tool_use" and isinstance(p.get("id"), str)
        )
    return ids


# -- OpenAI --------------------------------------------------------------------------------


def to_openai_messages(
    messages: Sequence[Message], system_prompt: str | None = None, max_context: int | None = None
) -> list[Message]:
    """Return ``messages`` as an OpenAI chat-completions ``messages`` list.

    ``system_prompt``, when given, is sent first as a system message (stored system
    messages stay where they are). Only the keys the API accepts are kept. ``max_context``
    keeps the newest messages, widened backwards so that no tool result loses its call
    (``context_window``).

    >>> to_openai_messages([{"role": "user", "content": "hi", "id": 7}], system_prompt="Be brief.")
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'hi'}]
    """
    out: list[Message] = [] if system_prompt is None else [_system(system_prompt)]
    for i, message in enumerate(_window(messages, max_context)):
        keys = _OPENAI_KEYS + (_OPENAI_KEYS_MORE if message.get("role") == "assistant" else ())
        kept = {k: copy.deepcopy(message[k]) for k in keys if k in message}
        if isinstance(kept.get("content"), list):
            kept["content"] = [_openai_part(p, f"message {i}") for p in kept["content"]]
        out.append(kept)
    return out


def _system(prompt: str) -> Message:
    if not isinstance(prompt, str):
        raise TypeError(f"system_prompt must be a string, not {type(prompt).__name__}")
    return {"role": "system", "content": prompt}


def _openai_part(part: Any, where: str) -> Any:
    note = _removed_note(part, where) if isinstance(part, dict) else None
    return part if note is None else {"type": "text", "text": note}


# -- Ollama --------------------------------------------------------------------------------


def to_ollama_messages(
    messages: Sequence[Message], system_prompt: str | None = None, max_context: int | None = None
) -> list[Message]:
    """Return ``messages`` as an Ollama ``/api/chat`` ``messages`` list.

    Ollama takes ``content`` as one string (text parts are joined with newlines), images
    as a list of bare base64 strings, tool-call arguments as an object (not a JSON
    string), and names a tool result's tool in ``tool_name`` (found from the call id).
    ``max_context`` windows as ``to_openai_messages`` does (tool pairs stay whole).

    >>> to_ollama_messages([{"role": "assistant", "content": None, "tool_calls": [
    ...     {"id": "c1", "type": "function",
    ...      "function": {"name": "add", "arguments": '{"a": 1}'}}]},
    ...     {"role": "tool", "tool_call_id": "c1", "content": "2"}])
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'role': 'assistant', 'content': '',
      'tool_calls': [{'function': {'name': 'add', 'arguments': {'a': 1}}}]},
     {'role': 'tool', 'content': '2', 'tool_name': 'add'}]

    :raises ValueError: a part Ollama cannot take (http image URLs, files, audio), or tool
        arguments that are not a JSON object.
    """
    out: list[Message] = [] if system_prompt is None else [_system(system_prompt)]
    tool_names: dict[str, str] = {}
    for i, message in enumerate(_window(messages, max_context)):
        where = f"message {i}"
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            out.append({"role": "system", "content": _text_of(message, where)})
        elif role == "tool":
            result: Message = {"role": "tool", "content": _text_of(message, where)}
            name = tool_names.get(str(message.get("tool_call_id")))
            if name is not None:
                result["tool_name"] = name
            out.append(result)
        elif role in ("user", "assistant"):
            out.append(_ollama_turn(message, role, where, tool_names))
        else:
            raise ValueError(
                f"{where} has role {_label(role)}, which Ollama's chat API does not take"
            )
    return out


def _ollama_turn(message: Message, role: str, where: str, tool_names: dict[str, str]) -> Message:
    texts: list[str] = []
    images: list[str] = []
    for part in _parts(message):
        note = _removed_note(part, where) if isinstance(part, dict) else None
        if note is not None:
            texts.append(note)
        elif isinstance(part, dict) and part.get("type") in (*_TEXT_PARTS, "refusal"):
            texts.append(str(part.get("text", part.get("refusal", ""))))
        elif isinstance(part, dict) and part.get("type") == "image_url":
            url = _attachment_value(part) or ""
            inline = _data_url(url)
            if inline is None:
                raise ValueError(
                    f"{where}: Ollama takes inline images only; download the image and send "
                    "it as a base64 data: URL"
                )
            images.append(inline[1])
        else:
            raise ValueError(f"{where}: Ollama's chat API takes text and images, not {_kind(part)}")
    turn: Message = {"role": role, "content": "\n".join(texts)}
    if images:
        turn["images"] = images
    calls = []
    for call in message.get("tool_calls") or []:
        name, call_id, args = _arguments(call, where)
        if call_id is not None:
            tool_names[call_id] = name
        calls.append({"function": {"name": name, "arguments": args}})
    if calls:
        turn["tool_calls"] = calls
    return turn


# -- Anthropic -----------------------------------------------------------------------------


def to_anthropic_messages(
    messages: Sequence[Message], max_context: int | None = None
) -> tuple[str | None, list[Message]]:
    """Return ``(system, messages)`` for Anthropic's Messages API.

    ``max_context`` keeps the newest messages, widened backwards so that every
    ``tool_result`` follows its ``tool_use`` (``context_window``); system messages outside
    the window are not sent.

    * System and developer messages, wherever they are, are joined (blank line between)
      into the ``system`` string; None when there are none.
    * Content is always a list of blocks; parts map to ``text``, ``image`` (base64 or
      url source) and ``document`` (base64 ``file`` parts) blocks; empty text is dropped.
    * Assistant ``tool_calls`` become ``tool_use`` blocks after the text, with ``input``
      parsed from the arguments JSON; ``tool`` messages become ``tool_result`` blocks
      (``tool_use_id`` = ``tool_call_id``) in a user message.
    * Consecutive messages of one role are merged into one (the API requires user and
      assistant to alternate); in a merged user message the ``tool_result`` blocks come
      first, as the API requires.

    >>> to_anthropic_messages([{"role": "system", "content": "Be brief."},
    ...                        {"role": "user", "content": "hi"}])
    ('Be brief.', [{'role': 'user', 'content': [{'type': 'text', 'text': 'hi'}]}])

    :raises ValueError: a part Anthropic cannot take (audio, file ids), a legacy
        ``function`` message, or tool arguments that are not a JSON object.
    """
    system: list[str] = []
    out: list[Message] = []
    for i, message in enumerate(_window(messages, max_context)):
        where = f"message {i}"
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            system.append(_text_of(message, where))
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result(message, where)]
        elif role in ("user", "assistant"):
            blocks = [_anthropic_block(p, where) for p in _parts(message)]
            blocks = [b for b in blocks if b.get("type") != "text" or b.get("text")]
            if role == "assistant":
                blocks += [_tool_use(call, where) for call in message.get("tool_calls") or []]
        else:
            raise ValueError(
                f"{where} has role {_label(role)}; Anthropic takes user, assistant, tool results "
                "and system text (convert legacy function messages to tool messages)"
            )
        if not blocks:
            continue  # the API rejects empty content
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for turn in out:
        if turn["role"] == "user":  # stable: tool results first, then everything else
            turn["content"].sort(key=lambda b: b.get("type") != "tool_result")
    return ("\n\n".join(system) if system else None), out


def _tool_use(call: Any, where: str) -> Message:
    name, call_id, args = _arguments(call, where)
    if call_id is None:
        raise ValueError(f"{where}: tool call {_label(name)} has no id; Anthropic needs one")
    return {"type": "tool_use", "id": call_id, "name": name, "input": args}


def _tool_result(message: Message, where: str) -> Message:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise ValueError(f"{where}: a tool message without a tool_call_id")
    result: Message = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            result["content"] = content
    elif content:
        blocks = [_anthropic_block(p, where) for p in _parts(message)]
        result["content"] = [b for b in blocks if b.get("type") != "text" or b.get("text")]
    return result


def _anthropic_block(part: Any, where: str) -> Message:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise ValueError(f"{where}: a content part must be an object, not {_kind(part)}")
    kind = part.get("type")
    note = _removed_note(part, where)
    if note is not None:
        return {"type": "text", "text": note}
    if kind in _TEXT_PARTS or kind == "refusal":
        return {"type": "text", "text": str(part.get("text", part.get("refusal", "")))}
    if kind == "image_url":
        url = _attachment_value(part) or ""
        inline = _data_url(url)
        if inline is None:
            return {"type": "image", "source": {"type": "url", "url": url}}
        return {"type": "image", "source": _base64_source(*inline)}
    if kind == "file":
        inline = _data_url(_attachment_value(part) or "")
        if inline is None:
            raise ValueError(f"{where}: Anthropic takes files as inline base64 data only")
        return {"type": "document", "source": _base64_source(*inline)}
    if kind in _ANTHROPIC_BLOCKS or kind in _ANTHROPIC_BLOCKS_MORE:
        return copy.deepcopy(part)  # already an Anthropic block
    raise ValueError(f"{where}: Anthropic's Messages API cannot take {_kind(part)}")


def _base64_source(media_type: str, data: str) -> Message:
    return {"type": "base64", "media_type": media_type, "data": data}

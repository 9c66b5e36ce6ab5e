"""Message nesting (issue 11 §7): refused on write beyond MAX_DEPTH, never a foreign error on read.

A message nested ~900 deep used to be accepted and then make the log unreadable from any
deeper call stack (RecursionError); at 1,200 deep append raised RecursionError itself.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conversation_codec import ConversationCodec, CorruptRecordError, NotSerializableError
from conversation_codec.crypto import Keyring, LogCipher
from conversation_codec.format.header import decode_sealed_header
from conversation_codec.format.record import (
    MAX_DEPTH,
    encode_frame,
    encode_plain_line,
    nests_deeper_than,
)
from conversation_codec.maintenance.transfer import import_history
from conversation_codec.records import SealedRecords

from conftest import KEY, T0, messages, snapshot

MakeCodec = Callable[..., ConversationCodec]
T = TypeVar("T")


def nested(depth: int) -> dict[str, Any]:
    """A message whose objects and arrays nest ``depth`` levels, itself included."""
    inner: Any = "bottom"
    for level in range(depth - 1):
        inner = [inner] if level % 2 else {"x": inner}
    return {"role": "user", "content": "deep", "data": inner}


def nested_json(depth: int) -> bytes:
    """The JSON of ``nested(depth)``, built without recursion (json.dumps would recurse)."""
    opens = "".join("[" if level % 2 else '{"x":' for level in reversed(range(depth - 1)))
    closes = "".join("]" if level % 2 else "}" for level in range(depth - 1))
    return ('{"role":"user","content":"deep","data":' + opens + '"bottom"' + closes + "}").encode()


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def from_deep_stack(call: Callable[[], T], spare: int = 250) -> T:
    """Run ``call`` with only about ``spare`` frames left below the recursion limit, as
    a request handler deep inside a framework would."""
    frames = 0
    frame = sys._getframe()
    while frame is not None:
        frames, frame = frames + 1, frame.f_back  # type: ignore[assignment]

    def down(n: int) -> T:
        return call() if n <= 0 else down(n - 1)

    return down(sys.getrecursionlimit() - frames - spare)


def test_nested_builds_the_depth_it_names() -> None:
    for depth in (1, 2, MAX_DEPTH, MAX_DEPTH + 1):
        assert depth_of(nested(depth)) == depth
        text = json.dumps(nested(depth)).encode()
        assert json.loads(nested_json(depth)) == nested(depth)
        assert nests_deeper_than(text, MAX_DEPTH) == (depth > MAX_DEPTH)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 1200, 100_000])
def test_write_refuses_excessive_nesting(
    codec: ConversationCodec, log_path: Path, depth: int
) -> None:
    codec.extend(messages(3))
    before = snapshot(log_path.parent)
    deep = nested(depth)
    with pytest.raises(NotSerializableError, match=f"{MAX_DEPTH} levels"):
        codec.append(deep)
    with pytest.raises(NotSerializableError):
        codec.extend([messages(1)[0], deep])  # nothing of the batch is written
    history = codec.load() or []
    with pytest.raises(NotSerializableError):
        codec.save([*history, deep])
    assert snapshot(log_path.parent) == before
    assert codec.load() == messages(3)


def test_the_limit_itself_is_accepted_and_reads_back_from_a_deep_stack(
    codec: ConversationCodec, tmp_path: Path
) -> None:
    deep = nested(MAX_DEPTH)
    tool = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "f", "arguments": json.dumps(nested(MAX_DEPTH - 4))},
            }
        ],
    }
    codec.extend([deep, tool])
    assert from_deep_stack(codec.load) == [deep, tool]
    assert from_deep_stack(lambda: codec.tail(2)) == [deep, tool]
    assert from_deep_stack(lambda: [h.message for h in codec.search("deep", role="user")]) == [deep]
    assert from_deep_stack(lambda: codec.to_ollama_messages())[1]["tool_calls"]
    assert from_deep_stack(lambda: codec.to_anthropic_messages())[1]
    assert from_deep_stack(lambda: codec.export(tmp_path / "out.jsonl")) == 2
    from_deep_stack(lambda: codec.save([deep, tool, deep]))
    assert len(codec) == 3


def _plain_log_with_deep_last_line(path: Path, depth: int) -> bytes:
    with ConversationCodec(path, durability="flush") as codec:
        codec.extend(messages(3), timestamps=[T0 / 1e6] * 3)
    body = nested_json(depth)
    line = encode_plain_line(3, T0, body)  # as an older version, or a hand edit, wrote it
    with open(path, "ab") as f:
        f.write(line)
    return line


def _sealed_log_with_deep_last_record(path: Path, depth: int) -> bytes:
    with ConversationCodec(path, encryption_key=KEY, durability="flush") as codec:
        codec.extend(messages(3), timestamps=[T0 / 1e6] * 3)
    header, covered, mac = decode_sealed_header(path.read_bytes())
    records = SealedRecords(LogCipher.open(Keyring.from_input(KEY), header, covered, mac))
    body = nested_json(depth)
    frame = encode_frame(records.encode(3, T0, body))  # a key holder's older version wrote it
    with open(path, "ab") as f:
        f.write(frame)
    return frame


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 5000])
@pytest.mark.parametrize("kind", ["plain", "sealed"])
def test_a_stored_over_deep_message_is_a_library_error_and_is_never_cut(
    tmp_path: Path, kind: str, depth: int
) -> None:
    path = tmp_path / "chat.log"
    key = KEY if kind == "sealed" else None
    craft = _sealed_log_with_deep_last_record if key else _plain_log_with_deep_last_line
    record = craft(path, depth)
    with ConversationCodec(path, encryption_key=key) as codec:
        reads: list[Callable[[], object]] = [
            codec.load,
            lambda: codec.tail(1),
            lambda: codec.get(3),
            lambda: list(codec.search("deep")),
            lambda: list(codec),
            codec.to_openai_messages,
        ]
        for read in reads:
            with pytest.raises(CorruptRecordError, match="nests deeper"):
                from_deep_stack(read)
        assert len(codec) == 4  # the record is in place, not a torn tail
        assert codec.tail(0) == [] and codec.get(2) == messages(3)[2]
        codec.append({"role": "user", "content": "after"})  # a writer does not cut it
    assert record in path.read_bytes()
    with ConversationCodec(path, encryption_key=key) as codec:
        assert codec.get(4) == {"role": "user", "content": "after"}


def test_deep_tool_arguments_string_is_a_value_error(codec: ConversationCodec) -> None:
    arguments = "[" * 5000 + "]" * 5000  # a string: stored fine, but json.loads recurses
    codec.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        }
    )
    assert codec.to_openai_messages()[0]["tool_calls"][0]["function"]["arguments"] == arguments
    for convert in (codec.to_ollama_messages, codec.to_anthropic_messages):
        with pytest.raises(ValueError, match="nested more than"):
            convert()


def test_import_rejects_over_deep_messages(codec: ConversationCodec, tmp_path: Path) -> None:
    src = tmp_path / "h.jsonl"
    lines = [messages(1)[0], nested(MAX_DEPTH + 1), nested(900), nested(MAX_DEPTH)]
    src.write_text("".join(json.dumps(m) + "\n" for m in lines))
    report = import_history(codec, src)
    assert (report.read, report.added, report.rejected) == (4, 2, 2)
    assert codec.load() == [messages(1)[0], nested(MAX_DEPTH)]

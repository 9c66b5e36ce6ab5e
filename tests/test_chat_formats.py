"""Chat-format conversion against hand-written expected requests (OpenAI, Ollama, Anthropic)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from conversation_codec.attachments import strip_attachments
from conversation_codec.chat_formats import (
    to_anthropic_messages,
    to_ollama_messages,
    to_openai_messages,
)

from conftest import KEY, messages

PNG = "iVBORw0KGgo="  # a (truncated) PNG header, base64

# A stored agent conversation: system prompt, an image, two parallel tool calls with
# their results, a follow-up user turn, an answer, and bookkeeping keys the APIs reject.
HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a support agent."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Where are orders 1 and 2? Photo attached."},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ],
        "id": "msg_1",
    },
    {
        "role": "assistant",
        "content": "Checking both.",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "lookup_order", "arguments": '{"id": 1}'},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"name": "lookup_order", "arguments": '{"id": 2, "deep": true}'},
            },
        ],
        "usage": {"total_tokens": 42},
    },
    {"role": "tool", "tool_call_id": "call_a", "content": '{"status": "shipped"}'},
    {"role": "tool", "tool_call_id": "call_b", "content": '{"status": "lost"}'},
    {"role": "user", "content": "And?"},
    {"role": "assistant", "content": [{"type": "text", "text": "1 shipped; 2 is lost."}]},
]


def test_openai_keeps_api_keys_only_and_prepends_the_system_prompt() -> None:
    before = copy.deepcopy(HISTORY)
    out = to_openai_messages(HISTORY, system_prompt="Be brief.")
    assert out == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "You are a support agent."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Where are orders 1 and 2? Photo attached."},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": HISTORY[2]["tool_calls"],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": '{"status": "shipped"}'},
        {"role": "tool", "tool_call_id": "call_b", "content": '{"status": "lost"}'},
        {"role": "user", "content": "And?"},
        {"role": "assistant", "content": [{"type": "text", "text": "1 shipped; 2 is lost."}]},
    ]
    assert before == HISTORY
    out[3]["tool_calls"][0]["id"] = "changed"  # no shared mutable parts
    assert before == HISTORY
    assert to_openai_messages([]) == []


def test_ollama_request_shape() -> None:
    assert to_ollama_messages(HISTORY, system_prompt="Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "Where are orders 1 and 2? Photo attached.", "images": [PNG]},
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {"function": {"name": "lookup_order", "arguments": {"id": 1}}},
                {"function": {"name": "lookup_order", "arguments": {"id": 2, "deep": True}}},
            ],
        },
        {"role": "tool", "content": '{"status": "shipped"}', "tool_name": "lookup_order"},
        {"role": "tool", "content": '{"status": "lost"}', "tool_name": "lookup_order"},
        {"role": "user", "content": "And?"},
        {"role": "assistant", "content": "1 shipped; 2 is lost."},
    ]


def test_anthropic_request_shape() -> None:
    system, out = to_anthropic_messages(HISTORY)
    assert system == "You are a support agent."
    assert out == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Where are orders 1 and 2? Photo attached."},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "call_a", "name": "lookup_order", "input": {"id": 1}},
                {
                    "type": "tool_use",
                    "id": "call_b",
                    "name": "lookup_order",
                    "input": {"id": 2, "deep": True},
                },
            ],
        },
        {  # both tool results and the next user turn: one user message, results first
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_a",
                    "content": '{"status": "shipped"}',
                },
                {"type": "tool_result", "tool_use_id": "call_b", "content": '{"status": "lost"}'},
                {"type": "text", "text": "And?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "1 shipped; 2 is lost."}]},
    ]


def test_anthropic_merges_same_role_runs_and_collects_system_text() -> None:
    system, out = to_anthropic_messages(
        [
            {"role": "system", "content": "A."},
            {"role": "user", "content": "one"},
            {"role": "developer", "content": [{"type": "text", "text": "B."}]},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": None, "tool_calls": [_call("c1", "")]},
            {"role": "assistant", "content": ""},  # empty: dropped, not an empty block
            {"role": "tool", "tool_call_id": "c1", "content": ""},
        ]
    )
    assert system == "A.\n\nB."
    assert out == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1"}]},
    ]
    assert to_anthropic_messages([]) == (None, [])


def _call(call_id: str, arguments: Any, name: str = "f") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_anthropic_urls_files_and_structured_tool_results() -> None:
    pdf = "JVBERi0xLjQ="
    _, out = to_anthropic_messages(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                    {
                        "type": "file",
                        "file": {
                            "filename": "a.pdf",
                            "file_data": f"data:application/pdf;base64,{pdf}",
                        },
                    },
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": [_call("c", {"q": 1})]},
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "r"}]},
        ]
    )
    assert out == [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": pdf},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "c", "name": "f", "input": {"q": 1}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "c",
                    "content": [{"type": "text", "text": "r"}],
                }
            ],
        },
    ]


def test_stripped_attachments_become_text_notes() -> None:
    stored = strip_attachments(HISTORY[1])
    note = "[image/png attachment removed: 8 bytes]"
    assert to_openai_messages([stored])[0]["content"][1] == {"type": "text", "text": note}
    assert to_ollama_messages([stored])[0] == {
        "role": "user",
        "content": f"Where are orders 1 and 2? Photo attached.\n{note}",
    }
    assert to_anthropic_messages([stored])[1][0]["content"][1] == {"type": "text", "text": note}


@pytest.mark.parametrize("arguments", ['{"a": 1', "[1, 2]", '"text"', "null", 7])
def test_tool_arguments_that_are_not_a_json_object_are_refused(arguments: Any) -> None:
    history = [{"role": "assistant", "content": None, "tool_calls": [_call("c", arguments)]}]
    with pytest.raises(ValueError, match="message 0: tool call 'c' has arguments that are not"):
        to_anthropic_messages(history)
    with pytest.raises(ValueError, match="not a JSON object"):
        to_ollama_messages(history)
    assert to_openai_messages(history)[0]["tool_calls"][0]["function"]["arguments"] == arguments


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA=="}}]},
            "cannot take",
        ),
        (
            {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]},
            "inline base64",
        ),
        ({"role": "function", "name": "f", "content": "x"}, "role 'function'"),
        ({"role": "tool", "content": "x"}, "without a tool_call_id"),
        ({"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}, "function.name"),
        ({"role": "user", "content": 5}, "content must be"),
    ],
)
def test_anthropic_refuses_what_it_cannot_carry(message: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_anthropic_messages([message])


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}],
            },
            "inline images only",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "file", "file": {"file_data": "data:a/b;base64,AA=="}}],
            },
            "text and images",
        ),
        ({"role": "critic", "content": "x"}, "role 'critic'"),
        (
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            "only text parts",
        ),
    ],
)
def test_ollama_refuses_what_it_cannot_carry(message: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_ollama_messages([message])


def test_external_references_must_be_restored_first() -> None:
    ref = "cc-blob:" + "0" * 64 + "data:image/png;base64,"
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": ref}}]}
    for convert in (to_openai_messages, to_ollama_messages):
        with pytest.raises(ValueError, match="restores them"):
            convert([message])
    with pytest.raises(ValueError, match="restores them"):
        to_anthropic_messages([message])


def test_system_prompt_must_be_text() -> None:
    with pytest.raises(TypeError, match="system_prompt must be a string"):
        to_openai_messages([], system_prompt=5)  # type: ignore[arg-type]


def test_anthropic_puts_tool_results_before_text_in_a_merged_user_turn() -> None:
    _, out = to_anthropic_messages(
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [_call("c", "{}")]},
            {"role": "user", "content": "(user typed while the tool ran)"},
            {"role": "tool", "tool_call_id": "c", "content": "done"},
        ]
    )
    assert out[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "c", "content": "done"},
            {"type": "text", "text": "(user typed while the tool ran)"},
        ],
    }


# -- context windows: a tool result is never cut from its call ----------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conversation_codec import ConversationCodec  # noqa: E402
from conversation_codec.chat_formats import context_window  # noqa: E402


def _fn_call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}


@st.composite
def tool_histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Histories as agents store them: turns with parallel tool calls, whose results follow
    (in any order, some missing: an interrupted run), ids unique or reused across turns."""
    out: list[dict[str, Any]] = []
    if draw(st.booleans()):
        out.append({"role": "system", "content": "sys"})
    for turn in range(draw(st.integers(0, 6))):
        out.append({"role": "user", "content": f"u{turn}"})
        for step in range(draw(st.integers(0, 3))):
            n = draw(st.integers(1, 3))
            reuse = draw(st.booleans())  # some local models number calls per turn: call_0
            ids = [f"call_{k}" if reuse else f"c{turn}.{step}.{k}" for k in range(n)]
            out.append(
                {"role": "assistant", "content": None, "tool_calls": [_fn_call(i) for i in ids]}
            )
            answered = draw(st.permutations(ids))[: draw(st.integers(0 if turn else n, n))]
            out += [{"role": "tool", "tool_call_id": i, "content": "r"} for i in answered]
        if draw(st.booleans()):
            out.append({"role": "assistant", "content": f"a{turn}"})
    return out


def _pairing_holds(history: list[dict[str, Any]], window: list[dict[str, Any]]) -> bool:
    """The chat APIs' rule: each result follows the (nearest) assistant message holding its
    call id; each call has the results the history holds for it."""
    offset = len(history) - len(window)
    for i, message in enumerate(window):
        if message["role"] == "tool":
            held = [
                j
                for j in range(i)
                if message["tool_call_id"] in {c["id"] for c in window[j].get("tool_calls") or []}
            ]
            in_history = any(
                message["tool_call_id"] in {c["id"] for c in m.get("tool_calls") or []}
                for m in history[: offset + i]
            )
            if in_history and not held:
                return False
        for call in message.get("tool_calls") or []:
            # Its results in the history: until the next assistant reuses the id.
            for later in history[offset + i + 1 :]:
                if call["id"] in {c["id"] for c in later.get("tool_calls") or []}:
                    break
                if later.get("tool_call_id") == call["id"] and later not in window[i + 1 :]:
                    return False
    return True


@given(tool_histories(), st.integers(0, 30))
def test_context_window_never_cuts_a_tool_pair(history: list[Any], max_context: int) -> None:
    reads: list[int] = []

    def tail(n: int) -> list[Any]:
        reads.append(n)
        return history[max(0, len(history) - n) :] if n else []

    window = context_window(tail, max_context)
    assert window == history[len(history) - len(window) :]  # a suffix, in order
    assert len(window) >= min(max_context, len(history))
    assert _pairing_holds(history, window)
    if len(window) > max_context:  # widened: one message less would cut a pair
        assert not _pairing_holds(history, window[1:])
    assert to_openai_messages(history, max_context=max_context) == to_openai_messages(window)
    assert to_ollama_messages(history, max_context=max_context) == to_ollama_messages(window)
    assert to_anthropic_messages(history, max_context=max_context) == to_anthropic_messages(window)


ORPHAN_AT_TWO: list[dict[str, Any]] = [
    {"role": "user", "content": "Where is order 7?"},
    {"role": "assistant", "content": None, "tool_calls": [_fn_call("call_7")]},
    {"role": "tool", "tool_call_id": "call_7", "content": "shipped"},
    {"role": "assistant", "content": "Order 7 shipped."},
]


def test_max_context_two_widens_to_the_call(tmp_path: Any) -> None:
    # The example: the newest two messages start with an orphan tool result.
    with ConversationCodec(tmp_path / "c.log", durability="flush") as codec:
        codec.extend(ORPHAN_AT_TWO)
        out = codec.to_openai_messages(system_prompt="Be brief.", max_context=2)
        assert [m["role"] for m in out] == ["system", "assistant", "tool", "assistant"]
        assert out[1]["tool_calls"][0]["id"] == "call_7"
        assert codec.to_ollama_messages(max_context=2)[0]["tool_calls"]
        _, turns = codec.to_anthropic_messages(max_context=2)
        assert [t["role"] for t in turns] == ["assistant", "user", "assistant"]
        assert turns[0]["content"][0] == {
            "type": "tool_use",
            "id": "call_7",
            "name": "f",
            "input": {},
        }
        assert codec.to_openai_messages(max_context=1) == [ORPHAN_AT_TWO[-1]]
        assert codec.to_openai_messages(max_context=0) == []
    with pytest.raises(ValueError):
        to_openai_messages(ORPHAN_AT_TWO, max_context=-1)


def test_a_result_whose_call_is_nowhere_stays_as_stored() -> None:
    history = [{"role": "tool", "tool_call_id": "lost", "content": "r"}, *ORPHAN_AT_TWO]
    assert to_openai_messages(history, max_context=5) == history  # nothing dropped
    assert to_openai_messages(history[:2], max_context=1) == history[1:2]


def test_chat_formats_read_only_the_newest_records(tmp_path: Path) -> None:
    with ConversationCodec(tmp_path / "c.log", encryption_key=KEY, durability="flush") as c:
        c.extend(messages(400))
    with ConversationCodec(tmp_path / "c.log", encryption_key=KEY) as c:
        c.message_count()
        cipher = c.storage.fmt.records.cipher  # type: ignore[union-attr]
        before = cipher.unseal_count
        out = c.to_openai_messages(system_prompt="Be brief.", max_context=4)
        assert cipher.unseal_count - before == 4
        assert out[0] == {"role": "system", "content": "Be brief."}
        assert [m["role"] for m in out[1:]] == [m["role"] for m in messages(400)[-4:]]
        system, turns = c.to_anthropic_messages(max_context=4)
        assert system is None and turns
        assert any(m["role"] == "user" for m in c.to_ollama_messages(max_context=8))


SECRET = "SSN 078-05-1120"  # what a conversation may hold: never in an error message


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": {"text": SECRET}},
        {"role": "user", "content": [SECRET, 5]},
        {"role": "user", "content": [5, SECRET]},
        {"role": "user", "content": [{"type": "input_audio", "note": SECRET}]},
        {"role": "user", "content": [{"type": SECRET * 5}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "args": SECRET}]},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": f"https://x/{SECRET}.png"}}],
        },
        {"role": {"note": SECRET}, "content": "x"},
        {"role": SECRET, "content": "x"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": SECRET, "function": {"name": "f", "arguments": "[1]"}}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": SECRET, "arguments": "{}"}}],
        },
    ],
    ids=[
        "object",
        "str-then-int",
        "int-then-str",
        "typed",
        "long-type",
        "call",
        "url",
        "role-object",
        "role-text",
        "call-id",
        "tool-name",
    ],
)
def test_a_refusal_names_what_is_wrong_never_the_content(message: dict[str, Any]) -> None:
    refused = 0
    for convert in (to_openai_messages, to_anthropic_messages, to_ollama_messages):
        try:
            convert([message])
        except ValueError as exc:
            refused += 1
            assert "078-05" not in str(exc), convert.__name__
    assert refused

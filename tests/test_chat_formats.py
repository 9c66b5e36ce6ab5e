"""Chat-format conversion against hand-written expected requests (OpenAI, Ollama, Anthropic)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from conversation_codec.attachments import strip_attachments
from conversation_codec.chat_formats import (
    to_anthropic_messages,
    to_ollama_messages,
    to_openai_messages,
)

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

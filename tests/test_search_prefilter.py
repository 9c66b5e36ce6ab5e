"""The raw-JSON pre-filter (``Query.maybe``/``maybe_any``) never rejects a message that
``Query.matches`` accepts (reviewer's defect 2): an object-valued tool argument is searched
as its ``json.dumps`` text, which the stored JSON spells differently."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conversation_codec import ConversationCodec, ConversationStore
from conversation_codec.search import Query, raw_pieces, searchable_text

from conftest import KEY

MESSAGES: list[dict[str, Any]] = [
    {  # LangChain
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "geocode", "args": {"coords": [48.85, 2.35]}, "id": "t1"}],
    },
    {  # Anthropic
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "t2", "name": "lookup", "input": {"ids": [1042, 1043]}}
        ],
    },
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "big", "args": {"n": 1e16}, "id": "t3"}],
    },
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "s", "args": {"x": 1.5e-05}, "id": "t4"}],
    },
    {"role": "user", "content": "zebra 48.85,2.35 and 1e16"},
]
QUERIES = [
    '"48.85, 2.35"',
    '"1042, 1043"',
    "1e+16",
    '"[48.85, 2.35]"',
    '"ids": [1042',
    '"2.35]}"',
    "1.5e-05",
    "e-05",
    "05",
    '"x": 1.5',
    "zebra",
    "geocode",
]


def brute(codec: ConversationCodec, query: str) -> list[int]:
    q = Query(query, regex=False, case_sensitive=False)
    return [i for i, m in enumerate(codec.load()) if q.matches(m)]


@pytest.mark.parametrize("indexed", [False, True], ids=["scan", "index"])
def test_object_arguments_found_as_the_matcher_finds_them(tmp_path: Path, indexed: bool) -> None:
    codec = ConversationCodec(tmp_path / "c.log", encryption_key=KEY, search_index=indexed)
    codec.extend(MESSAGES)
    if indexed:
        codec.reindex()
    store = ConversationStore(tmp_path / "s", encryption_key=KEY, search_index=indexed)
    with store.open("a") as c:
        c.extend(MESSAGES)
    for query in QUERIES:
        expected = brute(codec, query)
        assert expected, query  # every query finds something
        assert [h.seq for h in codec.search(query)] == expected, query
        assert [h.seq for _, h in store.search(query)] == expected, query
    assert [h.seq for h in codec.search('"48.85, 2.35"')] == [0]
    assert [h.seq for h in codec.search('"1042, 1043"')] == [1]
    assert [h.seq for h in codec.search("1e+16")] == [2]
    codec.close()


def test_ordinary_terms_keep_the_pre_filter() -> None:
    assert Query("zebra", regex=False, case_sensitive=False).raw_terms == ["zebra"]
    assert Query("Invoice 42", regex=False, case_sensitive=False).raw_terms == ["invoice"]
    assert Query('"v1.2" 2024-05-01', regex=False, case_sensitive=False).raw_terms == [
        "v1.2",
        "2024-05-01",
    ]
    assert not Query("zebra", regex=False, case_sensitive=False).maybe('{"content":"horse"}')
    number = Query("42", regex=False, case_sensitive=False)
    assert number.raw_terms == []  # "42" may be part of a float json.dumps spells otherwise,
    assert not number.maybe('{"content":"horse 41"}')  # but only in an object argument:
    assert number.maybe('{"tool_calls":[{"args":{"x":4.2e-5}}]}')  # json.dumps: 4.2e-05
    assert Query("4.2e-05", regex=False, case_sensitive=False).matches(
        {"tool_calls": [{"args": {"x": 4.2e-5}}]}
    )
    assert raw_pieces("refund, order: [x]") == ["refund", "order", "x"]


def _number(rnd: random.Random) -> float | int:
    kind = rnd.randrange(6)
    if kind == 0:
        return rnd.randint(-(10**20), 10**20)
    if kind == 1:
        return rnd.randint(-50, 50)
    if kind == 2:  # every decade, where reprs switch to exponents (1e16, 1e-05)
        return rnd.choice([-1, 1]) * rnd.uniform(1, 10) * 10.0 ** rnd.randint(-30, 30)
    if kind == 3:
        return rnd.choice([1e16, 1e-7, 1e-5, 1.5e300, 5e-324, -0.0, 0.0001, 1e22, 123.0])
    return round(rnd.uniform(-1000, 1000), rnd.randint(0, 6))


def _string(rnd: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + " ,:[]{}.+-eE ßé中"
    return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))


def _value(rnd: random.Random, depth: int = 0) -> Any:
    kind = rnd.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return _number(rnd)
    if kind == 1:
        return _string(rnd)
    if kind == 2:
        return rnd.choice([True, False, None])
    if kind == 3:
        return _number(rnd) if rnd.random() < 0.5 else _string(rnd)
    if kind in (4, 5):
        return [_value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]
    return {_string(rnd): _value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))}


def _message(rnd: random.Random) -> dict[str, Any]:
    args = {_string(rnd) or "k": _value(rnd) for _ in range(rnd.randint(1, 4))}
    shape = rnd.randrange(3)
    if shape == 0:  # LangChain
        calls = [{"name": _string(rnd), "args": args, "id": "t"}]
        return {"role": "assistant", "content": _string(rnd), "tool_calls": calls}
    if shape == 1:  # Anthropic
        block = {"type": "tool_use", "id": "t", "name": _string(rnd), "input": args}
        return {"role": "assistant", "content": [block]}
    call = {"function": {"name": "f", "arguments": json.dumps(args)}}  # chat completions
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _stored_spellings(message: dict[str, Any]) -> list[str]:
    """How a record may hold the message: this library's msgspec JSON, and other writers'
    strict JSON (FORMAT.md §5.2: whitespace between tokens, floats as Python writes them)."""
    return [
        msgspec.json.encode(message).decode(),
        json.dumps(message, ensure_ascii=False),
        json.dumps(message, ensure_ascii=False, indent=1),
    ]


def _check(rnd: random.Random) -> int:
    """One random message and query; return 1 when the query matched (a real check)."""
    message = _message(rnd)
    text = "\n".join(searchable_text(message))
    a = rnd.randrange(len(text) + 1)
    piece = text[a : a + rnd.randint(1, 16)]
    if not piece.strip() or '"' in piece:
        return 0
    if rnd.random() < 0.3:
        piece = piece.swapcase()
    case_sensitive = rnd.random() < 0.2
    query = f'"{piece}"' if rnd.random() < 0.7 else piece
    q = Query(query, regex=False, case_sensitive=case_sensitive)
    if not q.matches(message):
        return 0
    other = msgspec.json.encode(_message(rnd))
    for raw in _stored_spellings(message):
        assert q.maybe(raw), (query, raw)
        assert q.maybe_any([other, raw.encode()]), (query, raw)
    return 1


def test_pre_filter_never_rejects_what_the_matcher_accepts() -> None:
    rnd = random.Random(20261207)
    checked = sum(_check(rnd) for _ in range(2500))
    assert checked > 600  # enough queries matched to mean something


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_pre_filter_never_rejects_what_the_matcher_accepts_more(seed: int) -> None:
    rnd = random.Random(seed)
    assert sum(_check(rnd) for _ in range(100_000)) > 20_000

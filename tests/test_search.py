"""search(), between(), timestamp(): every query shape against a brute-force filter over load()."""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _children
from conversation_codec import (
    ConversationCodec,
    ConversationStore,
    Hit,
    LogReplacedError,
    NaiveDatetimeError,
    QueryTypeError,
    SearchError,
)
from conversation_codec.search import Query, searchable_text

from conftest import KEY, T0

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
WORDS = [
    "refund",
    "Refunds",
    "order",
    "STRASSE",
    "straße",
    "coffee",
    "latte",
    "oat milk",
    "ünïcode",
]


def at(i: int) -> datetime:
    return EPOCH + timedelta(microseconds=T0 + i * 60_000_000)  # one message a minute


def corpus(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        if i % 5 == 0:
            out.append({"role": "user", "content": f"I want a {word} please, number {i}"})
        elif i % 5 == 1:
            out.append(
                {"role": "assistant", "content": [{"type": "text", "text": f"Sure: {word}!"}]}
            )
        elif i % 5 == 2:
            out.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"c{i}",
                            "type": "function",
                            "function": {
                                "name": f"find_{word.split()[0].lower()}",
                                "arguments": f'{{"q": "{word}"}}',
                            },
                        }
                    ],
                }
            )
        elif i % 5 == 3:
            out.append(
                {"role": "tool", "tool_call_id": f"c{i - 1}", "content": f'{{"found": "{word}"}}'}
            )
        else:
            out.append(
                {"role": "system", "content": "be kind", "meta": {"note": word}}
            )  # meta not searched
    return out


@pytest.fixture
def filled(make_codec: Callable[..., ConversationCodec]) -> ConversationCodec:
    codec = make_codec()
    msgs = corpus(60)
    codec.extend(msgs, timestamps=[at(i) for i in range(len(msgs))])
    return codec


def brute(
    codec: ConversationCodec,
    pred: Callable[[dict[str, Any]], bool],
    lo: int = 0,
    hi: int | None = None,
) -> list[int]:
    msgs = codec.load() or []
    hi = len(msgs) if hi is None else hi
    return [i for i, m in enumerate(msgs) if lo <= i < hi and pred(m)]


def text_of(m: dict[str, Any]) -> str:
    return "\n".join(searchable_text(m))


def seqs(hits: Any) -> list[int]:
    return [h.seq for h in hits]


@pytest.mark.parametrize(
    ("query", "kwargs", "pred"),
    [
        ("refund", {}, lambda m: "refund" in text_of(m).casefold()),
        ("REFUND", {}, lambda m: "refund" in text_of(m).casefold()),
        ("Refunds", {"case_sensitive": True}, lambda m: "Refunds" in text_of(m)),
        ("strasse", {}, lambda m: "strasse" in text_of(m).casefold()),  # finds straße too
        (
            "oat milk",
            {},
            lambda m: "oat" in text_of(m).casefold() and "milk" in text_of(m).casefold(),
        ),
        ('"oat milk"', {}, lambda m: "oat milk" in text_of(m).casefold()),
        ('"milk oat"', {}, lambda m: False),
        ("find_coffee", {}, lambda m: "find_coffee" in text_of(m)),  # a tool-call name
        ('"q": "latte"', {}, lambda m: '"q": "latte"' in text_of(m)),  # inside arguments
        ("kind", {}, lambda m: "kind" in text_of(m)),
        ("note", {}, lambda m: False),  # keys and unsearched fields never match
        ("nothing-like-this", {}, lambda m: False),
        (
            r"number \d*5$",
            {"regex": True},
            lambda m: bool(re.search(r"number \d*5$", text_of(m), re.I)),
        ),
        ("ÜNÏCODE", {}, lambda m: "ünïcode" in text_of(m)),
        (None, {}, lambda m: True),
        ("", {}, lambda m: True),
    ],
)
def test_queries_match_brute_force(
    filled: ConversationCodec,
    query: str | None,
    kwargs: dict[str, Any],
    pred: Callable[[dict[str, Any]], bool],
) -> None:
    assert seqs(filled.search(query, **kwargs)) == brute(filled, pred)


def test_roles_limit_and_order(filled: ConversationCodec) -> None:
    users = brute(filled, lambda m: m["role"] == "user")
    assert seqs(filled.search(role="user")) == users
    both = brute(filled, lambda m: m["role"] in {"user", "tool"})
    assert seqs(filled.search(role={"user", "tool"})) == both
    assert seqs(filled.search(role=["user", "tool"], limit=3)) == both[:3]
    assert seqs(filled.search(role="user", newest_first=True)) == users[::-1]
    assert seqs(filled.search(role="user", newest_first=True, limit=2)) == users[::-1][:2]
    assert seqs(filled.search(limit=0)) == []
    hit = next(iter(filled.search("refund")))
    assert isinstance(hit, Hit)
    assert hit.timestamp == filled.timestamp(hit.seq) == at(hit.seq)
    assert hit.message == filled.get(hit.seq)


@pytest.mark.parametrize(
    ("since", "until", "lo", "hi"),
    [
        (at(10), at(20), 10, 20),  # since inclusive, until exclusive
        (at(10) + timedelta(microseconds=1), at(20) + timedelta(microseconds=1), 11, 21),
        (at(0) - timedelta(days=1), at(3), 0, 3),
        (at(59), None, 59, 60),
        (None, at(1), 0, 1),
        (at(60), None, 60, 60),  # after the end: nothing
        (at(5), at(5), 5, 5),  # empty range
    ],
)
def test_date_ranges(filled: ConversationCodec, since: Any, until: Any, lo: int, hi: int) -> None:
    assert seqs(filled.search(since=since, until=until)) == list(range(lo, hi))
    if since is not None and until is not None:
        assert seqs(filled.between(since, until)) == list(range(lo, hi))
    assert seqs(filled.search("refund", since=since, until=until)) == brute(
        filled, lambda m: "refund" in text_of(m).casefold(), lo, hi
    )


def test_time_formats(filled: ConversationCodec) -> None:
    expected = list(range(10, 20))
    naive = at(10).replace(tzinfo=None)
    with pytest.raises(NaiveDatetimeError):  # one rule for every time argument (_time.py)
        filled.search(since=naive, until=at(20))
    assert seqs(filled.search(since=at(10).timestamp(), until=at(20).timestamp())) == expected
    assert (
        seqs(
            filled.search(since=at(10).isoformat(), until=at(20).isoformat().replace("+00:00", "Z"))
        )
        == expected
    )
    other_zone = at(10).astimezone(timezone(timedelta(hours=5)))
    assert seqs(filled.search(since=other_zone, until=at(20))) == expected


def test_bad_input(filled: ConversationCodec) -> None:
    with pytest.raises(ValueError, match="after until"):
        filled.search(since=at(5), until=at(4))
    with pytest.raises(ValueError, match="invalid regular expression"):
        filled.search("(unclosed", regex=True)
    with pytest.raises(TypeError, match="role"):
        filled.search(role=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="role"):
        filled.search(role={"user", 5})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ISO-8601"):
        filled.search(since="last tuesday")
    with pytest.raises(ValueError, match="limit"):
        filled.search(limit=-1)


def test_empty_and_missing_log(make_codec: Callable[..., ConversationCodec]) -> None:
    codec = make_codec()
    assert list(codec.search("x")) == []
    assert codec.between(at(0), at(10)) == []


def test_date_range_decrypts_only_records_in_range(tmp_path: Path) -> None:
    codec = ConversationCodec(tmp_path / "c.log", encryption_key=KEY, durability="flush")
    msgs = corpus(1000)
    codec.extend(msgs, timestamps=[at(i) for i in range(len(msgs))])
    codec.close()
    codec = ConversationCodec(tmp_path / "c.log", encryption_key=KEY)
    codec.message_count()
    cipher = codec.storage.fmt.records.cipher  # type: ignore[union-attr]
    before = cipher.unseal_count
    assert seqs(codec.between(at(500), at(510))) == list(range(500, 510))
    # The 10 records in range, and the 2 just outside it (499 and 510): the index's times
    # are not authenticated, so the records that bound the range are (issue 11 §5).
    assert cipher.unseal_count - before == 10 + 2
    before = cipher.unseal_count
    assert codec.between(at(2000), at(3000)) == []  # bounded by record 999 alone
    assert codec.between(at(500) + timedelta(seconds=1), at(501)) == []  # by 500 and 501
    assert cipher.unseal_count - before == 1 + 2  # an empty range decrypts its bounds only
    before = cipher.unseal_count
    newest = list(codec.search("refund", newest_first=True, limit=5))
    assert len(newest) == 5 and newest[0].seq > 990
    assert cipher.unseal_count - before <= 256  # one batch from the end, not the whole log
    codec.close()


def test_search_detects_replacement_midway(make_codec: Callable[..., ConversationCodec]) -> None:
    a, b = make_codec(), make_codec()
    a.extend(corpus(600))
    hits = a.search(None)
    next(hits)
    b.load()  # a divergent save() rewrites only a history read in full (issue 11)
    b.save([{"role": "user", "content": "new"}])
    with pytest.raises(LogReplacedError):
        list(hits)


word_st = st.sampled_from(["alpha", "beta", "Gamma", "delta", "ß", "SS", "é", "x"])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    contents=st.lists(st.lists(word_st, min_size=0, max_size=4), min_size=0, max_size=25),
    gaps=st.lists(st.integers(0, 3_000_000), min_size=25, max_size=25),
    query=st.lists(word_st, min_size=0, max_size=2),
    window=st.tuples(st.integers(0, 40_000_000), st.integers(0, 40_000_000)),
    encrypted=st.booleans(),
    newest_first=st.booleans(),
    limit=st.none() | st.integers(0, 5),
)
def test_property_search_equals_brute_force(
    tmp_path_factory: pytest.TempPathFactory,
    contents: list[list[str]],
    gaps: list[int],
    query: list[str],
    window: tuple[int, int],
    encrypted: bool,
    newest_first: bool,
    limit: int | None,
) -> None:
    folder = tmp_path_factory.mktemp("prop")
    codec = ConversationCodec(
        folder / "c.log", encryption_key=KEY if encrypted else None, durability="flush"
    )
    msgs = [{"role": "user", "content": " ".join(words)} for words in contents]
    stamps, t = [], T0
    for g in gaps[: len(msgs)]:
        t += g
        stamps.append(t)
    codec.extend(msgs, timestamps=[s / 1e6 for s in stamps])
    lo_us, hi_us = T0 + min(window), T0 + max(window)
    expected = [
        i
        for i, m in enumerate(msgs)
        if lo_us <= stamps[i] < hi_us
        and all(w.casefold() in m["content"].casefold() for w in query)
    ]
    if newest_first:
        expected.reverse()
    if limit is not None:
        expected = expected[:limit]
    got = codec.search(
        " ".join(query) or None,
        since=lo_us / 1e6,
        until=hi_us / 1e6,
        newest_first=newest_first,
        limit=limit,
    )
    assert seqs(got) == expected
    codec.close()


# -- the regex engine and the query's type ---------------------------------------------------


def test_a_catastrophic_regex_cannot_hang_a_search(tmp_path: Path) -> None:
    # Python's re takes ~2^n steps on each of these; RE2 is linear. In a subprocess with a
    # timeout, so that a regression fails instead of hanging the suite.
    script = textwrap.dedent(
        f"""
        from conversation_codec import ConversationCodec, ConversationStore
        from conversation_codec.search import Query
        text = "a" * 41 + "b"
        store = ConversationStore({str(tmp_path)!r}, encryption_key={KEY!r}, durability="flush")
        with store.open("c") as codec:
            codec.extend([{{"role": "user", "content": "a" * 27 + "b"}}, {{"content": text}}])
            assert list(codec.search(r"(a+)+$", regex=True)) == []
            assert [h.seq for h in codec.search(r"(a+)+c|b", regex=True)] == [0, 1]
            assert [h.seq for h in codec.search(r"(A+)+B$", regex=True)] == [0, 1]
            assert list(codec.search(r"(A+)+B$", regex=True, case_sensitive=True)) == []
        assert [cid for cid, _ in store.search(r"(a|aa)+$", regex=True)] == []
        assert Query(r"(a+)+c|b", regex=True, case_sensitive=True).span(text) == (41, 42)
        print("done")
        """
    )
    done = _children.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "done\n"), done.stderr


@pytest.mark.parametrize(
    ("pattern", "text", "found"),
    [
        ("é", "CAFÉ", True),  # simple case folding, as re.IGNORECASE
        ("k", "\u212a", True),  # KELVIN SIGN folds to k
        ("Σ", "ς", True),
        ("strasse", "STRASSE", True),
        ("strasse", "straße", False),  # full folding is for keyword queries only
        (r"number \d+", "number 42", True),
        (r"\d", "٣", False),  # RE2: \d, \w, \s, \b are ASCII
        (r"\pN", "٣", True),  # ... and \pN, \pL are Unicode
        (r"end$", "the end\n", False),  # RE2: $ is the very end, not before a final newline
        (r"end\z", "the end", True),
    ],
)
def test_regex_semantics_are_documented_ones(
    make_codec: Callable[..., ConversationCodec], pattern: str, text: str, found: bool
) -> None:
    codec = make_codec()
    codec.append({"role": "user", "content": text})
    assert bool(list(codec.search(pattern, regex=True))) is found


@pytest.mark.parametrize("pattern", ["(unclosed", r"(a)\1", "(?=a)", "(?<!a)b", r"a\Z", "a{2000}"])
def test_patterns_re2_cannot_run_raise_search_error(
    filled: ConversationCodec, pattern: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SearchError, match="invalid regular expression") as info:
        filled.search(pattern, regex=True)
    assert isinstance(info.value, ValueError) and "RE2" in str(info.value)
    assert capfd.readouterr().err == ""  # RE2's own logging stays quiet


def test_regex_without_re2_is_a_clear_error_never_a_backtracking_fallback(
    filled: ConversationCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "re2", None)  # as if google-re2 were not installed
    with pytest.raises(SearchError, match=re.escape('pip install "conversation-codec[regex]"')):
        filled.search("refund", regex=True)
    assert seqs(filled.search("refund")) == brute(filled, lambda m: "refund" in text_of(m).lower())


@pytest.mark.parametrize("query", [5, b"refund", ["refund"], 1.5, {"refund"}])
def test_a_query_that_is_not_a_str_raises_query_type_error(
    filled: ConversationCodec, tmp_path: Path, query: Any
) -> None:
    store = ConversationStore(tmp_path / "store", encryption_key=KEY)
    with store.open("c") as codec:
        codec.append({"content": "refund"})
    for search in (filled.search, store.search):
        with pytest.raises(QueryTypeError, match="must be a str") as info:
            search(query)
        assert isinstance(info.value, TypeError) and isinstance(info.value, SearchError)
        assert type(query).__name__ in str(info.value)


# -- every shape the integrations store is searchable (issue 16 §1) -------------------------

SHAPES = {
    "openai-agents function_call": {
        "type": "function_call",
        "call_id": "c1",
        "name": "lookup_order",
        "arguments": '{"order_id": "A1042"}',
    },
    "openai-agents function_call_output": {
        "type": "function_call_output",
        "call_id": "c1",
        "output": "parcel delayed",
    },
    "openai-agents message": {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "your parcel is delayed"}],
    },
    "openai-agents reasoning": {
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "check the carrier"}],
    },
    "LangChain AI tool call": {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "lookup_order", "args": {"order_id": "A1042"}, "id": "t1"}],
    },
    "LangChain ToolMessage": {"role": "tool", "content": "parcel delayed", "tool_call_id": "t1"},
    "Anthropic tool_use": {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "u1", "name": "lookup_order", "input": {"id": "A1042"}},
        ],
    },
    "Anthropic tool_result": {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "u1",
                "content": [{"type": "text", "text": "parcel delayed"}],
            }
        ],
    },
    "chat input_text part": {
        "role": "user",
        "content": [{"type": "input_text", "text": "where is A1042"}],
    },
}
FINDS = {
    "openai-agents function_call": ["lookup_order", "A1042"],
    "openai-agents function_call_output": ["delayed"],
    "openai-agents message": ["delayed"],
    "openai-agents reasoning": ["carrier"],
    "LangChain AI tool call": ["lookup_order", "A1042"],
    "LangChain ToolMessage": ["delayed"],
    "Anthropic tool_use": ["lookup_order", "A1042", "look"],
    "Anthropic tool_result": ["delayed"],
    "chat input_text part": ["A1042"],
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_integration_shape_is_searchable(tmp_path: Path, shape: str) -> None:
    other = {"role": "user", "content": "something else entirely"}
    with ConversationCodec(tmp_path / "s.log", encryption_key=KEY) as codec:
        codec.extend([other, SHAPES[shape], other])
        for word in FINDS[shape]:
            hits = list(codec.search(word))
            assert [h.seq for h in hits] == [1], (shape, word)
        assert list(codec.search("call_id")) == []  # keys and ids are not searched


SPAN_TEXT = "Your Order is late; a REFUND follows"


@pytest.mark.parametrize(
    ("query", "case_sensitive", "expected"),
    [
        ("refund", False, "REFUND"),  # any case
        ("refund order", False, "Order"),  # the earliest term wins
        ('"is LATE" refund', False, "is late"),  # a phrase is one term
        ("order", True, None),  # exact case: "order" is not "Order"
        ("Order", True, "Order"),
        ("absent refund", False, "REFUND"),  # where a term is, not a verdict on the message
        ("", False, None),
        (None, False, None),
    ],
)
def test_query_span_finds_keywords_for_highlighting(
    query: str | None, case_sensitive: bool, expected: str | None
) -> None:
    """The CLI highlights with the library's own matcher (issue 17), keywords included."""
    from conversation_codec.search import Query

    span = Query(query, regex=False, case_sensitive=case_sensitive).span(SPAN_TEXT)
    if expected is None:
        assert span is None
    else:
        start = SPAN_TEXT.index(expected)
        assert span == (start, start + len(expected))


@pytest.mark.parametrize(
    ("query", "case_sensitive", "expected"),
    [
        ("nutmeg", False, False),
        ("cinnamon nutmeg", False, False),
        ("CINNAMON roll", False, True),  # the two terms in two records: a batch may match
        ("STRASSE", False, True),  # casefold("Straße") == "strasse"
        ("Cinnamon", True, False),
        ("cinnamon", True, True),
        ("CAFÉ", False, True),
    ],
)
def test_a_batch_is_skipped_only_when_no_record_can_match(
    query: str, case_sensitive: bool, expected: bool
) -> None:
    """The batch pre-filter (issue 15) joins the batch's raw JSON: every term any one record
    holds is in the join, so a batch it skips holds no match."""
    texts = [b'{"content":"a cinnamon"}', '{"content":"Straße café ROLL"}'.encode()]
    matcher = Query(query, regex=False, case_sensitive=case_sensitive)
    assert matcher.maybe_any(texts) is expected
    if not expected:  # then no record passes the record-by-record pre-filter either
        assert not any(matcher.maybe(t.decode()) for t in texts)

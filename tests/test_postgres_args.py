"""Arguments at their edges answer on PostgreSQL as on files (review r2, defects 6 and 7).

Ints past a bigint (2**63 and up) reach no SQL statement unclamped: ``tail(n)`` and
``to_openai_messages(max_context=n)`` return the whole history, as on files, not a foreign
``OverflowError``; the other int arguments (``wait``'s ``after``, ``get``'s index, ``search``'s
``limit``, ``since``/``until`` as epoch seconds) answer as they do on files. A conversation id
that no backend accepts is refused by ``store.delete`` as by ``store.open``, on a directory
and on a database; one that only a database cannot hold (NUL, over 1024 characters) is a
conversation it does not have (README, "On PostgreSQL").
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec, ConversationStore

pytestmark = pytest.mark.postgres

HISTORY = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "bye"},
]
HUGE = [2**63 - 1, 2**63, 2**64, 10**40]


def _outcome(call: Callable[[ConversationCodec], object], codec: ConversationCodec) -> object:
    """What ``call(codec)`` answers: its value (a search's hits as their messages), or its
    error's type and message."""
    try:
        got = call(codec)
    except Exception as exc:
        return (type(exc), str(exc))
    if isinstance(got, list) and got and hasattr(got[0], "message"):
        return [hit.message for hit in got]
    return got


def _calls(n: int) -> dict[str, Callable[[ConversationCodec], object]]:
    return {
        "tail": lambda c: c.tail(n),
        "to_openai_messages": lambda c: c.to_openai_messages(max_context=n),
        "wait": lambda c: c.wait(n, 0),
        "get": lambda c: c.get(n),
        "get(-n)": lambda c: c.get(-n),
        "timestamp": lambda c: c.timestamp(n),
        "search limit": lambda c: list(c.search(None, limit=n)),
        "search limit newest": lambda c: list(c.search("hi", limit=n, newest_first=True)),
        "search since": lambda c: list(c.search(None, since=n)),
        "search until": lambda c: list(c.search(None, until=n)),
        "search since -n": lambda c: list(c.search(None, since=-n)),
    }


@pytest.mark.parametrize("n", HUGE)
def test_ints_past_a_bigint_answer_on_postgresql_as_on_files(
    postgres_url: str, tmp_path: Path, n: int
) -> None:
    cid = f"args-{uuid.uuid4().hex[:12]}"
    with ConversationStore(postgres_url).open(cid) as codec:
        codec.extend(HISTORY)
    files = ConversationCodec(tmp_path / "c.log")
    files.extend(HISTORY)
    for name, call in _calls(n).items():
        expected = _outcome(call, files)
        # A fresh handle (nothing cached: the first read fetches every timestamp) and one
        # that has read the log already (only what its cache lacks).
        with ConversationStore(postgres_url).open(cid) as fresh:
            assert _outcome(call, fresh) == expected, name
        with ConversationStore(postgres_url).open(cid) as warm:
            warm.load()
            assert _outcome(call, warm) == expected, name
    assert files.tail(n) == HISTORY
    files.close()


@pytest.fixture(params=["directory", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ConversationStore:
    if request.param == "directory":
        return ConversationStore(tmp_path / "store")
    return ConversationStore(request.getfixturevalue("postgres_url"))


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("", ValueError),
        ("\ud800", ValueError),
        (None, TypeError),
        (42, TypeError),
        (b"id", TypeError),
    ],
)
def test_delete_refuses_an_id_no_backend_accepts_as_open_does(
    store: ConversationStore, bad: object, error: type[Exception]
) -> None:
    with pytest.raises(error) as opened:
        store.open(bad)  # type: ignore[arg-type]
    with pytest.raises(error, match=re.escape(str(opened.value))):
        store.delete(bad)  # type: ignore[arg-type]
    assert bad not in store


@pytest.mark.parametrize("odd", ["nul\0inside", "x" * 1025])
def test_delete_of_an_id_a_database_cannot_hold_finds_nothing(
    store: ConversationStore, odd: str
) -> None:
    """Valid on files (and absent there); never stored in a database: False on both."""
    assert store.delete(odd) is False
    assert odd not in store


def test_delete_still_deletes_a_stored_conversation(store: ConversationStore) -> None:
    cid = f"del-{uuid.uuid4().hex[:12]}"
    with store.open(cid) as codec:
        codec.extend(HISTORY)
    assert store.delete(cid) is True
    assert cid not in store
    assert store.delete(cid) is False

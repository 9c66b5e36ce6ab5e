"""The codec's public API on every storage it can run on (issue 13: the storage seam).

``ConversationCodec`` talks to a ``LogStorage``, never to files: the same calls give the
same answers on a log file, on ``":memory:"``, on a storage handed in as ``storage=``, and
on PostgreSQL (through ``ConversationStore``'s URL root, as users open it).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec, ConversationStore, generate_key
from conversation_codec.errors import ConflictError, KeyRequiredError, StorageError
from conversation_codec.storage.memory import MemoryLog

KEY = generate_key()
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
Open = Callable[..., ConversationCodec]


POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)


def _conversation(request: pytest.FixtureRequest) -> str:
    """A conversation id of this test alone (tests share one database per worker)."""
    return hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:24]


@pytest.fixture(params=["file", "memory", "storage=", POSTGRES])
def open_codec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    """Open a codec on one kind of storage (a new, empty log for memory)."""
    opened: list[ConversationCodec] = []
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")  # a fresh cluster per test session

    def make(**options: object) -> ConversationCodec:
        if request.param == "file":
            codec = ConversationCodec(tmp_path / "c.log", **options)  # type: ignore[arg-type]
        elif request.param == "memory":
            codec = ConversationCodec(":memory:", **options)  # type: ignore[arg-type]
        elif request.param == "postgres":
            store = ConversationStore(url, **options)  # type: ignore[arg-type]
            codec = store.open(_conversation(request))
        else:
            codec = ConversationCodec(
                "given", storage=lambda attach: MemoryLog(attach=attach), **options
            )  # type: ignore[arg-type]
        opened.append(codec)
        return codec

    yield make
    for codec in opened:
        codec.close()


@pytest.fixture(params=["file", POSTGRES])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    """Open the same log again and again, as another process or host would."""
    opened: list[ConversationCodec] = []
    root = str(tmp_path) if request.param == "file" else request.getfixturevalue("postgres_url")

    def make(**options: object) -> ConversationCodec:
        codec = ConversationStore(root, **options).open(_conversation(request))  # type: ignore[arg-type]
        opened.append(codec)
        return codec

    yield make
    for codec in opened:
        codec.close()


def _msgs(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"message {i}"} for i in range(start, start + n)]


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "sealed"])
def test_writes_reads_and_search(open_codec: Open, key: str | None) -> None:
    codec = open_codec(encryption_key=key)
    assert codec.load() is None and len(codec) == 0
    assert codec.extend(_msgs(5), timestamps=[T0.replace(hour=h) for h in range(5)]) == list(
        range(5)
    )
    assert codec.append({"role": "assistant", "content": "a refund"}) == 5
    assert codec.get(-1)["content"] == "a refund" and codec.get(0)["content"] == "message 0"
    assert [m["content"] for m in codec.tail(2)] == ["message 4", "a refund"]
    assert [h.seq for h in codec.search("refund")] == [5]
    assert [h.seq for h in codec.between(T0.replace(hour=1), T0.replace(hour=3))] == [1, 2]
    assert codec.timestamp(2) == T0.replace(hour=2)
    assert [m["content"] for m in codec][:2] == ["message 0", "message 1"]
    info = codec.info()
    assert (info.message_count, info.encrypted) == (6, key is not None)
    assert codec.pop() == {"role": "assistant", "content": "a refund"}
    assert len(codec) == 5


def test_save_keeps_its_rule(open_codec: Open) -> None:
    codec = open_codec(encryption_key=KEY)
    codec.save(_msgs(3))
    codec.save([*_msgs(3), *_msgs(1, 3)])  # a pure append
    assert len(codec) == 4
    codec.append({"role": "user", "content": "not loaded"})
    with pytest.raises(ConflictError):
        codec.save(_msgs(2))  # would delete a message this instance was not handed back
    codec.save((codec.load() or [])[:2])
    assert codec.load() == _msgs(2)


def test_save_refuses_to_delete_another_writers_message(reopen: Open) -> None:
    codec = reopen(encryption_key=KEY)
    codec.save(_msgs(4))
    other = reopen(encryption_key=KEY)
    other.append({"role": "user", "content": "from elsewhere"})
    with pytest.raises(ConflictError):
        codec.save(_msgs(2))  # would delete a message this instance never saw
    assert len(other) == 5
    history = codec.load() or []
    codec.save(history[:2])
    assert [m["content"] for m in other.load() or []] == ["message 0", "message 1"]


def test_rewrites_keep_messages_and_times(open_codec: Open) -> None:
    codec = open_codec(encryption_key=KEY)
    codec.extend(_msgs(4), timestamps=[T0.replace(day=d) for d in (1, 2, 3, 4)])
    report = codec.compact()
    assert report.messages == 4
    assert codec.load() == _msgs(4)
    assert codec.prune(T0.replace(day=3)) == 2
    assert codec.timestamp(0) == T0.replace(day=3)
    codec.replace(_msgs(1, 9), timestamps=[T0])
    assert codec.load() == _msgs(1, 9)
    codec.clear()
    assert codec.load() is None


def test_max_messages_and_passwords(open_codec: Open) -> None:
    codec = open_codec(password="correct horse", max_messages=2)
    codec.extend(_msgs(5))
    assert [m["content"] for m in codec.load() or []] == ["message 3", "message 4"]
    codec.change_password("correct horse", "battery staple")
    assert [m["content"] for m in codec.tail(5)] == ["message 3", "message 4"]


def test_rotation_and_keys_across_opens(reopen: Open) -> None:
    codec = reopen(encryption_key=KEY)
    codec.extend(_msgs(3))
    new_key = generate_key()
    codec.rotate_key(new_key)
    assert reopen(encryption_key=new_key).load() == _msgs(3)
    with pytest.raises(KeyRequiredError):
        reopen()


def test_memory_logs_are_private_to_their_codec() -> None:
    with ConversationCodec(":memory:") as a, ConversationCodec(":memory:") as b:
        a.append({"role": "user", "content": "hi"})
        assert len(a) == 1 and len(b) == 0


def test_file_only_features_refuse_clearly_elsewhere() -> None:
    with pytest.raises(ValueError, match="external"):
        ConversationCodec(":memory:", encryption_key=KEY, attachments="external")
    with ConversationCodec(":memory:") as codec, pytest.raises(StorageError, match="verify"):
        codec.verify()


def test_wait_sees_another_writers_append(reopen: Open) -> None:
    import threading

    reader = reopen(encryption_key=KEY)
    writer = reopen(encryption_key=KEY)
    assert reader.wait(-1, timeout=0.05) is False  # empty: nothing after "before the first"
    later = threading.Timer(0.2, lambda: writer.append({"role": "user", "content": "hi"}))
    later.start()
    try:
        assert reader.wait(-1, timeout=30) is True
    finally:
        later.join()
    assert reader.tail(1) == [{"role": "user", "content": "hi"}]
    assert reader.wait(0, timeout=0) is False  # one message: none after seq 0 yet


# -- max_messages: only compact() drops what the window hides (README review, defect 1) --


def _hidden_too(codec: ConversationCodec) -> list[str]:
    """Every stored message's content, those ``max_messages`` hides included: each pop()
    brings the next hidden one into view. Empties the log."""
    out = []
    while (message := codec.pop()) is not None:
        out.append(message["content"])
    return out[::-1]


def _windowed(open_codec: Open, **secrets: object) -> ConversationCodec:
    """Six messages a day apart (days 1..6), opened with a window of the newest three."""
    codec = open_codec(max_messages=3, **secrets)
    codec.extend(_msgs(6), timestamps=[T0.replace(day=d) for d in range(1, 7)])
    assert [m["content"] for m in codec.load() or []] == [f"message {i}" for i in (3, 4, 5)]
    return codec


ALL_SIX = [f"message {i}" for i in range(6)]


def test_max_messages_key_rotation_keeps_hidden_records(open_codec: Open) -> None:
    codec = _windowed(open_codec, encryption_key=KEY)
    assert codec.rotate_key(generate_key()).messages == 6  # a key change is not retention
    assert codec.timestamp(0) == T0.replace(day=4)
    assert _hidden_too(codec) == ALL_SIX


def test_max_messages_password_change_keeps_hidden_records(open_codec: Open) -> None:
    codec = _windowed(open_codec, password="correct horse")
    assert codec.change_password("correct horse", "battery staple").messages == 6
    assert _hidden_too(codec) == ALL_SIX


def test_max_messages_prune_removes_and_counts_hidden_records(open_codec: Open) -> None:
    codec = _windowed(open_codec, encryption_key=KEY)
    assert codec.prune(before=0) == 0  # nothing is older than the epoch
    assert codec.prune(before=T0.replace(day=3)) == 2  # two hidden ones
    assert [m["content"] for m in codec.load() or []] == ["message 3", "message 4", "message 5"]
    assert codec.prune(before=T0.replace(day=5)) == 2  # one hidden, one visible
    assert codec.timestamp(0) == T0.replace(day=5)
    assert _hidden_too(codec) == ["message 4", "message 5"]


def test_max_messages_compact_drops_hidden_records(open_codec: Open) -> None:
    codec = _windowed(open_codec, encryption_key=KEY)
    assert codec.compact().messages == 3  # as documented: compaction drops the rest
    assert _hidden_too(codec) == ["message 3", "message 4", "message 5"]


def test_max_messages_rewriting_save_keeps_hidden_records(open_codec: Open) -> None:
    codec = _windowed(open_codec, encryption_key=KEY)
    window = codec.load() or []
    window[-1] = {"role": "user", "content": "edited"}
    codec.save(window)  # rewrites the window it saw, keeps what it never saw
    assert codec.load() == window
    assert codec.timestamp(0) == T0.replace(day=4)  # kept messages keep their time
    assert [codec.timestamp(i) for i in (-3, -2)] == [T0.replace(day=4), T0.replace(day=5)]
    assert _hidden_too(codec) == [*ALL_SIX[:5], "edited"]


def test_max_messages_save_of_a_growing_list(open_codec: Open) -> None:
    # The list this instance was handed starts where the window was at its load(), even
    # after its own saves pushed that out of view: appends stay appends, an edit rewrites
    # from there, and nothing is stored twice.
    codec = _windowed(open_codec, encryption_key=KEY)
    history = codec.load() or []
    for text in ("a", "b"):
        history.append({"role": "assistant", "content": text})
        codec.save(history)
    assert _hidden_too(codec) == [*ALL_SIX, "a", "b"]
    codec = _windowed(open_codec, encryption_key=KEY)
    history = codec.load() or []
    history.append({"role": "assistant", "content": "a"})
    codec.save(history)
    history[1] = {"role": "user", "content": "edited"}  # message 4, hidden since the save
    codec.save(history)
    expected = [*ALL_SIX[:4], "edited", "message 5", "a"]
    assert [m["content"] for m in codec.load() or []] == expected[-3:]
    assert _hidden_too(codec) == expected


def test_max_messages_save_of_a_list_trimmed_to_the_window(open_codec: Open) -> None:
    codec = _windowed(open_codec, encryption_key=KEY)
    history = [*(codec.load() or []), {"role": "assistant", "content": "a"}]
    codec.save(history)
    history = history[-3:]  # the caller keeps what the window shows
    history[1] = {"role": "user", "content": "edited"}
    codec.save(history)  # rewrites from the window, keeps every record before it
    assert _hidden_too(codec) == [*ALL_SIX[:5], "edited", "a"]


def test_max_messages_save_keeps_its_conflict_rule(open_codec: Open) -> None:
    codec = _windowed(open_codec, encryption_key=KEY)
    window = codec.load() or []
    codec.append({"role": "user", "content": "not loaded"})
    with pytest.raises(ConflictError):
        codec.save(window[:2])  # would delete a message this instance was not handed back
    assert _hidden_too(codec) == [*ALL_SIX, "not loaded"]


# -- max_messages: save() plans from where the caller's list begins (review r2a, 1 3 4 7) --


def _said(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_max_messages_save_after_a_pop_keeps_hidden_records(open_codec: Open) -> None:
    # A pop slides the window back over records the caller's list never held: a save of
    # that list appends to it, and deletes none of them (review r2a, defect 1).
    codec = _windowed(open_codec, encryption_key=KEY)
    history = codec.load() or []
    assert codec.pop() == history.pop()
    history.append(_said("x"))
    codec.save(history)
    assert _hidden_too(codec) == [*ALL_SIX[:5], "x"]
    codec = _windowed(open_codec, encryption_key=KEY)
    history = codec.load() or []
    while history:
        assert codec.pop() == history.pop()
    codec.save([_said("new")])  # the caller's list, emptied by its pops, plus one
    assert _hidden_too(codec) == [*ALL_SIX[:3], "new"]


def test_max_messages_save_after_another_load_stores_nothing_twice(open_codec: Open) -> None:
    # A later load() (to show the window) does not forget where the list held since begins
    # (review r2a, defect 3).
    codec = _windowed(open_codec, encryption_key=KEY)
    history = codec.load() or []
    history.append(_said("a"))
    codec.save(history)
    assert [m["content"] for m in codec.load() or []] == ["message 4", "message 5", "a"]
    history.append(_said("b"))
    codec.save(history)
    assert _hidden_too(codec) == [*ALL_SIX, "a", "b"]


def test_max_messages_edit_among_equal_messages_is_no_append(open_codec: Open) -> None:
    # Tool results repeat ("ok"): replacing the last message of the list held since load()
    # is an edit from where that list begins, not an extension of the window (defect 4).
    codec = open_codec(max_messages=3, encryption_key=KEY)
    codec.extend([_said("a")] + [{"role": "tool", "content": "ok"}] * 4)
    history = codec.load() or []
    history.append({"role": "tool", "content": "ok"})
    codec.save(history)
    history[-1] = _said("bye")
    codec.save(history)
    assert _hidden_too(codec) == ["a", "ok", "ok", "ok", "ok", "bye"]


def test_max_messages_save_after_its_own_append(open_codec: Open) -> None:
    # The list extended with the instance's own append() is a plain extension from where
    # it begins: appended, as without max_messages (review r2a, defect 7).
    codec = _windowed(open_codec, encryption_key=KEY)
    history = codec.load() or []
    codec.append(_said("x"))
    codec.save([*history, _said("x"), _said("y")])
    assert _hidden_too(codec) == [*ALL_SIX, "x", "y"]


def test_max_messages_save_refuses_a_list_it_cannot_place(open_codec: Open) -> None:
    # Appended since load(), then the first message changed: the list held since load()
    # (rewrite from its start) and one trimmed to the window (rewrite from the window)
    # would delete different records. The rest of the list stands where the list held
    # since load() has it: that one (review r1, 5: this raised ConflictError, a list from
    # the last load() must always be placed). When equal messages make the rest stand
    # where the window's list has it too, save() refuses rather than guess.
    codec = _windowed(open_codec, encryption_key=KEY)
    history = [*(codec.load() or []), _said("a")]
    codec.save(history)
    codec.save([_said("edited"), *history[1:]])
    assert _hidden_too(codec) == [*ALL_SIX[:3], "edited", *ALL_SIX[4:], "a"]
    codec = open_codec(max_messages=3, encryption_key=KEY)
    ok = {"role": "tool", "content": "ok"}
    codec.extend([_said("a"), ok, ok, ok])
    history = [*(codec.load() or []), _said("b")]
    codec.save(history)  # a ok ok ok b
    with pytest.raises(ConflictError):
        codec.save([_said("edited"), *history[1:]])  # its rest in place from either start
    assert _hidden_too(codec) == ["a", "ok", "ok", "ok", "b"]


def test_max_messages_save_refuses_an_edit_of_a_list_loaded_before(open_codec: Open) -> None:
    # Another load() handed out a newer list: the one held since the first may still grow
    # (above), but an edit of it is refused rather than rewritten from the newer list's start.
    codec = _windowed(open_codec, encryption_key=KEY)
    history = [*(codec.load() or []), _said("a")]
    codec.save(history)
    shown = codec.load() or []
    with pytest.raises(ConflictError):  # its first message
        codec.save([_said("edited"), *history[1:]])
    history[-1] = _said("edited")
    with pytest.raises(ConflictError):
        codec.save(history)
    # The list handed out last: its first message may change (review r1, 5: this raised
    # ConflictError; no message of it stands where the older list has it).
    shown[0] = _said("edited")
    codec.save(shown)
    assert _hidden_too(codec) == [*ALL_SIX[:4], "edited", "message 5", "a"]


def test_max_messages_save_refuses_a_list_equal_messages_make_ambiguous(open_codec: Open) -> None:
    # All "ok": the list trimmed to the window plus one more "ok" also reads as the list
    # held since load() with nothing new; neither guess is taken.
    codec = open_codec(max_messages=3, encryption_key=KEY)
    ok = {"role": "tool", "content": "ok"}
    codec.extend([_said("a"), ok, ok, ok])
    history = [*(codec.load() or []), ok]
    codec.save(history)  # appended: a ok ok ok ok
    with pytest.raises(ConflictError):
        codec.save([*history[-3:], ok])
    assert _hidden_too(codec) == ["a", "ok", "ok", "ok", "ok"]


def test_max_messages_save_of_an_emptied_list_deletes_the_window(open_codec: Open) -> None:
    # Review r1, defect 4: the second save([]) returned normally and deleted nothing (the
    # empty list fitted the list handed out before too, and was read as that one, unchanged).
    codec = _windowed(open_codec, encryption_key=KEY)
    codec.load()
    codec.save([])  # drops the window; the hidden records stay
    assert [m["content"] for m in codec.load() or []] == ALL_SIX[:3]
    codec.save([])
    assert codec.load() is None
    assert _hidden_too(codec) == []


def test_max_messages_save_after_a_trimming_save_and_a_load(open_codec: Open) -> None:
    # Review r1, defect 5: after a save that trimmed the window, every load() + append +
    # save() raised ConflictError (the list saved before stayed a second reading for ever).
    codec = open_codec(max_messages=3, encryption_key=KEY)
    codec.extend(_msgs(5))
    window = codec.load() or []
    codec.save(window[:1])  # the log holds messages 0 1 2
    for text in ("a", "b"):
        codec.save([*(codec.load() or []), _said(text)])
    assert _hidden_too(codec) == [*ALL_SIX[:3], "a", "b"]


def test_max_messages_save_of_the_list_loaded_before_it_emptied(open_codec: Open) -> None:
    # A list emptied by save([]), grown after another load() showed the window: the one
    # handed out before it, grown, since nothing in it stands where the newer list has it.
    codec = _windowed(open_codec, encryption_key=KEY)
    codec.load()
    codec.save([])
    assert [m["content"] for m in codec.load() or []] == ALL_SIX[:3]
    codec.save([_said("x"), _said("y")])
    assert _hidden_too(codec) == [*ALL_SIX[:3], "x", "y"]


def test_max_messages_save_after_its_own_appends_to_a_new_log(open_codec: Open) -> None:
    # load() before the log existed handed out [] from its start; the instance's own
    # appends then created the log: the list (holding them) still begins there.
    codec = open_codec(max_messages=3, encryption_key=KEY)
    history = codec.load() or []
    for message in _msgs(4):
        codec.append(message)
        history.append(message)
    codec.save([*history, _said("reply")])
    assert _hidden_too(codec) == [*ALL_SIX[:4], "reply"]


def test_max_messages_save_of_the_list_loaded_first_after_more_loads(open_codec: Open) -> None:
    # The caller keeps growing the list of its first load() and shows the window with
    # load() between turns: each save places it where it begins, growing (review r1, (b)).
    codec = _windowed(open_codec, encryption_key=KEY)
    history = codec.load() or []
    for text in ("a", "b", "c"):
        history.append(_said(text))
        codec.save(history)
        codec.load()
        codec.load()
    assert _hidden_too(codec) == [*ALL_SIX, "a", "b", "c"]


# -- transaction() left by an exception (review r2, defect 2) ------------------------------
# PostgreSQL runs the outermost block as one SQL transaction, which an exception leaving it
# rolls back; a file, memory and a store's directory commit each write when its call
# returns, so the writes made before the exception stay (a pop of an older message too).
# Documented on transaction(), in README; pinned both ways here, so a change on either
# side fails loudly rather than drifting.

ROLLS_BACK = {"postgres"}


def _storage_kind(request: pytest.FixtureRequest, fixture: str) -> str:
    return str(request.node.callspec.params[fixture])


def _abort_a_transaction(codec: ConversationCodec) -> None:
    codec.append(_said("first"))
    with pytest.raises(RuntimeError, match="the caller's own error"), codec.transaction():
        codec.append(_said("second"))
        assert codec.pop() == _said("second")
        assert codec.pop() == _said("first")  # committed at once, except on PostgreSQL
        codec.append(_said("third"))
        raise RuntimeError("the caller's own error")


def _contents(codec: ConversationCodec) -> list[str]:
    return [m["content"] for m in codec.load() or []]


def test_a_transaction_left_by_an_exception(
    open_codec: Open, request: pytest.FixtureRequest
) -> None:
    codec = open_codec(encryption_key=KEY)
    _abort_a_transaction(codec)
    rolled_back = _storage_kind(request, "open_codec") in ROLLS_BACK
    assert _contents(codec) == (["first"] if rolled_back else ["third"])
    # An exception caught inside the block does not leave it: nothing is rolled back.
    with codec.transaction():
        codec.append(_said("kept"))
        with contextlib.suppress(RuntimeError), codec.transaction():  # nested: one block
            codec.append(_said("inner"))
            raise RuntimeError("caught")
    assert _contents(codec)[-2:] == ["kept", "inner"]


def test_a_transaction_left_by_an_exception_as_reopened(
    reopen: Open, request: pytest.FixtureRequest
) -> None:
    _abort_a_transaction(reopen(encryption_key=KEY))
    rolled_back = _storage_kind(request, "reopen") in ROLLS_BACK
    assert _contents(reopen(encryption_key=KEY)) == (["first"] if rolled_back else ["third"])

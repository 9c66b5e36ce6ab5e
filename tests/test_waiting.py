"""``wait()`` and seqs under ``max_messages``, on every storage (review r2, defects 4 and 5).

A full window slides by one at every append, so a seq names a given message only until the
next write: what ``append``/``extend`` return, ``get``, ``Hit.seq`` and ``wait(after)`` all
count from the window's first message. ``wait(after)`` takes ``after`` against the window
as it is at its first look, and wakes once a message newer than the one there is stored,
however the window slides meanwhile (it waited for ever once the window was full: r2, 4).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec, ConversationStore, generate_key
from conversation_codec.aio import AsyncConversationCodec
from conversation_codec.storage.base import LogFormat, Polling
from conversation_codec.storage.memory import MemoryLog

KEY = generate_key()
POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)
Pair = Callable[..., tuple[ConversationCodec, ConversationCodec]]


def _msgs(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"message {i}"} for i in range(start, start + n)]


def _contents(messages: list[dict[str, str]]) -> list[str]:
    return [m["content"] for m in messages]


@pytest.fixture(params=["file", "memory", "store", POSTGRES])
def handles(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    """Open one log twice, as two processes would (memory: one codec, used twice)."""
    opened: list[ConversationCodec] = []
    kind = request.param
    root = request.getfixturevalue("postgres_url") if kind == "postgres" else str(tmp_path)
    conversation = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:24]

    def one(**options: object) -> ConversationCodec:
        if kind == "file":
            codec = ConversationCodec(tmp_path / "c.log", **options)  # type: ignore[arg-type]
        else:
            codec = ConversationStore(root, **options).open(conversation)  # type: ignore[arg-type]
        opened.append(codec)
        return codec

    def make(**options: object) -> tuple[ConversationCodec, ConversationCodec]:
        if kind == "memory":
            codec = ConversationCodec(":memory:", **options)  # type: ignore[arg-type]
            opened.append(codec)
            return codec, codec
        return one(**options), one(**options)

    yield make
    for codec in opened:
        codec.close()


# -- append/extend return window positions (r2, 5) ------------------------------------------


def test_seqs_under_max_messages_are_window_positions(handles: Pair) -> None:
    codec, _ = handles(max_messages=3, encryption_key=KEY)
    assert codec.extend(_msgs(2)) == [0, 1]  # the window is not full: positions are seqs
    assert codec.append({"role": "user", "content": "message 2"}) == 2
    # Positions in the window this write left: the two it pushed out come back negative,
    # and a negative seq counts from the end: it does not address them.
    assert codec.extend(_msgs(2, 3)) == [1, 2]
    assert codec.extend(_msgs(4, 5)) == [-1, 0, 1, 2]
    assert codec.get(-1)["content"] == "message 8" and codec.get(0)["content"] == "message 6"
    for i in (9, 10):  # a full window: every append's message is at position N - 1
        assert codec.append({"role": "user", "content": f"message {i}"}) == 2
    assert _contents(codec.tail(5)) == ["message 8", "message 9", "message 10"]
    codec.append({"role": "assistant", "content": "a refund"})
    assert [(h.seq, h.message["content"]) for h in codec.search("refund")] == [(2, "a refund")]
    assert [h.seq for h in codec.search(None)] == [0, 1, 2]  # Hit.seq: the same positions


# -- wait(after) under a full window (r2, 4) ------------------------------------------------


@pytest.mark.parametrize("window", [1, 3, None], ids=["max1", "max3", "unbounded"])
def test_wait_wakes_for_a_newer_message_under_a_full_window(
    handles: Pair, window: int | None
) -> None:
    reader, writer = handles(max_messages=window, encryption_key=KEY)
    seq = writer.extend(_msgs(5))[-1]  # the live-tail pattern: wait after what was written
    assert seq == len(reader) - 1 == (4 if window is None else window - 1)
    assert reader.wait(seq, timeout=0) is False  # nothing newer yet
    assert reader.wait(seq - 1, timeout=0) is True  # the message at seq is newer
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(reader.wait(seq, timeout=20)))
    waiter.start()
    # Append until the waiter wakes: one appended before its first look only moves what
    # ``seq`` names (the window slid), so the next one is newer. No timing is asserted.
    sent = 0
    while waiter.is_alive() and sent < 400:
        writer.append({"role": "assistant", "content": f"new {sent}"})
        sent += 1
        waiter.join(0.05)
    waiter.join()
    assert woke == [True]  # it returned False after 20 s (never woke) before the fix
    assert _contents(reader.tail(1)) == [f"new {sent - 1}"]


class _Feeding(MemoryLog):
    """A memory log whose ``wait()`` pauses run the next of ``feeds`` (another writer's work
    between two looks) instead of sleeping: how many looks a wait takes is exact."""

    def __init__(self, *, attach: Callable[[bytes], LogFormat] | None = None) -> None:
        super().__init__(attach=attach)
        self.feeds: list[Callable[[], object]] = []
        self.pauses = 0

    def watch(self) -> Polling:
        log = self

        class Feed(Polling):
            def sleep(self, most: float | None) -> None:
                log.pauses += 1
                log.feeds.pop(0)()

            async def pause(self, most: float | None) -> None:
                self.sleep(most)

        return Feed()


def _fed(**options: object) -> tuple[ConversationCodec, _Feeding]:
    logs: list[_Feeding] = []

    def opener(attach: Callable[[bytes], LogFormat]) -> _Feeding:
        logs.append(_Feeding(attach=attach))
        return logs[-1]

    codec = ConversationCodec("fed", storage=opener, **options)  # type: ignore[arg-type]
    return codec, logs[0]


def _say(codec: ConversationCodec, text: str) -> Callable[[], int]:
    return lambda: codec.append({"role": "user", "content": text})


@pytest.mark.parametrize(
    ("stored", "after", "appends"),
    [
        (0, -1, 1),  # empty: any message
        (2, 1, 1),  # not full: positions are seqs
        (2, 2, 2),  # one past the end: the window fills, then slides
        (5, 1, 0),  # full: the message at 2 is newer than the one at 1
        (5, 2, 1),  # full, the newest: the next append
        (5, 3, 2),  # full, one past the newest: the one after next
        (5, -1, 0),  # -1: any message
    ],
)
def test_wait_counts_from_the_window_at_its_first_look(
    stored: int, after: int, appends: int
) -> None:
    codec, log = _fed(max_messages=3)
    if stored:
        codec.extend(_msgs(stored))
    log.feeds = [_say(codec, f"new {i}") for i in range(appends)]
    assert codec.wait(after, timeout=None) is True
    assert log.pauses == appends and log.feeds == []


def test_wait_after_a_compaction_counts_from_the_compacted_window() -> None:
    # A compaction drops what the window hides (the log has fewer records: a count of
    # records alone would wait for those again) and keeps the window as it was: ``after``
    # is taken again in the rewritten log, where it names the same message.
    codec, log = _fed(max_messages=3, encryption_key=KEY)
    codec.extend(_msgs(6))
    log.feeds = [codec.compact, _say(codec, "new")]
    assert codec.wait(2) is True
    assert log.pauses == 2
    assert _contents(codec.load() or []) == ["message 4", "message 5", "new"]


def test_wait_after_a_pop_counts_positions() -> None:
    # A pop takes the message at ``after`` away; the next append takes its position, and
    # the one after it is the first newer one (as without a window: positions, not messages).
    codec, log = _fed(max_messages=3)
    codec.extend(_msgs(5))
    log.feeds = [codec.pop, _say(codec, "again"), _say(codec, "newer")]
    assert codec.wait(2) is True
    assert log.pauses == 3


def test_async_wait_counts_from_the_window_at_its_first_look() -> None:
    codec, log = _fed(max_messages=3)
    codec.extend(_msgs(5))
    log.feeds = [_say(codec, "a"), _say(codec, "b")]

    async def main() -> bool:
        return await AsyncConversationCodec(codec).wait(3, timeout=None)

    assert asyncio.run(main()) is True  # it never woke before the fix
    assert log.pauses == 2

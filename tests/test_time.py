"""_time.py: one datetime <-> epoch-microsecond rule for every time argument.

A naive datetime is refused alike by ``append(timestamp=)``, ``extend(timestamps=)``,
``prune()``, ``search(since=, until=)``, ``between()`` and ``ConversationStore.prune()`` and
``.search()`` — with ``NaiveDatetimeError`` (a ``ValueError``), nothing stored is changed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conversation_codec import (
    ConversationCodec,
    ConversationCodecError,
    ConversationStore,
    NaiveDatetimeError,
)
from conversation_codec._time import EPOCH, iso_z, parse_iso, to_datetime, to_us

from conftest import KEY, Clock

NAIVE = datetime(2030, 1, 1, 12, 0)
AWARE = NAIVE.replace(tzinfo=timezone.utc)


def test_conversions_are_exact_and_agree() -> None:
    us = (AWARE - EPOCH) // timedelta(microseconds=1)
    assert to_us(AWARE, "t") == us == parse_iso("2030-01-01T12:00:00Z", "t")
    assert parse_iso("2030-01-01T12:00", "t") == us  # a written time without offset: UTC
    assert parse_iso("2030-01-01T13:00+01:00", "t") == us
    assert to_us(AWARE.timestamp(), "t") == us
    assert to_datetime(us) == AWARE and iso_z(us) == "2030-01-01T12:00:00Z"
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_iso("yesterday", "since")
    with pytest.raises(TypeError):
        to_us("2030-01-01", "timestamp", text=False)


CODEC_CALLS: dict[str, Callable[[ConversationCodec], Any]] = {
    "append(timestamp=)": lambda c: c.append({"role": "user", "content": "x"}, timestamp=NAIVE),
    "extend(timestamps=)": lambda c: c.extend(
        [{"role": "user", "content": "x"}], timestamps=[NAIVE]
    ),
    "prune(before=)": lambda c: c.prune(NAIVE),
    "search(since=)": lambda c: list(c.search(None, since=NAIVE)),
    "search(until=)": lambda c: list(c.search(None, until=NAIVE)),
}


@pytest.mark.parametrize("call", CODEC_CALLS.values(), ids=CODEC_CALLS.keys())
def test_codec_refuses_naive_datetimes(tmp_path: Path, call: Callable[..., Any]) -> None:
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY, clock=Clock()) as codec:
        codec.extend([{"role": "user", "content": str(i)} for i in range(3)])
        before = path.read_bytes()
        with pytest.raises(NaiveDatetimeError, match="aware") as err:
            call(codec)
        assert isinstance(err.value, ValueError | ConversationCodecError)
        assert path.read_bytes() == before and len(codec) == 3
        assert codec.prune(AWARE) == 3  # the same time, aware, is taken


STORE_CALLS: dict[str, Callable[[ConversationStore], Any]] = {
    "prune(older_than=)": lambda s: s.prune(older_than=NAIVE),
    "search(since=)": lambda s: list(s.search(None, since=NAIVE)),
}


@pytest.mark.parametrize("call", STORE_CALLS.values(), ids=STORE_CALLS.keys())
def test_store_refuses_naive_datetimes(tmp_path: Path, call: Callable[..., Any]) -> None:
    store = ConversationStore(tmp_path / "root", encryption_key=KEY)
    with store.open("a") as codec:
        codec.append({"role": "user", "content": "kept"})
    with pytest.raises(NaiveDatetimeError, match="aware"):
        call(store)
    assert store.ids() == ["a"]

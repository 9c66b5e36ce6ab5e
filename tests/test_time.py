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


def utc(*fields: int) -> int:
    """Microseconds since the epoch of a UTC wall time."""
    return (datetime(*fields, tzinfo=timezone.utc) - EPOCH) // timedelta(microseconds=1)


# Expected values written out, not asked of datetime.fromisoformat: its grammar differs
# between 3.10 and 3.11, and CI runs one of them (defect: 3.10 refused most of these).
ISO_FORMS = {
    "2001-09-09T01:46:40Z": utc(2001, 9, 9, 1, 46, 40),
    "2001-09-09T01:46:40.5Z": utc(2001, 9, 9, 1, 46, 40, 500_000),
    "2001-09-09T01:46:40,25Z": utc(2001, 9, 9, 1, 46, 40, 250_000),
    "2001-09-09T01:46:40.1234+00:00": utc(2001, 9, 9, 1, 46, 40, 123_400),
    "2001-09-09T01:46:40.123456789Z": utc(2001, 9, 9, 1, 46, 40, 123_456),  # beyond µs: cut
    "2001-09-09T01:46:40+0000": utc(2001, 9, 9, 1, 46, 40),
    "2001-09-09T01:46:40-00:00": utc(2001, 9, 9, 1, 46, 40),
    "2001-09-09T03:16:40+0130": utc(2001, 9, 9, 1, 46, 40),
    "2001-09-09T03:46:40+02": utc(2001, 9, 9, 1, 46, 40),
    "2001-09-08T20:46:40-05:00": utc(2001, 9, 9, 1, 46, 40),
    "20010909T014640Z": utc(2001, 9, 9, 1, 46, 40),
    "20010909T014640.5+0000": utc(2001, 9, 9, 1, 46, 40, 500_000),
    "20010909T0146": utc(2001, 9, 9, 1, 46),
    "20010909": utc(2001, 9, 9),
    "2001-09-09": utc(2001, 9, 9),
    "2001-09-09T01": utc(2001, 9, 9, 1),
    "2001-09-09T01:46": utc(2001, 9, 9, 1, 46),
    "2001-09-09 01:46:40": utc(2001, 9, 9, 1, 46, 40),  # RFC 3339: a space, t and z too
    "2001-09-09t01:46:40z": utc(2001, 9, 9, 1, 46, 40),
    "2001-W36-7": utc(2001, 9, 9),  # ISO week date: Sunday of week 36
    "2001W367T014640Z": utc(2001, 9, 9, 1, 46, 40),
    "2001-W36": utc(2001, 9, 3),  # its Monday
    " 2001-09-09T01:46:40Z\n": utc(2001, 9, 9, 1, 46, 40),
    "0001-01-01T00:00:00Z": utc(1, 1, 1),
    "9999-12-31T23:59:59.999999Z": utc(9999, 12, 31, 23, 59, 59, 999_999),
}


@pytest.mark.parametrize("text", ISO_FORMS)
def test_iso_8601_forms_parse_alike_on_every_python(text: str) -> None:
    assert parse_iso(text, "t") == ISO_FORMS[text]


NOT_ISO = [
    "2001-09-09T01:46:40.",  # a separator without a fraction
    "2001-09-09T01:46.5",  # a fraction of a minute (3.11 reads it as 0.5 s)
    "2001-09-09T24:00",
    "2001-09-09T23:59:60",  # leap seconds: datetime has none
    "2001-09-09T01:46:40+24:00",
    "2001-09-09T01:46:40+01:60",
    "2001-09-09T01:46:40+01:30:15",  # offsets with seconds: neither ISO 8601 nor RFC 3339
    "2001-09-09Z",  # an offset without a time
    "2001-09-09x01:46",  # 3.11 takes any character between date and time
    "2001-13-01",
    "2001-02-29",
    "2001-W54-1",
    "2001-W36-8",
    "2001-252",  # ordinal dates
    "+2001-09-09",
    "2001-09",
    "\uff12\uff10\uff10\uff11-09-09",  # other scripts' digits
    "2001-09-09T1:46",
    "",
]


@pytest.mark.parametrize("text", NOT_ISO)
def test_what_is_not_an_iso_8601_time_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not an ISO-8601 time"):
        parse_iso(text, "since")

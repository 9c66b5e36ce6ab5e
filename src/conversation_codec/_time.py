"""The one rule between datetimes and microseconds since the epoch (FORMAT.md §6).

Records carry ``ts_us``, microseconds since 1970-01-01T00:00:00Z. Every conversion in the
package goes through here, so there is one answer to each question:

- an aware ``datetime`` is converted exactly (integer microseconds, never float seconds);
- a naive ``datetime`` is refused with :class:`~conversation_codec.NaiveDatetimeError`
  everywhere a caller passes a time (Python takes it as local time, others as UTC: no guess);
- ``int``/``float`` are epoch seconds (rounded to the microsecond);
- an ISO-8601 string (where a query accepts text, e.g. the CLI's ``--since``) with no offset
  means UTC: a written time is read as the format's own zone, like a trailing ``Z``; one
  grammar (:func:`parse_iso`), not ``datetime.fromisoformat`` (its grammar grew in 3.11);
- microseconds come back as aware UTC datetimes (:func:`to_datetime`).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from datetime import time as dt_time

from .errors import NaiveDatetimeError

__all__ = [
    "EPOCH",
    "MAX_US",
    "NOT_A_CUTOFF",
    "ONE_US",
    "US_PER_S",
    "age_cutoff_us",
    "datetime_to_us",
    "iso_z",
    "parse_iso",
    "to_datetime",
    "to_us",
]

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ONE_US = timedelta(microseconds=1)
US_PER_S = 1_000_000
MAX_US = 253_402_300_800 * US_PER_S  # 10000-01-01T00:00:00Z: where datetime ends
# A store's prune/pack(older_than=) takes no number: "older than 30" reads as an age as
# readily as epoch seconds, and taking one for the other deletes the wrong conversations.
NOT_A_CUTOFF = (
    "older_than must be an aware datetime (the cutoff) or a timedelta (an age), not a number, "
    "which could mean an age or epoch seconds; for epoch seconds pass "
    "datetime.fromtimestamp(seconds, timezone.utc)"
)


def datetime_to_us(value: datetime, name: str) -> int:
    """Microseconds since the epoch of the aware datetime ``value`` (``name`` in errors).

    :raises NaiveDatetimeError: ``value`` has no time zone.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise NaiveDatetimeError(
            f"{name} is a naive datetime (no time zone); pass an aware one, "
            "e.g. datetime.now(timezone.utc) or datetime(..., tzinfo=timezone.utc)"
        )
    return (value - EPOCH) // ONE_US


def age_cutoff_us(now_us: int, age: timedelta, name: str) -> int:
    """Microseconds since the epoch of ``age`` before ``now_us``: the cutoff of a prune or
    pack by age. Computed in integers, so an age reaching before year 1 (``timedelta.max``)
    is a cutoff that nothing is older than, not an ``OverflowError``. Zero is ``now_us``.

    :raises ValueError: ``age`` is negative (a cutoff in the future would take everything).
    """
    if age < timedelta(0):
        raise ValueError(f"{name} must not be negative: it is an age (how long ago), not {age}")
    return now_us - age // ONE_US


# The one grammar of a time given as text, the same on every Python (3.10's
# datetime.fromisoformat took a fraction of 3 or 6 digits only, no "+0000" and no basic
# format; 3.11's takes those, and also "any character" for the T, offsets with seconds
# and "01:46.5" as 0.5 s): ISO 8601 / RFC 3339 calendar or week dates, each part extended or
# basic, a fraction of a second only (digits beyond the microsecond are cut).
_ISO_TIME = re.compile(
    r"(?:(?P<year>[0-9]{4})(?:-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"|(?P<bmonth>[0-9]{2})(?P<bday>[0-9]{2})"
    r"|-W(?P<week>[0-9]{2})(?:-(?P<wday>[1-7]))?|W(?P<bweek>[0-9]{2})(?P<bwday>[1-7])?))"
    r"(?:[Tt ](?P<hour>[0-9]{2})(?::(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2}))?"
    r"|(?P<bminute>[0-9]{2})(?P<bsecond>[0-9]{2})?)?"
    r"(?:[.,](?P<fraction>[0-9]+))?"
    r"(?P<zone>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)


def parse_iso(text: str, name: str) -> int:
    """Microseconds since the epoch of an ISO-8601 string (no offset: UTC).

    Accepted, the same on every Python: a date ``2001-09-09``, ``20010909``, ``2001-W36-7``
    or ``2001W367`` (a week without a day: its Monday), then optionally ``T`` (or ``t``, or
    a space) and a time ``01``, ``01:46``, ``01:46:40`` or ``0146``, ``014640``, a fraction
    of a second after the seconds (``.5``, ``,5``: to the microsecond), and an offset ``Z``,
    ``z``, ``+01``, ``+01:30`` or ``+0130``. Surrounding whitespace is ignored.

    :raises ValueError: ``text`` is not an ISO-8601 time.
    """
    match = _ISO_TIME.fullmatch(text.strip())
    try:
        if match is None or (match["fraction"] and not (match["second"] or match["bsecond"])):
            raise ValueError
        return (_iso_datetime(match.groupdict()) - EPOCH) // ONE_US
    except ValueError:  # month 13, hour 24, second 60, week 54, offset >= 24 h, ...
        raise ValueError(f"{name}={text!r} is not an ISO-8601 time") from None


def _iso_datetime(part: dict[str, str | None]) -> datetime:
    """The aware datetime of ``_ISO_TIME``'s groups (no offset: UTC)."""

    def number(*names: str) -> int:
        return int(next((v for v in map(part.get, names) if v), "0"))

    offset = timedelta(0)
    zone = part["zone"]
    if zone is not None and zone not in "Zz":
        hours, minutes = int(zone[1:3]), int(zone[3:].lstrip(":") or 0)
        if minutes > 59:  # timedelta would carry them into the hours
            raise ValueError
        offset = timedelta(hours=hours, minutes=minutes) * (-1 if zone[0] == "-" else 1)
    time = (
        number("hour"),
        number("minute", "bminute"),
        number("second", "bsecond"),
        int((part["fraction"] or "0")[:6].ljust(6, "0")),
    )
    if part["week"] or part["bweek"]:
        week = number("week", "bweek")
        date = datetime.fromisocalendar(number("year"), week, number("wday", "bwday") or 1)
        return datetime.combine(date.date(), dt_time(*time), timezone(offset))
    return datetime(
        number("year"), number("month", "bmonth"), number("day", "bday"), *time, timezone(offset)
    )


def to_us(value: datetime | int | float | str, name: str, *, text: bool = True) -> int:
    """Microseconds since the epoch of a time argument: an aware datetime, epoch seconds,
    or (``text``) an ISO-8601 string. ``name`` is the argument's name in errors.

    :raises NaiveDatetimeError: a naive datetime.
    :raises ValueError: a string that is not an ISO-8601 time; a NaN or infinite number.
    :raises TypeError: any other type.
    """
    if isinstance(value, datetime):
        return datetime_to_us(value, name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # round() would say "cannot convert float NaN"
            raise ValueError(f"{name} must be a finite number of epoch seconds, not {value!r}")
        return round(value * US_PER_S)
    if text and isinstance(value, str):
        return parse_iso(value, name)
    if text:
        raise TypeError(f"{name} must be a datetime, epoch seconds or an ISO-8601 string")
    raise TypeError(f"{name} must be an aware datetime or epoch seconds, not {value!r}")


def to_datetime(us: int) -> datetime:
    """The aware UTC datetime of ``us`` microseconds since the epoch (exact)."""
    return EPOCH + timedelta(microseconds=us)


def iso_z(us: int) -> str:
    """``us`` as ISO-8601 in UTC with a ``Z`` (reports, problem messages)."""
    return to_datetime(us).isoformat().replace("+00:00", "Z")

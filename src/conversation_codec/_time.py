"""The one rule between datetimes and microseconds since the epoch (FORMAT.md §6).

Records carry ``ts_us``, microseconds since 1970-01-01T00:00:00Z. Every conversion in the
package goes through here, so there is one answer to each question:

- an aware ``datetime`` is converted exactly (integer microseconds, never float seconds);
- a naive ``datetime`` is refused with :class:`~conversation_codec.NaiveDatetimeError`
  everywhere a caller passes a time (Python takes it as local time, others as UTC: no guess);
- ``int``/``float`` are epoch seconds (rounded to the microsecond);
- an ISO-8601 string (where a query accepts text, e.g. the CLI's ``--since``) with no offset
  means UTC: a written time is read as the format's own zone, like a trailing ``Z``;
- microseconds come back as aware UTC datetimes (:func:`to_datetime`).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

from .errors import NaiveDatetimeError

__all__ = [
    "EPOCH",
    "MAX_US",
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


def parse_iso(text: str, name: str) -> int:
    """Microseconds since the epoch of an ISO-8601 string (no offset: UTC; ``Z`` allowed).

    :raises ValueError: ``text`` is not an ISO-8601 time.
    """
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an ISO-8601 time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - EPOCH) // ONE_US


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

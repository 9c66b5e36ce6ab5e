"""Keyword and date-range queries: what a search matches, and how times are given.

Matching rules (``Query``):

* The text searched in a message is what a person would search: a string ``content``; the
  ``text`` of each content part (``{"type": "text", "text": ...}`` and friends); and each
  tool call's function name and arguments (``tool_calls[].function.name/arguments``, and the
  older ``function_call``). Keys, roles, ids and other fields are not searched.
* Case-insensitive by default, with Unicode case folding (``"STRASSE"`` finds ``"Straße"``).
* Several words must all appear (AND), each as a substring (``"refund"`` finds
  ``"refunds"``). A double-quoted phrase must appear as written, with its spaces.
* ``regex=True`` takes the query as one Python regular expression (``re.search``).
* ``None`` (or an empty query) matches every message: a pure date or role filter.

Times (``to_us``) may be aware datetimes, naive datetimes (taken as UTC), epoch seconds, or
ISO-8601 strings. ``since`` is inclusive, ``until`` exclusive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["Hit", "Query", "parse_roles", "to_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)
# Bytes msgspec escapes inside JSON strings: a term holding one cannot be looked for in raw
# JSON text, so such a query skips the raw pre-filter.
_WORDS = re.compile(r'"([^"]*)"?|([^\s"]+)')  # a "quoted phrase" (closing quote optional) or a word
_ESCAPED = re.compile(r'["\\\x00-\x1f]')


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: the record's position, its time (UTC), and the message."""

    seq: int
    timestamp: datetime
    message: dict[str, Any]


def to_us(value: datetime | int | float | str, name: str) -> int:
    """Convert a query time to microseconds since the epoch (naive datetimes are UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name}={value!r} is not an ISO-8601 time") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return (value - _EPOCH) // _ONE_US
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return round(value * 1_000_000)
    raise TypeError(f"{name} must be a datetime, epoch seconds or an ISO-8601 string")


def parse_roles(role: str | Iterable[str] | None) -> frozenset[str] | None:
    """Normalise ``role=``: one role, a collection of roles, or None for any."""
    if role is None:
        return None
    if isinstance(role, str):
        return frozenset((role,))
    if isinstance(role, (set, frozenset, list, tuple)) and all(isinstance(r, str) for r in role):
        return frozenset(role)
    raise TypeError(f"role must be a string or a set of strings, not {role!r}")


def searchable_text(message: dict[str, Any]) -> Iterable[str]:
    """Yield the pieces of a message that a search looks at (see the module docstring)."""
    content = message.get("content")
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]
            elif isinstance(part, str):
                yield part
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                yield from (v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str))
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        yield from (v for v in (legacy.get("name"), legacy.get("arguments")) if isinstance(v, str))


class Query:
    """A compiled keyword query; ``matches`` decides, ``maybe`` pre-filters raw JSON text."""

    __slots__ = ("_fold", "_pattern", "_terms", "raw_terms")

    def __init__(self, query: str | None, *, regex: bool, case_sensitive: bool) -> None:
        self._fold: Callable[[str], str] = (lambda s: s) if case_sensitive else str.casefold
        self._pattern: re.Pattern[str] | None = None
        self._terms: list[str] = []
        self.raw_terms: list[str] | None = None
        if query is None or not query.strip():
            return
        if regex:
            try:
                self._pattern = re.compile(query, 0 if case_sensitive else re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {query!r}: {exc}") from None
            return
        words = [phrase or word for phrase, word in _WORDS.findall(query)]
        self._terms = [self._fold(w) for w in words if w]
        if not any(_ESCAPED.search(t) for t in self._terms):
            self.raw_terms = self._terms

    @property
    def everything(self) -> bool:
        """True when the query matches every message."""
        return self._pattern is None and not self._terms

    def maybe(self, raw_json: str) -> bool:
        """Return False only when no message with this JSON text can match (cheap)."""
        if self.raw_terms is None:
            return True
        folded = self._fold(raw_json)
        return all(t in folded for t in self.raw_terms)

    def matches(self, message: dict[str, Any]) -> bool:
        """Return True when the message's searchable text satisfies the query."""
        if self.everything:
            return True
        pieces = list(searchable_text(message))
        if self._pattern is not None:
            return any(self._pattern.search(p) for p in pieces)
        text = self._fold("\n".join(pieces))
        return all(t in text for t in self._terms)

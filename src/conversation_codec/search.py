r"""Keyword and date-range queries: what a search matches, and how times are given.

Matching rules (``Query``):

* The text searched in a message is what a person would search, in every shape the
  integrations store:

  - chat completions: a string ``content``; the ``text`` of each content part (``text``,
    ``input_text``, ``output_text``); each tool call's name and arguments
    (``tool_calls[].function.name/arguments``, and the older ``function_call``);
  - openai-agents items: ``message`` items by their content parts; ``function_call`` items
    by ``name`` and ``arguments``; ``function_call_output`` by ``output``; ``reasoning`` by
    its ``summary`` texts;
  - LangChain records: ``tool_calls[].name`` and ``args`` (an object, searched as its JSON
    text); a ``ToolMessage`` by its ``content``;
  - Anthropic content blocks: ``text``; ``tool_use`` by ``name`` and ``input``;
    ``tool_result`` by its ``content``.

  Roles, ids and other fields are not searched.
* Case-insensitive by default, with Unicode case folding (``"STRASSE"`` finds ``"Straße"``).
* Several words must all appear (AND), each as a substring (``"refund"`` finds
  ``"refunds"``). A double-quoted phrase must appear as written, with its spaces.
* ``regex=True`` takes the query as one regular expression, run by RE2 (the optional
  ``google-re2`` package: ``pip install "conversation-codec[regex]"``), whose time is linear
  in the text: no pattern can hang a search, as ``(a+)+$`` does with Python's backtracking
  ``re``. Without the package, ``regex=True`` raises ``SearchError``; there is no fallback to
  ``re``. RE2 takes Python's syntax except backreferences, lookaround, atomic groups and
  possessive quantifiers (refused as invalid), and differs in three ways: ``\d``, ``\w``,
  ``\s`` and ``\b`` are ASCII-only (``\pL``, ``\pN`` match Unicode letters and digits);
  ``$`` matches only at the very end, not before a final newline; ``\Z`` is spelt ``\z``.
  Case-insensitive matching is simple Unicode case folding, as with ``re.IGNORECASE``: ``"é"``
  finds ``"É"``, but ``"strasse"`` does not find ``"Straße"`` (keyword queries do).
* ``None`` (or an empty query) matches every message: a pure date or role filter.

Times (``to_us``, from ``_time``) may be aware datetimes, epoch seconds, or ISO-8601 strings
(no offset: UTC); a naive datetime raises ``NaiveDatetimeError``. ``since`` is inclusive,
``until`` exclusive.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ._time import to_us
from .errors import QueryTypeError, SearchError

__all__ = ["Hit", "Query", "SearchQuery", "parse_roles", "raw_pieces", "to_us"]

# Bytes msgspec escapes inside JSON strings: a term holding one cannot be looked for in raw
# JSON text, so such a query skips the raw pre-filter.
_WORDS = re.compile(r'"([^"]*)"?|([^\s"]+)')  # a "quoted phrase" (closing quote optional) or a word
_ESCAPED = re.compile(r'["\\\x00-\x1f]')
# An object-valued argument is searched as its ``json.dumps`` text (``_json_text``), which
# the stored JSON need not spell the same way: json.dumps writes ", " and ": " (msgspec ","
# and ":"; another writer may put whitespace between any tokens, FORMAT.md §5.2) and floats
# as Python does (1e+16, 1e-05; msgspec 1e16, 0.00001). ``raw_pieces`` keeps of a term only
# what any stored spelling holds too: it drops what may be (part of) a number and splits
# at the structural characters.
_NUMBER_RUN = re.compile(r"[0-9.e+\-]+")
_NUMBER_PART = re.compile(r"[+\-]?[0-9]*\.?[0-9]*(?:e[+\-]?[0-9]*)?")  # in -1.5e+16
_STRUCTURE = re.compile(r"[\[\]{},:]")
# An object-valued argument (``_call_text``): the stored JSON of a message without one holds
# each searched term whole.
_OBJECT_ARG = re.compile(r'"(?:args|arguments|input)"\s*:\s*[\[{]')
_OBJECT_BYTES = re.compile(_OBJECT_ARG.pattern.encode())


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: the record's position, its time (UTC), and the message.

    ``seq`` is the position in the visible history when the search began (under
    ``max_messages``: in the window then, which a later append slides; README)."""

    seq: int
    timestamp: datetime
    message: dict[str, Any]


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
    yield from _text_of(message.get("content"))
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                fn = call.get("function")  # chat completions; LangChain has name/args flat
                yield from _call_text(fn if isinstance(fn, dict) else call)
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        yield from _call_text(legacy)
    kind = message.get("type")
    if kind == "function_call":  # openai-agents items (the Responses API shapes)
        yield from _call_text(message)
    elif kind == "function_call_output":
        yield from _text_of(message.get("output"))
    elif kind == "reasoning":
        yield from _text_of(message.get("summary"))


def _text_of(value: object) -> Iterable[str]:
    """A string, or the text of content parts / blocks: ``text`` (text, input_text,
    output_text, summary_text parts), Anthropic ``tool_use`` (name, input) and
    ``tool_result`` (its own content), and bare strings in a list."""
    if isinstance(value, str):
        yield value
        return
    if not isinstance(value, list):
        return
    for part in value:
        if isinstance(part, str):
            yield part
        elif isinstance(part, dict):
            if isinstance(part.get("text"), str):
                yield part["text"]
            kind = part.get("type")
            if kind == "tool_use":
                yield from _call_text(part)
            elif kind == "tool_result":
                yield from _text_of(part.get("content"))


def _call_text(call: dict[str, Any]) -> Iterable[str]:
    """A tool call's name and arguments: ``arguments`` as the JSON string chat APIs store,
    or ``args``/``input`` as an object (LangChain, Anthropic), searched as its JSON text."""
    if isinstance(call.get("name"), str):
        yield call["name"]
    for key in ("arguments", "args", "input"):
        value = call.get(key)
        if isinstance(value, str):
            yield value
        elif isinstance(value, (dict, list)):
            yield _json_text(value)


def _json_text(value: dict[str, Any] | list[Any]) -> str:
    return json.dumps(value, ensure_ascii=False)


def raw_pieces(term: str) -> list[str]:
    """Return the parts of a (folded) term that the stored JSON text of a message holds
    whenever the matcher finds the term in the message's searchable text.

    A string value is stored as it is searched (a term holding a character JSON escapes
    skips the pre-filter). An object-valued argument is searched as its ``json.dumps``
    text, in which a number token sits between ``[``/`` `` and ``,``/``]``/``}``: a run of
    number characters there that could be part of one is dropped (``"1042, 1043"`` keeps
    nothing of its own, ``"v1.2"`` and ``"2024-05-01"`` stay whole), and the rest is split
    at ``[ ] { } , :`` with the spaces after them dropped.

    >>> raw_pieces("zebra"), raw_pieces("48.85, 2.35"), raw_pieces('coords: [1e+16')
    (['zebra'], [], ['coords'])
    """
    parts, last = [], 0
    for run in _NUMBER_RUN.finditer(term):
        a, b = run.span()
        before = term[a - 1] if a else "["
        after = term[b] if b < len(term) else "]"
        if before in "[ " and after in ",]}" and _NUMBER_PART.fullmatch(run.group()):
            parts.append(term[last:a])
            last = b
    parts.append(term[last:])
    pieces = (p.lstrip(" ") for part in parts for p in _STRUCTURE.split(part))
    return [p for p in pieces if p]


class _Match(Protocol):
    def span(self) -> tuple[int, int]: ...


class _Pattern(Protocol):
    def search(self, text: str) -> _Match | None: ...


def _compile_regex(query: str, *, case_sensitive: bool) -> _Pattern:
    """Compile ``query`` with RE2, whose matching time is linear in the text.

    Python's ``re`` backtracks: ``(a+)+$`` on 41 ``a`` and a ``b`` runs for hours. A time
    limit per match was the rejected alternative: ``re`` cannot be interrupted from Python
    code, so it would need a thread or process per match, and the limit would still cost
    that long on every message.
    """
    try:
        import re2  # the optional extra "regex": google-re2
    except ImportError:
        raise SearchError(
            "regex=True needs the linear-time RE2 engine, which is not installed: "
            'pip install "conversation-codec[regex]" (Python\'s re is not used: a pattern '
            "such as (a+)+$ could hang the search)"
        ) from None
    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.log_errors = False  # RE2 would print every invalid pattern to stderr
    try:
        pattern: _Pattern = re2.compile(query, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else ""
        reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        raise SearchError(
            f"invalid regular expression {query!r}: {reason} (RE2 syntax: no backreferences "
            "or lookaround)"
        ) from None
    return pattern


class Query:
    """A compiled keyword query; ``matches`` decides, ``maybe`` pre-filters raw JSON text."""

    __slots__ = ("_exact", "_fold", "_pattern", "_terms", "raw_terms")

    def __init__(self, query: str | None, *, regex: bool, case_sensitive: bool) -> None:
        """Compile ``query``.

        :raises QueryTypeError: ``query`` is not a str or None.
        :raises SearchError: an invalid regular expression, or no RE2 for ``regex=True``.
        """
        if query is not None and not isinstance(query, str):
            raise QueryTypeError(
                f"a search query must be a str (or None for every message), "
                f"not {type(query).__name__}"
            )
        self._fold: Callable[[str], str] = (lambda s: s) if case_sensitive else str.casefold
        self._pattern: _Pattern | None = None
        self._terms: list[str] = []
        self.raw_terms: list[str] | None = None
        self._exact: list[str] = []  # terms raw_pieces cut: whole unless an object argument
        if query is None or not query.strip():
            return
        if regex:
            self._pattern = _compile_regex(query, case_sensitive=case_sensitive)
            return
        words = [phrase or word for phrase, word in _WORDS.findall(query)]
        self._terms = [self._fold(w) for w in words if w]
        if not any(_ESCAPED.search(t) for t in self._terms):
            pieces = {t: raw_pieces(t) for t in self._terms}
            self.raw_terms = list(dict.fromkeys(p for t in self._terms for p in pieces[t]))
            self._exact = [t for t in self._terms if pieces[t] != [t]]

    @property
    def everything(self) -> bool:
        """True when the query matches every message."""
        return self._pattern is None and not self._terms

    @property
    def index_terms(self) -> tuple[str, ...] | None:
        """The folded keyword terms (for the keyword index); None for a regex or no query."""
        return None if self._pattern is not None or not self._terms else tuple(self._terms)

    def maybe(self, raw_json: str) -> bool:
        """Return False only when no message with this JSON text can match (cheap)."""
        if self.raw_terms is None:
            return True
        folded = self._fold(raw_json)
        if not all(t in folded for t in self.raw_terms):
            return False
        # A term that is not all there may still be in an object argument's json.dumps text.
        return all(t in folded for t in self._exact) or _OBJECT_ARG.search(raw_json) is not None

    def maybe_any(self, raw_jsons: list[bytes]) -> bool:
        """Return False only when no message with one of these JSON texts can match: one
        decode and fold of them all (a record-by-record ``maybe`` costs ~1 us each, the
        main cost of a scan for a rare word once records decrypt in batches)."""
        if self.raw_terms is None:
            return True
        # Decoding and case folding work character by character, so the joined text holds
        # every term that one of the texts holds.
        joined = b"\n".join(raw_jsons)
        folded = self._fold(joined.decode("utf-8", "replace"))
        if not all(t in folded for t in self.raw_terms):
            return False
        return all(t in folded for t in self._exact) or _OBJECT_BYTES.search(joined) is not None

    def matches(self, message: dict[str, Any]) -> bool:
        """Return True when the message's searchable text satisfies the query."""
        if self.everything:
            return True
        pieces = list(searchable_text(message))
        if self._pattern is not None:
            return any(self._pattern.search(p) for p in pieces)
        text = self._fold("\n".join(pieces))
        return all(t in text for t in self._terms)

    def span(self, text: str) -> tuple[int, int] | None:
        """Return where the query first matches ``text`` (for highlighting), None for none.

        A regex query: its first match, by the same linear-time engine as ``matches``. A
        keyword query: the earliest term found, under the query's own case rule.

        >>> Query('order "is late"', regex=False, case_sensitive=False).span("Order B is late")
        (0, 5)
        """
        if self._pattern is not None:
            found = self._pattern.search(text)
            return None if found is None else found.span()
        flags = re.IGNORECASE if self._fold is str.casefold else 0
        # re.escape: each term is a literal, so this search is linear too.
        spans = [m.span() for t in self._terms if (m := re.search(re.escape(t), text, flags))]
        return min(spans) if spans else None


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """The arguments of a search, checked once (shared by the codec, the store, aio).

    ``span`` is ``(since, until)`` in µs since the epoch (None: open), ``roles`` None for any.
    """

    matcher: Query
    roles: frozenset[str] | None
    span: tuple[int | None, int | None]
    limit: int | None
    newest_first: bool

    @classmethod
    def parse(
        cls,
        query: str | None = None,
        *,
        since: object = None,
        until: object = None,
        role: str | Iterable[str] | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        regex: bool = False,
        case_sensitive: bool = False,
    ) -> SearchQuery:
        """Check and compile the arguments of ``ConversationCodec.search``.

        :raises QueryTypeError, SearchError: as ``Query``.
        :raises ValueError: ``since`` after ``until``, a negative limit.
        :raises TypeError: a role that is not a string or a collection of strings.
        """
        matcher = Query(query, regex=regex, case_sensitive=case_sensitive)
        roles = parse_roles(role)
        lo = None if since is None else to_us(since, "since")  # type: ignore[arg-type]
        hi = None if until is None else to_us(until, "until")  # type: ignore[arg-type]
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"since ({since!r}) is after until ({until!r})")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError("limit must be a non-negative int or None")
        return cls(matcher, roles, (lo, hi), limit, newest_first)

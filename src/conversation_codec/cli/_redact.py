"""The one redaction of what the CLI prints about a failure (README: "Usage errors never
repeat the value given (it may be a secret typed in the wrong place), and no error prints a
key-shaped value").

A secret typed in the wrong place is a key or password given where a variable NAME, a file,
an id or an option belongs. :func:`redact` hides, in any text:

- every key-shaped value: a run of 43 or more urlsafe-base64 characters holding upper and
  lower case letters (a Fernet key is 43 such characters and an ``=``; without its ``=`` it
  is still the whole key), also inside a longer word (``--KEY``: an unknown option). A random
  key lacks one of the two cases once in ~10^9.5; a hex digest or a long lower-case file
  name is no key, and stays shown;
- every value the running command was given as a variable NAME (metavar ``VAR``) without the
  usual shape ``[A-Z_][A-Z0-9_]*`` (a password such as ``Passphrase777`` passes click's NAME
  check): "the variable given" after a ``$``, else "(the value given)";
- every value given as a file or path (metavar ``FILE``, ``PATH``, ``ROOT``...) that does not
  look like one: no ``/`` or ``.`` in it, and nothing at that path when the command started
  (``"correct horse battery"`` as a password file): "(the value given)".

Ids (``--context``, a store's conversation ids) can be any string, so only their key shapes
are hidden. A key given as a NAME or path is said to be key-shaped: the user learns what
they typed. Messages are written as if every value were shown; this is the only place that
decides (patching each message, as was done before, left every new message to leak again).
:func:`redacting` applies it to every write on stderr while the CLI runs (``cli.main`` and
each command), so a new message cannot bypass it; ``_common.emit`` applies it to the failure
fields of ``--json`` output (:data:`FAILURE_FIELDS`); ``_common.hide_keys`` is it, for a
failure said on stdout (``migrate``'s table).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO, cast

__all__ = ["FAILURE_FIELDS", "misplaced", "redact", "redact_failures", "redacting"]

_BASE64 = "A-Za-z0-9_-"
_KEY_SHAPED = rf"(?<![{_BASE64}])(?=[{_BASE64}]*[A-Z])(?=[{_BASE64}]*[a-z])[{_BASE64}]{{43,}}=*"
_VAR_SHAPED = re.compile(r"[A-Z_][A-Z0-9_]*")
_KEY_HIDDEN = "(a key-shaped value, not shown)"
_VALUE_HIDDEN = "(the value given)"
_VAR_HIDDEN = "the variable given"
# Kept as they are, so that redacting twice changes nothing ("(the value given)" holds
# words a hidden value may be).
_PLACEHOLDERS = "|".join(re.escape(p) for p in (_KEY_HIDDEN, _VALUE_HIDDEN, _VAR_HIDDEN))
# JSON fields that say what failed: redacted with their dict keys (copy's id -> error).
FAILURE_FIELDS = frozenset({"failed", "error", "errors", "reason"})

# The values the running command was given that no output of a failure shows.
_hidden: ContextVar[tuple[str, ...]] = ContextVar("hidden", default=())


def misplaced(names: Iterable[str], paths: Iterable[str]) -> tuple[str, ...]:
    """Return those of the values given as variable ``names`` and as ``paths`` that do not
    look like one: the values :func:`redact` hides while the command runs."""
    found = [name for name in names if not _VAR_SHAPED.fullmatch(name)]
    found += [path for path in paths if not _looks_like_path(path)]
    return tuple(value for value in found if value)


def _looks_like_path(value: str) -> bool:
    return "/" in value or "." in value or value == "-" or os.path.lexists(value)


def redact(text: str) -> str:
    """``text`` with every key-shaped value, and every value given to the running command
    that does not look like what it should be, replaced by words that say what it was."""
    return _pattern(_hidden.get()).sub(_replace, text)


def _pattern(hidden: tuple[str, ...]) -> re.Pattern[str]:
    forms = {form for value in hidden for form in (value, repr(value)[1:-1])}  # repr: quoted
    given = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    value = rf"|(?P<var>\$)?(?<!\w)(?P<value>{given})(?!\w)" if given else ""
    return re.compile(rf"(?P<keep>{_PLACEHOLDERS}){value}|{_KEY_SHAPED}")


def _replace(match: re.Match[str]) -> str:
    if match["keep"]:
        return match["keep"]
    value = match.groupdict().get("value")
    if value and not re.fullmatch(_KEY_SHAPED, value):  # a key given: says so
        return _VAR_HIDDEN if match["var"] else _VALUE_HIDDEN
    return _KEY_HIDDEN


def redact_failures(value: Any) -> Any:
    """``value`` (JSON-ready) with everything under a :data:`FAILURE_FIELDS` key redacted,
    at any depth (dict keys too: copy reports ``failed`` by id)."""
    if isinstance(value, dict):
        return {
            k: _redact_all(v) if k in FAILURE_FIELDS else redact_failures(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_failures(v) for v in value]
    return value


def _redact_all(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_all(v) for v in value]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = shown = redact(str(key))
            count = 1
            while shown in out:  # two ids hidden alike: both kept
                count += 1
                shown = f"{name} ({count})"
            out[shown] = _redact_all(item)
        return out
    return value


class _Redacted:
    """A text stream that passes each write through :func:`redact` (the CLI's stderr).

    A write is redacted whole: ``print`` writes its text in one piece (then the newline).
    Everything else (``isatty`` for progress bars, ``flush``) is the stream's own.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(redact(text) if isinstance(text, str) else text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def redacting(hidden: tuple[str, ...] = ()) -> Iterator[None]:
    """Redact every write on ``sys.stderr`` meanwhile, hiding ``hidden`` too (the values a
    command was given that do not look like what they should be, :func:`misplaced`)."""
    token = _hidden.set(_hidden.get() + hidden)
    stream = sys.stderr
    if stream is not None and not isinstance(stream, _Redacted):  # None: no stderr at all
        sys.stderr = cast(TextIO, _Redacted(stream))
    try:
        yield
    finally:
        sys.stderr = stream
        _hidden.reset(token)

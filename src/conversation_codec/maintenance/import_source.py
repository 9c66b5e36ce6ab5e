"""Read what ``import_history`` imports, and check it before anything is written.

The import's first step, as ``migrate_source`` is migrate's: the source is read whole (a
path, which must be a regular file, or a binary stream), and every message is judged by
the codec's rules, so that a refusal changes nothing in the log:

* a record time a log cannot hold (before 1970, after 9999) fails the import;
* a message the codec would not store is "rejected": left out of an adding or merging
  import (and counted), but it fails a ``replace``, which would otherwise install a
  history shorter than the file's (or none at all).

Errors say how many messages and why, never what they hold.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import msgspec

from .._time import MAX_US, datetime_to_us
from ..crypto import KeyInput
from ..errors import FormatError
from ..format.record import MAX_DEPTH, MAX_MESSAGE_BYTES, nests_deeper_than
from .legacy import MAX_LEGACY_BYTES, LegacyFormat, parse_legacy, read_legacy
from .legacy_fernet import check_key, check_legacy_password

__all__ = ["LogOpener", "Pairs", "check_times", "read_source", "refuse_rejects", "unstorable"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

Message = dict[str, Any]
Pairs = list[tuple[Message, int | None]]  # messages with their record times (µs), if known


class _Hit(Protocol):
    @property
    def timestamp(self) -> datetime: ...
    @property
    def message(self) -> Message: ...


class _Log(Protocol):
    def search(self) -> Iterator[_Hit]: ...


class LogOpener(Protocol):
    """Opens another conversation-codec log (a source) for reading: the target codec's
    class, ``cls(path, key)`` or ``cls(path, None, password=...)``."""

    def __call__(
        self,
        path: Path,
        encryption_key: KeyInput | None = None,
        *,
        password: str | bytes | None = None,
    ) -> contextlib.AbstractContextManager[_Log]: ...


def read_source(
    src: Path | BinaryIO,
    legacy_key: KeyInput | None,
    password: str | bytes | None,
    open_log: LogOpener,
) -> tuple[str, LegacyFormat, Pairs]:
    """Return how errors name ``src``, its layout, and its messages with their times.

    :raises FormatError: see ``read_legacy``; also a conversation-codec log in a stream
        (a log is read from its file, with its index and key).
    :raises StorageError: ``src`` is missing, unreadable, or not a regular file.
    :raises InvalidKeyError: a malformed ``legacy_key`` or ``password`` (checked first,
        as ``migrate`` checks them: an empty password is refused, not ignored).
    """
    check_key("legacy_key", legacy_key)
    if password is not None:
        check_legacy_password(password)
    if not isinstance(src, Path):
        # One byte over the bound, so that parse_legacy refuses a larger input by its size.
        data = src.read(MAX_LEGACY_BYTES + 1)
        history = parse_legacy(data, legacy_key=legacy_key, password=password)
        if history.format is LegacyFormat.CODEC_LOG:
            raise FormatError(
                "the input stream holds a conversation-codec log, which import reads only "
                "from its file (with its index and key); pass the log's path"
            )
        where = "the input stream"
    else:
        where = str(src)
        history = read_legacy(src, legacy_key=legacy_key, password=password)
        if history.format is LegacyFormat.CODEC_LOG:
            # A key log opens with legacy_key, a password log with password (mig.md defect
            # 8: it was never passed on); legacy_key wins when both are given.
            word = password if legacy_key is None else None
            with open_log(src, legacy_key, password=word) as other:
                hits = [(h.message, datetime_to_us(h.timestamp, "time")) for h in other.search()]
            return where, history.format, list(hits)
    return where, history.format, list(zip(history.messages, history.timestamps, strict=True))


def check_times(where: str, stamps: list[int | None]) -> None:
    """Refuse record times a log cannot hold (before 1970, or past 9999).

    Rejected alternative: migrate()'s rule (store 1970-01-01, keep the original instant in
    the message's ``"timestamp"`` key). A merge would then compare a changed message with
    what the log holds, and an import's notes would be the only trace of the change; the
    file is better fixed (or migrated, which says what it did).

    :raises FormatError: such a time; the message says how many.
    """
    bad = sum(ts is not None and not 0 <= ts < MAX_US for ts in stamps)
    if bad:
        raise FormatError(
            f"{where}: {bad} message(s) have a timestamp before 1970-01-01 or after "
            "9999-12-31, which a log cannot store, so nothing was changed; fix them in the "
            "file (migrating the file instead stores them as 1970-01-01 and keeps the "
            'original in the message\'s "timestamp" key)'
        )


def unstorable(message: Message) -> str | None:
    """Apply the codec's rule: a JSON object that round-trips exactly, nests at most
    ``MAX_DEPTH`` levels and fits a record. Return why not (no content), or None."""
    try:
        data = _encode(message)
    except (TypeError, ValueError, OverflowError, RecursionError):
        return "not JSON that round-trips exactly"
    if len(data) > MAX_MESSAGE_BYTES:
        return f"larger than {MAX_MESSAGE_BYTES} bytes"
    if nests_deeper_than(data, MAX_DEPTH):
        return f"nesting deeper than {MAX_DEPTH} levels"
    return None if _decode(data) == message else "not JSON that round-trips exactly"


def refuse_rejects(where: str, reasons: list[str | None]) -> None:
    """Refuse a replace that would leave rejected messages (``reasons`` not None) out of the
    new history: the caller asked for the file's history, and a silently shorter one (or
    none at all, when every message was rejected) loses what the log held for less.

    :raises FormatError: when any message was rejected: how many, and why.
    """
    counts = Counter(reason for reason in reasons if reason is not None)
    if not counts:
        return
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
    raise FormatError(
        f"{where}: {counts.total()} of {len(reasons)} messages cannot be stored ({why}); "
        "an import that replaces the history would drop them from it, so nothing was "
        "changed — fix or remove them in the file, or import without replacing (which "
        "leaves them out)"
    )

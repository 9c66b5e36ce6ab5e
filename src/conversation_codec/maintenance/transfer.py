"""Export a log to plaintext JSONL / JSON, and import any history ``read_legacy`` reads.

Export layout, chosen so that :func:`~conversation_codec.maintenance.legacy.read_legacy` (and so
:func:`import_history`) reads it back exactly, messages *and* record timestamps:

* ``"jsonl"``: one message object per line, in log order.
* ``"json"``: one JSON array of message objects.
* ``with_timestamps=True`` adds the record time to each message as a last key
  ``"timestamp": "2025-11-21T04:40:00.123456Z"`` (UTC, always six fraction digits), the
  key ``read_legacy`` takes as the record time and removes again.

Rejected alternative: a wrapper per line (``{"ts": ..., "message": {...}}``) would keep
messages apart from their times, but no reader of legacy files understands it, and the
point of an export is that other tools (and ours) can read it.

A message may carry its own ``"timestamp"`` key (``append`` takes any JSON object): with
timestamps it would collide with the record time, and without them an ISO-8601 string there
would be taken as the record time on import. So the export writes that key, in its place, as
``"conversation_codec:timestamp"`` (a key already named so gets one more such prefix, and so
on), and ``read_legacy`` turns it back once it has taken the record time out: the export
reads back exactly, and other tools see ``"timestamp"`` as the record time only.
Rejected alternative: refusing such messages (as before), which made a log that ``append``
accepted impossible to export. A first message that would make the file look like a
LangChain file or a codec log header is still refused (``ValueError``) before anything is
written.

What this module needs of a codec is the ``History`` protocol: public methods only
(``path``, ``transaction()``, ``search()``, ``extend()``, ``replace()``, ``storage``,
``__len__``). The codec's ``export()`` and ``import_()`` call this module, so it imports no
codec, not even for type checking: the import graph stays one-way (issue 13).

* ``codec.replace(messages, *, timestamps=None)``: atomically replace the whole history,
  each message keeping its (non-decreasing) timestamp. ``clear()`` + ``extend()`` would
  leave no history at all after a crash between the two.
* ``codec.transaction()``: the re-entrant writer transaction, held by ``import_history``
  around read-compare-write, so a merge never drops a concurrent writer's records.
* After an import changed the log the caller holds no list of the whole history, so a later
  diverging ``save()`` must reload first (the rule of ``ConversationCodec.save``): every
  change here goes through ``extend()`` or ``replace()``, and ``import_()`` marks the
  codec's view stale afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

import msgspec

from .._atomic import atomic_write, dead_temps
from .._fsio import FileIO, check_file, unlink_file
from .._time import EPOCH, ONE_US, to_datetime
from ..crypto import KeyInput
from ..errors import StorageError
from ..options import CodecOptions
from ..paths import backup_path, blobs_path, is_leftover, is_log_file
from ..storage.base import LogStorage
from .import_source import LogOpener, check_times, read_source, refuse_rejects, unstorable
from .legacy import LegacyFormat, escape_time_keys
from .legacy_messages import clamp_note, clamp_times

__all__ = [
    "EXPORT_FORMATS",
    "History",
    "ImportReport",
    "Opener",
    "export_history",
    "import_history",
]

EXPORT_FORMATS = ("jsonl", "json")
_encode = msgspec.json.Encoder().encode
_encode_sorted = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.Decoder().decode

Message = dict[str, Any]


class _Hit(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def message(self) -> Message: ...


class History(Protocol):
    """The public methods of ``ConversationCodec`` that export and import use."""

    @property
    def path(self) -> Path: ...
    @property
    def storage(self) -> LogStorage: ...
    @property
    def options(self) -> CodecOptions: ...
    def __len__(self) -> int: ...
    def transaction(self) -> contextlib.AbstractContextManager[None]: ...
    def search(self) -> Iterator[_Hit]: ...
    def extend(
        self, messages: Iterable[Message], *, timestamps: Sequence[datetime] | None = None
    ) -> list[int]: ...
    def replace(
        self, messages: Sequence[Message], *, timestamps: Sequence[datetime] | None = None
    ) -> None: ...


# Opens another conversation-codec log (a source of import_history) for reading.
Opener = LogOpener


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What :func:`import_history` did.

    ``read``: messages found in the source. ``added``: messages now in the log that came
    from it. ``skipped_duplicate``: merge only, already in the log. ``rejected``: not
    storable (not a JSON object that round-trips exactly, or over the record size limit),
    so left out. ``read == added + skipped_duplicate + rejected``. ``notes``: what was
    changed on the way in (times out of step with the file's order, raised to keep it).
    """

    read: int
    added: int
    skipped_duplicate: int
    rejected: int
    format: LegacyFormat
    notes: tuple[str, ...] = ()


# -- export ------------------------------------------------------------------------------


def export_history(
    codec: History,
    dst: str | os.PathLike[str] | BinaryIO,
    format: str = "jsonl",
    with_timestamps: bool = True,
    progress: Callable[[int, int], None] | None = None,
    *,
    io: FileIO | None = None,
) -> int:
    """Write the whole history to ``dst`` as plaintext; return the number of messages.

    ``progress(done, total)`` is called after each message (``total``: the count when the
    export started).

    ``dst`` may also be a binary stream (the CLI's ``--out -``): written as the records
    are read, not atomically, and not closed.

    **The export is not encrypted**, whatever the log is: it is written with mode 0600,
    but protect or delete it like any plaintext copy of the conversation. The file is
    replaced atomically (an unnamed temp file, fsync, link, rename, directory fsync):
    ``dst`` is either its old self or the complete export, written through ``io``
    (default: the codec's ``options.io`` seam), and an export killed midway leaves no
    temp file (see ``_atomic``). Temp files ``.<dst name>.tmp-<16 hex>`` that killed
    exports to ``dst`` left are deleted first. See the module docstring for the layout.

    >>> import os, tempfile
    >>> from conversation_codec import ConversationCodec
    >>> folder = tempfile.mkdtemp()
    >>> with ConversationCodec(os.path.join(folder, "chat.log"), clock=lambda: 0) as codec:
    ...     _ = codec.append({"role": "user", "content": "hi"})
    ...     export_history(codec, os.path.join(folder, "chat.jsonl"))
    1
    >>> from pathlib import Path
    >>> print(Path(folder, "chat.jsonl").read_text(), end="")
    {"role":"user","content":"hi","timestamp":"1970-01-01T00:00:00.000000Z"}

    :raises ValueError: an unknown ``format``, ``dst`` is the log itself, or a message
        would not read back as it is (see the module docstring).
    :raises StorageError: ``dst`` is one of the log's own files (``P.idx``, ``P.lock``,
        ``P.kwi``, ``P.bak``, ``P.blobs`` or a file in it, a temp ``P.tmp-*`` or
        ``P.migrating-*``): nothing is written.
    :raises LogReplacedError: another writer rewrote the log during the export; retry.
    :raises StorageError: ``dst`` cannot be written.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f'format must be "jsonl" or "json", not {format!r}')
    stream = None if isinstance(dst, (str, os.PathLike)) else dst
    if stream is None:
        dst = Path(cast("str | os.PathLike[str]", dst))
        check_file(dst)  # a link at dst is refused, whatever it points at (even the log)
        if _same_file(dst, codec.path):
            raise ValueError(f"{dst} is the log itself; export to another file")
        if _owned_by_log(dst, codec.path):
            raise StorageError(
                errno.EINVAL,
                f"{dst} is a file of the log {codec.path} (its index, lock, keyword index, "
                "backup, attachments or a temp copy), which the library writes, keeps or "
                "deletes; export to another file",
            )
    count = 0

    total = len(codec) if progress is not None else 0

    def lines() -> Iterator[bytes]:
        nonlocal count
        for hit in codec.search():
            yield _export_line(hit.seq, hit.message, hit.timestamp, with_timestamps, count == 0)
            count += 1
            if progress is not None:
                progress(count, max(total, count))

    if format == "jsonl":
        chunks: Iterable[bytes] = (line + b"\n" for line in lines())
    else:
        chunks = _json_array(lines())
    if stream is not None:
        for chunk in chunks:
            stream.write(chunk)
        return count
    _write_atomically(
        Path(cast("str | os.PathLike[str]", dst)), chunks, codec.options.io if io is None else io
    )
    return count


def _export_line(
    seq: int, message: Message, when: datetime, with_timestamps: bool, first: bool
) -> bytes:
    message = escape_time_keys(message)  # see the module docstring
    if first and "conversation_codec" in message:
        raise ValueError(
            f'message {seq} has a "conversation_codec" key, so the export would read back '
            "as a conversation-codec log header; rename that key first"
        )
    if first and not with_timestamps and message.keys() == {"type", "data"}:
        raise ValueError(
            f"message {seq} has exactly the keys type and data, so the export would read "
            "back as a LangChain file; export it with timestamps (with_timestamps=True)"
        )
    if with_timestamps:
        message = {**message, "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    return _encode(message)


def _json_array(lines: Iterator[bytes]) -> Iterator[bytes]:
    first = next(lines, None)  # its checks run before "[" is written (to a stream too)
    yield b"[" if first is None else b"[\n" + first
    for line in lines:
        yield b",\n" + line
    yield b"\n]\n"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _owned_by_log(dst: Path, log: Path) -> bool:
    """Whether ``dst`` names one of the log's own files (paths.py), existing or not: a
    plaintext export there would sit in the lock file for good, be swept as a rewrite's
    leftover, or be taken for an index, keyword index, backup or blob."""
    # The folder as the system resolves it (links first, then ".."): abspath would drop
    # "lnk/.." as text, naming another folder than the one the write lands in.
    folder, name = os.path.split(os.fspath(dst))
    home, log_name = os.path.split(os.path.abspath(log))
    blobs = os.path.realpath(blobs_path(log))
    inside = os.path.realpath(folder or ".")
    if inside == blobs or inside.startswith(blobs + os.sep):
        return True
    if not _same_file(Path(inside), Path(home)):
        return False
    return (
        is_log_file(name, log_name)
        or is_leftover(name, log_name)
        or name in (os.path.basename(backup_path(log)), os.path.basename(blobs_path(log)))
    )


def _write_atomically(dst: Path, chunks: Iterable[bytes], io: FileIO) -> None:
    # Plaintext that earlier exports to dst left when killed (by an older version, or in
    # the instant between link and rename): the user retrying a failed export expects it
    # gone. Only killed writers' temp files: a live export holds a lock on its own.
    for temp in dead_temps(dst):
        # Best effort: a temp swapped for a link meanwhile is not ours (StorageError), and a
        # failed unlink (EIO, a read-only mount) must not stop the export, which the user
        # asked for; the next one looks again.
        with contextlib.suppress(OSError):
            unlink_file(temp, io=io)
    try:
        atomic_write(dst, chunks, io=io, locked=True)  # refuses a link planted at dst meanwhile
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(exc.errno, f"cannot write {dst}: {exc.strerror or exc}") from exc


# -- import ------------------------------------------------------------------------------


def import_history(
    codec: History,
    src: str | os.PathLike[str] | BinaryIO,
    merge: bool = False,
    legacy_key: KeyInput | None = None,
    password: str | bytes | None = None,
    *,
    replace: bool = False,
) -> ImportReport:
    """Add a history file's messages to the log (``merge``: only those not present), or
    make the log hold exactly them (``replace``).

    ``src`` is anything ``read_legacy`` reads (JSONL, JSON array, LangChain, whole-file
    Fernet with ``legacy_key`` or ``password``), an export of :func:`export_history`, or
    another conversation-codec log (opened with ``legacy_key`` as its encryption key, or
    a password log with ``password``).
    Record times come from the file's ``"timestamp"`` keys; an untimed message takes the
    time of the timed message before it (or after it, at the start); a file with no
    times at all is stamped with the current time. The file's messages keep its order: a
    time earlier than one before it (clocks out of step) is stored as that one, and
    ``ImportReport.notes`` says how many. A time a log cannot hold (before 1970,
    after 9999) fails the import (``FormatError``), where ``migrate`` stores 1970-01-01
    and keeps the original in the message (an import changes no message). ``src`` is read
    only if it is a regular file (a FIFO or device there is refused, never waited on); it
    may also be a binary stream (the CLI's ``SRC -``), read to its end.

    Nothing already in the log is lost unless ``replace=True`` is given. By default every
    message of the file is added; ``merge`` adds only those not already in the log — the
    same message (all keys, key order ignored) at the same record time (from a file with no
    times at all: at any time). Added messages keep the log in time order: when all are at
    or after the log's last record they are appended (into an empty log: simply written);
    otherwise the log is rewritten atomically with the union sorted by time (ties: log
    messages first). That rewrite reads the stored history under the same writer lock and
    keeps all of it, so it never deletes a record it has not seen (the rule ``save()``
    enforces with ``ConflictError``). ``replace=True`` atomically swaps the whole history
    for the file's messages, like ``ConversationCodec.replace()``: asked for by name, it
    needs no earlier read; but when any message of the file would be rejected (see
    :class:`ImportReport`) it raises ``FormatError`` and changes nothing, rather than
    install a history shorter than the file's. Everything runs under the writer lock, so
    a concurrent writer's messages are never lost. Duplicates are judged on the stored
    form: with a ``redact_fn`` that changes messages, re-imports are not matched.

    :raises FormatError, KeyRequiredError, DecryptionError, StorageError: from reading
        ``src`` (see ``read_legacy``).
    :raises FormatError: a time a log cannot hold; with ``replace``, any rejected message
        (the message says how many and why, never their content). Nothing was changed.
    :raises ValueError: ``src`` is this codec's own log; ``merge`` and ``replace`` together.
    """
    if merge and replace:
        raise ValueError("pass merge=True (add what is new) or replace=True, not both")
    if isinstance(src, (str, os.PathLike)):
        src = Path(src)
        if _same_file(src, codec.path):
            raise ValueError(f"{src} is the log itself; nothing to import")
    # Another codec log is opened with the target's own class, ``cls(path, key)``: this
    # module sits below the codec and imports none (see the module docstring).
    where, fmt, pairs = read_source(src, legacy_key, password, cast(Opener, type(codec)))
    check_times(where, [ts for _, ts in pairs])  # nothing changes when any check fails
    reasons = [unstorable(m) for m, _ in pairs]
    kept = [pair for pair, reason in zip(pairs, reasons, strict=True) if reason is None]
    rejected = len(pairs) - len(kept)
    if replace:
        refuse_rejects(where, reasons)
    messages = [m for m, _ in kept]
    # The file's order is kept: a time earlier than one before it is raised to it (a log's
    # times never decrease), so the merge below cannot reorder the file's own messages.
    clamped, moved = clamp_times([ts for _, ts in kept])
    stamps = _fill_times(clamped)
    with codec.transaction():  # see the module docstring
        if replace:
            codec.replace(messages, timestamps=_as_datetimes(stamps))
            added = len(messages)
        else:
            added = _merge_locked(codec, messages, stamps, dedupe=merge)
    notes = (clamp_note(moved),) if moved else ()
    return ImportReport(len(pairs), added, len(messages) - added, rejected, fmt, notes)


def _fill_times(stamps: Sequence[int | None]) -> list[int] | None:
    """Give untimed messages the time of the timed one before (or, leading, after) them.

    None when nothing is timed: the codec then stamps the batch with the current time.
    """
    first = next((ts for ts in stamps if ts is not None), None)
    if first is None:
        return None
    out, last = [], first
    for ts in stamps:
        last = last if ts is None else ts
        out.append(last)
    return out


def _merge_locked(
    codec: History, messages: list[Message], stamps: list[int] | None, dedupe: bool
) -> int:
    """Add the messages (``dedupe``: those not yet in the log); return how many. The writer
    lock is held."""
    stored = [(hit.message, _us(hit.timestamp)) for hit in codec.search()]
    if dedupe:
        seen: dict[bytes, Counter[int]] = {}
        for message, ts in stored:
            seen.setdefault(_key(message), Counter())[ts] += 1
        fresh = _unseen(messages, stamps, seen)
    else:
        fresh = list(range(len(messages)))
    if not fresh:
        return 0
    new = [messages[i] for i in fresh]
    last = stored[-1][1] if stored else 0
    if stamps is None:
        codec.extend(new)  # untimed: stamped now, which the codec keeps >= the last record
    elif all(stamps[i] >= last for i in fresh):
        codec.extend(new, timestamps=_as_datetimes([stamps[i] for i in fresh]))
    else:
        # An append-only log cannot take an older record at its end: rewrite the union.
        if len(codec.storage.index) > len(codec):  # max_messages hides some
            raise ValueError(
                "merging messages older than the log's end rewrites the log, which would drop "
                "the records max_messages hides; import without max_messages"
            )
        union = [(ts, 0, n, m) for n, (m, ts) in enumerate(stored)]
        union += [(stamps[i], 1, n, messages[i]) for n, i in enumerate(fresh)]
        union.sort(key=lambda row: row[:3])
        merged, times = [row[3] for row in union], _as_datetimes([row[0] for row in union])
        codec.replace(merged, timestamps=times)
    return len(new)


def _unseen(
    messages: list[Message], stamps: list[int] | None, seen: dict[bytes, Counter[int]]
) -> list[int]:
    """Return the positions of messages with no match left in ``seen`` (a multiset)."""
    keys = [_key(m) for m in messages]
    matched = set()
    # Timed messages first, so an exact (message, time) match is never taken away by
    # an untimed copy matching the same stored record.
    for i, key in enumerate(keys):
        times = seen.get(key)
        ts = None if stamps is None else stamps[i]
        if times is not None and ts is not None and times[ts] > 0:
            times[ts] -= 1
            matched.add(i)
    if stamps is None:
        for i, key in enumerate(keys):
            times = seen.get(key)
            left = [t for t, n in (times or {}).items() if n > 0]
            if times is not None and left:
                times[min(left)] -= 1
                matched.add(i)
    return [i for i in range(len(messages)) if i not in matched]


def _key(message: Message) -> bytes:
    return _encode_sorted(message)  # key order does not make two messages different


def _us(when: datetime) -> int:
    return (when - EPOCH) // ONE_US


def _as_datetimes(stamps: list[int] | None) -> list[datetime] | None:
    # Aware datetimes, not float seconds: exact to the microsecond.
    return None if stamps is None else [to_datetime(us) for us in stamps]

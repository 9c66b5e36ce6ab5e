"""Recovery (FORMAT.md §10): tell a torn tail, which a writer may cut, from damage, which
nothing may touch.

A crash mid-append leaves a torn final record; bit rot, a power loss under "flush" or an edit
leaves bad bytes *before* intact records. These functions read (through ``reader``) and
decide; ``log.FileLog`` acts on the decision under its lock: it indexes what ``walk`` found,
and cuts the tail only when ``check_tail`` did not raise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from ...errors import CorruptRecordError
from ...format.record import MAX_BODY_BYTES, is_json_object
from ...records import RecordCodec, RecordDamaged, RecordRejected, SealedRecords
from ..base import IndexMismatch, LogFormat
from .index import OffsetIndex
from .reader import (
    READ_CHUNK,
    Reader,
    frame_at,
    frames,
    next_candidate,
    next_plain_candidate,
    plain_candidate_at,
    plausible,
)

__all__ = ["drop_unproven_entries", "hand_line", "plain_tail", "recover"]


def drop_unproven_entries(
    index: OffsetIndex, records: RecordCodec, read_body: Callable[[int], bytes]
) -> bool:
    """Authenticate the record the index's last entry names, dropping entries that do not
    hold up; return True when any was dropped.

    After a power loss in "flush" mode the index can survive while the log's last blocks
    read as zeros, and appending after such an entry would hide a torn tail. One decryption
    per open; the catch-up then re-reads what was dropped.
    """
    dropped = False
    while len(index):
        seq = len(index) - 1
        try:
            ok = records.check(read_body(seq), seq) == index.tss[seq]
        except (IndexMismatch, RecordRejected):
            ok = False
        if ok:
            return dropped
        index.forget_from(seq)
        dropped = True
    return dropped


def recover(
    fd: int,
    pos: int,
    size: int,
    fmt: LogFormat,
    index: OffsetIndex,
    *,
    adopt_dictionary: Callable[[bytes, tuple[int, int]], None],
    stop_at_damage: bool,
    path: str,
) -> int:
    """Index the intact records from ``pos`` on; return where they end: ``size``, or where a
    torn tail starts that a writer may cut (FORMAT.md §10.1), or ``size + 1`` when the last
    record is a plain line that lost only its newline and is proven committed: it is indexed
    as if the newline were there, which a writer then writes back.

    What follows the intact records is a torn tail only if no committed record reaches past
    it, no intact record lies anywhere after it and, in a plain log, it holds no whole line
    that no crash leaves; else this raises ``CorruptRecordError``.
    Readers of verify/salvage (``stop_at_damage``) stop at damage instead: the scanner
    reports it. ``adopt_dictionary(body, span)`` is called for a dictionary record met.
    """
    log_frames = frames(fd, pos, size, sealed=fmt.sealed, path=path, torn_ok=True)
    end = _walk(
        log_frames,
        pos,
        fmt.records,
        index,
        adopt_dictionary=adopt_dictionary,
        stop_at_damage=stop_at_damage,
        path=path,
    )
    if end < size and not stop_at_damage:
        end = _check_tail(fd, end, size, fmt, index, path=path)
    return end


def _walk(
    frames: Iterable[tuple[int, bytes, int, bool]],
    pos: int,
    records: RecordCodec,
    index: OffsetIndex,
    *,
    adopt_dictionary: Callable[[bytes, tuple[int, int]], None],
    stop_at_damage: bool,
    path: str,
) -> int:
    """Index the intact records of ``frames`` (read from ``pos`` on); return where they end.

    A record that authenticates but breaks a record rule (wrong seq or kind, earlier time,
    malformed envelope) is damage wherever it stands: a crash tears records, it never writes
    a whole authentic one wrongly. Readers of verify/salvage (``stop_at_damage``) stop there
    and let the scanner report it; everyone else gets ``CorruptRecordError``.
    """
    for start, body, end, control in frames:
        try:
            if control:
                adopt_dictionary(body, (start, end))
                pos = end
                continue
            ts = records.check(body, len(index))
            if index.tss and ts < index.tss[-1]:
                raise RecordDamaged(
                    "record's time is earlier than the one before it (records reordered)"
                )
        except RecordDamaged as exc:
            if stop_at_damage:
                return pos
            raise CorruptRecordError(
                f"{exc}: the record was moved, duplicated, replayed or forged; nothing was changed",
                path=path,
                offset=start,
            ) from None
        except RecordRejected:
            return pos
        index.add(end, ts)
        pos = end
    return pos


def _check_tail(
    fd: int, pos: int, size: int, fmt: LogFormat, index: OffsetIndex, *, path: str
) -> int:
    """Raise ``CorruptRecordError`` unless the bad bytes ``[pos, size)`` are a torn tail
    (return ``pos``) or a committed plain line short of its newline (indexed; ``size + 1``).

    They are damage when the index proves a committed record reached past ``pos``, or when
    any later position that could start a record (each byte offset of a sealed log, each
    line start of a plain one) holds one that authenticates, whatever its seq, or when a
    plain log's bytes hold a whole line that no crash leaves (§10.1).
    """
    if pos < index.committed_end and index.synced_entry_at(pos, fmt.log_id, size):
        raise CorruptRecordError(
            f"a committed record is damaged: the index proves the log held intact records "
            f"up to byte {index.committed_end}; nothing was changed — run "
            "conversation-codec salvage to copy out the intact records",
            path=path,
            offset=pos,
        )
    reader = Reader(fd, size)
    if not fmt.sealed:
        ts = _unterminated_committed(reader, pos, fmt, index)
        if ts is not None:
            index.add(size + 1, ts, synced=True)
            return size + 1
    floor_s = index.tss[-1] // 1_000_000 if len(index) else 0
    q = pos + 1
    while q < size:
        q = next_candidate(reader, q) if fmt.sealed else next_plain_candidate(reader, q)
        if q >= size:
            break
        found = frame_at(reader, q, True) if fmt.sealed else plain_candidate_at(reader, q)
        if found is not None and fmt.sealed and not plausible(found[1], floor_s):
            found = None  # cheap reject: no HMAC over a length that random bytes made up
        if found is not None and _authentic(fmt.records, found[1], found[2]):
            raise CorruptRecordError(
                f"damaged record before an intact one at byte {q}; nothing was "
                "changed — run conversation-codec salvage to copy out the intact records",
                path=path,
                offset=pos,
            )
        q += 1
    hand = None if fmt.sealed else hand_line(reader, pos)
    if hand is not None:
        _refuse_line(reader, *hand, fmt.records, path)
    return pos


# A record line is at most this long (``reader.frames``): a longer tail holds none.
_MAX_LINE = 2 * MAX_BODY_BYTES


def _unterminated_committed(
    reader: Reader, pos: int, fmt: LogFormat, index: OffsetIndex
) -> int | None:
    """The time of the plain record ``[pos, size)`` when it is a whole record line but for
    its final newline and the index file's synced entry for it ends one byte past the file
    (FORMAT.md §10.1: committed, its newline lost by an edit); else None.

    The line is parsed first, so that an ordinary torn tail costs no read of the index."""
    size = reader.size
    if size - pos > _MAX_LINE:
        return None
    line = reader.get(pos, size)
    if b"\n" in line:
        return None
    try:
        ts = fmt.records.check(line + b"\n", len(index))
    except (RecordRejected, RecordDamaged):
        return None
    if index.tss and ts < index.tss[-1]:
        return None
    if index.synced_end_at(pos, fmt.log_id, size) != size + 1:
        return None
    return ts


def hand_line(reader: Reader, pos: int) -> tuple[int, int] | None:
    """The first whole line of the plain log's bytes ``[pos, size)`` (from ``pos`` or a
    newline to a newline) that holds no zero byte and one JSON object: its span.

    No crash leaves one (FORMAT.md §10.1): a torn write ends without a newline, bytes a
    power loss lost read as zeros (or, on some file systems, as stale random bytes, which
    hold no JSON object), and every whole line writers wrote is a record line, which the
    candidate scan has already refused to cut. So a person wrote it (a message ``echo``-ed
    in, a record with another ``ts`` form): cutting it would delete it.
    """
    start, clean, q = pos, True, pos
    while q < reader.size:
        chunk = reader.get(q, q + READ_CHUNK)
        i = 0
        while i < len(chunk):
            nl = chunk.find(b"\n", i)
            clean = clean and chunk.find(b"\x00", i, len(chunk) if nl < 0 else nl) < 0
            if nl < 0:
                break
            end = q + nl + 1
            if clean and end - start <= _MAX_LINE and is_json_object(reader.get(start, end)):
                return start, end
            start, clean, i = end, True, nl + 1
        q += len(chunk)
    return None


def plain_tail(
    fd: int, pos: int, size: int, fmt: LogFormat, index: OffsetIndex
) -> tuple[str, str] | None:
    """``(kind, detail)`` for verify when a plain log's bad bytes ``[pos, size)`` at its end
    are not what a crash leaves (FORMAT.md §10.1); None when they are."""
    reader = Reader(fd, size)
    # Accepted by an earlier catch-up of this view, or (a tolerant walk stops short) not yet.
    if index.end == size + 1 or _unterminated_committed(reader, pos, fmt, index) is not None:
        return "torn-tail", (
            "the last record's line lacks its final newline; the index proves the record "
            "committed, so it is read, and the next writer puts the newline back"
        )
    found = hand_line(reader, pos)
    if found is None:
        return None
    return "damaged", (
        f"line {_line_number(fd, found[0])} is a whole line but not a record line: written "
        "by hand; writers refuse to append until it is moved out of the log"
    )


def _refuse_line(reader: Reader, start: int, end: int, records: RecordCodec, path: str) -> None:
    why = "longer than any record line"
    if end - start <= _MAX_LINE:
        try:
            records.check(reader.get(start, end), None)
            why = "a record line"  # not reached: the candidate scan refused it before
        except (RecordRejected, RecordDamaged) as exc:
            why = str(exc)
    raise CorruptRecordError(
        f"line {_line_number(reader.fd, start)} is not a record line ({why}), and no writer "
        "or crash leaves a whole line that is not one: it was written by hand; nothing was "
        "changed — move it out of the log (a message there can be added with import)",
        path=path,
        offset=start,
    )


def _line_number(fd: int, offset: int) -> int:
    """The line number (from 1) of the line that starts at byte ``offset``."""
    n, q = 1, 0
    while q < offset:
        chunk = os.pread(fd, min(READ_CHUNK, offset - q), q)
        if not chunk:
            break
        n, q = n + chunk.count(b"\n"), q + len(chunk)
    return n


def _authentic(records: RecordCodec, body: bytes, control: bool) -> bool:
    """Does ``body`` authenticate? A malformed but authentic record counts: no crash wrote it."""
    try:
        if control:
            assert isinstance(records, SealedRecords)
            records.decode_dictionary(body, 1)
        else:
            records.check(body, None)
    except RecordDamaged:
        return True
    except RecordRejected:
        return False
    return True

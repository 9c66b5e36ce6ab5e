"""Recovery (FORMAT.md §10): tell a torn tail, which a writer may cut, from damage, which
nothing may touch.

A crash mid-append leaves a torn final record; bit rot, a power loss under "flush" or an edit
leaves bad bytes *before* intact records. These functions read (through ``reader``) and
decide; ``log.FileLog`` acts on the decision under its lock: it indexes what ``walk`` found,
and cuts the tail only when ``check_tail`` did not raise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ...errors import CorruptRecordError
from ...records import RecordCodec, RecordDamaged, RecordRejected, SealedRecords
from ..base import IndexMismatch, LogFormat
from .index import OffsetIndex
from .reader import (
    Reader,
    frame_at,
    frames,
    next_candidate,
    next_plain_candidate,
    plain_candidate_at,
    plausible,
)

__all__ = ["drop_unproven_entries", "recover"]


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
    torn tail starts that a writer may cut (FORMAT.md §10.1).

    What follows the intact records is a torn tail only if no committed record reaches past
    it and no intact record lies anywhere after it; else this raises ``CorruptRecordError``.
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
        _check_tail(fd, end, size, fmt, index, path=path)
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
) -> None:
    """Raise ``CorruptRecordError`` unless the bad bytes ``[pos, size)`` are a torn tail.

    They are damage when the index proves a committed record reached past ``pos``, or when
    any later position that could start a record (each byte offset of a sealed log, each
    line start of a plain one) holds one that authenticates, whatever its seq (§10.1).
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

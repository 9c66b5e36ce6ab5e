"""Check every byte of a log file: the scanner behind ``verify()`` and ``salvage()``.

The scanner, which never trusts a length it has not checked and
never writes to the source. Each problem carries the byte offset where it starts and what it
most likely means (FORMAT.md §10 and §11):

=================  =============================================================
kind               meaning
=================  =============================================================
torn-tail          bytes after the last intact record: a crash mid-append
damaged            bytes before an intact record that are not a record: bit rot
unauthenticated    a well-formed record that fails authentication: modified, or
                   copied in from another log
missing-records    seqs skipped: records deleted from the middle
reordered-records  a seq lower than expected: records duplicated or moved
time-reversed      a timestamp earlier than the previous record's
index-stale        index entries that disagree with the log (it is rebuilt)
index-ts-mismatch  index entries that point at the right record but give it another
                   time: the index was edited or garbled (time queries and prune
                   check the records, not these; compact() rewrites the index)
index-ahead        index entries past the log's end: records cut off the end, or
                   the log rolled back to an older copy
blob-missing       an attachment blob a record refers to is not in ``P.blobs/``
                   (FORMAT.md §15): deleted, or left behind by a copy
blob-damaged       such a blob does not open with the key, or holds other data
blob-plaintext     a blob no record refers to, stored unsealed beside a sealed log: a
                   sealing killed before its sweep (``migrate()`` of the log removes it)
blob-unreferenced  any other blob no record refers to (the next rewrite deletes it)
=================  =============================================================
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._time import iso_z
from ...format.index import (
    END_MASK,
    INDEX_ENTRY,
    INDEX_HEADER_BYTES,
    MAX_TS_US,
    decode_index_header,
)
from ...records import (
    DictionaryMissing,
    RecordCodec,
    RecordDamaged,
    RecordRejected,
    SealedRecords,
)
from .log import FileLog
from .reader import (
    Reader,
    frame_at,
    next_candidate,
    next_plain_candidate,
    plain_candidate_at,
    plausible,
)
from .recovery import plain_tail

__all__ = [
    "Problem",
    "VerifyReport",
    "check_file_log",
    "indexed_ends",
    "scan_records",
    "verify_log",
]

DAMAGE_KINDS = frozenset(
    {"torn-tail", "damaged", "unauthenticated", "missing-records", "reordered-records",
     "time-reversed", "index-ahead", "blob-missing", "blob-damaged"}
)  # fmt: skip
Region = tuple[str, int, int, int, int, bytes]  # kind, start, end, seq, ts_us, text
_RUN_RECORDS = 256  # intact records opened as one batch by the walk (as reading's batches)
_RUN_BYTES = 1024 * 1024  # bytes of record bodies in one such batch


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: its kind (see the module docstring), where it starts, and details."""

    kind: str
    offset: int
    detail: str

    @property
    def is_damage(self) -> bool:
        """False for findings that lose nothing (a stale index is only rebuilt)."""
        return self.kind in DAMAGE_KINDS


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What ``verify()`` found. ``ok`` is True when nothing was damaged."""

    path: Path
    records: int
    problems: tuple[Problem, ...]
    # The records a keyword index (FORMAT.md §17) covers, from the first; None without one.
    # Searches scan the records past them, and the first that finds 32 indexes them.
    keyword_index: int | None = None

    @property
    def ok(self) -> bool:
        """True when no problem means lost or altered records."""
        return not any(p.is_damage for p in self.problems)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (for ``--json``)."""
        return {
            "path": str(self.path),
            "ok": self.ok,
            "records": self.records,
            "keyword_index": self.keyword_index,
            "problems": [
                {"kind": p.kind, "offset": p.offset, "detail": p.detail} for p in self.problems
            ],
        }


def scan_records(log: FileLog) -> Iterator[Region]:
    """Walk a whole log; yield ``(kind, start, end, seq, ts_us, body)`` for every region.

    ``kind`` is ``"record"`` for an authenticated record, ``"unauthenticated"`` for a
    well-formed one that fails authentication, ``"damaged"`` for bytes that hold no record
    (``seq``/``ts_us`` are -1 then). Call inside a transaction of ``log``.
    """
    assert log.fmt is not None and log.fd is not None
    size = os.fstat(log.fd).st_size
    reader = Reader(log.fd, size)
    pos, bad_from = log.fmt.data_start, -1
    floor_s, sealed = 0, log.fmt.sealed
    while pos < size:
        run = _run(log.fmt.records, reader, pos) if bad_from < 0 else []
        if run:  # intact records, opened as a batch: what the walk below finds one by one
            yield from run
            pos, floor_s = run[-1][2], run[-1][4] // 1_000_000
            continue
        if sealed or bad_from < 0:
            found = frame_at(reader, pos, sealed)
        else:  # a candidate inside damage (§10.1)
            found = plain_candidate_at(reader, pos)
        if found is not None and bad_from >= 0 and sealed and not plausible(found[1], floor_s):
            found = None  # inside damage: skip lengths random bytes made up, without an HMAC
        opened = None if found is None else _open(log, found[1], found[2])
        if found is not None and opened is None and bad_from < 0 and log.fmt.sealed:
            # A well-formed record that fails authentication is a modified record when an
            # intact record (or the end) follows it; otherwise its "length" is just damage.
            after = frame_at(reader, found[0], sealed)
            if found[0] == size or (after is not None and _open(log, after[1], after[2])):
                yield "unauthenticated", pos, found[0], -1, -1, found[1]
                pos = found[0]
                continue
        if found is not None and opened is not None:
            if bad_from >= 0:
                yield "damaged", bad_from, pos, -1, -1, b""
                bad_from = -1
            kind, seq, ts, text = opened
            if ts >= 0:
                floor_s = ts // 1_000_000
            yield kind, pos, found[0], seq, ts, text
            pos = found[0]
            continue
        if bad_from < 0:
            bad_from = pos
        pos = (next_candidate if sealed else next_plain_candidate)(reader, pos + 1)
    if bad_from >= 0:
        yield "damaged", bad_from, size, -1, -1, b""


def _run(records: RecordCodec, reader: Reader, pos: int) -> list[Region]:
    """Return the regions of the intact message records from ``pos`` on, authenticated and
    decrypted as one batch (up to ``_RUN_RECORDS`` records or ``_RUN_BYTES``): the walk's
    "record" regions, as ``_open`` finds them. It stops before the first frame that is
    malformed, a control record, or anything ``_open`` may call otherwise (that one is
    left to the walk)."""
    if not isinstance(records, SealedRecords):
        return []
    frames: list[tuple[int, int, bytes]] = []
    size = 0
    while pos < reader.size and len(frames) < _RUN_RECORDS and size < _RUN_BYTES:
        found = frame_at(reader, pos, True)
        if found is None or found[2]:
            break
        frames.append((pos, found[0], found[1]))
        pos, size = found[0], size + len(found[1])
    opened = records.inspect_many([body for _, _, body in frames])
    run: list[Region] = []
    for (start, end, _), got in zip(frames, opened, strict=True):
        if got is None:
            break
        run.append(("record", start, end, *got))
    try:
        records.parse_many([text for *_, text in run])  # authentic; does each message hold?
    except RecordRejected:
        for i, region in enumerate(run):  # the first that does not is the walk's
            try:
                records.parse(region[5])
            except RecordRejected:
                return run[:i]
    return run


def _open(log: FileLog, body: bytes, control: bool) -> tuple[str, int, int, bytes] | None:
    """Authenticate one record: ``(kind, seq, ts_us, text)``, or None."""
    assert log.fmt is not None
    records = log.fmt.records
    if control and not isinstance(records, SealedRecords):
        return None  # a plain log has no control frames: these bytes are no record
    try:
        if control:
            assert isinstance(records, SealedRecords)  # narrowed above; for the type checker
            dictionary = records.decode_dictionary(body, 1)
            if records.dict_id == 0:
                records.use_dictionary(1, dictionary)
            return "dictionary", 1, -1, (records.unusable or "").encode()
        try:
            seq, ts, text = records.inspect(body)
        except RecordDamaged as exc:  # authentic, but its envelope, time or payload is not
            seq, ts = _located(records, body)
            return "malformed", seq, ts, str(exc).encode()
        try:
            records.parse(text)  # authentic, but does the message itself hold up?
        except RecordDamaged as exc:
            return "malformed", seq, ts, str(exc).encode()
    except DictionaryMissing:
        assert isinstance(records, SealedRecords)
        env_seq, env_ts = records.locate(body)
        return "undecodable", env_seq, env_ts, b""
    except RecordRejected:
        return None
    return "record", seq, ts, text


def _located(records: RecordCodec, body: bytes) -> tuple[int, int]:
    """``(seq, ts_us)`` of an authentic but damaged record; ``(-1, -1)`` when not known."""
    try:
        assert isinstance(records, SealedRecords)  # only a sealed record is authentic
        seq, ts = records.locate(body)
    except RecordRejected:
        return -1, -1
    return seq, ts if ts < MAX_TS_US else -1  # FORMAT.md §9.2: no time to resume from


def verify_log(log: FileLog, regions: list[Region] | None = None) -> tuple[int, list[Problem]]:
    """Check a log and its index (call inside a read transaction); return records, problems.

    Each problem is reported once, with the kind that explains it: the seqs a damaged or
    unauthenticated region swallowed are not reported again as missing, and index entries
    for them are not reported as stale or ahead.
    """
    problems: list[Problem] = []
    ends: dict[int, tuple[int, int]] = {}
    expected, last_ts, after_damage = 0, -1, False
    if regions is None:
        regions = list(scan_records(log))
    committed_end = log.index.committed_end
    assert log.fmt is not None
    for i, (kind, start, end, seq, ts, _body) in enumerate(regions):
        if kind == "damaged":
            tail = all(k == "damaged" for k, *_ in regions[i:])
            committed = start < committed_end and log.index.synced_entry_at(
                start, log.fmt.log_id, log.size()
            )
            plain = None if log.fmt.sealed or not tail or log.fd is None else log.fd
            note = (
                None if plain is None else plain_tail(plain, start, log.size(), log.fmt, log.index)
            )
            problems.append(
                _damage(start, end, tail=tail and not committed)
                if note is None
                else Problem(note[0], start, note[1])
            )
            after_damage = True
            continue
        if kind == "dictionary":
            if _body:  # FORMAT.md §5.3: the records compressed with it cannot be read
                problems.append(Problem("damaged", start, f"dictionary record: {_body.decode()}"))
            continue
        if kind == "unauthenticated":
            problems.append(
                Problem(kind, start, "record fails authentication: modified, or from another log")
            )
            after_damage = True
            continue
        if kind == "malformed":
            problems.append(
                Problem("damaged", start, f"record is authentic but unreadable: {_body.decode()}")
            )
            expected, after_damage = max(expected, seq + 1), True
            continue
        if kind == "undecodable":
            if not (i and regions[i - 1][0] == "undecodable"):  # one problem per run
                problems.append(
                    Problem(
                        "damaged",
                        start,
                        "records are authentic but need a dictionary record the log no "
                        "longer holds",
                    )
                )
            expected, after_damage = max(expected, seq + 1), True
            continue
        if seq > expected and not after_damage:
            problems.append(
                Problem("missing-records", start, f"seqs {expected}..{seq - 1} are missing")
            )
        elif seq < expected:
            problems.append(
                Problem("reordered-records", start, f"seq {seq} where seq {expected} belongs")
            )
        if ts < last_ts:
            problems.append(Problem("time-reversed", start, "timestamp earlier than the last"))
        expected, last_ts, after_damage = max(expected, seq + 1), max(last_ts, ts), False
        ends.setdefault(seq, (end, ts))
    damaged = any(p.kind != "time-reversed" and p.is_damage for p in problems)
    problems.extend(_check_index(log, ends, damaged=damaged))
    return sum(1 for r in regions if r[0] == "record"), problems


def _damage(start: int, end: int, *, tail: bool) -> Problem:
    if tail:
        return Problem(
            "torn-tail",
            start,
            f"{end - start} bytes hold no intact record (a crash mid-append; the next writer "
            "cuts them)",
        )
    return Problem("damaged", start, f"{end - start} bytes hold no intact record")


def verify_index_alone(index_path: str) -> list[Problem]:
    """Problems of an index whose log is missing or empty: entries it names were lost."""
    try:
        raw = Path(index_path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return []
    if decode_index_header(raw) is None:
        return []
    count = max(0, (len(raw) - INDEX_HEADER_BYTES) // INDEX_ENTRY.size)
    if not count:
        return []
    return [
        Problem(
            "index-ahead",
            INDEX_HEADER_BYTES,
            f"index knows {count} record(s) but the log is empty or missing: the log was "
            "truncated or deleted without its index",
        )
    ]


def indexed_ends(log: FileLog) -> list[int] | None:
    """The record ends (FORMAT.md §4) the index file of ``log`` holds as it is on disk, one
    per record it knew (``salvage()`` counts the records the log held with it); None when
    there is no index of this log."""
    assert log.fmt is not None
    try:
        raw = Path(log.index.path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    decoded = decode_index_header(raw)
    if decoded is None or decoded[0] != log.fmt.log_id:
        return None
    count = (len(raw) - INDEX_HEADER_BYTES) // INDEX_ENTRY.size
    return [
        INDEX_ENTRY.unpack_from(raw, INDEX_HEADER_BYTES + k * INDEX_ENTRY.size)[0] & END_MASK
        for k in range(count)
    ]


def _check_index(log: FileLog, ends: dict[int, tuple[int, int]], *, damaged: bool) -> list[Problem]:
    """Compare the index file with what the scan found, seq by seq."""
    assert log.fmt is not None
    try:
        raw = Path(log.index.path).read_bytes()
    except FileNotFoundError:
        return [Problem("index-stale", 0, "index is missing (rebuilt on the next open)")]
    decoded = decode_index_header(raw)
    if decoded is None or decoded[0] != log.fmt.log_id:
        return [Problem("index-stale", 0, "index belongs to another log (rebuilt on next open)")]
    entries = [
        (end & END_MASK, ts)
        for end, ts in (
            INDEX_ENTRY.unpack_from(raw, INDEX_HEADER_BYTES + k * INDEX_ENTRY.size)
            for k in range((len(raw) - INDEX_HEADER_BYTES) // INDEX_ENTRY.size)
        )
    ]
    problems = []
    mistimed: list[int] = []
    stale = None
    for k, entry in enumerate(entries):
        if k not in ends:
            continue
        if entry[0] == ends[k][0] and entry[1] != ends[k][1]:
            mistimed.append(k)  # the right record, the wrong time
        elif tuple(entry) != ends[k]:
            stale = Problem("index-stale", INDEX_HEADER_BYTES + k * 16, f"entry {k}")
            break
    if mistimed:
        problems.append(_mistimed(mistimed, entries, ends))
    if stale is not None:
        problems.append(stale)
    known = max(ends, default=-1) + 1
    if len(entries) > known and not damaged:
        problems.append(
            Problem(
                "index-ahead",
                INDEX_HEADER_BYTES + known * INDEX_ENTRY.size,
                f"index knows {len(entries) - known} record(s) past the log's end: records "
                "were cut off, or the log was rolled back to an older copy",
            )
        )
    return problems


def _mistimed(
    seqs: list[int], entries: list[tuple[int, int]], ends: dict[int, tuple[int, int]]
) -> Problem:
    """One "index-ts-mismatch" problem for every index entry whose time is not its record's."""
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and runs[-1][1] + 1 == seq:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    named = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:8])
    first = seqs[0]
    return Problem(
        "index-ts-mismatch",
        INDEX_HEADER_BYTES + first * INDEX_ENTRY.size + 8,  # entry's ts_us (FORMAT.md §7)
        f"index times disagree with the records for seq{'s' * (len(seqs) > 1)} {named}"
        f"{', ...' if len(runs) > 8 else ''} (seq {first}: index {_utc(entries[first][1])}, "
        f"record {_utc(ends[first][1])}): the index was edited or garbled; queries check "
        "the records themselves, and compact() rewrites the index",
    )


def _utc(ts_us: int) -> str:
    try:
        return iso_z(ts_us)
    except OverflowError:
        return f"{ts_us} us since 1970"


def check_file_log(log: FileLog) -> VerifyReport:
    """Check a whole log file and its index (``ConversationCodec.verify()``); read only.

    Runs inside a tolerant read transaction: a damaged log is reported, never repaired.
    """
    with log.transaction(write=False, tolerant=True):
        if log.fmt is None:
            return VerifyReport(Path(log.path), 0, tuple(verify_index_alone(log.index.path)))
        records, problems = verify_log(log)
    return VerifyReport(Path(log.path), records, tuple(problems))

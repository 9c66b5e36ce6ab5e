"""salvage(): copy every intact record of a damaged log into a new log.

The log is read by the scanner of ``storage/file/check.py`` (the one behind ``verify()``),
which never trusts a length it has not checked and never writes to the source; the new log
is written by a ``ConversationCodec``, so this module sits above the codec and nothing below
imports it.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .._fsio import DEFAULT_IO, FileIO, make_private_dirs
from .._time import to_datetime
from ..attachments import BlobStore, externalize, references, restore
from ..codec import ConversationCodec
from ..crypto import KeyInput
from ..errors import DecryptionError, MissingBlobError, StorageError
from ..paths import blobs_path
from ..storage.file.check import (
    Problem,
    Region,
    indexed_ends,
    scan_records,
    verify_index_alone,
    verify_log,
)
from ..storage.file.log import FileLog

__all__ = ["SalvageReport", "salvage"]


@dataclass(frozen=True, slots=True)
class SalvageReport:
    """What ``salvage()`` copied: intact records recovered, seqs lost, and the findings.

    ``lost_seqs``: every seq the log is known to have held and that was not recovered: the
    gaps, and the records past the last one recovered that the index (or an authentic but
    unreadable record) shows existed. ``more_lost``: damage follows the last record whose
    seq is known, and no index counts the records it held, so an unknown number of records
    after ``lost_seqs`` (and after the last recovered seq) may be lost too.
    """

    source: Path
    destination: Path
    recovered: int
    lost_seqs: tuple[int, ...]
    problems: tuple[Problem, ...]
    more_lost: bool = False


def salvage(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    encryption_key: KeyInput | None = None,
    password: str | None = None,
    context: str | None = None,
    io: FileIO = DEFAULT_IO,
) -> SalvageReport:
    """Copy every intact record of a (damaged) log into a new log at ``dst``.

    ``src`` is only read. Records keep their order by seq and their timestamps (a
    timestamp that went backwards is raised to its predecessor's); a seq found twice keeps
    its first intact copy. ``dst`` is written with the same key or password, and bound to
    the same ``context`` (the one ``src`` was opened with), so it can take ``src``'s place.
    It is written in one atomic rewrite: an interruption leaves no ``dst``, so a rerun works.

    ``io``: the filesystem seam the new log is written through (as ``ConversationCodec``'s).

    :raises StorageError: ``dst`` already holds something.
    """
    dst_path = Path(dst)
    if dst_path.exists() and (dst_path.is_dir() or dst_path.stat().st_size):
        raise StorageError(
            errno.EEXIST, f"{dst_path} already exists; salvage writes a new log only"
        )
    with ConversationCodec(
        src, encryption_key, password=password, durability="flush", context=context
    ) as source:
        log = source.storage
        if not isinstance(log, FileLog):
            raise StorageError(errno.EOPNOTSUPP, f"{src}: salvage reads log files only")
        with log.transaction(write=False, tolerant=True):
            if log.fmt is None:
                regions: list[Region] = []
                # An empty log whose index still counts records: they were all lost.
                problems: list[Problem] = verify_index_alone(log.index.path)
                ends: list[int] | None = None
                uncounted = bool(problems)
            else:
                regions = list(scan_records(log))
                problems = verify_log(log, regions)[1]
                ends = indexed_ends(log)
                uncounted = False
            found: dict[int, tuple[int, dict[str, Any]]] = {}
            offsets: dict[int, int] = {}
            for kind, start, _end, seq, ts, text in regions:
                if kind == "record" and seq not in found:
                    assert log.fmt is not None
                    found[seq] = (ts, log.fmt.records.parse(text))
                    offsets[seq] = start
    if password is None:  # attachments="external" needs a key: a password log has no blobs
        source_blobs = BlobStore.for_key(blobs_path(src), encryption_key)
        target_blobs = BlobStore.for_key(blobs_path(dst_path), encryption_key, io=io)
        problems += _carry_blobs(found, offsets, source_blobs, target_blobs)
    seqs = sorted(found)
    stamps: list[datetime] = []
    last = 0
    for seq in seqs:
        last = max(last, found[seq][0])
        stamps.append(to_datetime(last))
    messages = [found[s][1] for s in seqs]
    # Sealed in memory first, then written as one atomic rewrite: a crash or an I/O error
    # leaves no partial destination (which a rerun would refuse), only none or all of it.
    with (
        ConversationCodec(":memory:", encryption_key, password=password, context=context) as staged,
        ConversationCodec(
            dst_path, encryption_key, password=password, context=context, io=io
        ) as out,
    ):
        staged.extend(messages, timestamps=stamps)
        if not staged.copy_records_to(out):  # nothing to copy (no intact record)
            out.extend(messages, timestamps=stamps)
    held, more_lost = _records_held(regions, ends)
    more_lost = more_lost or uncounted
    lost = tuple(s for s in range(held) if s not in found)
    return SalvageReport(Path(src), dst_path, len(seqs), lost, tuple(problems), more_lost)


def _records_held(regions: list[Region], ends: list[int] | None) -> tuple[int, bool]:
    """How many records the log is known to have held (seqs ``0..n-1``), and whether damage
    past the last seq known may have held more (``ends``: the index's record ends)."""
    held = len(ends or ())
    tail = 0  # where the regions after the last one with a seq end: damage, if past it
    last = 0
    for kind, _start, end, seq, _ts, _text in regions:
        if seq >= 0 and kind != "dictionary":
            held, last = max(held, seq + 1), end
        tail = end
    # Damage after the last seq known held records no scan can count; the index counts
    # them when it covers the damage (its last record ends there or later).
    covered = bool(ends) and ends[-1] >= tail  # type: ignore[index]
    return held, tail > last and not covered


def _carry_blobs(
    found: dict[int, tuple[int, dict[str, Any]]],
    offsets: dict[int, int],
    source: BlobStore,
    target: BlobStore,
) -> list[Problem]:
    """Put the attachment blobs (FORMAT.md §15) the rescued records refer to into the new
    log's store (before the log is written: a rerun finds them there); report each that
    cannot be, once, at the first record that refers to it. Such a record is kept as it is:
    its text is intact, and a copy of the blob from a backup, put into ``<dst>.blobs/``
    under its name, makes it whole again."""
    problems: list[Problem] = []
    reported: set[str] = set()
    for seq in sorted(found):
        ts, message = found[seq]
        names = references(message)
        if not names:
            continue
        # The new log has a blob store even when no blob could be rescued: verify() of it
        # then reports them, and a blob from a backup can be put back under its name.
        make_private_dirs(target.directory, io=target.io)
        try:  # each blob is opened (authenticated) and sealed again under the same key
            found[seq] = (ts, externalize(restore(message, source), target))
            continue
        except (MissingBlobError, DecryptionError):
            pass  # keep the record as it is; rescue what can be of its blobs, one by one
        for name in sorted(names - reported):
            try:
                if target.put(source.get(name)) == name:
                    continue
                kind, why = "blob-missing", "was named under an older key of the list"
            except MissingBlobError:
                kind, why = "blob-missing", "is missing"
            except DecryptionError:
                kind, why = "blob-damaged", "does not open with this key, or was altered"
            reported.add(name)
            detail = f"blob {name} {why} (record {seq} refers to it); not rescued"
            problems.append(Problem(kind, offsets[seq], detail))
    return problems

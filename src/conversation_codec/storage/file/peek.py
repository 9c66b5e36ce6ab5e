"""What a log file tells without its key: its kind, its sizes, and counts and times from its
index (FORMAT.md §7), for a listing of a store whose keys the lister does not hold.

Nothing here is verified. A sealed log's header is authenticated only with its key, and the
index never is: it is a cache that anyone who can write the directory can edit, that may
lag the log after a crash (records past its last entry: ``unindexed_bytes``), and that may
name records a power cut took under ``durability="flush"``. A reader holding the key checks
the last entry against its record (§7); this module cannot. So the count is the number of
index entries that pass the index's own checks (header and ``log_id`` matching the log's
plaintext header, ends increasing within the log, times not decreasing): what the log held
when its index was last written, as that index says.

Rejected: counting records by walking the frames of a sealed log. Frame lengths are plain,
but without the key a walk cannot tell a record from a dictionary or control frame, nor a
torn tail from a whole record; it would be no more honest than the index, and it reads the
whole file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...errors import FormatError
from ...format.header import (
    MAX_PLAIN_HEADER_BYTES,
    LogKind,
    decode_plain_header,
    decode_sealed_header,
    sniff_log,
)
from ...paths import index_path
from .index import OffsetIndex

__all__ = ["LogPeek", "peek_log"]


@dataclass(frozen=True, slots=True)
class LogPeek:
    """A log file as seen without its key (see the module docstring: nothing is verified).

    ``indexed`` is None when the file is no log of ours or has no usable index; the times
    are the first and last index entries' (µs since the epoch, UTC).
    """

    kind: LogKind
    log_bytes: int
    index_bytes: int
    indexed: int | None
    first_ts_us: int | None
    last_ts_us: int | None
    unindexed_bytes: int  # log bytes past the last indexed record: more records, or a torn tail


def peek_log(path: str | os.PathLike[str]) -> LogPeek:
    """Describe the log at ``path`` from its header and index, without any key.

    :raises OSError: the log cannot be read.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(MAX_PLAIN_HEADER_BYTES + 1)
    idx = index_path(path)
    try:
        index_bytes = os.stat(idx).st_size
    except OSError:
        index_bytes = 0
    kind = sniff_log(prefix[:64])
    try:
        log_id, data_start = _header(kind, prefix)
    except FormatError:  # also UnsupportedVersionError: a header this library cannot read
        return LogPeek(kind, size, index_bytes, None, None, None, 0)
    index = OffsetIndex(idx)
    index.load(log_id, data_start, size)
    count = len(index)
    if not count and not index_bytes:
        return LogPeek(kind, size, 0, None, None, None, size - data_start)
    first, last = (index.tss[0], index.tss[-1]) if count else (None, None)
    return LogPeek(kind, size, index_bytes, count, first, last, size - index.end)


def _header(kind: LogKind, prefix: bytes) -> tuple[bytes, int]:
    """Return the log's ``log_id`` and ``data_start`` from its (unauthenticated) header."""
    if kind is LogKind.SEALED:
        header = decode_sealed_header(prefix)[0]
        return header.log_id, header.size
    if kind is LogKind.PLAIN:
        end = prefix.find(b"\n")
        if end < 0:
            raise FormatError("plaintext log header line is truncated")
        return decode_plain_header(prefix[:end]).log_id, end + 1
    raise FormatError("not a conversation-codec log")

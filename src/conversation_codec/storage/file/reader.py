"""Read records back from a log file (LevelDB's log_reader): frames in order, one frame at an
offset, and the resynchronisation that finds where a record could start again after damage.

Everything here reads through a file descriptor and never writes. It knows the frame layout
(FORMAT.md §5: a varint-prefixed sealed frame, or a plain record line, §6) and nothing of what
a body means (``records``) or of the index. ``log.FileLog`` reads through these;
``recovery`` and ``check`` (the scanner behind verify/salvage) resynchronise through them.
"""

from __future__ import annotations

import bisect
import errno
import os
import re
from collections.abc import Iterator

from ..._fsio import check_file, open_regular
from ...errors import CorruptRecordError
from ...format.record import (
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MIN_BODY_BYTES,
    SuffixDepths,
    decode_frame_header,
    may_be_plain_line,
)
from ...format.varint import MAX_VARINT_BYTES
from ...records import RecordRejected
from ..base import IndexMismatch
from .index import OffsetIndex

__all__ = [
    "READ_CHUNK",
    "Reader",
    "frame_at",
    "frames",
    "next_candidate",
    "next_plain_candidate",
    "open_log_file",
    "plain_candidate_at",
    "plausible",
    "probe_log_file",
    "read_bodies",
    "read_body",
    "read_dictionary",
    "read_stored",
]

READ_CHUNK = 1 << 20  # bytes read at a time when scanning
_READ_ONLY_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}  # a write open refused: read
_BAD = (-1, -1, False)  # sentinel span: no record can start here
# Bytes a plain resynchronisation looks at per candidate: copied from the reader's 1 MiB
# buffer, which a request of READ_CHUNK from a later offset would read again each time.
_PEEK = 4096
_MAX_LINE = MAX_BODY_BYTES * 2  # the longest record line ``frames`` reads (``_parse_frame``)


class Reader:
    """Random access to a file through a 1 MiB window (no system call per byte tried)."""

    __slots__ = ("_base", "_buf", "_depths", "_line", "fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self._base, self._buf = 0, b""
        # What line_end last learnt: no newline in [lo, hi); hi holds one when ``found``.
        self._line = (0, 0, False)
        self._depths: tuple[int, int, SuffixDepths] | None = None  # (from, newline, depths)

    def get(self, start: int, end: int) -> bytes:
        """Return the file's bytes ``[start, end)`` (fewer at the end of the file)."""
        end = self._load(start, end)
        return self._buf[start - self._base : end - self._base]

    def window(self, start: int, end: int) -> tuple[bytes, int]:
        """The buffer holding the file's bytes ``[start, end)`` (fewer at the end of the
        file), and where ``start`` is in it: ``get`` without the copy, for ``bytes.find``."""
        self._load(start, end)
        return self._buf, start - self._base

    def view(self, start: int, end: int) -> memoryview:
        """``get`` without the copy."""
        end = self._load(start, end)
        return memoryview(self._buf)[start - self._base : end - self._base]

    def _load(self, start: int, end: int) -> int:
        end = min(end, self.size)
        if not (self._base <= start and end <= self._base + len(self._buf)):
            self._base = start
            self._buf = os.pread(self.fd, max(READ_CHUNK, end - start), start)
        return end

    def too_deep(self, pos: int, newline: int) -> bool:
        """Does the line ``[pos, newline]`` nest deeper than a record's may (``MAX_DEPTH``,
        the line's own object counted, as ``PlainRecords`` measures)? Asked of many offsets
        of one line, its bytes are copied and tokenized about once."""
        depths = self._depths
        if depths is None or depths[1] != newline or pos < depths[0]:
            text = self.get(pos, newline + 1)
            depths = self._depths = (pos, newline, SuffixDepths(text, MAX_DEPTH + 1))
        return depths[2].deeper(pos - depths[0])

    def line_end(self, pos: int) -> int:
        """Return the offset of the first newline at or after ``pos``; -1 when there is none
        in the file, or only past the longest line a record may take.

        Each byte is searched once for all the offsets of one line (the candidates inside a
        long line share its end): resynchronising costs the bytes scanned, not their square.
        """
        lo, hi, found = self._line
        if not lo <= pos <= hi:
            lo, hi, found = pos, pos, False
            end = min(self._base + len(self._buf), self.size)  # bytes past size: not ours
            if self._base <= pos < end:  # the window first
                at = self._buf.find(b"\n", pos - self._base, end - self._base)
                found = at >= 0
                hi = self._base + at if found else end
        stop, step = min(self.size, pos + _MAX_LINE + 1), _PEEK
        while not found and hi < stop:
            chunk = os.pread(self.fd, min(step, stop - hi), hi)
            if not chunk:
                break
            at = chunk.find(b"\n")
            found = at >= 0
            hi += at if found else len(chunk)
            step = min(step * 16, READ_CHUNK * 16)
        self._line = (lo, hi, found)
        return hi if found and hi - pos <= _MAX_LINE else -1


def _parse_frame(buf: bytes, pos: int, sealed: bool, at_eof: bool) -> tuple[int, int, bool] | None:
    """Locate the body of the record at ``pos`` in ``buf``: ``(start, end, control)``
    relative to buf (``control``: a dictionary record, not a message).

    Return None when more bytes are needed (and exist); raise ValueError when the bytes at
    ``pos`` cannot start a record.
    """
    if sealed:
        if not at_eof and len(buf) - pos < MAX_VARINT_BYTES:
            return None
        return decode_frame_header(buf, pos)
    newline = buf.find(b"\n", pos)
    if newline < 0:
        if len(buf) - pos > MAX_BODY_BYTES * 2:
            raise ValueError("record line exceeds the size limit")
        return None
    return pos, newline + 1, False


def frames(
    fd: int, pos: int, stop: int, *, sealed: bool, path: str, torn_ok: bool = False
) -> Iterator[tuple[int, bytes, int, bool]]:
    """Yield ``(start, body, end, control)`` for each record of the file in ``[pos, stop)``.

    Bytes that cannot start a record end the walk (``torn_ok``) or raise
    ``CorruptRecordError`` (naming ``path``).
    """
    buf, base = b"", pos  # buf holds the log's bytes [base, base + len(buf))
    while pos < stop:
        rel, buf_end = pos - base, base + len(buf)
        try:
            span = _parse_frame(buf, rel, sealed, at_eof=buf_end >= stop)
            if span is None and buf_end >= stop:
                span = _BAD
        except ValueError:
            span = _BAD
        if span is _BAD or (span is not None and base + span[1] > stop):
            if torn_ok:
                return
            raise CorruptRecordError("record is truncated or malformed", path=path, offset=pos)
        if span is not None and span[1] <= len(buf):
            yield pos, buf[span[0] : span[1]], base + span[1], span[2]
            pos = base + span[1]
            continue
        want = max(READ_CHUNK, span[1] - len(buf) if span is not None else 0)
        more = os.pread(fd, min(want, stop - buf_end), buf_end)
        if not more:
            raise CorruptRecordError("log shrank while reading", path=path, offset=pos)
        buf, base = buf[rel:] + more, pos


def frame_at(reader: Reader, pos: int, sealed: bool) -> tuple[int, bytes, bool] | None:
    """Return ``(end, body, control)`` when a whole, well-formed frame starts at ``pos``."""
    if sealed:
        try:
            start, end, control = decode_frame_header(reader.get(pos, pos + MAX_VARINT_BYTES))
        except ValueError:
            return None
        if pos + end > reader.size:
            return None
        return pos + end, reader.get(pos + start, pos + end), control
    # A plain line, up to the longest a record may take (``_parse_frame``): a long record
    # after damage is found too.
    newline = reader.line_end(pos)
    if newline < 0:
        return None
    return newline + 1, reader.get(pos, newline + 1), False


def plain_candidate_at(reader: Reader, pos: int) -> tuple[int, bytes, bool] | None:
    """``frame_at`` for a plain resynchronisation candidate: None as well when the line from
    ``pos`` cannot be a record line (``may_be_plain_line``, which costs what the decoder
    reads up to its first error). A nested object that starts ``{"seq":`` inside a long
    line is refused so, without a copy of the rest of the line nor a depth scan over it."""
    newline = reader.line_end(pos)
    if newline < 0:
        return None
    if not may_be_plain_line(reader.view(pos, newline + 1), lambda: reader.too_deep(pos, newline)):
        return None
    return newline + 1, reader.get(pos, newline + 1), False


def read_body(fd: int, span: tuple[int, int], sealed: bool, whole: bytes | None = None) -> bytes:
    """Return the message body of the record at the index ``span`` ``[start, end)``;
    ``whole``: the file's bytes, when the caller holds them (a small log, FileLog.whole).

    :raises IndexMismatch: the span is not one whole record.
    """
    start, end = span
    if whole is not None and end <= len(whole):
        return _unframe(whole[start:end], start, sealed)
    return _unframe(_pread_span(fd, start, end, sealed), start, sealed)


def _pread_span(fd: int, start: int, end: int, sealed: bool) -> bytes:
    """The file's bytes ``[start, end)``. A plain log's last line may lack its newline,
    which recovery proved committed and indexed as if there (FORMAT.md §10.1): the index
    then ends one byte past the file, and that byte reads as the newline."""
    data = os.pread(fd, end - start, start)
    if not sealed and len(data) == end - start - 1:
        data += b"\n"
    return data


def read_bodies(
    fd: int,
    index: OffsetIndex,
    start: int,
    stop: int,
    sealed: bool,
    whole: bytes | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(seq, body)`` for records ``start <= seq < stop`` in order, bounded memory:
    neighbouring records are read together, up to ``READ_CHUNK`` bytes at a time (cut
    from ``whole``, the file's bytes, when the caller holds them).

    A sealed message record whose span holds just a two-byte frame prefix (bodies under
    8 KiB: most chat messages) is cut out directly; any other span goes through
    ``_unframe``, which checks it whole (and skips a dictionary record before it).
    """
    ends = index.ends
    seq = start
    while seq < stop:
        first = index.span(seq)[0]
        # The index's ends strictly increase (checked when loaded): bisect for the last
        # record that ends within READ_CHUNK bytes (at least one record per read).
        last = max(seq, bisect.bisect_right(ends, first + READ_CHUNK, seq + 1, stop) - 1)
        if whole is not None and ends[last] <= len(whole):
            chunk = whole[first : ends[last]]
        else:
            chunk = _pread_span(fd, first, ends[last], sealed)
        a = 0  # the record's span in chunk: [a, b)
        for s in range(seq, last + 1):
            b = ends[s] - first
            n = b - a - 2  # the body's length, if its prefix is two bytes
            # FORMAT.md §5: n is a possible body length (>= MIN_BODY_BYTES, 56 + 16k) and
            # the prefix is varint(n << 1), control bit clear: equal to a two-byte varint's
            # value, so canonical (its second byte is 1..127).
            if (
                sealed
                and n >= MIN_BODY_BYTES
                and n % 16 == 8
                and chunk[a] & 0x80
                and (chunk[a] & 0x7F | chunk[a + 1] << 7) == n << 1
            ):
                yield s, chunk[a + 2 : b]
            else:
                yield s, _unframe(chunk[a:b], first + a, sealed)
            a = b
        seq = last + 1


def read_dictionary(fd: int, span: tuple[int, int], sealed: bool) -> bytes:
    """Return the body of the dictionary record (FORMAT.md §5.3) the index places at ``span``.

    :raises RecordRejected: (or ValueError) no whole dictionary record lies there.
    """
    frame = os.pread(fd, span[1] - span[0], span[0])
    fs = _parse_frame(frame, 0, sealed, True)
    if fs is None or not fs[2] or fs[1] != len(frame):
        raise RecordRejected("no dictionary record where the index says")
    return frame[fs[0] : fs[1]]


def read_stored(
    fd: int, data_start: int, dict_span: tuple[int, int], sealed: bool
) -> tuple[bytes, bytes | None]:
    """The header's bytes and the dictionary record's body (None: ``dict_span`` is
    ``(0, 0)``), as the file holds them."""
    dictionary = None if dict_span == (0, 0) else read_dictionary(fd, dict_span, sealed)
    return os.pread(fd, data_start, 0), dictionary


def _unframe(frame: bytes, start: int, sealed: bool) -> bytes:
    """Return the message body of one index span (skipping a dictionary record before it).

    :raises IndexMismatch: the span (at file offset ``start``) is not one whole record.
    """
    pos = 0
    while True:
        try:
            span = _parse_frame(frame, pos, sealed, True)
        except ValueError:
            span = None
        if span is None or span[1] > len(frame) or (span[2] and span[1] == len(frame)):
            raise IndexMismatch(start)
        if not span[2]:
            if span[1] != len(frame):
                raise IndexMismatch(start)
            return frame[span[0] : span[1]]
        pos = span[1]


# -- resynchronisation: where could a record start again? ---------------------------------

# Where a sealed frame could start: a non-zero prefix byte (no record length is 0) followed,
# within the 1-5 bytes of its varint, by the three zero bytes that open every Fernet
# timestamp before the year 36,812. Scanning for this runs at regex speed, so resynchronising
# over megabytes of torn or zeroed bytes does not try every offset in Python.
_FRAME_CANDIDATE = re.compile(rb"[\x01-\xff](?=[\x00-\xff]{0,4}\x00\x00\x00)")


def next_candidate(reader: Reader, pos: int) -> int:
    """Return the first offset >= ``pos`` where a sealed frame could start (or the end)."""
    while pos < reader.size:
        chunk = reader.get(pos, pos + READ_CHUNK)
        found = _FRAME_CANDIDATE.search(chunk)
        if found is not None:
            return pos + found.start()
        if pos + len(chunk) >= reader.size:
            break
        pos += max(1, len(chunk) - 8)  # overlap: a candidate may straddle the window
    return reader.size


# FORMAT.md §10.1: a plain candidate is a line start, the end of zero-filled bytes, or where
# writers' record lines begin (a record can follow a torn line's bytes after a lost page).
# A line whose first byte past JSON whitespace is not "{" holds no record line: skipped
# without a read or a parse. Whitespace that reaches the window's end cannot tell: tried.
# Searches that C loops run fast (a literal first byte or string: ~0.3-1.5 ms a MiB of
# text; one pattern for all three needs a lookbehind at every byte, ~70 ms a MiB).
_LINE = re.compile(rb"\n[ \t\r]*(?:\{|\Z)")  # a candidate just past the newline
_WHITESPACE = b" \t\r"  # JSON's, but the newline that ends a line
_PLAIN_RECORD_START = b'{"seq":'  # FORMAT.md §6: every record line writers write starts so


def _first_plain_candidate(chunk: bytes, at: int, stop: int) -> int:
    """The first candidate at or after ``at`` in ``chunk[:stop]`` (whose byte ``at - 1`` may
    end a line); ``stop`` or more when there is none, or a run reaches ``stop``."""
    best = chunk.find(_PLAIN_RECORD_START, at, stop)
    best = stop if best < 0 else best
    line = _LINE.search(chunk, at - 1, best)
    if line is not None:
        best = line.start() + 1
    # After zeros: a "{" whose bytes before it, past whitespace, are a zero. Looked for from
    # the brace backwards, so that a run of zeros costs a find, not a walk through it.
    zero = chunk.find(b"\x00", max(0, at - 1), best)
    while zero >= 0:
        brace = chunk.find(b"{", zero, min(best + 1, stop))
        if brace < 0 and best < stop:
            break
        end = brace if brace >= 0 else stop  # no brace: whitespace to the end tells not
        while end > zero and chunk[end - 1] in _WHITESPACE:
            end -= 1
        if end > zero and chunk[end - 1] == 0 and (brace >= 0 or end < stop):
            return end
        if brace < 0:
            break
        zero = chunk.find(b"\x00", brace, best)
    return best


def next_plain_candidate(reader: Reader, pos: int) -> int:
    """Return the next offset >= ``pos`` where a plain record line could start (or the end).

    A record line §6 accepts may space or order its members as it likes, so every line
    start is a candidate (the line is then parsed); so is the end of zero-filled bytes,
    and every ``{"seq":`` as writers lay a record out: a record can follow zero-filled
    bytes or a torn line with no newline between them (a lost page under "flush"). On a
    log that writers wrote these are the record starts, and the nested objects of messages
    that begin ``{"seq":``: ``plain_candidate_at`` refuses those at the parser's first error.
    """
    window = _PEEK  # small first (a candidate is usually near), larger while none is found
    while pos < reader.size:
        base = max(0, pos - 1)  # the byte before ``pos`` may end a line
        # Searched in the reader's buffer, not a copy: a candidate every few bytes (nested
        # objects inside a long line) costs its search, not a copy of the window each.
        buf, at = reader.window(base, base + window)
        stop = min(at + min(window, reader.size - base), len(buf))
        found = _first_plain_candidate(buf, at + pos - base, stop)
        if found < stop:
            return base + found - at
        if base + stop - at >= reader.size:
            break
        pos = max(pos + 1, base + stop - at - len(_PLAIN_RECORD_START))
        window = min(window * 16, READ_CHUNK)
    return reader.size


def plausible(body: bytes, floor_s: int) -> bool:
    """Could ``body`` be a record written after one stamped ``floor_s``? Its Fernet timestamp
    must lie in the next ~136 years: random bytes pass with odds of about 1 in 4 billion, so
    resynchronising over a torn tail costs a compare per byte, not an HMAC."""
    ts_s = int.from_bytes(body[:8], "big")
    return floor_s <= ts_s <= floor_s + (1 << 32)


def open_log_file(path: str) -> tuple[int, os.stat_result] | None:
    """Open the log file at ``path``, read-write where allowed (else read-only: a file or
    a file system that refuses writes), with its ``fstat``; None when there is none, or it
    is empty (FORMAT.md §9: an empty history, even unreadable). Never through a link."""
    opened = _open_log_file(path)
    return opened[:2] if isinstance(opened, tuple) else None


def probe_log_file(path: str, size: int) -> tuple[int | None, os.stat_result, bytes] | bytes | None:
    """``open_log_file`` with the file's first ``size`` bytes, in one open: the descriptor
    stays open for the caller to keep (issue 15), unless only a read-only open was allowed
    (then None: closed again, so that a write opens the file afresh, writable by then).
    ``b""`` when the file is empty (closed again), None when there is none."""
    opened = _open_log_file(path)
    if not isinstance(opened, tuple):
        return b"" if opened else None
    fd, st, writable = opened
    try:
        prefix = os.pread(fd, size, 0)
    except BaseException:
        os.close(fd)
        raise
    if not writable:
        os.close(fd)
    return fd if writable else None, st, prefix


def _open_log_file(path: str) -> tuple[int, os.stat_result, bool] | bool:
    """``open_log_file``, and whether it opened read-write; for no open file, whether one
    is at the path (an empty file)."""
    writable = True
    try:
        try:
            fd, st = open_regular(path, os.O_RDWR)
        except OSError as exc:
            if exc.errno not in _READ_ONLY_ERRNOS:
                raise
            fd, st = open_regular(path, os.O_RDONLY)
            writable = False
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        seen = check_file(path)
        if seen is None or not seen.st_size:
            return seen is not None
        raise
    if not st.st_size:
        os.close(fd)
        return True
    return fd, st, writable

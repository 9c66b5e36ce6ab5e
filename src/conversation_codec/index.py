"""The offset index sidecar: a cache of where each record ends and when it was written.

The index lets ``get``, ``tail``, ``message_count`` and date ranges find records without
scanning or decrypting the log. It is never trusted blindly and never the only copy of
anything: entries are checked when loaded (ends strictly increasing, within the log,
timestamps non-decreasing), and whatever is missing or damaged is rebuilt from the log.
It is not fsynced: after a power loss it is caught up from the log instead.
"""

from __future__ import annotations

import bisect
import os
from array import array

from .format.index import (
    DICT_SPAN,
    DICT_SPAN_OFFSET,
    INDEX_ENTRY,
    INDEX_HEADER_BYTES,
    MAX_TS_US,
    decode_index_header,
    encode_index_header,
)

__all__ = ["OffsetIndex"]

_MAX_INDEX_READ = 1 << 34  # bytes: 1 billion entries; a bigger sidecar is garbage


def _interleave(ends: array[int], tss: array[int], start: int) -> bytes:
    out = array("q", bytes(16 * (len(ends) - start)))
    out[0::2] = ends[start:]
    out[1::2] = tss[start:]
    return out.tobytes()


class OffsetIndex:
    """In-memory entries (``ends``, ``tss``) mirrored into the sidecar file.

    ``persisted`` counts the leading entries known to be in the file; entries past it were
    caught up from the log in memory (a reader never writes the file).
    """

    __slots__ = ("_fd", "data_start", "dict_span", "ends", "path", "persisted", "tss")

    def __init__(self, path: str) -> None:
        self.path = path
        self.ends: array[int] = array("q")
        self.tss: array[int] = array("q")
        self.data_start = 0
        self.persisted = 0
        self.dict_span = (0, 0)  # where the log's dictionary record lies; (0, 0): none
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self.ends)

    def span(self, seq: int) -> tuple[int, int]:
        """Return the ``[start, end)`` byte range of record ``seq`` in the log."""
        return (self.ends[seq - 1] if seq else self.data_start), self.ends[seq]

    @property
    def end(self) -> int:
        """Byte offset just past the last indexed record."""
        return self.ends[-1] if self.ends else self.data_start

    def first_at_or_after(self, ts_us: int) -> int:
        """Return the first seq whose timestamp is >= ``ts_us`` (binary search)."""
        return bisect.bisect_left(self.tss, ts_us)

    def reset(self, data_start: int) -> None:
        """Forget every entry (a new or replaced log)."""
        self.close()
        self.ends = array("q")
        self.tss = array("q")
        self.data_start = data_start
        self.persisted = 0
        self.dict_span = (0, 0)

    def load(self, log_id: bytes, data_start: int, log_size: int, *, start: int = 0) -> bool:
        """Read the sidecar from entry ``start`` on; keep the longest valid prefix.

        Entries before ``start`` are kept from memory. Return True when every entry in the
        file was usable (False means a writer should rewrite the file).
        """
        if not start:
            self.reset(data_start)
        else:
            del self.ends[start:]
            del self.tss[start:]
        try:
            with open(self.path, "rb") as f:
                decoded = decode_index_header(f.read(INDEX_HEADER_BYTES))
                if decoded is None or decoded[0] != log_id:
                    self.persisted = 0
                    return False
                span = decoded[1]
                if span != (0, 0) and not data_start <= span[0] < span[1] <= log_size:
                    self.persisted = 0
                    return False
                self.dict_span = span
                offset = INDEX_HEADER_BYTES + start * INDEX_ENTRY.size
                # Bound the read by what the file holds (read(n) allocates n bytes first)
                # and by what a log of this size could need.
                stored = max(0, os.fstat(f.fileno()).st_size - offset)
                f.seek(offset)
                raw = f.read(min(_MAX_INDEX_READ, stored, log_size * INDEX_ENTRY.size))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self.persisted = 0
            return False
        whole = len(raw) - len(raw) % INDEX_ENTRY.size
        flat = array("q")
        flat.frombytes(raw[:whole])
        ends, tss = flat[0::2], flat[1::2]
        good = self._valid_prefix(ends, tss, log_size)
        self.ends.extend(ends[:good])
        self.tss.extend(tss[:good])
        self.persisted = len(self.ends)
        return good == len(ends) and whole == len(raw)

    def _valid_prefix(self, ends: array[int], tss: array[int], log_size: int) -> int:
        prev_end = self.end
        prev_ts = self.tss[-1] if self.tss else 0
        for i, (end, ts) in enumerate(zip(ends, tss, strict=True)):
            # A time outside what writers stamp is garbage, not a date to show (FORMAT.md §7).
            if not prev_end < end <= log_size or ts < prev_ts or not 0 <= ts < MAX_TS_US:
                return i
            prev_end, prev_ts = end, ts
        return len(ends)

    def add(self, end: int, ts_us: int) -> None:
        """Append one entry in memory."""
        self.ends.append(end)
        self.tss.append(ts_us)

    def forget_from(self, count: int) -> None:
        """Drop entries from ``count`` on in memory only (the file is rewritten later)."""
        del self.ends[count:]
        del self.tss[count:]
        self.persisted = min(self.persisted, count)

    def truncate(self, count: int) -> None:
        """Drop entries from ``count`` on, in memory and in the file."""
        del self.ends[count:]
        del self.tss[count:]
        if self.persisted > count:
            os.ftruncate(self._open(), INDEX_HEADER_BYTES + count * INDEX_ENTRY.size)
            self.persisted = count

    def persist(self, log_id: bytes, *, rewrite: bool = False) -> None:
        """Write the entries the file lacks (all of them, with the header, when ``rewrite``)."""
        if rewrite:
            self.close()
        fd = self._open()
        if rewrite:
            os.ftruncate(fd, 0)
            os.pwrite(fd, encode_index_header(log_id, self.dict_span), 0)
            self.persisted = 0
        if self.persisted < len(self.ends):
            if self.persisted + 1 == len(self.ends):  # the common single append
                data = INDEX_ENTRY.pack(self.ends[-1], self.tss[-1])
            else:
                data = _interleave(self.ends, self.tss, self.persisted)
            os.pwrite(fd, data, INDEX_HEADER_BYTES + self.persisted * INDEX_ENTRY.size)
            self.persisted = len(self.ends)

    def set_dict_span(self, span: tuple[int, int], *, persist: bool) -> None:
        """Record where the log's dictionary lies (in the file too, for a writer)."""
        self.dict_span = span
        if persist:
            os.pwrite(self._open(), DICT_SPAN.pack(*span), DICT_SPAN_OFFSET)

    def _open(self) -> int:
        # The descriptor may outlive the file's name (someone deleted the sidecar): writes
        # then go nowhere useful, which is fine for a cache that the next open rebuilds.
        if self._fd is None:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            self._fd = os.open(self.path, flags, 0o600)
        return self._fd

    def close(self) -> None:
        """Close the sidecar's file descriptor (entries stay in memory)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

"""The offset index sidecar: a cache of where each record ends and when it was written.

The index lets ``get``, ``tail``, ``message_count`` and date ranges find records without
scanning or decrypting the log. It is never trusted blindly and never the only copy of
anything: entries are checked when loaded (ends strictly increasing, within the log,
timestamps non-decreasing), and whatever is missing or damaged is rebuilt from the log.
Entries are not fsynced on append: after a power loss the index is caught up from the log.
It is synced only where a stale copy could come back and mislead (a cut, a whole rewrite).

Each entry carries a ``synced`` flag (FORMAT.md §7): set when the writer had synced the log
before it wrote the entry, so the entry is *committed evidence* — the log held that record
durably, and recovery (§10.1) never cuts it as a torn tail.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from array import array

from ..._fsio import DEFAULT_IO, FileIO, open_file, open_regular, write_all
from ...format.index import (
    DICT_SPAN,
    DICT_SPAN_OFFSET,
    END_MASK,
    ENTRY_SYNCED,
    INDEX_ENTRY,
    INDEX_HEADER_BYTES,
    INDEX_VERSION,
    MAX_TS_US,
    decode_index_header,
    encode_index_header,
)

__all__ = ["OffsetIndex"]

_MAX_INDEX_READ = 1 << 34  # bytes: 1 billion entries; a bigger sidecar is garbage
_FLAG = -(1 << 62)  # ENTRY_SYNCED (both top bits) as a signed 64-bit value ("q" arrays)


def _split_flags(ends: array[int]) -> bytearray:
    """Strip ENTRY_SYNCED from ``ends`` in place; return the flags. An end with just one of
    the two flag bits set is garbled: it becomes -1, which no valid prefix holds."""
    synced = bytearray(len(ends))
    for k, end in enumerate(ends):
        if end < 0 or end > END_MASK:
            if _FLAG <= end < 0:  # both top bits: the flag
                synced[k], ends[k] = 1, end & END_MASK
            else:
                ends[k] = -1
    return synced


def _interleave(ends: array[int], tss: array[int], synced: bytearray, start: int) -> bytes:
    out = array("q", bytes(16 * (len(ends) - start)))
    out[0::2] = ends[start:]
    out[1::2] = tss[start:]
    for k in range(start, len(ends)):
        if synced[k]:
            out[2 * (k - start)] |= _FLAG
    return out.tobytes()


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    """Read up to ``size`` bytes at ``offset``, fewer only at the end of the file (a single
    pread returns at most ~2 GiB)."""
    data = os.pread(fd, size, offset)
    while 0 < len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


class OffsetIndex:
    """In-memory entries (``ends``, ``tss``) mirrored into the sidecar file.

    ``persisted`` counts the leading entries known to be in the file; entries past it were
    caught up from the log in memory (a reader never writes the file).
    """

    __slots__ = (
        "_fd",
        "committed_end",
        "data_start",
        "dict_span",
        "ends",
        "io",
        "path",
        "persisted",
        "synced",
        "tss",
        "version",
    )

    def __init__(self, path: str, *, io: FileIO = DEFAULT_IO) -> None:
        self.path = path
        self.io = io  # the log's filesystem seam: index writes are seen by its recorders
        self.ends: array[int] = array("q")
        self.tss: array[int] = array("q")
        self.synced = bytearray()  # per entry: 1 when the entry is committed evidence
        self.data_start = 0
        self.persisted = 0
        self.dict_span = (0, 0)  # where the log's dictionary record lies; (0, 0): none
        # The end of the last record that a synced entry proved committed (FORMAT.md §10.1):
        # recovery never cuts the log below it. Dropping unverified entries keeps it.
        self.committed_end = 0
        self.version = INDEX_VERSION  # of the file as loaded (1: no synced flags)
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

    @property
    def append_at(self) -> int:
        """Where the log's next frame goes: after the last message or the dictionary record."""
        return max(self.end, self.dict_span[1])

    def first_at_or_after(self, ts_us: int) -> int:
        """Return the first seq whose timestamp is >= ``ts_us`` (binary search)."""
        return bisect.bisect_left(self.tss, ts_us)

    def reset(self, data_start: int, *, keep_evidence: bool = False) -> None:
        """Forget every entry (a new or replaced log; or, ``keep_evidence``, a rebuild that
        must still not cut what the forgotten entries proved committed)."""
        self.close()
        self.ends = array("q")
        self.tss = array("q")
        self.synced = bytearray()
        self.data_start = data_start
        self.persisted = 0
        self.dict_span = (0, 0)
        if not keep_evidence:
            self.committed_end = 0

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
            del self.synced[start:]
        try:
            # Never through a link: a planted ``P.idx`` link raises StorageError.
            fd, st = open_regular(self.path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            self.persisted = 0
            return False
        try:
            offset = INDEX_HEADER_BYTES + start * INDEX_ENTRY.size
            # Bound the read by what the file holds (a read of n bytes allocates them
            # first) and by what a log of this size could need.
            stored = max(0, st.st_size - offset)
            want = min(_MAX_INDEX_READ, stored, log_size * INDEX_ENTRY.size)
            # Header and entries in one pread when reading from the first entry (an open).
            head = _pread_all(fd, INDEX_HEADER_BYTES + (0 if start else want), 0)
            decoded = decode_index_header(head[:INDEX_HEADER_BYTES])
            if decoded is None or decoded[0] != log_id:
                self.persisted = 0
                return False
            self.version = decoded[2]
            span = decoded[1]
            if span != (0, 0) and not data_start <= span[0] < span[1] <= log_size:
                self.persisted = 0
                return False
            self.dict_span = span
            raw = head[INDEX_HEADER_BYTES:] if not start else _pread_all(fd, want, offset)
        finally:
            os.close(fd)
        whole = len(raw) - len(raw) % INDEX_ENTRY.size
        flat = array("q")
        flat.frombytes(raw[:whole])
        ends, tss = flat[0::2], flat[1::2]
        synced = _split_flags(ends) if self.version >= 2 else bytearray(len(ends))
        good = self._valid_prefix(ends, tss, log_size)
        self.ends.extend(ends[:good])
        self.tss.extend(tss[:good])
        self.synced.extend(synced[:good])
        last = synced.rfind(1, 0, good)
        if last >= 0:
            self.committed_end = max(self.committed_end, ends[last])
        self.persisted = len(self.ends)
        return good == len(ends) and whole == len(raw) and self.version == INDEX_VERSION

    def synced_entry_at(self, start: int, log_id: bytes, log_size: int) -> bool:
        """Return True when the sidecar file holds a synced entry (FORMAT.md §7) for a
        record that starts at byte ``start``: the evidence that it was committed.

        Read from the file, not from memory: recovery drops the entries whose records do
        not check out, and this asks what they said. Only an entry that starts exactly where
        recovery stopped counts (FORMAT.md §10.1): a garbled end elsewhere proves nothing.
        Called only when a walk stops short of ``committed_end``, so the read is rare.
        """
        return start < self.synced_end_at(start, log_id, log_size) <= log_size

    def synced_end_at(self, start: int, log_id: bytes, log_size: int) -> int:
        """``synced_entry_at``'s entry: the end of the record that starts at ``start`` as a
        synced entry in the sidecar file gives it, when the entries before it lie within
        the log and it ends at most one byte past it (a plain log's committed last line
        that lost its newline, FORMAT.md §10.1); else 0."""
        try:
            with os.fdopen(open_file(self.path, os.O_RDONLY), "rb") as f:
                decoded = decode_index_header(f.read(INDEX_HEADER_BYTES))
                if decoded is None or decoded[0] != log_id or decoded[2] < 2:
                    return 0
                raw = f.read(min(_MAX_INDEX_READ, (log_size + 1) * INDEX_ENTRY.size))
        except (FileNotFoundError, NotADirectoryError):
            return 0
        flat = array("q")
        flat.frombytes(raw[: len(raw) - len(raw) % INDEX_ENTRY.size])
        ends = flat[0::2]
        synced = _split_flags(ends)
        prev = self.data_start
        for k, end in enumerate(ends):
            if prev == start:
                return end if synced[k] and start < end <= log_size + 1 else 0
            if not prev < end <= log_size or prev > start:
                return 0
            prev = end
        return 0

    def _valid_prefix(self, ends: array[int], tss: array[int], log_size: int) -> int:
        prev_end = self.end
        prev_ts = self.tss[-1] if self.tss else 0
        for i, (end, ts) in enumerate(zip(ends, tss, strict=True)):
            # A time outside what writers stamp is garbage, not a date to show (FORMAT.md §7).
            if not prev_end < end <= log_size or ts < prev_ts or not 0 <= ts < MAX_TS_US:
                return i
            prev_end, prev_ts = end, ts
        return len(ends)

    def add(self, end: int, ts_us: int, *, synced: bool = False) -> None:
        """Append one entry in memory (``synced``: the log was synced before it: §7)."""
        self.ends.append(end)
        self.tss.append(ts_us)
        self.synced.append(synced)
        if synced:
            self.committed_end = end

    def forget_from(self, count: int) -> None:
        """Drop entries from ``count`` on in memory only (the file is rewritten later).

        The evidence they carried stays (``committed_end``): a dropped entry whose record
        did not check out is exactly the case recovery must not mistake for a torn tail.
        """
        del self.ends[count:]
        del self.tss[count:]
        del self.synced[count:]
        self.persisted = min(self.persisted, count)

    def truncate(self, count: int) -> None:
        """Drop entries from ``count`` on, in memory and durably in the file (a pop).

        Synced before the log is cut (FORMAT.md §8.3): otherwise a power loss could bring
        back entries naming records that a pop removed, as false evidence.
        """
        del self.ends[count:]
        del self.tss[count:]
        del self.synced[count:]
        self.committed_end = min(self.committed_end, self.end)
        fd = self._open()
        if self.persisted > count:
            self.io.truncate(fd, INDEX_HEADER_BYTES + count * INDEX_ENTRY.size)
            self.persisted = count
        self.io.sync(fd, data_only=False)

    def persist(self, log_id: bytes, *, rewrite: bool = False) -> None:
        """Write the entries the file lacks (all of them, with the header, when ``rewrite``).

        A rewrite empties the file durably first, so that no power loss can mix the new
        header with entries of an older log (stale evidence, FORMAT.md §7); a file the
        rewrite creates itself has no older entries, and saves that sync (a new log's).
        """
        if rewrite:
            self.close()
            created = self._create()
        fd = self._open() if self._fd is None else self._fd
        if rewrite:
            if not created:
                self.io.truncate(fd, 0)
                self.io.sync(fd, data_only=False)
            write_all(fd, encode_index_header(log_id, self.dict_span), 0, io=self.io)
            self.persisted = 0
            self.version = INDEX_VERSION
        if self.persisted < len(self.ends):
            if self.persisted + 1 == len(self.ends):  # the common single append
                end = self.ends[-1] | (ENTRY_SYNCED if self.synced[-1] else 0)
                data = INDEX_ENTRY.pack(end, self.tss[-1])
            else:
                data = _interleave(self.ends, self.tss, self.synced, self.persisted)
            write_all(fd, data, INDEX_HEADER_BYTES + self.persisted * INDEX_ENTRY.size, io=self.io)
            self.persisted = len(self.ends)

    def set_dict_span(self, span: tuple[int, int], *, persist: bool) -> None:
        """Record where the log's dictionary lies (in the file too, for a writer)."""
        self.dict_span = span
        if persist:
            write_all(self._open(), DICT_SPAN.pack(*span), DICT_SPAN_OFFSET, io=self.io)

    def _open(self) -> int:
        # The descriptor may outlive the file's name (someone deleted the sidecar): writes
        # then go nowhere useful, which is fine for a cache that the next open rebuilds, as
        # long as no other file takes the name meanwhile: a writer checks ``detached`` first.
        if self._fd is None:
            self._fd = open_file(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def _create(self) -> bool:
        """Open the sidecar for a rewrite; return True when this call created the file."""
        try:
            self._fd = open_file(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        return True

    def detached(self) -> bool:
        """Was the sidecar deleted since this index opened it? Then close the descriptor and
        return True: the name may now hold a file that another process rebuilt, which a
        writer must rewrite from its own entries (writes to the deleted file reach no one,
        and a pop cut there would leave the rebuilt file naming the popped records)."""
        if self._fd is None or os.fstat(self._fd).st_nlink:
            return False
        self.close()
        return True

    def close(self) -> None:
        """Close the sidecar's file descriptor (entries stay in memory)."""
        fd, self._fd = self._fd, None  # forgotten first: an interrupt never closes it twice
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:  # dropped unclosed (a codec never closed): the file goes too
        with contextlib.suppress(Exception):  # also at interpreter exit
            self.close()

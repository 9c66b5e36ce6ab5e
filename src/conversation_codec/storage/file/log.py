"""The append-only log file: locking, appends, reads, truncation, atomic rewrites, recovery.

This is the file backend behind the storage seam (``append`` bodies, ``read`` a range,
``truncate``, ``rewrite``). It stores opaque record *bodies*; what a body means is the
business of ``records`` (shared with any other backend). Procedures follow
spec/FORMAT.md §8 (writing), §9 (reading) and §10 (recovery).

Concurrency: a writer holds the exclusive lock of ``lock.LogLock`` on ``<log>.lock``, a reader
the shared one; its counters tell every process when its cached index is stale.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType

from ..._fsio import DEFAULT_IO, FileIO, check_file, open_file, unlink_file
from ...errors import (
    ConversationCodecError,
    CorruptRecordError,
    StorageError,
    UnsupportedVersionError,
)
from ...format.record import MAX_BODY_BYTES, decode_frame_header, encode_frame
from ...format.varint import MAX_VARINT_BYTES
from ...paths import index_path, is_leftover, temp_path
from ...records import RecordDamaged, RecordRejected, SealedRecords
from ..base import IndexMismatch, LogFormat, LogStorage
from .index import OffsetIndex
from .lock import LogLock

__all__ = ["FileLog", "LogFormat", "Reader"]

_READ_CHUNK = 1 << 20  # bytes read at a time when scanning
_PREFIX_BYTES = 4096  # bytes handed to the attach callback to identify a log
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BAD = (-1, -1, False)  # sentinel span: no record can start here


# Where a sealed frame could start: a non-zero prefix byte (no record length is 0) followed,
# within the 1-5 bytes of its varint, by the three zero bytes that open every Fernet
# timestamp before the year 36,812. Scanning for this runs at regex speed, so resynchronising
# over megabytes of torn or zeroed bytes does not try every offset in Python.
_FRAME_CANDIDATE = re.compile(rb"[\x01-\xff](?=[\x00-\xff]{0,4}\x00\x00\x00)")


def next_candidate(reader: Reader, pos: int) -> int:
    """Return the first offset >= ``pos`` where a sealed frame could start (or the end)."""
    while pos < reader.size:
        chunk = reader.get(pos, pos + _READ_CHUNK)
        found = _FRAME_CANDIDATE.search(chunk)
        if found is not None:
            return pos + found.start()
        if pos + len(chunk) >= reader.size:
            break
        pos += max(1, len(chunk) - 8)  # overlap: a candidate may straddle the window
    return reader.size


_PLAIN_RECORD_START = b'{"seq":'  # FORMAT.md §6: every record line starts so


def next_plain_candidate(reader: Reader, pos: int) -> int:
    """Return the next offset >= ``pos`` where a plain record line could start (or the end).

    Line starts alone would miss a record that follows zero-filled bytes without a newline
    between them (a lost page under "flush"), so look for where record lines begin.
    """
    while pos < reader.size:
        chunk = reader.get(pos, pos + _READ_CHUNK)
        found = chunk.find(_PLAIN_RECORD_START)
        if found >= 0:
            return pos + found
        if pos + len(chunk) >= reader.size:
            break
        pos += max(1, len(chunk) - len(_PLAIN_RECORD_START))
    return reader.size


def plausible(body: bytes, floor_s: int) -> bool:
    """Could ``body`` be a record written after one stamped ``floor_s``? Its Fernet timestamp
    must lie in the next ~136 years: random bytes pass with odds of about 1 in 4 billion, so
    resynchronising over a torn tail costs a compare per byte, not an HMAC."""
    ts_s = int.from_bytes(body[:8], "big")
    return floor_s <= ts_s <= floor_s + (1 << 32)


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


class FileLog:
    """One conversation log on disk with its index sidecar and lock file."""

    def __init__(
        self,
        path: Path,
        *,
        attach: Callable[[bytes], LogFormat],
        durability: str = "fsync",
        lock_timeout: float | None = None,
        io: FileIO = DEFAULT_IO,
    ) -> None:
        self.path = os.fspath(path)
        self._io = io
        self.index = OffsetIndex(index_path(self.path), io=io)
        self.fmt: LogFormat | None = None
        self._attach = attach
        self._sync = durability == "fsync"
        self._lock = LogLock(self.path, lock_timeout, io=io)
        self._fd: int | None = None
        self._log_id_stat: tuple[int, int] | None = None
        # (lock inode, generation, truncations) as last seen; None forces a full reload
        self._seen: tuple[int, int, int] | None = None
        self._last_seen: tuple[int, int, int] | None = None
        self._mutex = threading.RLock()
        self._depth = 0
        self._writable = False
        self.poisoned = False
        self.tolerant = False  # readers stop at mid-log damage instead of raising
        self._locked = False
        self._index_ok = False
        self._settled = False  # see _catch_up
        self._dict_loaded = (0, 0)  # the span of the dictionary the record codec holds
        self._write_txn = _Transaction(self, True)
        self._read_txn = _Transaction(self, False)
        self.on_change: Callable[[], None] = lambda: None
        # Called with a step name between the steps of every write procedure (FORMAT.md §8);
        # by default the public seam ``FileIO.step``, which crash tests override.
        self.fault: Callable[[str], None] = lambda step: self._io.step(step)

    @property
    def io(self) -> FileIO:
        """The filesystem seam of the log, its index and its lock file."""
        return self._io

    @io.setter
    def io(self, io: FileIO) -> None:
        self._io = self.index.io = self._lock.io = io

    def _bump(self, *, truncation: bool) -> None:
        """Announce a change to other processes; always *before* the change is made."""
        assert self._seen is not None
        ino, gen, truncs = self._seen
        self._seen = (ino, gen + 1, truncs + int(truncation))
        self._lock.write_state(gen + 1, truncs + int(truncation))

    @property
    def seen(self) -> tuple[int, int, int] | None:
        """``(lock inode, generation, truncations)`` as of the current transaction (after
        this process's own bumps); None when it holds no lock (no log, read-only directory).
        Equal values mean no writer changed the log in between (FORMAT.md §8.1)."""
        return self._seen

    def transaction(self, *, write: bool, tolerant: bool = False) -> _Transaction:
        """Return a context that holds the lock (exclusive for ``write``) and brings the
        cached view up to date; OS errors inside it surface as ``StorageError``.

        Re-entrant within one thread; a nested transaction must not upgrade to write.
        """
        if tolerant:
            return _Transaction(self, write, tolerant=True)
        return self._write_txn if write else self._read_txn

    def _begin(self, write: bool, tolerant: bool = False) -> None:
        self._mutex.acquire()
        try:
            if self._depth:
                if write and not self._writable:
                    raise RuntimeError("cannot upgrade a read transaction to a write")
                self._depth += 1
                return
            self._locked = self._lock.acquire(exclusive=write)
            self._depth, self._writable, self.tolerant = 1, write, tolerant
            try:
                if write and self.poisoned:
                    raise StorageError(
                        "an earlier fsync failed; writes are refused until the log is reopened"
                    )
                self._refresh(write, self._locked)
            except BaseException:
                # A wrong key or a foreign file must leave the directory exactly as it was.
                self._lock.forget_created(keep=self.fmt is not None)
                self._depth, self._writable, self.tolerant = 0, False, False
                if self._locked:
                    self._locked = False
                    self._lock.release()
                raise
            self._lock.forget_created(keep=True)
        except BaseException:
            self._mutex.release()
            raise

    def _end(self) -> None:
        self._depth -= 1
        if not self._depth:
            self._writable = self.tolerant = False
            if self._locked:
                self._locked = False
                self._lock.release()
        self._mutex.release()

    def probe(self) -> None:
        """Identify an existing log from its header alone (no lock, no index, no writes).

        Headers never change for a given file, so this needs no lock; it lets a codec fail
        fast on a wrong key or a foreign file while leaving damaged logs openable.
        """
        with self._mutex:
            st = check_file(self.path)  # never through a link (alice.log -> bob.log)
            if st is not None and st.st_size:
                fd = open_file(self.path, os.O_RDONLY)
                try:
                    self._attach(os.pread(fd, _PREFIX_BYTES, 0))
                finally:
                    os.close(fd)

    # -- cached view -----------------------------------------------------------------------

    def _refresh(self, write: bool, locked: bool) -> None:
        """Bring the cached view up to date: nothing to do when no writer came by."""
        state = self._lock.state() if locked else None
        changed = state is None or state != self._seen
        if changed:
            self._last_seen, self._seen = self._seen, None  # None until the reload succeeds
            self._reload(state)
            self._seen = state
        if write and self.index.detached():
            self._index_ok = self._settled = False  # the catch-up rewrites it at its name
        if self.fmt is not None and (changed or (write and not self._settled)):
            try:
                self._catch_up(write)
            except BaseException:
                # The view is incomplete: forget it, so the next call looks again (and
                # raises again) rather than answering from a partial index.
                self._seen = None
                self._close_log()
                raise

    def _reload(self, state: tuple[int, int, int] | None) -> None:
        st = check_file(self.path)
        ident = None if st is None or st.st_size == 0 else (st.st_dev, st.st_ino)
        seen = self._last_seen
        if ident != self._log_id_stat or (self.fmt is None and ident is not None):
            self._open_log(ident)
            self.on_change()
        elif ident is not None:
            # Appends alone since our last look: read just the new entries.
            incremental = (
                seen is not None
                and state is not None
                and (seen[0], seen[2]) == (state[0], state[2])
            )
            self._load_index(start=min(self.index.persisted, len(self.index)) if incremental else 0)
            if not incremental:
                self.on_change()

    def _open_log(self, ident: tuple[int, int] | None) -> None:
        self._close_log()
        if ident is None:
            return
        try:
            fd = open_file(self.path, os.O_RDWR)
        except PermissionError:
            fd = open_file(self.path, os.O_RDONLY)
        try:
            fmt = self._attach(os.pread(fd, _PREFIX_BYTES, 0))
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.fmt, self._log_id_stat = fd, fmt, (st.st_dev, st.st_ino)
        self._load_index(start=0)
        self._check_last_entries()

    def _check_last_entries(self) -> None:
        """Authenticate the record the index's last entry names, dropping entries that do
        not hold up: after a power loss in "flush" mode the index can survive while the
        log's last blocks read as zeros, and appending after such an entry would hide a
        torn tail. One decryption per open; the catch-up then re-reads what was dropped."""
        assert self.fmt is not None
        while len(self.index):
            seq = len(self.index) - 1
            try:
                ok = self.fmt.records.check(self.read_body(seq), seq) == self.index.tss[seq]
            except (IndexMismatch, RecordRejected):
                ok = False
            if ok:
                return
            self.index.forget_from(seq)
            self._index_ok = False

    def _load_index(self, start: int) -> None:
        assert self.fmt is not None and self._fd is not None
        self._index_ok = self.index.load(
            self.fmt.log_id, self.fmt.data_start, os.fstat(self._fd).st_size, start=start
        )
        span = self.index.dict_span
        if span != self._dict_loaded and self._dict_loaded != (0, 0):
            # Another process cut the dictionary away (a pop) or the index forgot it: stop
            # using ours; a record that still needs it makes the reader rebuild and find it.
            self._drop_dictionary()
        if span != (0, 0) and span != self._dict_loaded:
            try:
                frame = os.pread(self._fd, span[1] - span[0], span[0])
                fs = _parse_frame(frame, 0, self.fmt.sealed, True)
                if fs is None or not fs[2] or fs[1] != len(frame):
                    raise RecordRejected("no dictionary record where the index says")
                self._use_dictionary(frame[fs[0] : fs[1]], span, persist=False)
            except (RecordRejected, ValueError):
                # A stale index: rebuild from the log (keeping what its entries proved).
                self.index.reset(self.fmt.data_start, keep_evidence=True)
                self._index_ok = False

    def _close_log(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self.fmt, self._log_id_stat = None, None, None
        self._dict_loaded = (0, 0)
        self.index.reset(0)

    def _use_dictionary(self, body: bytes, span: tuple[int, int], *, persist: bool) -> None:
        """Adopt the dictionary record at ``span`` (FORMAT.md §5.3): one per log in v1."""
        assert self.fmt is not None
        records = self.fmt.records
        if not isinstance(records, SealedRecords):
            raise RecordRejected("a plain log holds no dictionary records")
        # Authenticate first (FORMAT.md §10.1): a torn frame whose prefix happens to carry
        # the control bit is a torn tail, not a "second dictionary" from a newer writer.
        dictionary = records.decode_dictionary(body, 1)
        if self._dict_loaded not in ((0, 0), span):
            raise UnsupportedVersionError(
                "log holds a second dictionary record; upgrade conversation-codec"
            )
        records.use_dictionary(1, dictionary)
        self.index.set_dict_span(span, persist=persist)
        self._dict_loaded = span

    def forget_view(self) -> None:
        """Make the next transaction reload from the files (after a write failed midway)."""
        with self._mutex:
            if not self._depth:
                self._seen, self._settled = None, False
                self._close_log()

    def _drop_dictionary(self) -> None:
        self._dict_loaded = (0, 0)
        if self.fmt is not None and isinstance(self.fmt.records, SealedRecords):
            self.fmt.records.drop_dictionary()

    def _append_at(self) -> int:
        """Where the next frame goes: after the last message or the dictionary record."""
        end, dict_end = self.index.end, self.index.dict_span[1]
        return dict_end if dict_end > end else end

    def _catch_up(self, write: bool) -> None:
        """Index records past the index's end; cut a torn tail when writing (FORMAT.md §10).

        Afterwards ``_settled`` says whether the log ends exactly where the index does and
        the index file holds every entry: then, until another process bumps the counters,
        a writer needs no look at the file before appending.
        """
        assert self.fmt is not None and self._fd is not None
        self._settled = False
        size = os.fstat(self._fd).st_size
        # From the last indexed record, not from the dictionary record: the index may have
        # lost entries for records that lie before the dictionary (they are re-read, and the
        # dictionary record is met and adopted again on the way).
        pos = self.index.end
        if pos > size or self._append_at() > size:  # the log lost bytes the index knew
            self.index.reset(self.fmt.data_start)
            self._drop_dictionary()
            self._index_ok = False
            pos = self.index.end
        if pos < size:
            pos = self._walk(pos, size, write)
            # pos is where the intact records end. What follows is a torn tail only if no
            # committed record reaches past it and no intact record lies anywhere after it
            # (FORMAT.md §10.1); else this raises.
            if pos < size:
                self._damage_at(pos, size)
                if not write:
                    return  # a reader leaves the torn tail alone; the next writer cuts it
                self._bump(truncation=False)
                self.io.truncate(self._fd, pos)
                # Always synced, whatever the durability: a cut that a power loss undid
                # would put the torn bytes back under records appended after them.
                self._fsync(self._fd, always=True)
        if write and (not self._index_ok or self.index.persisted < len(self.index)):
            self.index.persist(self.fmt.log_id, rewrite=not self._index_ok)
            self._index_ok = True
        self._settled = write

    def _walk(self, pos: int, size: int, write: bool) -> int:
        """Index the intact records from ``pos`` on; return where they end (FORMAT.md §10.1).

        A record that authenticates but breaks a record rule (wrong seq or kind, earlier
        time, malformed envelope) is damage wherever it stands: a crash tears records, it
        never writes a whole authentic one wrongly. Readers of verify/salvage stop there
        and let the scanner report it; everyone else gets ``CorruptRecordError``.
        """
        assert self.fmt is not None
        records = self.fmt.records
        for start, body, end, control in self._frames(pos, size, torn_ok=True):
            try:
                if control:
                    self._use_dictionary(body, (start, end), persist=write and self._index_ok)
                    pos = end
                    continue
                ts = records.check(body, len(self.index))
                if self.index.tss and ts < self.index.tss[-1]:
                    raise RecordDamaged(
                        "record's time is earlier than the one before it (records reordered)"
                    )
            except RecordDamaged as exc:
                if self.tolerant and not self._writable:
                    return pos
                raise CorruptRecordError(
                    f"{exc}: the record was moved, duplicated, replayed or forged; nothing "
                    "was changed",
                    path=self.path,
                    offset=start,
                ) from None
            except RecordRejected:
                return pos
            self.index.add(end, ts)
            pos = end
        return pos

    def _damage_at(self, pos: int, size: int) -> None:
        """Decide whether bad bytes at ``pos`` are a torn tail or damage before good records.

        Every later position that could start a record (each byte offset of a sealed log,
        each line start of a plain one) is tried: any record that authenticates, whatever
        its seq, means the bad bytes are not a tail (FORMAT.md §10.1).
        """
        assert self.fmt is not None and self._fd is not None
        if self.tolerant and not self._writable:
            return  # verify/salvage: read up to the damage, the scanner reports the rest
        if pos < self.index.committed_end and self.index.synced_entry_at(
            pos, self.fmt.log_id, size
        ):
            raise CorruptRecordError(
                f"a committed record is damaged: the index proves the log held intact records "
                f"up to byte {self.index.committed_end}; nothing was changed — run "
                "conversation-codec salvage to copy out the intact records",
                path=self.path,
                offset=pos,
            )
        reader = Reader(self._fd, size)
        floor_s = self.index.tss[-1] // 1_000_000 if len(self.index) else 0
        q = pos + 1
        while q < size:
            q = next_candidate(reader, q) if self.fmt.sealed else next_plain_candidate(reader, q)
            if q >= size:
                break
            found = self.record_at(reader, q)
            if found is not None and self.fmt.sealed and not plausible(found[1], floor_s):
                found = None  # cheap reject: no HMAC over a length that random bytes made up
            if found is not None:
                try:
                    if found[2]:
                        records = self.fmt.records
                        assert isinstance(records, SealedRecords)
                        records.decode_dictionary(found[1], 1)
                    else:
                        self.fmt.records.check(found[1], None)
                except RecordDamaged:
                    intact = True  # authentic, though malformed: no crash wrote it
                except RecordRejected:
                    intact = False
                else:
                    intact = True
                if intact:
                    raise CorruptRecordError(
                        f"damaged record before an intact one at byte {q}; nothing was "
                        "changed — run conversation-codec salvage to copy out the intact records",
                        path=self.path,
                        offset=pos,
                    )
            q += 1

    def record_at(self, reader: Reader, pos: int) -> tuple[int, bytes, bool] | None:
        """Return ``(end, body, control)`` when a whole, well-formed frame starts at ``pos``."""
        assert self.fmt is not None
        if self.fmt.sealed:
            try:
                start, end, control = decode_frame_header(reader.get(pos, pos + MAX_VARINT_BYTES))
            except ValueError:
                return None
            if pos + end > reader.size:
                return None
            return pos + end, reader.get(pos + start, pos + end), control
        chunk = reader.get(pos, pos + _READ_CHUNK)
        newline = chunk.find(b"\n")
        return None if newline < 0 else (pos + newline + 1, chunk[: newline + 1], False)

    def _frames(
        self, pos: int, stop: int, *, torn_ok: bool = False
    ) -> Iterator[tuple[int, bytes, int, bool]]:
        """Yield ``(start, body, end, control)`` for each record in ``[pos, stop)``.

        Bytes that cannot start a record end the walk (``torn_ok``) or raise.
        """
        assert self._fd is not None and self.fmt is not None
        sealed = self.fmt.sealed
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
                raise CorruptRecordError(
                    "record is truncated or malformed", path=self.path, offset=pos
                )
            if span is not None and span[1] <= len(buf):
                yield pos, buf[span[0] : span[1]], base + span[1], span[2]
                pos = base + span[1]
                continue
            want = max(_READ_CHUNK, span[1] - len(buf) if span is not None else 0)
            more = os.pread(self._fd, min(want, stop - buf_end), buf_end)
            if not more:
                raise CorruptRecordError("log shrank while reading", path=self.path, offset=pos)
            buf, base = buf[rel:] + more, pos

    # -- the storage seam: reads ------------------------------------------------------------

    def read_body(self, seq: int) -> bytes:
        """Return the stored body of record ``seq`` (an index check; no scan)."""
        assert self._fd is not None and self.fmt is not None
        start, end = self.index.span(seq)
        frame = os.pread(self._fd, end - start, start)
        return self._unframe(frame, start)

    def _unframe(self, frame: bytes, start: int) -> bytes:
        """Return the message body of one index span (skipping a dictionary record)."""
        assert self.fmt is not None
        pos = 0
        while True:
            try:
                span = _parse_frame(frame, pos, self.fmt.sealed, True)
            except ValueError:
                span = None
            if span is None or span[1] > len(frame) or (span[2] and span[1] == len(frame)):
                raise IndexMismatch(start)
            if not span[2]:
                if span[1] != len(frame):
                    raise IndexMismatch(start)
                return frame[span[0] : span[1]]
            pos = span[1]

    def read_bodies(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(seq, body)`` for records ``start <= seq < stop`` in order, bounded memory."""
        assert self._fd is not None
        seq = start
        while seq < stop:
            first = self.index.span(seq)[0]
            last = seq
            while last + 1 < stop and self.index.ends[last + 1] - first <= _READ_CHUNK:
                last += 1
            chunk = os.pread(self._fd, self.index.ends[last] - first, first)
            for s in range(seq, last + 1):
                a, b = self.index.span(s)
                yield s, self._unframe(chunk[a - first : b - first], a)
            seq = last + 1

    def rebuild_index(self) -> None:
        """Forget the index and rebuild it from the log (used when it disagrees with the log)."""
        assert self.fmt is not None
        self.index.reset(self.fmt.data_start, keep_evidence=True)
        self._dict_loaded = (0, 0)
        self._index_ok = False
        try:
            self._catch_up(self._writable)
        except BaseException:
            self._seen = None  # as in _refresh: never answer from a half-built index
            self._close_log()
            raise

    # -- the storage seam: writes -----------------------------------------------------------

    def create(self, header: bytes, fmt: LogFormat) -> None:
        """Create an empty log atomically (temp file, fsync, rename, directory fsync)."""
        self.rewrite(header, fmt, ())

    def append(
        self, bodies: list[bytes], tss: list[int], dictionary: tuple[int, bytes] | None = None
    ) -> None:
        """Append framed bodies at the end with one write and one sync; then index them.

        ``dictionary``: ``(at, body)`` puts a dictionary record (FORMAT.md §5.3) before
        ``bodies[at]`` (after them all when ``at == len(bodies)``), in the same write.
        """
        assert self._fd is not None and self.fmt is not None
        frames = [encode_frame(b) for b in bodies] if self.fmt.sealed else bodies
        at, dict_frame = len(frames), b""
        if dictionary is not None:
            at, dict_frame = dictionary[0], encode_frame(dictionary[1], control=True)
        data = b"".join(frames if dictionary is None else [*frames[:at], dict_frame, *frames[at:]])
        end = self._append_at()
        self._bump(truncation=False)
        try:
            self._write_all(self._fd, data, end)
        except OSError:
            self._settled = False
            self.io.truncate(self._fd, end)  # best effort: leave no partial batch behind
            raise
        self.fault("append:written")
        self._fsync(self._fd)
        self.fault("append:synced")
        span = (0, 0)
        for i, (frame, ts) in enumerate(zip(frames, tss, strict=True)):
            if i == at:  # the index span of the message after the dictionary includes it
                span = (end, end + len(dict_frame))
                end += len(dict_frame)
            end += len(frame)
            self.index.add(end, ts, synced=self._sync)
        if at == len(frames):
            span = (end, end + len(dict_frame))
        try:
            if dictionary is not None:
                self._use_dictionary(dictionary[1], span, persist=True)
            self.index.persist(self.fmt.log_id)
        except OSError:
            # The records are committed; the index is only a cache. Rewrite it next time
            # rather than report a failed append that in fact succeeded.
            self._index_ok = self._settled = False

    def truncate(self, count: int) -> None:
        """Drop records from ``count`` on: index first, then the log (FORMAT.md §8)."""
        assert self._fd is not None and self.fmt is not None
        self._bump(truncation=True)
        end = self.index.span(count)[0] if count < len(self.index) else self.index.end
        self._settled = False
        self.index.truncate(count)
        if self.index.dict_span != (0, 0) and self.index.dict_span[0] >= end:
            self.index.set_dict_span((0, 0), persist=True)  # the dictionary goes too
            self._drop_dictionary()
        self.fault("truncate:index-truncated")
        self.io.truncate(self._fd, end)
        # Synced under "flush" too (FORMAT.md §8.3): a popped record that a power loss
        # brought back would be authentic and in place, so nothing could tell it apart.
        self._fsync(self._fd, always=True)
        self._settled = True

    def append_dictionary(self, body: bytes) -> None:
        """Append a sealed dictionary record after the last record (FORMAT.md §5.3)."""
        assert self._fd is not None and self.fmt is not None
        frame = encode_frame(body, control=True)
        start = self._append_at()
        self._bump(truncation=False)
        try:
            self._write_all(self._fd, frame, start)
        except OSError:
            self._settled = False
            self.io.truncate(self._fd, start)
            raise
        self._fsync(self._fd)
        self._use_dictionary(body, (start, start + len(frame)), persist=True)

    def rewrite(
        self,
        header: bytes,
        fmt: LogFormat,
        records: Iterable[tuple[bytes, int]],
        dictionary: bytes | None = None,
    ) -> None:
        """Atomically replace the whole log with ``header``, an optional dictionary record
        body, and ``(body, ts_us)`` records (FORMAT.md §8.4).

        Leftovers of crashed rewrites go first: a rewrite replaces history, and an old
        copy beside the log would keep what it removes (prune, replace) or seal it under
        a key it retires (rotate_key). The directory fsync at the end makes that durable.
        """
        self.remove_stale_temps()
        tmp = temp_path(self.path)
        fd = open_file(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        index = OffsetIndex(index_path(self.path), io=self.io)
        index.reset(fmt.data_start)
        try:
            pos = self._write_all(fd, header, 0)
            if dictionary is not None:
                frame = encode_frame(dictionary, control=True)
                index.dict_span = (pos, pos + len(frame))
                pos = self._write_all(fd, frame, pos)
            batch: list[bytes] = []
            written = pos
            for body, ts in records:
                frame = encode_frame(body) if fmt.sealed else body
                batch.append(frame)
                pos += len(frame)
                index.add(pos, ts, synced=True)  # the temp file is synced before the rename
                if len(batch) >= 1024:
                    written = self._write_all(fd, b"".join(batch), written)
                    batch.clear()
            self._write_all(fd, b"".join(batch), written)
            self.fault("rewrite:temp-written")
            self.io.sync(fd, data_only=False)  # always: a rename must never expose holes
            self.fault("rewrite:temp-synced")
            # rename() would replace a link planted at P rather than follow it, and the new
            # P.idx is written after the commit: refuse either link before committing.
            check_file(self.path)
            check_file(self.index.path)
            if self._seen is not None:
                self._bump(truncation=True)
            self.io.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                self.io.unlink(tmp)
            raise
        # Committed: from here on this instance must describe the new file, whatever fails.
        st = os.fstat(fd)
        self._close_log()
        self._fd, self.fmt, self._log_id_stat = fd, fmt, (st.st_dev, st.st_ino)
        self.index = index
        self._index_ok = self._settled = False
        self._dict_loaded = index.dict_span
        self.fault("rewrite:renamed")
        self.index.persist(fmt.log_id, rewrite=True)
        self._index_ok = self._settled = True
        self.fault("rewrite:index-written")
        self._sync_dir()
        self.fault("rewrite:dir-synced")

    def remove(self, also: Callable[[], None] = lambda: None) -> None:
        """Delete the log and its index (the log's unlink is the commit), then run ``also``
        (the codec's blob store), then the leftovers of crashed rewrites (copies of the
        history), then the lock file: until that last unlink the lock still keeps every
        other writer out."""
        self._bump(truncation=True)
        self._close_log()
        for p in (self.path, self.index.path):
            unlink_file(p, io=self.io)
        also()
        self.remove_stale_temps()
        unlink_file(self._lock.path, io=self.io)
        self._sync_dir()

    def remove_stale_temps(self) -> None:
        """Delete what crashed rewrites and migrations of this log left beside it.

        Call only under the exclusive lock. Every rewrite holds that lock from creating
        its temp file to renaming it, so no ``<log>.tmp-*`` seen here belongs to a live
        rewrite. A migration into this path holds it too, from its first temp file to its
        commit. The ``<log>.bak`` a migration keeps is the user's original: never swept.
        """
        folder = os.path.dirname(self.path) or "."
        base = os.path.basename(self.path)
        for name in os.listdir(folder):
            if is_leftover(name, base):
                unlink_file(os.path.join(folder, name), io=self.io)  # refuses a planted link

    def _write_all(self, fd: int, data: bytes, offset: int) -> int:
        view = memoryview(data)
        while view:
            n = self.io.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
        return offset

    def _sync_dir(self) -> None:
        try:
            self.io.sync_dir(self.path)
        except OSError:
            self.poisoned = True  # a rename or unlink that may not be durable: as fsync
            raise

    def _fsync(self, fd: int, *, always: bool = False) -> None:
        if not (self._sync or always):
            return
        try:
            self.io.sync(fd, data_only=True)
        except OSError:
            self.poisoned = True
            raise

    def size(self) -> int:
        """Bytes of the log file (0 when there is none)."""
        return os.fstat(self._fd).st_size if self._fd is not None else 0

    def close(self) -> None:
        """Release every file descriptor (the lock is not held between calls)."""
        with self._mutex:
            self._close_log()
            self._lock.close()
            self._seen = None


class Reader:
    """Random access to a file through a 1 MiB window (no system call per byte tried)."""

    __slots__ = ("_base", "_buf", "fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self._base, self._buf = 0, b""

    def get(self, start: int, end: int) -> bytes:
        """Return the file's bytes ``[start, end)`` (fewer at the end of the file)."""
        end = min(end, self.size)
        if not (self._base <= start and end <= self._base + len(self._buf)):
            self._base = start
            self._buf = os.pread(self.fd, max(_READ_CHUNK, end - start), start)
        return self._buf[start - self._base : end - self._base]


class _Transaction:
    """One lock hold of a ``FileLog``; see ``FileLog.transaction``."""

    __slots__ = ("_log", "_tolerant", "_write")

    def __init__(self, log: FileLog, write: bool, *, tolerant: bool = False) -> None:
        self._log, self._write, self._tolerant = log, write, tolerant

    def __enter__(self) -> None:
        try:
            self._log._begin(self._write, self._tolerant)
        except ConversationCodecError:
            raise
        except OSError as exc:
            raise _storage_error(exc, self._log.path) from None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._log._end()
        except OSError as err:
            raise _storage_error(err, self._log.path) from None
        if exc is not None and self._write:
            self._log.forget_view()  # a write that failed midway: read the files again
        if isinstance(exc, OSError) and not isinstance(exc, ConversationCodecError):
            raise _storage_error(exc, self._log.path) from exc


def _storage_error(exc: OSError, path: str) -> StorageError:
    return StorageError(exc.errno or 0, f"{path}: {exc.strerror or exc}")


_CONFORMS: type[LogStorage] = FileLog  # mypy checks FileLog against the protocol

"""``StoreLog``: a store conversation's log, loose (``P``) or packed (FORMAT.md §18).

A store opens every conversation through a ``StoreLog``: it wraps the conversation's
``FileLog`` and, at the start of each outermost transaction, decides where the log is.
``P`` exists: the ``FileLog`` serves everything ("loose wins"; a write also drops a stale
packed copy). ``P`` is absent and a pack holds the conversation: a read serves the packed
bytes, framed in memory (``PackedView``: one ``pread``, no index file); a write first
*unpacks* — writes the packed bytes to ``P`` under ``P.lock``, drops the entry from its
pack — and then goes on as a write to ``P``. The rejected alternative, a writable storage
inside the pack, would need a second set of crash and concurrency rules; this way every
write runs the procedures of FORMAT.md §8 on a plain log file.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType

from ..._atomic import atomic_write
from ..._fsio import check_file, open_file, unlink_file
from ...errors import CorruptRecordError, StorageError
from ...format.pack import check_entry
from ...format.record import decode_frame_header
from ...paths import index_path, temp_path
from ...records import RecordRejected
from ..base import LogFormat, LogIndex, LogStorage, Polling, adopt_dictionary
from .check import Problem, VerifyReport, check_file_log
from .kwi_store import FileSegments
from .lock import LogLock
from .log import FileLog
from .opened import PREFIX_BYTES
from .packs import Packed, Packs

__all__ = ["PackedView", "StoreLog", "check_store_log", "retire_loose"]

_ATTEMPTS = 8  # unpack/re-check rounds before a write gives up (packers racing it)


class _PackedIndex:
    """Record ``seq`` lies at ``[starts[seq], ends[seq])`` of the pack."""

    __slots__ = ("ends", "starts", "tss")

    path = ""  # no index file

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.tss: list[int] = []

    def __len__(self) -> int:
        return len(self.tss)

    def span(self, seq: int) -> tuple[int, int]:
        return self.starts[seq], self.ends[seq]

    def first_at_or_after(self, ts_us: int) -> int:
        return bisect.bisect_left(self.tss, ts_us)


def packed_seen(data: bytes) -> tuple[int, int, int]:
    """The ``seen`` of a packed log (``LogStorage.seen``): its bytes, not where they lie, so
    that a merge, or another conversation leaving the pack, does not look like a write to
    this one (a packed log never changes: a write unpacks it first). Never a lock's: < 0."""
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return -1, len(data), int.from_bytes(digest, "big")


class PackedView:
    """One packed log, read whole and framed in memory (read only)."""

    def __init__(self, where: Packed, data: bytes, attach: Callable[[bytes], LogFormat]) -> None:
        self.where = where
        self.data = data
        self.fmt = attach(data[:PREFIX_BYTES])
        self.index = _PackedIndex()
        self.dictionary: bytes | None = None
        self._bodies: list[bytes] = []
        self._frame()
        tss = where.entry.tss
        if len(tss) == len(self._bodies):
            self.index.tss = list(tss)
        else:  # the TOC disagrees with the bytes: authenticate each record's own time
            self.rebuild_index()

    @functools.cached_property
    def seen(self) -> tuple[int, int, int]:  # when first asked: not by a reopen + tail
        return packed_seen(self.data)

    def _damaged(self, what: str, pos: int) -> CorruptRecordError:
        entry = self.where.entry
        return CorruptRecordError(
            f"packed log of {entry.conversation_id!r}: {what}",
            path=self.where.path,
            offset=entry.offset + pos,
        )

    def _frame(self) -> None:
        """Split the log's records (FORMAT.md §5.1, §6); adopt its dictionary record."""
        data, fmt, base = self.data, self.fmt, self.where.entry.offset
        pos = fmt.data_start
        while pos < len(data):
            try:
                if fmt.sealed:
                    start, end, control = decode_frame_header(data, pos)
                else:
                    start, end, control = pos, data.index(b"\n", pos) + 1, False
            except ValueError:
                raise self._damaged("a record is malformed", pos) from None
            if end > len(data):
                raise self._damaged("the last record is truncated", pos)
            body = data[start:end]
            if control:
                try:
                    adopt_dictionary(fmt, body, have_one=self.dictionary is not None)
                except RecordRejected as exc:
                    raise self._damaged(f"dictionary record: {exc}", pos) from None
                self.dictionary = body
            else:
                self._bodies.append(body)
                self.index.starts.append(base + pos)
                self.index.ends.append(base + end)
            pos = end

    def rebuild_index(self) -> None:
        """Take every record's time from the record itself (authenticated)."""
        tss: list[int] = []
        for seq, body in enumerate(self._bodies):
            try:
                ts = self.fmt.records.check(body, seq)
            except RecordRejected as exc:
                raise self._damaged(f"record {seq}: {exc}", self.index.starts[seq]) from None
            if tss and ts < tss[-1]:
                raise self._damaged(f"record {seq} is earlier than the one before it", 0)
            tss.append(ts)
        self.index.tss = tss

    def read_body(self, seq: int) -> bytes:
        self.index.span(seq)
        return self._bodies[seq]

    def read_bodies(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
        for seq in range(start, stop):
            yield seq, self.read_body(seq)


class StoreLog:
    """A store conversation's ``LogStorage``: its ``FileLog``, or its packed copy."""

    def __init__(
        self,
        loose: FileLog,
        conversation_id: str,
        packs: Packs,
        attach: Callable[[bytes], LogFormat],
        *,
        lock_timeout: float | None = None,
    ) -> None:
        self.loose = loose
        self._cid = conversation_id
        self._packs = packs
        self._attach = attach
        self._timeout = lock_timeout
        self._view: PackedView | None = None  # the packed copy, when it is the source
        # (P.lock's counters as this handle's unpack left them, the packed log's ``seen``):
        # until another writer bumps them, P holds the packed bytes, and says so (saving).
        self._unpacked: tuple[tuple[int, int, int] | None, tuple[int, int, int]] | None = None
        self._serving = False  # this transaction reads self._view
        self._depth = 0
        self._on_change: Callable[[], None] = lambda: None
        self.fault: Callable[[str], None] = lambda step: loose.io.step(step)

    @property
    def refreshes(self) -> int:  # the loose log's: views reloaded after another writer
        return self.loose.refreshes

    @property
    def on_change(self) -> Callable[[], None]:
        return self._on_change

    @on_change.setter
    def on_change(self, callback: Callable[[], None]) -> None:
        self._on_change = self.loose.on_change = callback

    @property
    def packed(self) -> bool:
        """Whether the current transaction reads the packed copy (no ``P``)."""
        return self._serving

    # -- where the log is ------------------------------------------------------------------

    @property
    def fmt(self) -> LogFormat | None:
        return self._view.fmt if self._serving and self._view else self.loose.fmt

    @property
    def index(self) -> LogIndex:
        return self._view.index if self._serving and self._view else self.loose.index

    @property
    def seen(self) -> tuple[int, int, int] | None:
        if self._serving and self._view is not None:
            return self._view.seen
        seen, unpacked = self.loose.seen, self._unpacked
        if unpacked is not None and seen is not None and seen == unpacked[0]:
            return unpacked[1]  # the unpack is no change: save()'s view of the pack holds
        return seen

    def probe(self) -> None:
        """Fail fast on a wrong key: the loose log's header, else the packed copy's."""
        if not self.loose.probe_file():
            where = self._packs.find(self._cid)
            if where is not None:
                # Replaced meanwhile (FileNotFoundError): the transaction looks again.
                with contextlib.suppress(FileNotFoundError):
                    self._load(where)

    def _load(self, where: Packed) -> PackedView:
        view = self._view
        if view is None or view.where != where:
            view = PackedView(where, self._packs.read(where), self._attach)
            if self._view is not None:
                self._on_change()
            self._view = view
        return view

    def transaction(
        self, *, write: bool, tolerant: bool = False, tail: int | None = None
    ) -> _StoreTransaction:
        return _StoreTransaction(self, write, tolerant)  # ``tail``: no use to files

    def _begin(self, write: bool, tolerant: bool) -> AbstractContextManager[None]:
        """Enter the loose log's transaction; at the outermost, decide the source."""
        for attempt in range(_ATTEMPTS):
            hold = self.loose.transaction(write=write, tolerant=tolerant)
            hold.__enter__()
            if self._depth:  # nested: the outermost decided
                self._depth += 1
                return hold
            try:
                again = self._decide(write, attempt == 0)
            except BaseException as exc:
                hold.__exit__(type(exc), exc, exc.__traceback__)
                raise
            if not again:
                self._depth = 1
                return hold
            hold.__exit__(None, None, None)  # unpacked (or raced): enter again, on P
            self.loose.io.step("unpack:released")
            self.loose.forget_view()
        raise StorageError(f"{self.loose.path}: kept being packed while a write waited")

    def _decide(self, write: bool, first: bool) -> bool:
        """Pick the source of this transaction; return True to enter it again (unpacked,
        or for a reader, ``first`` time only, P appeared after its hold looked)."""
        self._serving = False
        self.loose.io.step("store:decide")
        if self.loose.fmt is not None or os.path.lexists(self.loose.path):
            if write and self._packs.find(self._cid, fresh=True, healthy=True) is not None:
                self._packs.drop(self._cid, timeout=self._timeout)  # a stale copy
            # A reader whose hold saw no P (packed then) while another process unpacked it
            # since: its view is of no log at all; look again, at P.
            return not write and first and self.loose.fmt is None
        where = self._packs.find(self._cid, fresh=write)
        if where is None and write:
            # About to start the conversation afresh: settle that it is in no pack.
            where = self._packs.find_settled(self._cid, timeout=self._timeout)
        if where is None:
            # No log (a write creates P), unless a reader raced an unpack: P came meanwhile.
            return not write and os.path.lexists(self.loose.path)
        if not write:
            try:
                self._load(where)
            except FileNotFoundError:  # the pack was replaced since it was found
                return True
            self._serving = True
            return False
        # FORMAT.md §18.3, unpacking: P.lock is held (exclusive): P, then the pack.
        try:
            data = self._packs.read(where)
        except FileNotFoundError:  # replaced since it was found (another unpack, a merge)
            return True
        # Its temp file is a rewrite's (P.tmp-<16 hex>): one a crash leaves is a leftover
        # that the next rewrite, clear, pop or first append deletes (FORMAT.md §8.4).
        path = self.loose.path
        atomic_write(path, data, io=self.loose.io, exclusive=True, tmp=temp_path(path))
        self._unpacked = (self.loose.seen, packed_seen(data))  # the counters: not bumped
        self.fault("unpack:loose-written")
        self._packs.drop(self._cid, timeout=self._timeout)
        self.fault("unpack:dropped")
        self._view = None
        return True

    def _end(self) -> None:
        self._depth -= 1
        if not self._depth:
            self._serving = False

    # -- reads ------------------------------------------------------------------------------

    def read_body(self, seq: int) -> bytes:
        if self._serving and self._view is not None:
            return self._view.read_body(seq)
        return self.loose.read_body(seq)

    def read_bodies(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
        if self._serving and self._view is not None:
            return self._view.read_bodies(start, stop)
        return self.loose.read_bodies(start, stop)

    def rebuild_index(self) -> None:
        if self._serving and self._view is not None:
            self._view.rebuild_index()
        else:
            self.loose.rebuild_index()

    def stored(self) -> tuple[bytes, bytes | None] | None:
        view = self._view
        if self._serving and view is not None:
            return view.data[: view.fmt.data_start], view.dictionary
        return self.loose.stored()

    def size(self) -> int:
        if self._serving and self._view is not None:
            return len(self._view.data)
        return self.loose.size()

    # -- writes: always on P (a write transaction unpacked first) ----------------------------

    def create(self, header: bytes, fmt: LogFormat) -> None:
        self.loose.create(header, fmt)

    def append(
        self, bodies: list[bytes], tss: list[int], dictionary: tuple[int, bytes] | None = None
    ) -> None:
        self.loose.append(bodies, tss, dictionary)

    def append_dictionary(self, body: bytes) -> None:
        self.loose.append_dictionary(body)

    def truncate(self, count: int) -> None:
        self.loose.truncate(count)

    def rewrite(
        self,
        header: bytes,
        fmt: LogFormat,
        records: Iterable[tuple[bytes, int]],
        dictionary: bytes | None = None,
    ) -> None:
        self.loose.rewrite(header, fmt, records, dictionary)

    def remove(self, also: Callable[[], None] = lambda: None) -> None:
        """Clear the log (FORMAT.md §18.3, deleting): under ``.packs/pack.lock`` (after
        ``P.lock``), drop every packed copy, then delete ``P`` and its files.

        A ``pack()`` that read ``P`` before this clear publishes its copy under that lock,
        and only if ``P`` still holds what it read: before this hold (the copy is dropped
        here) or after it (``P`` is gone: left out). Copies first: a crash between leaves
        ``P``, which wins, never a packed copy alone. The hold also sweeps the temp file of
        a ``pack()`` that crashed before publishing: sealed copies of the logs it was
        packing, this one's maybe. No ``.packs`` (under ``P.lock``): no packer has read
        ``P``, as each makes the directory first.
        """
        if not os.path.isdir(self._packs.dir):
            self.loose.remove(also)
            return
        with self._packs.locked(self._timeout):
            self._packs.drop_held(self._cid)
            self.fault("clear:copies-dropped")
            self.loose.remove(also)

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Every write is committed when it returns (as ``FileLog``)."""

    def remove_stale_temps(self) -> None:
        self.loose.remove_stale_temps()

    def keyword_index(self) -> FileSegments:
        """P's sidecar (a packed log has none: an indexed conversation is never packed)."""
        return self.loose.keyword_index()

    def watch(self) -> Polling:
        return self.loose.watch()

    def close(self) -> None:
        self._view = None
        self.loose.close()


class _StoreTransaction:
    __slots__ = ("_hold", "_log", "_tolerant", "_write")

    def __init__(self, log: StoreLog, write: bool, tolerant: bool) -> None:
        self._log, self._write, self._tolerant = log, write, tolerant
        self._hold: AbstractContextManager[None] | None = None

    def __enter__(self) -> None:
        self._hold = self._log._begin(self._write, self._tolerant)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        hold, self._hold = self._hold, None
        assert hold is not None
        self._log._end()
        hold.__exit__(exc_type, exc, tb)


_CONFORMS: type[LogStorage] = StoreLog  # mypy checks StoreLog against the protocol


def retire_loose(
    path: str,
    conversation_id: str,
    packs: Packs,
    packed: bytes,
    *,
    leftovers: Iterable[str] = (),
    timeout: float | None = None,
) -> bool:
    """Finish packing one log (FORMAT.md §18.3, packing step 3): under ``P.lock``, delete
    the loose files if ``P`` still holds exactly the bytes ``packed`` and a pack still holds
    them; if ``P`` changed (or went), drop the now stale packed copy instead. Return True
    when the loose files went, with the ``leftovers`` (crashed rewrites' temp files of
    ``P``: the caller lists the directory once for all its logs).

    The caller fsyncs the directory once at the end: an unlink a power loss undoes leaves
    ``P`` beside its packed copy, byte for byte, which readers already take as ``P``.

    Only under ``Packs.packing()``: with two packers, one finding ``P`` gone could not tell
    a deletion (drop the copy) from the other packer's retirement (keep it).
    """
    io = packs.io
    lock = LogLock(path, timeout, io=io)
    lock.acquire(exclusive=True)
    try:
        st = check_file(path)
        data = None
        if st is not None:
            fd = open_file(path, os.O_RDONLY)
            try:
                data = os.pread(fd, st.st_size + 1, 0)
            finally:
                os.close(fd)
        where = packs.find(conversation_id, fresh=True, healthy=True)
        if where is None or data != packed or not check_entry(where.entry, packed):
            if where is not None:
                packs.drop(conversation_id, timeout=timeout)  # P moved on (or went): stale
            lock.forget_created(keep=st is not None)  # P went: leave no lock file of ours
            return False
        _ino, gen, truncs = lock.state()
        lock.write_state(gen + 1, truncs + 1)  # announced first, as a clear does (§8.5)
        folder = os.path.dirname(path)
        for name in (path, index_path(path), *(os.path.join(folder, n) for n in leftovers)):
            unlink_file(name, io=io)
        unlink_file(lock.path, io=io)
        return True
    finally:
        lock.release()
        lock.close()


def check_store_log(log: StoreLog) -> VerifyReport:
    """``verify()`` of a store conversation: its log file's check, or for a packed one,
    every record authenticated in order against its pack entry (read only)."""
    try:
        with log.transaction(write=False, tolerant=True):
            view = log._view if log.packed else None
    except CorruptRecordError as exc:  # the entry fails its CRC or its framing
        return VerifyReport(exc.path, 0, (Problem("damaged", exc.offset, str(exc)),))
    if view is None:
        return check_file_log(log.loose)
    problems = []
    try:
        tss = list(view.index.tss)
        view.rebuild_index()  # every record authenticated, in seq and time order
        if view.index.tss != tss:
            problems.append(
                Problem("index-stale", view.where.entry.offset, "pack TOC times disagree")
            )
    except CorruptRecordError as exc:
        problems.append(Problem("damaged", exc.offset, str(exc)))
    shown = Path(f"{log.loose.path} (packed in {view.where.path})")  # which conversation
    return VerifyReport(shown, len(view.index), tuple(problems))

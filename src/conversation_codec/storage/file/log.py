"""``FileLog``: one conversation log on disk, behind the storage seam (``append`` bodies,
``read`` a range, ``truncate``, ``rewrite``).

It stores opaque record *bodies*; what a body means is the business of ``records`` (shared
with any other backend). ``FileLog`` owns the cached view of the file (descriptor, header
format, index, dictionary) and runs each procedure of spec/FORMAT.md under the log's lock
(a writer's exclusive, a reader's shared; its counters say when a cached view is stale): §8
(writing), §9 (reading), §10 (recovery). Its steps live in the modules beside it (the
package's docstring lists them)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from ..._fsio import DEFAULT_IO, FileIO, check_file, unlink_file, write_all
from ...errors import StorageError
from ...format.record import encode_frame
from ...paths import index_path
from ..base import LogFormat, LogStorage, Polling
from .dictionary import Dictionary
from .index import OffsetIndex
from .kwi_store import FileSegments
from .lock import LogLock
from .opened import MOVED, Opened, Probed, Whole, held, open_attached, plain_look, probe, reuse
from .reader import read_bodies, read_body, read_stored
from .recovery import drop_unproven_entries, recover
from .transaction import Transaction, Transactions
from .writer import checked_for_removal, frame_batch, remove_leftovers, replace_log

__all__ = ["FileLog", "LogFormat"]


class FileLog:
    """One conversation log on disk with its index sidecar and lock file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
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
        self._replaced = 0  # times another file was found at P (see ``seen``)
        self._last_seen: tuple[int, int, int] | None = None  # before the current reload
        self._probed: Probed | None = None  # the file probe() opened, for the first reload
        self._whole: Whole | None = None  # a small log's bytes: see opened.held
        self._fresh_size: int | None = None  # the size _open_log saw, for the catch-up
        self._txns = Transactions(
            self._lock,
            self.path,
            enter=self._enter,
            keep_created=lambda: self.fmt is not None,
            forget=self.forget_view,
        )
        self.poisoned = False
        self._index_ok = False
        self._settled = False  # see _catch_up
        self._dict = Dictionary()  # the one the record codec holds
        self.on_change: Callable[[], None] = lambda: None
        self.refreshes = 0  # views reloaded after a change by another writer (or at first)
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

    @property
    def fd(self) -> int | None:
        """The open log file's descriptor, for the scanner (None when there is no log)."""
        return self._fd

    @property
    def seen(self) -> tuple[int, int, int] | None:
        """``(lock inode, generation, truncations)`` as of the current transaction (after
        this process's own bumps); None when it holds no lock (no log, read-only directory).
        Equal values mean no writer changed the log in between (FORMAT.md §8.1); another
        file found at P (no writer announces an editor's) counts as a truncation."""
        return None if (seen := self._txns.seen) is None else (*seen[:2], seen[2] + self._replaced)

    def transaction(
        self, *, write: bool, tolerant: bool = False, tail: int | None = None
    ) -> Transaction:
        """Return a context that holds the lock (exclusive for ``write``) and brings the
        cached view up to date; OS errors inside it surface as ``StorageError``.

        Re-entrant within one thread; a nested one must not upgrade to write. ``tail`` (a
        read's promise to read only the last records) needs nothing here."""
        return self._txns.hold(write, tolerant)

    def _enter(self, write: bool, locked: bool) -> None:
        """Begin the outermost transaction: the lock is taken (when ``locked``)."""
        if write and self.poisoned:
            raise StorageError(
                "an earlier fsync failed; writes are refused until the log is reopened"
            )
        self._refresh(write, locked)

    def probe(self) -> None:
        """Identify an existing log from its header alone (no lock, no index, no writes).

        Headers never change for a given file, so this needs no lock; it lets a codec fail
        fast on a wrong key or a foreign file while leaving damaged logs openable. The file
        stays open for the first transaction (``opened``).
        """
        self.probe_file()

    def probe_file(self) -> bool:  # probe(); whether a file is at the path (empty or not)
        with self._txns.mutex:  # once, when the codec is made: nothing is open yet
            probed = probe(self.path, self._attach)
            if isinstance(probed, bool):
                return probed
            self._probed = probed
            return True

    # -- cached view -----------------------------------------------------------------------

    def _refresh(self, write: bool, locked: bool) -> None:
        """Bring the cached view up to date: nothing to do when no writer came by."""
        state = self._lock.state() if locked else None
        changed = state is None or state != self._txns.seen
        at = (self.fmt, self._log_id_stat, self.index.append_at)  # a plain log edited by hand
        look = None if changed else plain_look(self.path, *at, write=write)  # (§8.2): one lstat
        if changed or look == MOVED:  # MOVED: an editor saved P by rename (sed -i): reopen
            changed = True
            self.refreshes += 1
            self._last_seen, self._txns.seen = self._txns.seen, None  # None until reloaded
            self._reload(state)
            self._txns.seen = state
        elif look is not None:  # P does not end where the index does: read it (§10.1)
            changed, self._settled, self._fresh_size = True, False, look
        if write and self.index.detached():
            self._index_ok = self._settled = False  # the catch-up rewrites it at its name
        if self.fmt is not None and (changed or (write and not self._settled)):
            self._catch_up(write)

    def _reload(self, state: tuple[int, int, int] | None) -> None:
        self._fresh_size = self._whole = None  # the counters moved: re-read what is read
        if self._fd is None:  # no log open: the probe's file if still at the path, else
            probed, self._probed = self._probed, None  # open it at once (issue 15)
            self._open_log(reuse(self.path, probed, self._attach), state)
            if self._fd is not None:
                self.on_change()
            return
        st = check_file(self.path)
        ident = None if st is None or st.st_size == 0 else (st.st_dev, st.st_ino)
        seen = self._last_seen
        if ident != self._log_id_stat:
            self._replaced += 1  # another file at P: no append (see ``seen``)
            self._open_log(None if ident is None else open_attached(self.path, self._attach), state)
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

    def _open_log(self, opened: Opened | None, state: tuple[int, int, int] | None) -> None:
        """Describe the file opened under the lock (``state``: its counters) for reads."""
        self._close_log()
        if opened is None:
            return
        fd, st, fmt, whole = opened
        self._fd, self.fmt, self._log_id_stat = fd, fmt, (st.st_dev, st.st_ino)
        self._whole = None if whole is None or state is None else (whole, state)
        self._fresh_size = st.st_size
        self._load_index(start=0, size=st.st_size)
        # Drop index entries whose records do not authenticate (see ``recovery``).
        span = self.index.span
        self._index_ok &= not drop_unproven_entries(
            self.index, fmt.records, lambda seq: read_body(fd, span(seq), fmt.sealed, whole)
        )

    def _load_index(self, start: int, size: int | None = None) -> None:
        assert self.fmt is not None and self._fd is not None
        size = os.fstat(self._fd).st_size if size is None else size
        self._index_ok = self.index.load(self.fmt.log_id, self.fmt.data_start, size, start=start)
        if not self._dict.follow(self._fd, self.fmt, self.index):
            self._index_ok = False  # stale: the catch-up rebuilds it from the log

    def _close_log(self) -> None:
        fd, self._fd, self.fmt, self._log_id_stat = self._fd, None, None, None
        if fd is not None:  # forgotten first: an interrupt never closes it twice
            os.close(fd)
        if self._probed is not None:
            self._probed.close()
        self._probed = self._whole = None
        self._dict = Dictionary()
        self.index.reset(0)

    def _use_dictionary(self, body: bytes, span: tuple[int, int], *, persist: bool) -> None:
        assert self.fmt is not None
        self._dict.use(self.fmt, self.index, body, span, persist=persist)

    def forget_view(self) -> None:
        """Make the next transaction reload from the files (after a write failed midway)."""
        with self._txns.mutex:
            if not self._txns.depth:
                self._txns.seen, self._settled = None, False
                self._close_log()

    def _catch_up(self, write: bool) -> None:
        """Index records past the index's end; cut a torn tail when writing (FORMAT.md §10).

        Afterwards ``_settled`` says whether the log ends exactly where the index does and
        the index file holds every entry: then, until another process bumps the counters,
        a writer needs no look at the file before appending.
        """
        assert self.fmt is not None and self._fd is not None
        try:
            self._settled = False
            size, self._fresh_size = self._fresh_size or os.fstat(self._fd).st_size, None
            # From the last indexed record, not from the dictionary record: the index may
            # have lost entries for records that lie before the dictionary (they are re-read,
            # and the dictionary record is met and adopted again on the way).
            pos = self.index.end
            if pos > size or self.index.append_at > size:  # the log lost bytes the index knew
                self.index.reset(self.fmt.data_start)
                self._dict.drop(self.fmt)
                self._index_ok = False
                pos = self.index.end
            if pos < size:
                pos = recover(
                    self._fd,
                    pos,
                    size,
                    self.fmt,
                    self.index,
                    adopt_dictionary=lambda body, span: self._use_dictionary(
                        body, span, persist=write and self._index_ok
                    ),
                    stop_at_damage=self._txns.tolerant and not self._txns.writable,
                    path=self.path,
                )
                if pos < size and not write:
                    return  # a reader leaves the torn tail alone; the next writer cuts it
                if pos != size and write:  # cut a torn tail (recover raises on damage), or
                    self._txns.bump(truncation=False)  # put back a committed line's newline
                    if pos < size:
                        self.io.truncate(self._fd, pos)
                    else:
                        self._write_at_end(self._fd, b"\n", size)
                    # (§10.1) Always synced, whatever the durability: a cut that a power loss
                    # undid would put the torn bytes back under records appended after them.
                    self._fsync(self._fd, always=True)
            if write and (not self._index_ok or self.index.persisted < len(self.index)):
                self.index.persist(self.fmt.log_id, rewrite=not self._index_ok)
                self._index_ok = True
            self._settled = write
        except BaseException:
            # The view is incomplete: forget it, so the next call looks again (and raises
            # again) rather than answering from a partial index.
            self._txns.seen = None
            self._close_log()
            raise

    # -- the storage seam: reads ------------------------------------------------------------

    def read_body(self, seq: int) -> bytes:
        """Return the stored body of record ``seq`` (an index check; no scan)."""
        assert self._fd is not None and self.fmt is not None
        whole = held(self._whole, self._txns.seen)
        return read_body(self._fd, self.index.span(seq), self.fmt.sealed, whole)

    def read_bodies(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(seq, body)`` for records ``start <= seq < stop`` in order, bounded memory."""
        assert self._fd is not None and self.fmt is not None
        whole = held(self._whole, self._txns.seen)
        yield from read_bodies(self._fd, self.index, start, stop, self.fmt.sealed, whole)

    def rebuild_index(self) -> None:
        """Forget the index and rebuild it from the log (used when it disagrees with the log)."""
        assert self.fmt is not None
        self.index.reset(self.fmt.data_start, keep_evidence=True)
        self._dict = Dictionary()
        self._index_ok, self._whole = False, None
        self._catch_up(self._txns.writable)

    # -- the storage seam: writes -----------------------------------------------------------

    def _check_write(self) -> tuple[int, LogFormat]:
        """The open log, for a write: refused outside a write transaction, or with no log."""
        if not self._txns.writing():
            raise RuntimeError("a write outside a write transaction")
        if self._fd is None or self.fmt is None:
            raise RuntimeError("no log yet: create() it first")
        return self._fd, self.fmt

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
        fd, fmt = self._check_write()
        if len(bodies) != len(tss):
            raise ValueError("append needs one timestamp per body")
        data, ends, dict_span = frame_batch(bodies, fmt.sealed, dictionary)
        end, index, synced = self.index.append_at, self.index, self._sync
        self._txns.bump(truncation=False)
        self._write_at_end(fd, data, end)
        if self._io is not DEFAULT_IO:  # whose step() does nothing: not called (issue 15)
            self.fault("append:written")
        self._fsync(fd)
        if self._io is not DEFAULT_IO:
            self.fault("append:synced")
        for rel, ts in zip(ends, tss, strict=True):
            index.add(end + rel, ts, synced=synced)
        try:
            if dictionary is not None:
                span = (end + dict_span[0], end + dict_span[1])
                self._use_dictionary(dictionary[1], span, persist=True)
            index.persist(fmt.log_id)
        except OSError:
            # The records are committed; the index is only a cache. Rewrite it next time
            # rather than report a failed append that in fact succeeded.
            self._index_ok = self._settled = False

    def announce(self) -> None:
        """Bump ``generation`` (write transaction): a sidecar others cache was created."""
        if self.seen is not None:  # as rewrite(): no counters without a lock file
            self._txns.bump(truncation=False)

    def truncate(self, count: int) -> None:
        """Drop records from ``count`` on: index first, then the log (FORMAT.md §8)."""
        fd, fmt = self._check_write()
        self._txns.bump(truncation=True)
        end = self.index.span(count)[0] if count < len(self.index) else self.index.end
        self._settled = False
        self.index.truncate(count)
        if self.index.dict_span != (0, 0) and self.index.dict_span[0] >= end:
            self.index.set_dict_span((0, 0), persist=True)  # the dictionary goes too
            self._dict.drop(fmt)
        self.fault("truncate:index-truncated")
        self.io.truncate(fd, end)
        # Synced under "flush" too (FORMAT.md §8.3): a popped record that a power loss
        # brought back would be authentic and in place, so nothing could tell it apart.
        self._fsync(fd, always=True)
        self._settled = True

    def append_dictionary(self, body: bytes) -> None:
        """Append a sealed dictionary record after the last record (FORMAT.md §5.3)."""
        fd, _ = self._check_write()
        frame = encode_frame(body, control=True)
        start = self.index.append_at
        self._txns.bump(truncation=False)
        self._write_at_end(fd, frame, start)
        self._fsync(fd)
        self._use_dictionary(body, (start, start + len(frame)), persist=True)

    def rewrite(
        self,
        header: bytes,
        fmt: LogFormat,
        records: Iterable[tuple[bytes, int]],
        dictionary: bytes | None = None,
    ) -> None:
        """Atomically replace the whole log with ``header``, an optional dictionary record
        body and ``(body, ts_us)`` records (FORMAT.md §8.4). Crashed rewrites' leftovers go
        first (they would keep what this removes, or under a key it retires); the directory
        fsync at the end makes that durable."""
        if not self._txns.writing():
            raise RuntimeError("a rewrite outside a write transaction")
        self.remove_stale_temps()
        fd, index = replace_log(
            self.io,
            self.path,
            header,
            fmt,
            records,
            dictionary,
            fault=self.fault,
            before_rename=lambda: None if self.seen is None else self._txns.bump(truncation=True),
        )
        # Committed: from here on this instance must describe the new file, whatever fails.
        st = os.fstat(fd)
        self._close_log()
        self._fd, self.fmt, self._log_id_stat = fd, fmt, (st.st_dev, st.st_ino)
        self.index = index
        self._index_ok = self._settled = False
        self._dict = Dictionary(index.dict_span)
        self.fault("rewrite:renamed")
        try:  # committed: a failed index write is a cache to rewrite next time, as an
            self.index.persist(fmt.log_id, rewrite=True)  # append's (an error would have
        except OSError:  # a caller retry a creation that holds its records: twice them)
            pass
        else:
            self._index_ok = self._settled = True
        self.fault("rewrite:index-written")
        self._sync_dir()
        self.fault("rewrite:dir-synced")

    def remove(self, also: Callable[[], None] = lambda: None) -> None:
        """Delete the index, the log (its unlink commits), ``also`` (the blob store),
        leftovers of crashed rewrites, then the lock file: until it goes, no other writer
        comes in. A link or directory at any of these names is refused before any goes."""
        names = checked_for_removal(self.path)
        self._txns.bump(truncation=True)
        self._close_log()
        for p in names:
            unlink_file(p, io=self.io)
        also()
        self.remove_stale_temps()
        if not self._txns.defer_lock_unlink():  # else when the enclosing hold ends
            unlink_file(self._lock.path, io=self.io)
        self._sync_dir()

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Every write is committed (written, or renamed into place) when it returns."""

    def stored(self) -> tuple[bytes, bytes | None] | None:
        """The header's bytes and the dictionary record's body, as the file holds them."""
        if self._fd is None or self.fmt is None:
            return None
        return read_stored(self._fd, self.fmt.data_start, self._dict.span, self.fmt.sealed)

    def remove_stale_temps(self) -> None:
        """Delete what crashed rewrites and migrations of this log left beside it (call only
        under the exclusive lock: ``writer.remove_leftovers``)."""
        remove_leftovers(self.path, self.io)

    def _write_at_end(self, fd: int, data: bytes, end: int) -> None:
        """Write ``data`` at the log's ``end``; on failure cut what was written, best effort."""
        try:
            write_all(fd, data, end, io=self._io)
        except OSError:
            self._settled = False
            self.io.truncate(fd, end)  # leave no partial batch behind
            raise

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

    def keyword_index(self) -> FileSegments:
        """The keyword index sidecar ``P.kwi`` (FORMAT.md §17), written through ``io``."""
        return FileSegments(self, synced=self._sync)

    def __del__(self) -> None:  # dropped unclosed: its file goes (no mutex: it is unreachable)
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]

    def close(self) -> None:
        """Release every file descriptor (the lock is not held between calls)."""
        with self._txns.mutex:
            self._close_log()
            self._lock.close()
            self._txns.seen = None

    def watch(self) -> Polling:
        """A waiter polls the file, backing off (no change notification: a future inotify)."""
        return Polling()


_CONFORMS: type[LogStorage] = FileLog  # mypy checks FileLog against the protocol

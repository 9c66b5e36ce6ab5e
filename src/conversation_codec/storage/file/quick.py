"""The quick append: ``FileLog``'s append of one record in the steady state, in one frame.

Issue 15: an append under "fsync" sleeps in ``fdatasync``, and what runs after it finds the
CPU caches cold, so every Python layer there costs several times its warm cost. The general
path (``Transaction`` → ``Transactions.begin`` → ``LogLock.acquire`` → ``FileLog._refresh``,
``FileLog.append`` → ``frame_batch``, ``_write_at_end``, ``_fsync``, ``OffsetIndex.add`` and
``persist``, then ``Transactions.end`` → ``LogLock.release``) spent ~60 us around the floor's
own write and sync. This does the same procedure (FORMAT.md §8.2) with the same system calls,
in order — flock, ``lstat`` of ``P.lock``, ``pread`` of the counters, ``fstat`` of ``P.idx``,
``pwrite`` of the bumped counters, ``pwrite`` of the frame, ``fdatasync``, ``pwrite`` of the
index entry (``ENTRY_SYNCED`` under "fsync", §7), unlock — in one function: the only calls
of ours are the sealing (``encode``, before the writes) and the codec's bookkeeping
(``after``, once the record is indexed).

It runs only in the **steady state**: the filesystem seam is ``DEFAULT_IO`` (a test's seam sees
every call of the general path instead, its fault steps included), the lock file is open from
an earlier hold and nobody holds the lock, no other writer came by since this process's last
look (the counters are as it left them), the log ends where its index does and the index file
holds every entry (``_settled``), the index file is still at its name, no earlier sync failed,
and the caller's ``encode`` accepts the record (no dictionary to train, the first append's
sweep done). Otherwise it returns None having changed nothing and holding nothing, and the
caller takes the general path. Once the counters are bumped, every failure is handled as the
general path handles it: a failed log write cuts what it wrote, a failed sync poisons the log,
a failed index write after the commit only marks the index for rewriting; the view is then
forgotten and an OS error surfaces as ``StorageError``.

This module reads ``FileLog``'s view (and its lock's and index's fields) directly, as
``FileLog``'s own methods do: it is that class's append, kept beside it (log.py is full).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from threading import get_ident as _get_ident

from ..._fsio import DEFAULT_IO, default_syscalls, write_all
from ...errors import ConversationCodecError
from ...format.index import ENTRY_SYNCED, INDEX_ENTRY, INDEX_HEADER_BYTES
from ...format.record import encode_frame
from ...records import RecordCodec
from .lock import LOCK_STATE, QUICK_FLOCK
from .log import FileLog
from .opened import plain_look
from .transaction import Transactions, storage_error

__all__ = ["QuickAppend", "quick_append"]


# ``encode(records, seq, last_ts_us, message_json)``: the record's time and body, or None for
# the general path.
Encode = Callable[[RecordCodec, int, int, bytes], tuple[int, bytes] | None]
# ``after(seq, [message_json], (log_id, seen, count))``: the record is in, the log in that state.
After = Callable[[int, list[bytes], tuple[bytes, tuple[int, int, int], int]], None]
Flock = tuple[Callable[[int, int], None], int, int]  # flock(fd, flags), take at once, release


def quick_append(log: FileLog, encode: Encode, after: After) -> QuickAppend | None:
    """The quick append of ``log``, or None where there is none (no flock: not POSIX)."""
    return None if QUICK_FLOCK is None else QuickAppend(log, encode, after, QUICK_FLOCK)


class QuickAppend:
    """Append one record to ``log`` in the steady state (see the module docstring).

    ``encode`` stamps and seals the record (``LogWriter.single``); ``after`` runs once it
    is committed, indexed and unlocked, still under the log's mutex (the codec's bookkeeping of
    ``save()``), given the log's state then (``HistoryView.state()``).
    """

    __slots__ = ("_after", "_encode", "_flock", "_log")

    def __init__(
        self,
        log: FileLog,
        encode: Encode,
        after: After,
        flock: Flock,
    ) -> None:
        self._log, self._encode, self._after = log, encode, after
        self._flock = flock  # lock.QUICK_FLOCK

    def __call__(self, data: bytes) -> int | None:
        """Append the message ``data`` (its stored JSON); return its seq, or None (nothing
        done, nothing held) when the log is not in the steady state.

        One function on purpose: every call and attribute lookup after the sync is paid
        with cold caches (see the module docstring). Longer than the house's 60 lines
        for that reason.
        """
        log = self._log
        calls = default_syscalls()
        synced = log._sync
        if calls is None or (synced and calls[1] is None):
            return None  # DEFAULT_IO's calls were replaced, or no fdatasync here (macOS)
        pwrite, datasync = calls
        txns, lock, index = log._txns, log._lock, log.index
        flock, take, untake = self._flock
        with txns.mutex:  # released on every way out, an interrupt's included
            fd, log_fd, fmt, idx_fd, seen = lock._fd, log._fd, log.fmt, index._fd, txns.seen
            if (
                txns.depth  # inside this thread's transaction: the general path nests
                or fd is None
                or log_fd is None
                or fmt is None
                or idx_fd is None
                or seen is None
                or not log._settled
                or log.poisoned
                or log._io is not DEFAULT_IO
            ):
                return None
            try:
                # This thread's write transaction while the lock is held, so that the codec
                # called from inside it (a clock that reads the log) nests in it instead of
                # unlocking the file. Every way out leaves it and unlocks (an unlock of a
                # lock not taken yet releases nothing: the mutex keeps this process's other
                # threads off the lock file).
                txns.depth, txns.writable, txns.owner = 1, True, _get_ident()
                seq = len(index.ends)
                try:
                    flock(fd, take)
                except OSError:  # held by another process: the general path waits for it
                    _leave(txns)
                    return None
                try:
                    at = os.lstat(lock.path)
                    steady = (
                        (at.st_dev, at.st_ino) == lock._ino
                        and seen[0] == at.st_ino
                        and os.pread(fd, LOCK_STATE.size, 0) == LOCK_STATE.pack(seen[1], seen[2])
                        and os.fstat(idx_fd).st_nlink > 0
                        and index.persisted == seq
                        # A plain log a person edited (no lock): the general path reads
                        # that first (FORMAT.md §8.2). One lstat of P, which must still
                        # name the file held (an editor saves by rename); a plain log
                        # has no dictionary record, so it ends where its last record does.
                        and (
                            fmt.sealed
                            or plain_look(log.path, fmt, log._log_id_stat, index.end, write=True)
                            is None
                        )
                    )
                except OSError:  # the general path looks again, and raises what it must
                    steady = False
                # The clock is read only when the quick path goes on (a test clock ticks once).
                stamped = (
                    self._encode(fmt.records, seq, index.tss[-1] if seq else 0, data)
                    if steady
                    else None
                )
                if stamped is None:
                    _leave(txns)
                    flock(fd, untake)
                    return None
                ts, body = stamped
                frame = encode_frame(body) if fmt.sealed else body
                ends, tss = index.ends, index.tss
                end = ends[-1] if seq else index.data_start
                if index.dict_span[1] > end:
                    end = index.dict_span[1]  # after the dictionary record
                # FORMAT.md §8.1: bump generation before the log changes.
                counters = LOCK_STATE.pack(seen[1] + 1, seen[2])
                txns.seen = (seen[0], seen[1] + 1, seen[2])
                # The log's state after it, as ``FileLog.seen`` counts it (for ``after``).
                state = (fmt.log_id, (seen[0], seen[1] + 1, seen[2] + log._replaced), seq + 1)
                done = pwrite(fd, counters, 0)
                if done != len(counters):
                    _write_rest(fd, counters, done, 0)
                try:
                    done = pwrite(log_fd, frame, end)
                    if done != len(frame):
                        _write_rest(log_fd, frame, done, end)
                except OSError:
                    log._settled = False
                    log.io.truncate(log_fd, end)  # leave no partial record behind
                    raise
                if synced:
                    try:
                        datasync(log_fd)  # type: ignore[misc]  # (not None: checked above)
                    except OSError:
                        log.poisoned = True  # the kernel may have dropped the pages
                        raise
                # Committed. The entry, after the sync: under "fsync" it is evidence (§7).
                end += len(frame)
                ends.append(end)
                tss.append(ts)
                index.synced.append(synced)
                if synced:
                    index.committed_end = end
                    entry = INDEX_ENTRY.pack(end | ENTRY_SYNCED, ts)
                else:
                    entry = INDEX_ENTRY.pack(end, ts)
                try:
                    at_entry = INDEX_HEADER_BYTES + seq * INDEX_ENTRY.size
                    done = pwrite(idx_fd, entry, at_entry)
                    if done != len(entry):
                        _write_rest(idx_fd, entry, done, at_entry)
                    index.persisted = seq + 1
                except OSError:
                    # The record is committed; the index is only a cache: rewritten next time.
                    log._index_ok = log._settled = False
                _leave(txns)
                flock(fd, untake)
                # The codec's bookkeeping, given the log's state as this append left it (the
                # lock is released: nothing here reads the files).
                self._after(seq, [data], state)
            except BaseException as exc:
                _leave(txns)
                _failed(log, fd, exc, self._flock)
                raise
            return seq


def _leave(txns: Transactions) -> None:
    """End the write transaction the quick append held (before it unlocks)."""
    txns.depth, txns.writable, txns.owner = 0, False, None


def _write_rest(fd: int, data: bytes, done: int, offset: int) -> None:
    """Go on after a short ``pwrite`` as ``write_all`` does (a refusal, EIO, when none took)."""
    if done <= 0:
        raise OSError(errno.EIO, "short write")
    write_all(fd, memoryview(data)[done:], offset + done)


def _failed(log: FileLog, fd: int, exc: BaseException, lock: Flock) -> None:
    """Leave the hold as a failed general write does (``Transaction.__exit__``): unlock,
    forget the view, and turn an OS error into ``StorageError``."""
    flock, _, untake = lock
    try:
        flock(fd, untake)
    except OSError as err:
        raise storage_error(err, log.path) from None
    log.forget_view()  # a write that failed midway: read the files again
    if isinstance(exc, OSError) and not isinstance(exc, ConversationCodecError):
        raise storage_error(exc, log.path) from exc

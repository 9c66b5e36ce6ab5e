"""Transactions of one log: who in this process holds ``<log>.lock`` (``lock.LogLock``), and how.

A transaction is re-entrant within a thread (a thread mutex, then one lock acquisition per
outermost hold); a nested one never upgrades a read to a write. OS errors inside it surface
as ``StorageError``. What a transaction does on entry — refuse writes after a failed fsync,
bring the cached view up to date — and after a failed write — forget that view — is
``log.FileLog``'s, passed in as callbacks.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from types import TracebackType

from ..._fsio import unlink_file
from ...errors import ConversationCodecError, StorageError
from .lock import LogLock

__all__ = ["Transaction", "Transactions", "storage_error"]


class Transactions:
    """The lock holds of one log in this process (FORMAT.md §8.1)."""

    def __init__(
        self,
        lock: LogLock,
        path: str,
        *,
        enter: Callable[[bool, bool], None],
        keep_created: Callable[[], bool],
        forget: Callable[[], None],
    ) -> None:
        """``enter(write, locked)`` runs when the outermost hold begins, ``keep_created()``
        says whether a lock file this hold created may stay when ``enter`` fails, and
        ``forget()`` runs after a write transaction that raised."""
        self.lock, self.path = lock, path
        self.mutex = threading.RLock()
        self.depth = 0  # nesting of the current thread's holds; 0 when none
        self.writable = False
        self.tolerant = False  # readers stop at mid-log damage instead of raising
        self.cleared = False  # a clear in this hold left the unlink of P.lock to its end
        self.made_lock = False  # this write hold created P.lock (see begin)
        self.owner: int | None = None  # the thread holding it
        self._locked = False
        # (lock inode, generation, truncations) as last seen; None forces a full reload
        self.seen: tuple[int, int, int] | None = None
        self._opens = 0  # the lock's opens when ``seen`` was taken
        self._enter, self._keep_created, self.forget = enter, keep_created, forget
        self._write = Transaction(self, True)
        self._read = Transaction(self, False)

    def bump(self, *, truncation: bool) -> None:
        """Announce a change to other processes; always *before* the change is made."""
        assert self.seen is not None
        ino, gen, truncs = self.seen
        self.seen = (ino, gen + 1, truncs + int(truncation))
        self.lock.write_state(gen + 1, truncs + int(truncation))

    def hold(self, write: bool, tolerant: bool = False) -> Transaction:
        """Return the context of one hold (exclusive for ``write``)."""
        if tolerant:
            return Transaction(self, write, tolerant=True)
        return self._write if write else self._read

    def begin(self, write: bool, tolerant: bool = False) -> None:
        """Enter a hold: take the mutex, and the lock unless already held by this thread."""
        self.mutex.acquire()
        try:
            if self.depth:
                if write and not self.writable:
                    raise RuntimeError("cannot upgrade a read transaction to a write")
                self.depth += 1
                return
            self._locked = self.lock.acquire(exclusive=write)
            if self.lock.opens != self._opens:  # another lock file than the one seen through
                self.seen, self._opens = None, self.lock.opens  # (maybe at its inode): reload
            self.depth, self.writable, self.tolerant = 1, write, tolerant
            self.owner = threading.get_ident()
            try:
                self._enter(write, self._locked)
            except BaseException:
                # A wrong key or a foreign file must leave the directory exactly as it was.
                self.lock.forget_created(keep=self._keep_created())
                self.depth, self.writable, self.tolerant = 0, False, False
                self.owner = None
                if self._locked:
                    self._locked = False
                    self.lock.release()
                raise
            # A write hold that made P.lock leaves none if it leaves no log either (a pop()
            # of a log that never was): as a clear, unlinked at the end of the hold.
            self.made_lock = write and self.lock.created
            if self.lock.created:
                self.lock.forget_created(keep=True)
        except BaseException:
            self.mutex.release()
            raise

    def defer_lock_unlink(self) -> bool:
        """A clear's last step, the unlink of ``P.lock``: True when it must wait for the end
        of the outermost hold (a clear inside a longer transaction), whose later calls
        stay excluded only while the lock file is the one at the path (FORMAT.md §8.5)."""
        if self.depth <= 1:
            return False
        self.cleared = True
        return True

    def _unlink_cleared(self) -> None:
        """The deferred end of a clear (FORMAT.md §8.5): unlink ``P.lock`` unless the log
        was written again in the hold, or this hold no longer locks the file at the path
        (the log was closed inside it: another writer may hold that file now). Best
        effort, as a crash would leave it: a lock file holds no history."""
        if os.path.lexists(self.path) or not self.lock.holds_path():
            return
        with contextlib.suppress(OSError):
            unlink_file(self.lock.path, io=self.lock.io)
            self.lock.io.sync_dir(self.path)

    def writing(self) -> bool:
        """Whether the calling thread holds a write transaction."""
        return self.depth > 0 and self.writable and self.owner == threading.get_ident()

    def end(self) -> None:
        """Leave a hold: release the lock with the outermost one, then the mutex."""
        self.depth -= 1
        try:
            if not self.depth:
                partial = self.tolerant  # it may have stopped at damage: the view is partial,
                self.writable = self.tolerant = False  # and unchanged counters must not
                self.owner = None  # serve it to the next hold: that one reads the files again
                cleared, self.cleared = self.cleared or self.made_lock, False
                try:
                    if cleared and self._locked:
                        self._unlink_cleared()
                    if self.made_lock and not os.path.lexists(self.path):
                        self.seen = None  # the next P.lock restarts at 0 (same inode?)
                    self.made_lock = False
                finally:
                    if self._locked:
                        self._locked = False
                        self.lock.release()
                    if partial:
                        self.forget()
        finally:
            self.mutex.release()


class Transaction:
    """One lock hold; see ``FileLog.transaction``."""

    __slots__ = ("_holds", "_tolerant", "_write")

    def __init__(self, holds: Transactions, write: bool, *, tolerant: bool = False) -> None:
        self._holds, self._write, self._tolerant = holds, write, tolerant

    def __enter__(self) -> None:
        try:
            self._holds.begin(self._write, self._tolerant)
        except ConversationCodecError:
            raise
        except OSError as exc:
            raise storage_error(exc, self._holds.path) from None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._holds.end()
        except OSError as err:
            raise storage_error(err, self._holds.path) from None
        if exc is not None and self._write:
            self._holds.forget()  # a write that failed midway: read the files again
        if isinstance(exc, OSError) and not isinstance(exc, ConversationCodecError):
            raise storage_error(exc, self._holds.path) from exc


def storage_error(exc: OSError, path: str) -> StorageError:
    """The ``StorageError`` an OS error inside a transaction of the log ``path`` surfaces as."""
    return StorageError(exc.errno or 0, f"{path}: {exc.strerror or exc}")

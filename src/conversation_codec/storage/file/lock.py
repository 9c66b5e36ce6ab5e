"""The writer lock and change counters of a log: ``<log>.lock`` (FORMAT.md §8.1).

Writers hold an exclusive ``portalocker`` lock, readers a shared one. The file also holds two
counters that writers bump *before* they change anything, so every process can tell whether
its cached view of the log is current.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import time
import weakref
from collections.abc import Callable

import portalocker

from ..._fsio import DEFAULT_IO, FileIO, make_private_dirs, open_regular, write_all
from ...errors import LockTimeoutError, StorageError
from ...paths import lock_path

__all__ = ["LOCK_STATE", "QUICK_FLOCK", "LogLock"]

LOCK_STATE = struct.Struct("<QQ")  # FORMAT.md §8.1: generation, truncations
_FIRST_PAUSE, _LONGEST_PAUSE = 0.001, 0.05  # seconds between retries, doubling
# portalocker's POSIX locker is fcntl.flock; None elsewhere (then portalocker.lock() always).
_FLOCK = getattr(portalocker.portalocker, "LOCKER", None) if os.name == "posix" else None
if _FLOCK is not None and getattr(_FLOCK, "__name__", "") != "flock":
    _FLOCK = None
_LOCK_EX, _LOCK_SH, _LOCK_NB, _LOCK_UN = (
    int(portalocker.LOCK_EX),
    int(portalocker.LOCK_SH),
    int(portalocker.LOCK_NB),
    int(portalocker.LOCK_UN),
)
# flock itself, and its flags to take the lock at once and to release it, for the quick
# append (``quick``: no frame of ours around the two system calls); None off POSIX.
QUICK_FLOCK: tuple[Callable[[int, int], None], int, int] | None = (
    None if _FLOCK is None else (_FLOCK, _LOCK_EX | _LOCK_NB, _LOCK_UN)
)


class LogLock:
    """``<log>.lock``: a flock that survives the file being unlinked by ``clear()``, and the
    generation/truncation counters (not thread-safe; the log serialises its use)."""

    __slots__ = (
        "__weakref__",
        "_fd",
        "_ino",
        "_log_path",
        "_timeout",
        "created",
        "io",
        "opens",
        "path",
    )

    def __init__(self, log_path: str, timeout: float | None, *, io: FileIO = DEFAULT_IO) -> None:
        self.io = io  # the log's filesystem seam
        self._log_path = log_path
        self.path = lock_path(log_path)
        self._timeout = timeout
        self._fd: int | None = None
        self._ino = (0, 0)
        self.created = False  # this process created the file during the current acquire
        # Files opened so far. A lock file opened again may be a new one at the old one's
        # inode number (P.lock unlinked by a pack's retirement or a clear, then made again:
        # ext4 reuses the number of a freed inode), with counters that happen to match what
        # was seen through the old one: the caller reloads whatever the counters say.
        self.opens = 0

    def acquire(self, *, exclusive: bool) -> bool:
        """Take the lock; return False (holding nothing) for a reader that may go without.

        A reader goes without when there is no log to read (and so no reason to create a
        lock file), or when the directory is read-only.
        """
        fd = self._fd
        if fd is not None and _FLOCK is not None:
            # The common case, in two system calls: the file is open from an earlier
            # acquire and nobody holds the lock. The slow path below does the rest.
            try:
                _FLOCK(fd, (_LOCK_EX if exclusive else _LOCK_SH) | _LOCK_NB)
            except BlockingIOError:
                pass
            else:
                if self._names_it():
                    return True
        try:
            return self._lock(exclusive)
        except FileNotFoundError:
            if not exclusive:
                return False
            make_private_dirs(os.path.dirname(self._log_path) or ".", io=self.io)
            return self._lock(exclusive)
        except OSError as exc:
            if exclusive or exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise
            return False

    def _lock(self, exclusive: bool) -> bool:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        pause = _FIRST_PAUSE
        while True:
            if self._fd is None:
                opened = self._open(deadline, create=exclusive)
                if opened is None:
                    return False  # reading after clear() must not create the file again
                self._fd, held = opened
                self._ino = (held.st_dev, held.st_ino)
                self.opens += 1
                _OPEN.add(self)
            self._take(self._fd, exclusive, deadline)
            if self._names_it():
                return True
            self.close()
            pause = self._pause(deadline, pause)

    def holds_path(self) -> bool:
        """Whether this lock's file is open and still the one at ``P.lock``."""
        return self._fd is not None and self._names_it()

    def _names_it(self) -> bool:
        """Whether ``P.lock`` still names the file this lock holds.

        It may have been unlinked (``clear()``, or by hand) while we waited: a lock on a
        dead inode excludes nobody, so the caller retries on the file now at the path. An
        ``fstat`` link count would cost half as much (~1 us), but on NFS a file unlinked
        while open is renamed (``.nfsXXXX``) and keeps its link: only the path tells.
        """
        try:
            now = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (now.st_dev, now.st_ino) == self._ino

    def _take(self, fd: int, exclusive: bool, deadline: float | None) -> None:
        # portalocker.lock() re-validates its flags with enum arithmetic on every call,
        # ~5 us, a sixth of a flushed append. Uncontended, take the lock with portalocker's
        # own POSIX locker (flock) and pre-computed flags; whenever that would block, wait
        # in portalocker.lock() itself.
        if _FLOCK is not None:
            try:
                _FLOCK(fd, (_LOCK_EX if exclusive else _LOCK_SH) | _LOCK_NB)
                return
            except BlockingIOError:
                pass
        flags = portalocker.LOCK_EX if exclusive else portalocker.LOCK_SH
        if deadline is None:
            portalocker.lock(fd, flags)
            return
        delay = 0.001
        while True:
            try:
                portalocker.lock(fd, flags | portalocker.LOCK_NB)
                return
            except portalocker.AlreadyLocked:
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"{self.path} is held by another writer; gave up after "
                        f"{self._timeout} s (raise lock_timeout or retry)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _open(self, deadline: float | None, *, create: bool) -> tuple[int, os.stat_result] | None:
        """Open ``P.lock``, creating it for a writer, or for a reader when the log is there
        (looked at only when the lock file is missing: one lookup in the usual case); None
        for a reader of no log."""
        # Never through a link: a planted ``P.lock`` link is refused at once (StorageError),
        # not retried: a dangling one fails both opens below, forever.
        pause = _FIRST_PAUSE
        while True:
            try:
                return open_regular(self.path, os.O_RDWR)
            except (FileNotFoundError, NotADirectoryError):
                if not (create or os.path.lexists(self._log_path)):
                    return None
            except StorageError:  # a link, directory or FIFO at P.lock
                if not (create or os.path.lexists(self._log_path)):
                    return None  # a reader of no log leaves whatever is there alone
                raise
            try:
                opened = open_regular(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                # Another process created it first: open theirs. Unless it keeps vanishing
                # (clear() in a loop elsewhere), which must not make us spin.
                pause = self._pause(deadline, pause)
                continue
            self.created = True
            return opened

    def _pause(self, deadline: float | None, pause: float) -> float:
        """Sleep before a retry (or raise past ``deadline``); return the next pause."""
        if deadline is not None and time.monotonic() >= deadline:
            raise LockTimeoutError(
                f"{self.path} kept being replaced or removed; gave up after {self._timeout} s "
                "(raise lock_timeout or retry)"
            )
        time.sleep(pause)
        return min(pause * 2, _LONGEST_PAUSE)

    def release(self) -> None:
        """Release the lock (the file stays open for the next acquire)."""
        if self._fd is None:
            return
        if _FLOCK is not None:
            _FLOCK(self._fd, _LOCK_UN)
        else:
            portalocker.unlock(self._fd)

    def forget_created(self, *, keep: bool) -> None:
        """Unless ``keep``, remove a lock file this acquire created (a wrong key or a foreign
        file must leave the directory exactly as it was)."""
        if self.created and not keep:
            with contextlib.suppress(FileNotFoundError):
                now = os.lstat(self.path)
                if (now.st_dev, now.st_ino) == self._ino:  # ours, not a link put there since
                    self.io.unlink(self.path)
        self.created = False

    def state(self) -> tuple[int, int, int]:
        """Return ``(lock file inode, generation, truncations)`` (held lock only)."""
        raw = os.pread(self._held(), LOCK_STATE.size, 0)
        gen, truncs = LOCK_STATE.unpack(raw) if len(raw) == LOCK_STATE.size else (0, 0)
        return self._ino[1], gen, truncs

    def write_state(self, generation: int, truncations: int) -> None:
        """Store new counters (exclusive lock held). Not synced: live processes only."""
        write_all(self._held(), LOCK_STATE.pack(generation, truncations), 0, io=self.io)

    def _held(self) -> int:
        if self._fd is None:  # only a child forked in the middle of a transaction gets here
            raise StorageError(
                f"{self.path}: this process was forked while a transaction held the lock; "
                "that transaction belongs to the parent (end it, and start another here)"
            )
        return self._fd

    def close(self) -> None:
        """Close the file descriptor (closing releases any flock)."""
        fd, self._fd = self._fd, None  # forgotten first: an interrupt never closes it twice
        if fd is not None:
            _OPEN.discard(self)
            os.close(fd)

    def __del__(self) -> None:  # dropped unclosed (a codec never closed): the file goes too
        with contextlib.suppress(Exception):  # also at interpreter exit
            self.close()

    def _forget_inherited(self) -> None:
        """In a child just forked: drop the parent's descriptor (``_after_fork``)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # never LOCK_UN: that would release the parent's lock


# Every LogLock whose file is open. A flock belongs to the open file description, which a
# forked child shares with its parent: through an inherited descriptor each would "hold"
# the lock at once, and both would append at the same offset (a server that opens its
# codecs before forking its workers lost records so). So a child closes its copies at the
# fork, and each lock opens the file again at its next acquire: a description of its own.
# The log's other files are read and written at explicit offsets (pread, pwrite), so
# sharing their descriptions is harmless; the view cached with them is checked against
# the counters under the lock, as any other process's would be.
_OPEN: weakref.WeakSet[LogLock] = weakref.WeakSet()


def _after_fork() -> None:
    for lock in list(_OPEN):
        lock._forget_inherited()
    _OPEN.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

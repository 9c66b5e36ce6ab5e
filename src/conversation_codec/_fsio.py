"""Open and delete the files the library owns without ever following a symbolic link.

Someone who may write to a history directory but holds no key could plant a link where the
library is about to create, write, lock or delete a file (``P.idx -> ~/.bashrc``,
``P.blobs -> ~/Documents``, ``alice.log -> bob.log``). Every such path goes through here:
``O_NOFOLLOW`` on opens, ``lstat`` before deletes, directory descriptors (``dir_fd``) inside
a directory of our own; a link, a directory or any other non-regular file where a regular
file belongs is refused with a ``StorageError`` that names the path (FORMAT.md §1).

Only the last component is checked: a directory *above* the log that is a link (a history
root moved to another disk) is the user's choice and keeps working.

It is also the one filesystem seam (LevelDB's ``Env``): :class:`FileIO` is the only caller of
``pwrite``, ``fsync``/``fdatasync``, ``ftruncate``, ``rename``, ``link`` and ``unlink`` in the
package; ``_atomic.atomic_write``, built on it, is the one procedure that publishes a whole
file. A test passes its own ``FileIO`` (``ConversationCodec(..., io=...)``) to record every
change for power-loss images or to fail the Nth call with ENOSPC or EIO.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable

from .errors import StorageError

__all__ = [
    "DEFAULT_IO",
    "FileIO",
    "check_file",
    "default_syscalls",
    "make_private_dirs",
    "open_dir",
    "open_file",
    "open_regular",
    "open_source",
    "remove_flat_dir",
    "unlink_file",
]

# Windows has neither O_NOFOLLOW nor O_DIRECTORY; the lstat checks still refuse links there.
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# So that a FIFO planted at a path cannot block the open; regular files ignore the flag.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
# What open() reports for a link at the last component: ELOOP (Linux, macOS), EMLINK
# (FreeBSD) under O_NOFOLLOW; EEXIST under O_CREAT | O_EXCL.
_LINK_ERRNOS = {errno.ELOOP, errno.EMLINK, errno.EEXIST}
# What it reports for a directory (EISDIR, opened for writing) or a socket (ENXIO on Linux,
# EOPNOTSUPP on BSD): told apart by an lstat, to name what is there.
_NOT_FILE_ERRNOS = {errno.EISDIR, errno.ENXIO, errno.EOPNOTSUPP}
_Path = str | os.PathLike[str]


class FileIO:
    """Every call that changes a file or makes it durable, in one seam.

    The default is the operating system. The reliability tests put a recorder here to build
    power-loss images from what was written and what was synced, or a faulty one that fails
    the Nth write, sync or rename (ENOSPC, EIO). Reads need no seam.
    """

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        """Write at an offset; return how many bytes the kernel took."""
        return os.pwrite(fd, data, offset)

    def sync(self, fd: int, *, data_only: bool) -> None:
        """fdatasync (``data_only``) or fsync one file."""
        if data_only:
            os.fdatasync(fd)
        else:
            os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        """Cut a file to ``size`` bytes."""
        os.ftruncate(fd, size)

    def rename(self, src: _Path, dst: _Path, *, dir_fd: int | None = None) -> None:
        """Atomically replace ``dst`` with ``src`` (both relative to ``dir_fd`` if given)."""
        if dir_fd is None:
            os.replace(src, dst)
        else:
            os.replace(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def link(self, src: _Path, dst: _Path, *, dir_fd: int | None = None) -> None:
        """Give ``src`` the second name ``dst``; fails when ``dst`` exists (never replaces).

        ``src`` may be ``/proc/self/fd/<fd>`` of an unnamed (``O_TMPFILE``) file, given with
        a ``dir_fd``: CPython then calls ``linkat(AT_SYMLINK_FOLLOW)``, which names the file.
        """
        if dir_fd is None:
            os.link(src, dst)
        else:
            os.link(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def unlink(self, path: _Path, *, dir_fd: int | None = None) -> None:
        """Remove the name ``path`` (never follows a link: removes the link itself)."""
        if dir_fd is None:
            os.unlink(path)
        else:
            os.unlink(path, dir_fd=dir_fd)

    def fsync_dir(self, folder: _Path | int) -> None:
        """fsync a directory, given as a path or an open descriptor (makes the renames,
        links and unlinks in it durable)."""
        if isinstance(folder, int):
            os.fsync(folder)
            return
        fd = os.open(folder, os.O_RDONLY | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def sync_dir(self, path: _Path) -> None:
        """fsync the directory holding ``path`` (makes a rename or unlink durable)."""
        self.fsync_dir(os.path.dirname(path) or ".")

    def step(self, name: str) -> None:
        """Mark that a write procedure reached the step ``name``; the default does nothing.

        The file storage calls it between the steps of append, truncate and rewrite
        (``"append:written"``, ``"rewrite:temp-synced"``, … FORMAT.md §8). Crash tests
        override it to raise, or to kill the process, at one exact step.
        """


DEFAULT_IO = FileIO()  # the operating system, for callers given no seam


_PWRITE, _SYNC = FileIO.pwrite, FileIO.sync  # as defined: what DEFAULT_IO calls unless replaced


def default_syscalls() -> (
    tuple[Callable[[int, bytes, int], int], Callable[[int], None] | None] | None
):
    """What ``DEFAULT_IO``'s ``pwrite`` and ``sync(data_only=True)`` call, for the one hot
    path that checks ``io is DEFAULT_IO`` first (a quick append, issue 15): no frame of ours
    between it and the kernel. Looked up at each call, as ``DEFAULT_IO`` does (a test that
    patches ``os`` sees them too). None when ``FileIO.pwrite`` or ``sync`` was replaced, on
    the class or on ``DEFAULT_IO`` (instrumentation): the caller then goes through the seam,
    which sees every call. ``fdatasync`` is None where the OS has none (macOS)."""
    if (
        getattr(DEFAULT_IO.pwrite, "__func__", None) is not _PWRITE
        or getattr(DEFAULT_IO.sync, "__func__", None) is not _SYNC
    ):
        return None
    return os.pwrite, getattr(os, "fdatasync", None)


def _refusal(path: _Path, st: os.stat_result) -> StorageError:
    if stat.S_ISLNK(st.st_mode):
        return StorageError(
            errno.ELOOP,
            f"{os.fspath(path)} is a symbolic link; conversation-codec never follows a link at "
            "a file it creates, writes, locks or deletes — remove the link (or pass the real path)",
        )
    what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
    return StorageError(
        errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL,
        f"{os.fspath(path)} is {what}; move it away (or pass another path)",
    )


def _lstat(path: _Path, dir_fd: int | None) -> os.stat_result | None:
    try:
        return os.lstat(path, dir_fd=dir_fd)
    except OSError:
        return None


def check_file(
    path: _Path, *, dir_fd: int | None = None, shown: _Path | None = None
) -> os.stat_result | None:
    """Return the ``lstat`` of ``path``, or None when nothing is there.

    ``shown``: the path that errors name, when ``path`` is relative to ``dir_fd``.

    :raises StorageError: ``path`` is a symbolic link, a directory or another non-regular file.
    """
    try:
        st = os.lstat(path, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        raise _refusal(shown or path, st)
    return st


def open_file(
    path: _Path,
    flags: int,
    mode: int = 0o600,
    *,
    dir_fd: int | None = None,
    shown: _Path | None = None,
) -> int:
    """``os.open`` a regular file, never through a link at the last component of ``path``.

    Adds ``O_NOFOLLOW``, ``O_CLOEXEC`` and ``O_NONBLOCK`` to ``flags``. Other errors (the file
    or its directory missing, permissions) are raised as ``os.open`` raises them. ``shown``:
    as for :func:`check_file`.

    :raises StorageError: ``path`` is a symbolic link (dangling or not), a directory or
        another non-regular file.
    """
    return open_regular(path, flags, mode, dir_fd=dir_fd, shown=shown)[0]


def open_regular(
    path: _Path,
    flags: int,
    mode: int = 0o600,
    *,
    dir_fd: int | None = None,
    shown: _Path | None = None,
) -> tuple[int, os.stat_result]:
    """:func:`open_file`, also returning the ``fstat`` that proved the file regular: a
    caller that needs the file's identity or size asks for no second ``fstat`` (and no
    ``lstat`` before it: the open itself refuses links), issue 15."""
    if not _O_NOFOLLOW:  # no O_NOFOLLOW (Windows): look before opening, as check_file does
        st = _lstat(path, dir_fd)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise _refusal(shown or path, st)
    try:
        fd = os.open(path, flags | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS or exc.errno in _NOT_FILE_ERRNOS:
            st = _lstat(path, dir_fd)
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise _refusal(shown or path, st) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refusal(shown or path, st)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def open_source(path: _Path) -> tuple[int, os.stat_result]:
    """Open a file that is only read (a history to migrate or import, its ``.salt``) and
    return it with the ``fstat`` that proved it regular.

    Unlike :func:`open_regular`, a link at ``path`` is followed: the caller named the file,
    and nothing is written through it. A FIFO, socket or device is refused, never opened
    (``stat`` first) or waited on (``O_NONBLOCK``, for one swapped in after the ``stat``): a
    FIFO planted in a tree that ``migrate_many`` walks would otherwise block it for ever.

    :raises IsADirectoryError: a directory is there (the caller says what to pass instead).
    :raises StorageError: a FIFO, socket, device or other non-regular file is there.
    :raises OSError: as ``os.open`` raises it (a missing file, permissions).
    """
    _check_source(path, os.stat(path))
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NONBLOCK)
    try:
        st = os.fstat(fd)
        _check_source(path, st)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _check_source(path: _Path, st: os.stat_result) -> None:
    if stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    kind = (
        "a FIFO (named pipe)"
        if stat.S_ISFIFO(st.st_mode)
        else "a socket"
        if stat.S_ISSOCK(st.st_mode)
        else "a device"
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        else "a special file"
    )
    raise StorageError(
        errno.EINVAL,
        f"{os.fspath(path)} is {kind}, not a regular file; move it away or pass the file itself",
    )


def open_dir(path: _Path) -> int:
    """Open the directory ``path`` for ``dir_fd`` use, never through a link.

    :raises FileNotFoundError: nothing is there.
    :raises StorageError: ``path`` is a symbolic link or not a directory.
    """
    try:
        return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
            st = _lstat(path, None)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise _refusal(path, st) from None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise StorageError(
                    errno.ENOTDIR, f"{os.fspath(path)} is not a directory; move it away"
                ) from None
        raise


def unlink_file(
    path: _Path,
    *,
    dir_fd: int | None = None,
    shown: _Path | None = None,
    io: FileIO = DEFAULT_IO,
) -> bool:
    """Delete the regular file at ``path``; return False when nothing was there.

    ``unlink`` itself never follows a link, but a link or a directory at a name the library
    sweeps was planted there: it is refused rather than quietly removed.

    :raises StorageError: ``path`` is a symbolic link, a directory or another non-regular file.
    """
    if check_file(path, dir_fd=dir_fd, shown=shown) is None:
        return False
    try:
        io.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def remove_flat_dir(path: _Path, *, check_only: bool = False, io: FileIO = DEFAULT_IO) -> bool:
    """Delete the directory ``path`` and the regular files in it; False when it is missing.

    Every entry is checked before the first is deleted, so a refusal deletes nothing; all
    deletes go through the directory's descriptor, never through a link (``shutil.rmtree``
    of a link to a directory would empty that directory). ``check_only`` stops after the check.

    :raises StorageError: ``path`` is a link or not a directory, or an entry is a link or a
        subdirectory.
    """
    try:
        fd = open_dir(path)
    except FileNotFoundError:
        return False
    try:
        names = os.listdir(fd)
        for name in names:
            st = os.lstat(name, dir_fd=fd)
            if not stat.S_ISREG(st.st_mode):
                raise _refusal(os.path.join(path, name), st)
        if check_only:
            return True
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                io.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)  # a link swapped in meanwhile fails with ENOTDIR: rmdir never follows
    return True


def make_private_dirs(folder: _Path, *, io: FileIO = DEFAULT_IO) -> None:
    """Create ``folder`` and any missing parents with mode 0700 (``os.makedirs`` would give
    the parents the umask's mode), syncing each new directory's parent so that a power loss
    cannot take the directory, and what is later made durable in it, away."""
    folder = os.fspath(folder)
    missing = []
    while folder and not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue  # another creator made it (and syncs it); a file there fails later
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        io.sync_dir(path)


def write_all(
    fd: int, data: bytes | bytearray | memoryview, offset: int = 0, *, io: FileIO = DEFAULT_IO
) -> int:
    """``pwrite`` all of ``data`` at ``offset`` through ``io``; return the end offset."""
    whole = data if isinstance(data, bytes | memoryview) else memoryview(data)
    # With the default seam (the operating system), os.pwrite directly: a Python frame less
    # for each of an append's three writes (issue 15).
    n = (os.pwrite if io is DEFAULT_IO else io.pwrite)(fd, whole, offset) if data else 0
    if n == len(data):  # the kernel takes small writes whole: no view, no loop
        return offset + n
    if n <= 0:
        raise OSError(errno.EIO, "short write")
    view, offset = memoryview(whole)[n:], offset + n
    while view:
        n = io.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view, offset = view[n:], offset + n
    return offset

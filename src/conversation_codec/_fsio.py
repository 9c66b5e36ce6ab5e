"""Open and delete the files the library owns without ever following a symbolic link.

Someone who may write to a history directory but holds no key could plant a link where the
library is about to create, write, lock or delete a file (``P.idx -> ~/.bashrc``,
``P.blobs -> ~/Documents``, ``alice.log -> bob.log``). Every such path goes through here:
``O_NOFOLLOW`` on opens, ``lstat`` before deletes, directory descriptors (``dir_fd``) inside
a directory of our own; a link, a directory or any other non-regular file where a regular
file belongs is refused with a ``StorageError`` that names the path (FORMAT.md §1).

Only the last component is checked: a directory *above* the log that is a link (a history
root moved to another disk) is the user's choice and keeps working.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from .errors import StorageError

__all__ = ["check_file", "open_dir", "open_file", "remove_flat_dir", "unlink_file"]

# Windows has neither O_NOFOLLOW nor O_DIRECTORY; the lstat checks still refuse links there.
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# So that a FIFO planted at a path cannot block the open; regular files ignore the flag.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
# What open() reports for a link at the last component: ELOOP (Linux, macOS), EMLINK
# (FreeBSD) under O_NOFOLLOW; EEXIST under O_CREAT | O_EXCL.
_LINK_ERRNOS = {errno.ELOOP, errno.EMLINK, errno.EEXIST}
_Path = str | os.PathLike[str]


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
    try:
        fd = os.open(path, flags | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS or exc.errno == errno.EISDIR:
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
    return fd


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


def unlink_file(path: _Path, *, dir_fd: int | None = None, shown: _Path | None = None) -> bool:
    """Delete the regular file at ``path``; return False when nothing was there.

    ``unlink`` itself never follows a link, but a link or a directory at a name the library
    sweeps was planted there: it is refused rather than quietly removed.

    :raises StorageError: ``path`` is a symbolic link, a directory or another non-regular file.
    """
    if check_file(path, dir_fd=dir_fd, shown=shown) is None:
        return False
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def remove_flat_dir(path: _Path, *, check_only: bool = False) -> bool:
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
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)  # a link swapped in meanwhile fails with ENOTDIR: rmdir never follows
    return True

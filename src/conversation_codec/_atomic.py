"""``atomic_write``: publish a whole file, through a temp file that a kill cannot leave.

The file is written into an *unnamed* file (Linux ``O_TMPFILE``) in the destination's
directory and named only once it is written and synced: a process killed meanwhile
(SIGKILL, OOM, power loss) leaves nothing, the kernel frees the file. For an export — the
whole plaintext of a log that may be encrypted — a named temp file left by a kill would be
plaintext on disk where the user never asked for it, and nothing would ever delete it.
Only the instant between the link and the rename (or, on a file system without
``O_TMPFILE``, the whole write) has a named temp, a hidden ``.<name>.tmp-<16 hex>``.

Rejected: a named temp file and a sweep at the next open or write (as for a log's
``P.tmp-``): an export has no next writer, and a sweep finds only what a later run of the
same program looks for. ``AT_EMPTY_PATH`` to name the file: it needs
``CAP_DAC_READ_SEARCH``; the descriptor's ``/proc/self/fd`` link followed by ``linkat``
does not.

A writer that passes ``locked`` holds an exclusive ``flock`` on its temp file while it
lives (the lock goes with the process), so :func:`dead_temps` tells what a killed writer
left (an older version's temp, the link-to-rename instant, a file system without
``O_TMPFILE``) from a live writer's temp file. Rejected: an age rule (as for blob temps)
would leave a killed export's plaintext in place when the user retries at once, the usual
answer to a failed export.

Every write, sync, link, rename and unlink goes through the ``FileIO`` seam.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator

from ._fsio import DEFAULT_IO, FileIO, check_file, open_file, write_all
from .paths import hidden_temp_path, is_hidden_temp

try:
    import fcntl
except ImportError:  # Windows: no flock, no O_TMPFILE, nothing is swept
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_write", "dead_temps"]

_Path = str | os.PathLike[str]
# Where os.link is unsupported (FAT, some FUSE/network file systems).
_LINK_UNSUPPORTED = {
    errno.EPERM,
    errno.ENOTSUP,
    errno.EOPNOTSUPP,
    errno.ENOSYS,
    errno.EXDEV,
    errno.EMLINK,
}
_WRITE_BATCH = 1 << 20  # bytes: how much of a streamed file atomic_write gathers per pwrite
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# Unnamed files are named through /proc/self/fd (see the module docstring).
_UNNAMED = bool(_O_TMPFILE) and os.path.isdir("/proc/self/fd")
# What open(O_TMPFILE) reports where the file system has no unnamed files (EOPNOTSUPP),
# or the kernel predates them (it then sees O_DIRECTORY | O_RDWR: EISDIR).
# EACCES, EPERM: a sandbox may refuse O_TMPFILE alone.
_NO_TMPFILE = {
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.EISDIR,
    errno.EINVAL,
    errno.EACCES,
    errno.EPERM,
}
# What linking an unnamed file in says where it never will: no links, or a security module.
_LINK_REFUSED = _LINK_UNSUPPORTED | {errno.ENOENT, errno.EACCES}
# Devices whose unnamed files could not be linked in (a security module): named temps there.
_NO_UNNAMED_DEVICES: set[int] = set()
# flock refused by the file system (Lustre without flock, NFSv3 without lockd): no lock then.
_NO_FLOCK = {
    errno.ENOLCK,
    errno.ENOSYS,
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.EINVAL,
    errno.EBADF,
}


def atomic_write(
    path: _Path,
    data: bytes | Iterable[bytes],
    *,
    io: FileIO = DEFAULT_IO,
    exclusive: bool = False,
    mode: int = 0o600,
    dir_fd: int | None = None,
    shown: _Path | None = None,
    tmp: str | None = None,
    fault: Callable[[str], None] | None = None,
    synced: bool = True,
    locked: bool = False,
) -> None:
    """Publish the whole file ``path`` holding ``data`` (bytes, or chunks streamed in order):
    the name never shows a half-written file, and the file is durable when this returns
    (not ``synced``: nothing is synced, so after a power loss the name may show the old
    file, or the new one empty or in part: for a cache that its readers check).

    The data goes to an unnamed file in the directory (Linux ``O_TMPFILE``: a process
    killed meanwhile leaves nothing), written and fsynced, then linked in as ``tmp``
    (default ``.<name>.tmp-<16 hex>``) and renamed over ``path`` — or, when ``exclusive``,
    linked to ``path`` itself, which never replaces a file that is there — and the
    directory is fsynced. Without unnamed files, ``tmp`` is created ``O_EXCL | O_NOFOLLOW``
    and written instead. The file has exactly ``mode``. A link (or a non-regular file) at
    ``path`` is refused rather than replaced. Where hard links are unsupported (FAT, some
    FUSE mounts), an ``exclusive`` write creates ``path`` itself ``O_EXCL`` instead: still
    never two writers' contents under one name, though a crash may leave it short.
    ``fault`` is called with ``"written"`` after the file is synced, before the commit.
    With ``dir_fd``, ``path`` and ``tmp`` are names in that directory (``shown`` names it
    in errors). ``locked``: the temp file holds a ``flock`` while it lives, so that
    :func:`dead_temps` never takes it for a killed writer's. The temp name is removed on
    every failure.

    :raises FileExistsError: ``exclusive`` and ``path`` exists.
    :raises StorageError: a link, directory or other non-regular file at ``path``.
    :raises OSError: the write, sync, rename or link failed (nothing was published).
    """
    if exclusive and not isinstance(data, bytes | bytearray | memoryview):
        data = b"".join(data)  # the fallbacks below may need to write it a second time
    tmp = hidden_temp_path(path) if tmp is None else tmp
    if dir_fd is not None or not _UNNAMED:
        _publish(data, _Write(path, tmp, dir_fd, shown, io, exclusive, mode, fault, synced, locked))
        return
    # Names relative to a descriptor of the directory: CPython calls linkat only then.
    # Not open_dir: a directory above the file that is a link is the user's choice.
    folder = os.open(
        os.path.dirname(os.fspath(path)) or ".", os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC
    )
    try:
        name, tmp = os.path.basename(path), os.path.basename(tmp)
        shown = path if shown is None else shown
        _publish(data, _Write(name, tmp, folder, shown, io, exclusive, mode, fault, synced, locked))
    finally:
        os.close(folder)


@dataclasses.dataclass(frozen=True, slots=True)
class _Write:
    """The arguments of one :func:`atomic_write`."""

    path: _Path
    tmp: str
    dir_fd: int | None
    shown: _Path | None
    io: FileIO
    exclusive: bool
    mode: int
    fault: Callable[[str], None] | None
    synced: bool
    locked: bool


def _publish(data: bytes | Iterable[bytes], w: _Write) -> None:
    dir_fd = w.dir_fd
    fd = None if dir_fd is None or not _UNNAMED else _open_unnamed(dir_fd, w)
    if fd is None or dir_fd is None:
        _publish_named(data, w)
        return
    try:
        _write_chunks(fd, data, w.io)
        if w.synced:
            w.io.sync(fd, data_only=False)
        if w.fault is not None:
            w.fault("written")
        try:
            _link_unnamed(fd, w)
        except _LinkRefused:
            # No link through /proc after all: a security module refuses it (AppArmor
            # without mediate_deleted says ENOENT, SELinux EACCES), or the file system
            # has no links. Publish it named, and name this device's files so from now on.
            _NO_UNNAMED_DEVICES.add(os.fstat(fd).st_dev)
            back = b"".join(_read_back(fd)) if w.exclusive else _read_back(fd)
            _publish_named(back, dataclasses.replace(w, fault=None))
            return
    finally:
        os.close(fd)
    if w.synced:
        w.io.fsync_dir(dir_fd)


def _open_unnamed(dir_fd: int, w: _Write) -> int | None:
    """A new unnamed file in ``dir_fd``, read-write (for :func:`_read_back`); None where
    the file system has none, or refused to name one before."""
    if _NO_UNNAMED_DEVICES and os.fstat(dir_fd).st_dev in _NO_UNNAMED_DEVICES:
        return None
    try:
        fd = os.open(".", _O_TMPFILE | os.O_RDWR | _O_CLOEXEC, w.mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE:
            return None  # (a directory we may not write to refuses the named file too)
        raise
    try:
        os.fchmod(fd, w.mode)  # a umask cannot widen the mode, but make it exact
        if w.locked:
            _lock(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _link_unnamed(fd: int, w: _Write) -> None:
    """Name the unnamed file ``fd``: ``w.path`` itself (exclusive), or ``w.tmp`` renamed
    over ``w.path``. With a dir_fd, os.link is linkat(AT_SYMLINK_FOLLOW): it links the
    file behind the /proc link, not the link."""
    dir_fd, io = w.dir_fd, w.io
    if w.exclusive:
        _link_in(fd, w.path, w)
        return
    check_file(w.path, dir_fd=dir_fd, shown=w.shown)  # rename would replace a link
    _link_in(fd, w.tmp, w)
    try:
        io.rename(w.tmp, w.path, dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            io.unlink(w.tmp, dir_fd=dir_fd)
        raise


class _LinkRefused(Exception):
    """The link of an unnamed file was refused as links never will be here: no links on
    this file system, or a security module (not EEXIST, EIO, ENOSPC: the write's failure)."""


def _link_in(fd: int, name: str | _Path, w: _Write) -> None:
    """Link the unnamed file ``fd`` in as ``name``; :class:`_LinkRefused` for a refusal
    of the link itself, told apart here from every other step's errors."""
    try:
        w.io.link(f"/proc/self/fd/{fd}", name, dir_fd=w.dir_fd)
    except OSError as exc:
        if exc.errno in _LINK_REFUSED and not isinstance(exc, FileExistsError):
            raise _LinkRefused from exc
        raise


def _read_back(fd: int) -> Iterator[bytes]:
    offset = 0
    while chunk := os.pread(fd, _WRITE_BATCH, offset):
        offset += len(chunk)
        yield chunk


def _lock(fd: int) -> None:
    """Lock a fresh temp file (never held) as a live writer's, where the file system can:
    without the lock it is still written, and :func:`_dead` takes no unlockable file for a
    killed writer's."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                raise


def _publish_named(data: bytes | Iterable[bytes], w: _Write) -> None:
    """Write the named temp file ``w.tmp``, then rename or link it (atomic_write's
    procedure where there are no unnamed files)."""
    path, tmp, dir_fd, shown, io = w.path, w.tmp, w.dir_fd, w.shown, w.io
    folder = os.path.dirname(os.fspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    shown_tmp = tmp
    if dir_fd is not None and shown is not None:
        shown_tmp = os.path.join(os.path.dirname(shown), os.path.basename(tmp))
    fd = open_file(tmp, flags, w.mode, dir_fd=dir_fd, shown=shown_tmp)
    # A locked temp keeps its descriptor, and so its lock, until it is renamed or linked:
    # named and unlocked, a sweep (dead_temps) would take it for a killed writer's.
    keep = w.locked and fcntl is not None
    in_place = False
    try:
        try:
            os.fchmod(fd, w.mode)  # a umask cannot widen the mode, but make it exact
            if w.locked:
                _lock(fd)
            _write_chunks(fd, data, io)
            if w.synced:
                io.sync(fd, data_only=False)
        finally:
            if not keep:
                os.close(fd)
        if w.fault is not None:
            w.fault("written")
        if w.exclusive:
            try:
                io.link(tmp, path, dir_fd=dir_fd)
            except FileExistsError:
                raise
            except OSError as exc:
                if exc.errno not in _LINK_UNSUPPORTED:
                    raise
                in_place = True
        else:
            check_file(path, dir_fd=dir_fd, shown=shown)  # rename would replace a link
            io.rename(tmp, path, dir_fd=dir_fd)
    finally:
        if keep:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            if check_file(tmp, dir_fd=dir_fd) is not None:
                io.unlink(tmp, dir_fd=dir_fd)
    if in_place:
        _write_in_place(path, data, io=io, mode=w.mode, dir_fd=dir_fd, shown=shown)
    if w.synced:
        io.fsync_dir(dir_fd if dir_fd is not None else (folder or "."))


def _write_in_place(
    path: _Path,
    data: bytes | Iterable[bytes],
    *,
    io: FileIO,
    mode: int,
    dir_fd: int | None,
    shown: _Path | None,
) -> None:
    fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode, dir_fd=dir_fd, shown=shown)
    try:
        os.fchmod(fd, mode)
        _write_chunks(fd, data, io)
        io.sync(fd, data_only=False)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            io.unlink(path, dir_fd=dir_fd)
        raise
    os.close(fd)


def _write_chunks(fd: int, data: bytes | Iterable[bytes], io: FileIO) -> None:
    if isinstance(data, bytes | bytearray | memoryview):
        write_all(fd, data, io=io)
        return
    pos, batch = 0, bytearray()
    for chunk in data:
        batch += chunk
        if len(batch) >= _WRITE_BATCH:
            pos = write_all(fd, batch, pos, io=io)
            batch.clear()
    write_all(fd, batch, pos, io=io)


def dead_temps(path: _Path) -> list[str]:
    """The paths of the temp files that killed writers of ``path`` left beside it.

    Only ``.<name>.tmp-<16 hex>`` of ``path``'s own name; only regular files (opened
    without following a link) of this user, mode 0600, not empty (a writer locks its temp
    file before it writes to it), on which no live writer holds its lock.
    """
    if fcntl is None:
        return []
    folder, name = os.path.split(os.fspath(path))
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return []
    found = [os.path.join(folder, entry) for entry in names if is_hidden_temp(entry, name)]
    return [temp for temp in found if _dead(temp)]


def _dead(temp: str) -> bool:
    try:
        fd = os.open(temp, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC)
    except OSError:
        return False  # gone meanwhile, a link, or not ours to read
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o600:
            return False
        if st.st_uid != os.geteuid() or st.st_size == 0:
            return False
        try:
            # Shared: NFS and SMB emulate flock with byte-range locks, and an exclusive one
            # needs a descriptor open for writing; a shared one still meets a live
            # writer's exclusive lock.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return False  # a live writer's (or no flock here: leave it)
        return True
    finally:
        os.close(fd)

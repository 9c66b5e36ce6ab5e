"""Opening a log file for ``log.FileLog``'s cached view (FORMAT.md §9.1), in as few system
calls as the checks allow (issue 15).

``probe()`` opens the log before any lock is taken, to fail fast on a wrong key, and keeps
the file open. The first transaction then keeps that file if it is still the one at the path
(``reuse``): one ``lstat`` under the lock instead of an open, an ``fstat`` and a close. Its
header is read again and compared byte for byte with the probed one, since a file copied
over the log in place (``cp``) keeps its inode; a header that differs is identified again.

A log of at most ``WHOLE_BYTES`` is read whole under the lock, in one ``pread``: the check of
its last index entry and a ``tail`` then read from memory instead of two more reads.

A plain log's view is trusted again only after ``plain_look`` found the same file at the path
(a person edits it without the lock, FORMAT.md §8.2).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import NamedTuple

from ..._fsio import check_file
from ..base import LogFormat
from .reader import open_log_file, probe_log_file

__all__ = [
    "MOVED",
    "PREFIX_BYTES",
    "WHOLE_BYTES",
    "Opened",
    "Probed",
    "Whole",
    "held",
    "open_attached",
    "plain_look",
    "probe",
    "reuse",
]

PREFIX_BYTES = 4096  # bytes handed to the attach callback to identify a log
WHOLE_BYTES = 16384  # a log this small is read whole when opened under the lock

Attach = Callable[[bytes], LogFormat]
Whole = tuple[bytes, tuple[int, int, int]]  # a small log's bytes, and the counters then
MOVED = -1  # plain_look(): the path names another file than the one held, or none


class Probed:
    """A log file ``probe()`` opened (read-write) and identified, without the lock. Its
    descriptor is closed when it is dropped unused: a codec that is never used nor
    closed, or one an async open made for a caller who cancelled, leaks nothing."""

    __slots__ = ("fd", "fmt", "header", "ident")

    def __init__(self, fd: int, ident: tuple[int, int], header: bytes, fmt: LogFormat) -> None:
        self.fd, self.fmt = fd, fmt
        self.ident = ident  # (st_dev, st_ino)
        self.header = header  # its header's bytes, as identified

    def take(self) -> int:
        """The descriptor, now the caller's to close."""
        fd, self.fd = self.fd, -1
        return fd

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # also at interpreter exit
            self.close()


class Opened(NamedTuple):
    """The log file at the path, open under the lock: ``st`` is its stat there (no writer
    changes it while the lock is held), ``whole`` all its bytes when it is small."""

    fd: int
    st: os.stat_result
    fmt: LogFormat
    whole: bytes | None


def probe(path: str, attach: Attach) -> Probed | bool:
    """Open and identify the log at ``path``; for no file kept open, whether a file is
    there (empty, or only readable: not kept). ``attach`` raises on a wrong key or a
    foreign file (the file is closed)."""
    probed = probe_log_file(path, PREFIX_BYTES)
    if not isinstance(probed, tuple):
        return probed is not None
    fd, st, prefix = probed
    try:
        fmt = attach(prefix)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    return True if fd is None else Probed(fd, (st.st_dev, st.st_ino), prefix[: fmt.data_start], fmt)


def open_attached(path: str, attach: Attach) -> Opened | None:
    """Open and identify the log at ``path`` under the lock; None when there is none or it
    is empty. No ``lstat`` first: the open refuses a link or a directory."""
    opened = open_log_file(path)
    if opened is None:
        return None
    fd, st = opened
    return _identified(fd, st, attach, None)


def reuse(path: str, probed: Probed | None, attach: Attach) -> Opened | None:
    """``probed`` under the lock when it is still the file at ``path`` (closed otherwise,
    and the file there opened instead), as ``open_attached`` (which a None ``probed`` is)."""
    if probed is None:
        return open_attached(path, attach)
    try:
        st = check_file(path)
    except BaseException:
        probed.close()
        raise
    if st is None or not st.st_size or (st.st_dev, st.st_ino) != probed.ident:
        probed.close()
        return None if st is None or not st.st_size else open_attached(path, attach)
    return _identified(probed.take(), st, attach, probed)


def _identified(fd: int, st: os.stat_result, attach: Attach, probed: Probed | None) -> Opened:
    """Read the file's header (all of it when small) and identify it, unless ``probed``
    identified the same bytes; the descriptor is closed if this raises."""
    try:
        data = os.pread(fd, st.st_size if st.st_size <= WHOLE_BYTES else PREFIX_BYTES, 0)
        if probed is not None and data.startswith(probed.header):
            fmt = probed.fmt
        else:
            fmt = attach(data[:PREFIX_BYTES])
    except BaseException:
        os.close(fd)
        raise
    return Opened(fd, st, fmt, data if len(data) == st.st_size else None)


def held(whole: Whole | None, seen: tuple[int, int, int] | None) -> bytes | None:
    """The log's bytes if read whole (``Opened.whole``) at the counters ``seen`` now show:
    no writer, this process included, has changed the file since (FORMAT.md §8.1)."""
    return whole[0] if whole is not None and whole[1] == seen else None


def plain_look(
    path: str, fmt: LogFormat | None, ident: tuple[int, int] | None, end: int, *, write: bool
) -> int | None:
    """Look at a plain log's path ``P`` before its cached view, which ends at ``end``, is
    trusted (FORMAT.md §8.2): ``MOVED`` when P names another file than the one held
    (``ident``: device, inode) or none — an editor that saves by rename, ``sed -i`` —, the
    size of the file to read up to when it is still the one held but has grown (a line a
    person added; for a ``write``, any other size: §10.1 judges it), else None (nothing to
    do; a sealed log or none held: not asked).

    One ``lstat`` of the path, not an ``fstat`` of the descriptor: that would answer for
    the file an editor unlinked, and an append there would be acknowledged and lost. A
    person may edit a plain log without the lock; a sealed one is written by key holders
    only, through the lock, and is not looked at (no system call on its appends).
    """
    if fmt is None or fmt.sealed or ident is None:
        return None
    st = check_file(path)
    if st is None or not st.st_size or (st.st_dev, st.st_ino) != ident:
        return MOVED  # (an empty file is no log, as when P is read: FORMAT.md §9)
    size = st.st_size
    return None if size == end or (size < end and not write) else size

"""Lay records out as bytes and write them (LevelDB's log_writer; FORMAT.md §5 and §8).

Framing a batch of bodies (with an optional dictionary record) for one append; writing a
whole new log beside the old one and renaming it over (a rewrite, up to its commit); and
sweeping the temp files that crashed rewrites left. Every write goes through the ``FileIO``
seam, so the fault suites see it. What comes around these — the lock's counters, the index,
the view of the log — is ``log.FileLog``'s.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable

from ..._fsio import DEFAULT_IO, FileIO, check_file, open_file, unlink_file, write_all
from ...format.record import encode_frame
from ...paths import index_path, is_leftover, kwi_path, may_be_leftover, temp_path
from ..base import LogFormat
from .index import OffsetIndex

__all__ = ["checked_for_removal", "frame_batch", "remove_leftovers", "replace_log"]

_BATCH_FRAMES = 1024  # frames joined into one write when writing a whole log


def frame_batch(
    bodies: list[bytes], sealed: bool, dictionary: tuple[int, bytes] | None = None
) -> tuple[bytes, list[int], tuple[int, int]]:
    """Frame ``bodies`` for one append: ``(data, ends, dict_span)``, offsets relative to the
    start of ``data``.

    ``ends[i]`` is where message ``i`` ends; ``dictionary``: ``(at, body)`` puts a dictionary
    record (FORMAT.md §5.3) before ``bodies[at]`` (after them all when ``at == len(bodies)``),
    at ``dict_span``. The message after the dictionary record includes it in its index span.
    """
    if dictionary is None and len(bodies) == 1:  # the usual single append
        frame = encode_frame(bodies[0]) if sealed else bodies[0]
        return frame, [len(frame)], (0, 0)
    frames = [encode_frame(b) for b in bodies] if sealed else bodies
    at, dict_frame = len(frames), b""
    if dictionary is not None:
        at, dict_frame = dictionary[0], encode_frame(dictionary[1], control=True)
    pos, ends, span = 0, [], (0, 0)
    for i, frame in enumerate(frames):
        if i == at:
            span = (pos, pos + len(dict_frame))
            pos += len(dict_frame)
        pos += len(frame)
        ends.append(pos)
    if at == len(frames):
        span = (pos, pos + len(dict_frame))
    data = b"".join(frames if dictionary is None else [*frames[:at], dict_frame, *frames[at:]])
    return data, ends, span


def replace_log(
    io: FileIO,
    path: str,
    header: bytes,
    fmt: LogFormat,
    records: Iterable[tuple[bytes, int]],
    dictionary: bytes | None,
    *,
    fault: Callable[[str], None],
    before_rename: Callable[[], None],
) -> tuple[int, OffsetIndex]:
    """Write a whole log into a temp file beside ``path``, sync it and rename it over
    ``path``: the commit of a rewrite (FORMAT.md §8.4). Return the new file's open
    descriptor and its index, in memory: the caller persists it, then syncs the directory.

    The log is ``header``, an optional dictionary record body, then ``(body, ts_us)``
    records. ``before_rename`` runs just before the commit (the lock's counters are bumped
    there). Until the rename, any failure removes the temp file and changes nothing.
    """
    tmp = temp_path(path)
    fd = open_file(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    index = OffsetIndex(index_path(path), io=io)
    index.reset(fmt.data_start)
    try:
        _write_log(io, fd, header, records, index, sealed=fmt.sealed, dictionary=dictionary)
        fault("rewrite:temp-written")
        io.sync(fd, data_only=False)  # always: a rename must never expose holes
        fault("rewrite:temp-synced")
        # rename() would replace a link planted at P rather than follow it, and the new
        # P.idx is written after the commit: refuse either link before committing.
        check_file(path)
        check_file(index.path)
        before_rename()
        io.rename(tmp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            io.unlink(tmp)
        raise
    return fd, index


# The names of a directory as last listed, while its mtime stays what it was then: a
# store root holds thousands of logs, and a codec opened per turn sweeps at its first write
# (measured: listing 3,000 names was 1.5 ms of a 2.0 ms turn). Any name created, removed or
# renamed in a directory changes its mtime, so an unchanged mtime means the same names.
# Kernels stamp mtimes with a coarse clock (a jiffy), so a listing is trusted only when it
# was taken _SETTLED_NS after the mtime it saw: a name made in the same tick after the
# listing would otherwise leave the mtime as it was.
_listed: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {}
_listed_lock = threading.Lock()
_SETTLED_NS = 100_000_000


def _candidates(folder: str) -> tuple[str, ...]:
    """The names in ``folder`` that may be leftovers (``paths.may_be_leftover``): listed
    again unless its mtime says nothing changed."""
    st = os.stat(folder)
    key = (st.st_dev, st.st_ino, st.st_mtime_ns)
    with _listed_lock:
        cached = _listed.get(folder)
    if cached is not None and cached[0] == key:
        return cached[1]
    started = time.time_ns()
    names = tuple(name for name in os.listdir(folder) if may_be_leftover(name))
    # A whole-second mtime may come from a file system that keeps no finer time: never
    # trusted, as a name made later in that second would leave it as it was.
    if started - st.st_mtime_ns >= _SETTLED_NS and st.st_mtime_ns % 1_000_000_000:
        with _listed_lock:
            _listed[folder] = (key, names)
    return names


def checked_for_removal(path: str) -> tuple[str, str, str]:
    """Return the files of the log ``path`` that a clear unlinks one by one, in order: its
    index, the log (the commit point) and its keyword index, having looked at them and at its
    leftovers first. The index goes first (FORMAT.md §8.5): killed before the log, the
    history is whole and rebuilds it; killed after, nothing of it names deleted records.

    A delete that stopped half-way would leave a conversation neither whole nor gone (the
    log unlinked, its blobs and lock kept), so a link, directory or FIFO at any of these
    names is refused before the first goes, as ``remove_flat_dir`` does for ``P.blobs``.

    :raises StorageError: a name holds something other than a regular file.
    """
    names = (index_path(path), path, kwi_path(path))
    for name in names:
        check_file(name)
    remove_leftovers(path, DEFAULT_IO, check_only=True)  # checks only: no io call
    return names


def remove_leftovers(path: str, io: FileIO, *, check_only: bool = False) -> None:
    """Delete the temp files that crashed rewrites and migrations of the log ``path`` left
    beside it (``paths.is_leftover``). ``check_only`` deletes nothing: it only refuses
    (``StorageError``) a link or directory at such a name.

    The caller holds the exclusive lock. Every rewrite holds that lock from creating its temp
    file to renaming it, so no ``<log>.tmp-*`` seen here belongs to a live rewrite. A
    migration into this path holds it too, from its first temp file to its commit. The
    ``<log>.bak`` a migration keeps is the user's original: never swept."""
    folder = os.path.dirname(path) or "."
    base = os.path.basename(path)
    for name in _candidates(folder):
        if is_leftover(name, base):
            if check_only:
                check_file(os.path.join(folder, name))
            else:
                unlink_file(os.path.join(folder, name), io=io)  # refuses a planted link


def _write_log(
    io: FileIO,
    fd: int,
    header: bytes,
    records: Iterable[tuple[bytes, int]],
    index: OffsetIndex,
    *,
    sealed: bool,
    dictionary: bytes | None,
) -> None:
    """Write the log into the empty file ``fd``, adding each record to ``index``."""
    pos = write_all(fd, header, 0, io=io)
    if dictionary is not None:
        frame = encode_frame(dictionary, control=True)
        index.dict_span = (pos, pos + len(frame))
        pos = write_all(fd, frame, pos, io=io)
    batch: list[bytes] = []
    written = pos
    for body, ts in records:
        frame = encode_frame(body) if sealed else body
        batch.append(frame)
        pos += len(frame)
        index.add(pos, ts, synced=True)  # the temp file is synced before the rename
        if len(batch) >= _BATCH_FRAMES:
            written = write_all(fd, b"".join(batch), written, io=io)
            batch.clear()
    write_all(fd, b"".join(batch), written, io=io)

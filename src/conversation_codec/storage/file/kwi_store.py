"""``FileSegments``: the keyword index's segments in the sidecar ``P.kwi`` (a
``storage.postings.PostingsStore``; the file layout and its rules are ``kwi``)."""

from __future__ import annotations

import os
from typing import Protocol

from ..._fsio import FileIO, check_file
from ...crypto import RecordKey
from ...keyword_index import Postings
from ...paths import kwi_path
from ..postings import Identity
from . import kwi
from .kwi import KwiState, Segment

__all__ = ["FileSegments"]


class _LogFile(Protocol):
    @property
    def path(self) -> str | os.PathLike[str]: ...

    @property
    def io(self) -> FileIO: ...

    @property
    def refreshes(self) -> int: ...

    def announce(self) -> None: ...


class FileSegments:
    """The sidecar of the log file ``log.path``, written through ``log.io`` (the seam as
    it is at each write): a cache beside the log, written apart from its commits (after an
    append's, before a pop's or a rewrite's: FORMAT.md §17.5), so not ``exact``.
    ``synced``: the log's appends are (durability "fsync"); if not, a merge is written
    without syncs, as its segments are."""

    exact = False

    def __init__(self, log: _LogFile, *, synced: bool = True) -> None:
        self._log = log
        self._synced = synced
        self._path = os.fspath(log.path)
        # ``log.refreshes`` when the sidecar was last looked for, and whether it was there:
        # until another writer changes the log (creating P.kwi announces itself so; this
        # library deletes it only in rewrites and clears, which do too), the answer stands.
        # A load that finds it gone (deleted by hand) forgets the answer.
        self._looked: tuple[int, bool] | None = None

    @property
    def _io(self) -> FileIO:
        return self._log.io

    @property
    def name(self) -> str:
        return self._path

    def identity(self, state: KwiState | None = None) -> Identity | None:
        """The sidecar's device, inode, size, mtime and ctime (nanoseconds); with
        ``state``: only while it is the file ``state`` was read from, at the size read."""
        st = check_file(kwi_path(self._path))
        if st is None:
            return None
        if state is not None and ((st.st_dev, st.st_ino), st.st_size) != (state.ident, state.size):
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def exists(self) -> bool:
        # Asked at every append of a codec opened with the option: an lstat is a twentieth
        # of a flushed append, so the answer is remembered while no writer came by.
        stamp, looked = self._log.refreshes, self._looked
        if looked is not None and looked[0] == stamp:
            return looked[1]
        found = os.path.lexists(kwi_path(self._path))
        self._looked = (stamp, found)
        return found

    def load(self, log_id: bytes, key: RecordKey) -> KwiState | None:
        state = kwi.load(self._path, log_id, key)
        if state is None:
            self._looked = None
        return state

    def more(self, key: RecordKey, state: KwiState) -> bool:
        return kwi.more(self._path, key, state)

    def unchanged(self, state: KwiState) -> bool:
        return kwi.unchanged(self._path, state)

    def stage(self, frame: bytes | None, segment: Segment | None) -> None:
        """Nothing to do: an append's segment is written after the log (FORMAT.md §17.5)."""

    def append(self, frame: bytes, segment: Segment, at: int) -> tuple[int, int] | None:
        kwi.append_segment(self._path, self._io, frame, at)
        return None

    def replace(
        self,
        log_id: bytes,
        frame: bytes,
        segment: Segment,
        postings: Postings,
        *,
        merge: bool = False,
    ) -> KwiState | None:
        synced = self._synced or not merge
        kwi.write_all_segments(self._path, self._io, log_id, [frame], synced=synced)
        self._looked = None
        self._log.announce()  # other processes may remember that there was none
        return kwi.written(self._path, log_id, segment, postings, frame)

    def remove(self) -> None:
        self._looked = None
        kwi.remove(self._path, self._io)

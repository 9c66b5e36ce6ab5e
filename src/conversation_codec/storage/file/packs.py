"""The packs of a store directory (FORMAT.md §18): ``<root>/.packs/*.pack``.

``Packs`` finds a conversation's packed copy, reads its bytes (one ``stat`` and one
``pread`` when the pack's table of contents is cached), writes new packs and drops an entry
from one. Tables of contents are cached per ``Packs`` object (one per store handle), keyed
by each pack's identity (device, inode, size, mtime), which every lookup checks again: a
pack is never changed in place, only replaced by a rename, so a reader notices.

Every rewrite of an existing pack holds ``.packs/pack.lock``; a caller that also holds a
conversation's ``P.lock`` took that one first (FORMAT.md §18.3).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..._atomic import atomic_write
from ..._fsio import (
    DEFAULT_IO,
    FileIO,
    check_file,
    make_private_dirs,
    open_file,
    unlink_file,
)
from ...errors import CorruptRecordError, FormatError, StorageError
from ...format.pack import PackEntry, check_entry, decode_toc, encode_pack, toc_bytes
from .lock import LogLock

__all__ = ["PACKS_DIR", "PACK_SUFFIX", "Packed", "Packs"]

PACKS_DIR = ".packs"
PACK_SUFFIX = ".pack"
_LOCK_STEM = "pack"  # LogLock adds ".lock": .packs/pack.lock
_RESCANS = 100  # listings of .packs, at most, before one holds still
_TEMP = re.compile(r"\.[0-9a-f]{16}\.pack\.tmp-[0-9a-f]{16}")  # atomic_write's temp of a pack
_HEAD_READ = 64 * 1024  # bytes read first from a pack: its whole TOC, for most packs

Ident = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


@dataclass(frozen=True, slots=True)
class Packed:
    """Where a conversation's packed copy lies: the pack (and its identity) and entry."""

    path: Path
    ident: Ident
    entry: PackEntry


class _Pack:
    __slots__ = ("fd", "ident", "name", "path", "toc")

    def __init__(self, path: Path, fd: int, ident: Ident, toc: dict[str, PackEntry]) -> None:
        self.path, self.name = path, str(path)  # the str: os.stat() per lookup, no pathlib
        self.fd, self.ident, self.toc = fd, ident, toc


def _ident(st: os.stat_result) -> Ident:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class Packs:
    """The packs of one store root, with their tables of contents cached (thread-safe)."""

    def __init__(self, root: Path, *, io: FileIO = DEFAULT_IO) -> None:
        self.dir = root / PACKS_DIR
        self.io = io
        self._cache: dict[str, _Pack] = {}  # pack file name -> open pack
        self._broken: dict[str, FormatError] = {}  # pack file name -> why it is unreadable
        self._mutex = threading.RLock()
        # A store handle has no close(): its packs' descriptors go with it.
        weakref.finalize(self, _close_all, self._cache)

    # -- reading ---------------------------------------------------------------------------

    def find(
        self, conversation_id: str, *, fresh: bool = False, healthy: bool = False
    ) -> Packed | None:
        """Return where ``conversation_id`` is packed, or None (FORMAT.md §18.2).

        The cached pack holding it is checked with one ``stat``; a miss (or ``fresh``)
        lists the directory again first.

        :raises FormatError: (``UnsupportedVersionError`` for a newer pack) not found in a
            readable pack while some pack is unreadable: it may be in that one. With
            ``healthy``, unreadable packs are passed over instead (a loose log wins anyway).
        """
        with self._mutex:
            if not fresh:
                for pack in self._cache.values():
                    entry = pack.toc.get(conversation_id)
                    if entry is not None and self._current(pack):
                        return Packed(pack.path, pack.ident, entry)
            self._rescan()
            for pack in self._cache.values():
                entry = pack.toc.get(conversation_id)
                if entry is not None:
                    return Packed(pack.path, pack.ident, entry)
            if self._broken and not healthy:
                raise next(iter(self._broken.values()))
            return None

    def find_settled(self, conversation_id: str, *, timeout: float | None = None) -> Packed | None:
        """``find`` under ``.packs/pack.lock``, which every change of a pack holds: the
        answer a writer acts on when the lookup found nothing (it would start the
        conversation afresh). Takes no lock, and finds nothing, when the store has never
        packed."""
        if not os.path.isdir(self.dir):
            return None  # nothing is packed; a packer packs only logs that exist
        with self.locked(timeout), self._mutex:
            return self.find(conversation_id, fresh=True)

    def read(self, where: Packed, *, check: bool = True) -> bytes:
        """Return the entry's bytes from the pack as ``where`` saw it (``check``: only if
        they pass the entry's CRC).

        :raises CorruptRecordError: the bytes fail the entry's CRC (naming the pack).
        :raises FileNotFoundError: the pack was replaced meanwhile (look it up again).
        """
        with self._mutex:
            pack = self._cache.get(where.path.name)
            if pack is None or pack.ident != where.ident:
                raise FileNotFoundError(where.path)
            entry = where.entry
            data = os.pread(pack.fd, entry.length, entry.offset)
        if check and not check_entry(entry, data):
            raise CorruptRecordError(
                f"packed log of {entry.conversation_id!r} is damaged (CRC mismatch)",
                path=where.path,
                offset=entry.offset,
            )
        return data

    def ids(self) -> set[str]:
        """Every conversation id some pack holds (the directory listed again).

        :raises FormatError: a pack is unreadable (its ids cannot be listed).
        """
        found, broken = self.readable_ids()
        if broken:
            raise broken[0][1]
        return found

    def readable_ids(self) -> tuple[set[str], list[tuple[str, FormatError]]]:
        """The ids the readable packs hold, and each unreadable pack's path with why it is
        (its ids, which may be any, are unknown: none of them may be taken as absent)."""
        with self._mutex:
            self._rescan()
            found = {cid for pack in self._cache.values() for cid in pack.toc}
            return found, [(str(self.dir / name), exc) for name, exc in self._broken.items()]

    def names(self) -> list[str]:
        """The pack files present (names in ``.packs``)."""
        try:
            return sorted(n for n in os.listdir(self.dir) if n.endswith(PACK_SUFFIX))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(exc.errno or 0, f"{self.dir}: {exc.strerror}") from None

    @staticmethod
    def _current(pack: _Pack) -> bool:
        try:
            return _ident(os.stat(pack.name)) == pack.ident
        except FileNotFoundError:
            return False

    def _rescan(self) -> None:
        """Bring the cache in line with the packs present, from a listing that held still.

        A pack is replaced by publishing the new one first, then removing the old one
        (FORMAT.md §18.3), but a listing taken meanwhile may show the old name and miss
        the new one (or, as ``readdir`` gives no snapshot, miss both): a conversation would
        look absent, and a writer would start it afresh over its packed history. So the
        directory is listed again until two listings agree and every pack they name opened.
        """
        for _ in range(_RESCANS):
            present = set(self.names())
            moved = False
            for name in list(self._cache):
                if name not in present or not self._current(self._cache[name]):
                    os.close(self._cache.pop(name).fd)
                    moved = moved or name in present  # listed, then gone: replaced
            self._broken = {}
            for name in sorted(present - set(self._cache)):
                try:
                    self._cache[name] = self._load(self.dir / name)
                except FileNotFoundError:  # removed since the listing: replaced
                    moved = True
                except FormatError as exc:  # kept as it is; its conversations raise this
                    self._broken[name] = exc
            if not moved and set(self.names()) == present:
                return
        raise StorageError(errno.EAGAIN, f"{self.dir}: packs kept changing while listed")

    def _load(self, path: Path) -> _Pack:
        fd = open_file(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            head = os.pread(fd, _HEAD_READ, 0)
            need = toc_bytes(head, st.st_size, str(path))
            if need > len(head):
                head += os.pread(fd, need - len(head), len(head))
            toc = decode_toc(head, st.st_size, str(path))
        except BaseException:
            os.close(fd)
            raise
        return _Pack(path, fd, _ident(st), toc)

    # -- writing ---------------------------------------------------------------------------

    def write(
        self,
        entries: Sequence[tuple[str, bytes, Sequence[int]]],
        *,
        keep: Callable[[str, bytes], bool] = lambda cid, data: True,
    ) -> tuple[Path | None, list[str]]:
        """Publish a new pack holding those of ``entries`` (id, log bytes, timestamps) that
        ``keep(id, bytes)`` still takes, asked under ``.packs/pack.lock`` just before the
        pack is written (the packer's check, FORMAT.md §18.3); return the pack (None when
        no entry is left) and the ids left out."""
        path = self.dir / f"{secrets.token_hex(8)}{PACK_SUFFIX}"
        with self.locked():
            kept = [entry for entry in entries if keep(entry[0], entry[1])]
            if kept:
                atomic_write(path, encode_pack(kept), io=self.io, exclusive=True)
        taken = {cid for cid, _, _ in kept}
        return path if kept else None, [cid for cid, _, _ in entries if cid not in taken]

    def merge(self, max_bytes: int) -> Path | None:
        """Merge the packs under half ``max_bytes`` into one (at most ``max_bytes``, FORMAT.md
        §18.3): each ``pack()`` writes new packs and each unpack shrinks one, and every
        lookup that misses stats each pack. Return the new pack, or None (nothing to merge).
        """
        with self.locked(), self._mutex:
            self._rescan()
            small, total = [], 0
            for pack in sorted(self._cache.values(), key=lambda p: p.ident[2]):
                if pack.ident[2] >= max_bytes // 2 or total + pack.ident[2] > max_bytes:
                    break
                small.append(pack)
                total += pack.ident[2]
            if len(small) < 2:
                return None
            entries: dict[str, tuple[bytes, tuple[int, ...], int]] = {}
            for pack in small:  # an id in two packs (a crash mid-merge): the same bytes
                for e in pack.toc.values():
                    entries.setdefault(e.conversation_id, (self._bytes(pack, e), e.tss, e.crc32))
            path = self.dir / f"{secrets.token_hex(8)}{PACK_SUFFIX}"
            merged = [(cid, data, tss) for cid, (data, tss, _) in entries.items()]
            crcs = {cid: crc for cid, (_, _, crc) in entries.items()}
            atomic_write(path, encode_pack(merged, crcs), io=self.io, exclusive=True)
            self.io.step("merge:written")
            for pack in small:  # each entry is in the new pack: readers find it there
                unlink_file(pack.path, io=self.io)
                os.close(self._cache.pop(pack.path.name).fd)
            self.io.fsync_dir(self.dir)
            return path

    @contextlib.contextmanager
    def locked(self, timeout: float | None = None) -> Iterator[None]:
        """Hold ``.packs/pack.lock`` (every rewrite of a pack), sweeping crashed temps."""
        make_private_dirs(self.dir, io=self.io)
        lock = LogLock(str(self.dir / _LOCK_STEM), timeout, io=self.io)
        lock.acquire(exclusive=True)
        try:
            for name in os.listdir(self.dir):
                if _TEMP.fullmatch(name):  # no writer is live: each holds this lock
                    unlink_file(self.dir / name, io=self.io)
            yield
        finally:
            lock.release()
            lock.close()

    @contextlib.contextmanager
    def packing(self) -> Iterator[None]:
        """Hold ``.packs/packer.lock``: one ``pack()`` at a time per store (FORMAT.md §18.3).
        Only packers take it, so it orders against no other lock."""
        try:
            make_private_dirs(self.dir, io=self.io)
        except OSError as exc:  # e.g. the store root is a regular file
            raise StorageError(
                exc.errno or 0, f"cannot create {self.dir}: {exc.strerror}"
            ) from None
        lock = LogLock(str(self.dir / "packer"), None, io=self.io)
        lock.acquire(exclusive=True)
        try:
            yield
        finally:
            lock.release()
            lock.close()

    def drop(self, conversation_id: str, *, timeout: float | None = None) -> bool:
        """Rewrite the pack holding ``conversation_id`` without it (delete a pack left
        empty); return False when no pack holds it. Caller holds the conversation's lock.
        """
        with self.locked(timeout):
            return self.drop_held(conversation_id)

    def drop_held(self, conversation_id: str) -> bool:
        """``drop``, the caller holding ``.packs/pack.lock`` (``locked()``) already."""
        with self._mutex:
            dropped = False
            while (where := self.find(conversation_id, fresh=True, healthy=True)) is not None:
                self._drop(where, conversation_id)  # every pack: two packers may both have
                dropped = True
            return dropped

    def _drop(self, where: Packed, conversation_id: str) -> None:
        pack = self._cache[where.path.name]
        keep = [e for cid, e in pack.toc.items() if cid != conversation_id]
        if not keep:
            unlink_file(where.path, io=self.io)
            self.io.sync_dir(where.path)
        else:
            # An entry whose bytes fail their CRC is carried with its old CRC: a damaged
            # neighbour must not block this write, nor be laundered by it.
            kept = [(e.conversation_id, self._bytes(pack, e), e.tss) for e in keep]
            crcs = {e.conversation_id: e.crc32 for e in keep}
            check_file(where.path)
            atomic_write(where.path, encode_pack(kept, crcs), io=self.io)
        os.close(self._cache.pop(where.path.name).fd)

    @staticmethod
    def _bytes(pack: _Pack, entry: PackEntry) -> bytes:
        data = os.pread(pack.fd, entry.length, entry.offset)
        if len(data) != entry.length:
            raise FormatError(f"pack entry of {entry.conversation_id!r} is truncated")
        return data

    def close(self) -> None:
        """Close every cached pack."""
        with self._mutex:
            _close_all(self._cache)


def _close_all(cache: dict[str, _Pack]) -> None:
    for pack in cache.values():
        os.close(pack.fd)
    cache.clear()

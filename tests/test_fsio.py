"""_atomic.atomic_write, the one procedure behind every whole-file write (key files, blobs,
exports, migrate's backup, keygen): whichever call of it fails, the name shows the old file
or the whole new one, never a part, and no temp file is left behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from conversation_codec import FileIO
from conversation_codec._atomic import atomic_write

OLD, NEW = b"old contents\n", b"new contents " * 1000


class FailNth(FileIO):
    """Fail the ``nth`` call of ``kind`` with EIO; count every call."""

    def __init__(self, kind: str = "", nth: int = 0) -> None:
        self.kind, self.nth = kind, nth
        self.calls: dict[str, int] = {}

    def _call(self, kind: str) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        if kind == self.kind and self.calls[kind] == self.nth:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self._call("pwrite")
        return super().pwrite(fd, data[:4096], offset)  # short writes: the loop completes them

    def sync(self, fd: int, *, data_only: bool) -> None:
        self._call("sync")
        super().sync(fd, data_only=data_only)

    def rename(self, src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
        self._call("rename")
        super().rename(src, dst, dir_fd=dir_fd)

    def link(self, src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
        self._call("link")
        super().link(src, dst, dir_fd=dir_fd)

    def fsync_dir(self, folder: Any) -> None:
        self._call("fsync_dir")
        super().fsync_dir(folder)


def _calls(tmp_path: Path, exclusive: bool) -> dict[str, int]:
    counter = FailNth()
    atomic_write(tmp_path / "count", NEW, io=counter, exclusive=exclusive)
    return counter.calls


@pytest.mark.parametrize("exclusive", [False, True], ids=["replace", "link"])
def test_every_failing_call_leaves_old_or_new_and_no_temp(tmp_path: Path, exclusive: bool) -> None:
    calls = _calls(tmp_path, exclusive)
    commit = "link" if exclusive else "rename"
    assert calls[commit] == 1 and calls["fsync_dir"] == 1 and calls["pwrite"] > 1
    for kind, total in calls.items():
        for nth in range(1, total + 1):
            folder = tmp_path / f"{kind}{nth}"
            folder.mkdir()
            path = folder / "file"
            if not exclusive:
                path.write_bytes(OLD)
            with pytest.raises(OSError):
                atomic_write(path, NEW, io=FailNth(kind, nth), exclusive=exclusive)
            assert os.listdir(folder) == (["file"] if path.exists() else [])
            after = path.read_bytes() if path.exists() else None
            before = None if exclusive else OLD
            # Only the directory sync comes after the commit: then the new file is there.
            assert after == (NEW if kind == "fsync_dir" else before), (kind, nth)
            if after == NEW:
                assert path.stat().st_mode & 0o777 == 0o600


def test_exclusive_never_replaces(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(OLD)
    with pytest.raises(FileExistsError):
        atomic_write(path, NEW, exclusive=True)
    assert path.read_bytes() == OLD and os.listdir(tmp_path) == ["file"]


def test_streamed_chunks_are_written_in_order(tmp_path: Path) -> None:
    chunks = [bytes([i % 256]) * 70_000 for i in range(40)]  # > the 1 MiB write batch
    atomic_write(tmp_path / "file", iter(chunks), io=FailNth())
    assert (tmp_path / "file").read_bytes() == b"".join(chunks)


class SyncedDirs(FileIO):
    """Records every directory fsync'ed through the seam (a path, or an fd's real path)."""

    def __init__(self) -> None:
        self.synced: list[str] = []

    def fsync_dir(self, folder: Any) -> None:
        name = os.readlink(f"/proc/self/fd/{folder}") if isinstance(folder, int) else folder
        self.synced.append(os.path.realpath(name))
        super().fsync_dir(folder)


def _created_dirs_synced(tmp_path: Path, io: SyncedDirs, write: Any) -> None:
    nested = tmp_path / "a" / "b"
    write(nested)
    for made in (tmp_path / "a", nested):
        assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700
        # the new directory's name lives in its parent: synced there, or a power loss may
        # lose the directory and every acknowledged file in it
        assert str(made.parent.resolve()) in io.synced, (made, io.synced)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
def test_a_log_in_new_directories_syncs_their_parents(tmp_path: Path) -> None:
    from conversation_codec import ConversationCodec

    io = SyncedDirs()

    def write(folder: Path) -> None:
        with ConversationCodec(folder / "chat.log", io=io) as codec:
            codec.append({"role": "user", "content": "hi"})

    _created_dirs_synced(tmp_path, io, write)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
def test_a_key_file_in_new_directories_syncs_their_parents(tmp_path: Path) -> None:
    from conversation_codec.keyfile import load_or_create_key

    io = SyncedDirs()
    _created_dirs_synced(tmp_path, io, lambda folder: load_or_create_key(folder / "k.key", io=io))

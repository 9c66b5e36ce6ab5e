"""A write of ``P.kwi`` that fails after the log committed (FORMAT.md §17.5: "A failed
write of P.kwi is not reported as a failed append or search").

The fault is a full disk for the sidecar only (``_SidecarFull``, through the ``io=``
seam): the log's own writes succeed. An append or pop that reported the failure would
invite a retry that stores the message twice, or pops a second one.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import KEY

from conversation_codec import AsyncConversationCodec, ConversationCodec, FileIO

Message = dict[str, Any]
NEW: Message = {"role": "user", "content": "pay invoice 42"}


def _msg(text: str) -> Message:
    return {"role": "user", "content": text}


class _SidecarFull(FileIO):
    """ENOSPC on every write, link and rename of a file whose name holds ``.kwi`` while
    ``full`` (the sidecar's temp file is unnamed until its link, so both are refused)."""

    def __init__(self) -> None:
        self.full = True
        self.refused = 0

    def _check(self, name: object) -> None:
        if self.full and ".kwi" in os.fspath(str(name)):
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self._check(os.readlink(f"/proc/self/fd/{fd}"))
        return super().pwrite(fd, data, offset)

    def rename(self, src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
        self._check(dst)
        super().rename(src, dst, dir_fd=dir_fd)

    def link(self, src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
        self._check(dst)
        super().link(src, dst, dir_fd=dir_fd)


def _stored(path: Path) -> list[Message]:
    with ConversationCodec(path, encryption_key=KEY) as c:
        return c.load() or []


_WRITES: dict[str, Callable[[ConversationCodec], object]] = {
    "append": lambda c: c.append(NEW),
    "extend": lambda c: c.extend([NEW]),
    "save": lambda c: c.save([*(c.load() or []), NEW]),
}


@pytest.mark.parametrize("write", sorted(_WRITES))
@pytest.mark.parametrize("sidecar", ["new log", "deleted"])
def test_an_append_whose_index_write_fails_returns(
    tmp_path: Path, write: str, sidecar: str
) -> None:
    """A codec asked for an index creates it at an append that finds none: when that
    write fails the append still returns (its record is committed), the message is stored
    once, searches scan, and the next append that can write the sidecar creates it."""
    path, kwi = tmp_path / "c.log", tmp_path / "c.log.kwi"
    old = [_msg(f"alpha {i}") for i in range(3)] if sidecar == "deleted" else []
    if old:
        with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
            c.extend(old)
        kwi.unlink()
    io = _SidecarFull()
    with ConversationCodec(path, encryption_key=KEY, search_index=True, io=io) as c:
        _WRITES[write](c)  # returns: no StorageError naming the log
        assert io.refused, "the fault was never hit: the test tests nothing"
        assert not kwi.exists()
        assert _stored(path) == [*old, NEW]
        assert [h.seq for h in c.search("invoice")] == [len(old)]  # a scan
        assert c.save([*old, NEW]) is None  # this codec's history knows of its append
        io.full = False
        c.append(_msg("bravo"))
        assert kwi.exists()
        assert [h.seq for h in c.search("invoice")] == [len(old)]
        assert c.verify().problems == ()
    assert _stored(path) == [*old, NEW, _msg("bravo")]


@pytest.mark.parametrize("covered", [True, False])
def test_a_pop_whose_index_write_fails_returns(tmp_path: Path, covered: bool) -> None:
    """A pop whose sidecar cannot be rewritten still returns the message it removed (a
    retry would pop another), and no index left behind names the popped message."""
    path, kwi = tmp_path / "c.log", tmp_path / "c.log.kwi"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.extend([*(_msg(f"alpha {i}") for i in range(3)), _msg("secretword")])  # indexed
        if not covered:
            kwi.unlink()  # a codec asked for an index rebuilds it after the pop
    io = _SidecarFull()
    with ConversationCodec(path, encryption_key=KEY, search_index=True, io=io) as c:
        assert c.pop() == _msg("secretword")
        assert io.refused, "the fault was never hit: the test tests nothing"
        assert not kwi.exists()  # deleted: it may have held the popped message's postings
        assert _stored(path) == [_msg(f"alpha {i}") for i in range(3)]
        assert list(c.search("secretword")) == []
        assert [h.seq for h in c.search("alpha")] == [0, 1, 2]
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as c:
        c.append(_msg("secretword again"))
        assert [h.seq for h in c.search("secretword")] == [3]
        assert [h.seq for h in c.search("alpha")] == [0, 1, 2]
        assert c.verify().problems == ()
    assert kwi.exists()


def test_an_async_append_whose_index_write_fails_returns(tmp_path: Path) -> None:
    """The async codec runs the same append in a worker thread: it returns too."""
    path = tmp_path / "c.log"
    io = _SidecarFull()

    async def append() -> int:
        codec = await AsyncConversationCodec.open(path, KEY, search_index=True, io=io)
        async with codec:
            return await codec.append(NEW)

    assert asyncio.run(append()) == 0
    assert io.refused and _stored(path) == [NEW]

"""``load()`` then ``save()`` of a packed conversation (FORMAT.md §18): the save's first
write unpacks it, which changes nothing stored, so the save works as on a loose log; a real
change by another process between the load and the save still refuses a rewrite."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import _children
from _writer import subprocess_env
from conversation_codec import AsyncConversationStore, ConflictError, FileIO
from conversation_codec.store import ConversationStore

from conftest import KEY

Message = dict[str, Any]
NEW: Message = {"role": "assistant", "content": "new"}


def _msgs(cid: str, n: int = 5) -> list[Message]:
    return [{"role": "user", "content": f"{cid} {i}"} for i in range(n)]


def _packed_store(root: Path, key: str | None, ids: tuple[str, ...] = ("a",)) -> None:
    store = ConversationStore(root, encryption_key=key)
    for cid in ids:
        with store.open(cid) as codec:
            codec.extend(_msgs(cid))
    assert sorted(store.pack(older_than=timedelta(0)).packed) == sorted(ids)
    assert not store.path(ids[0]).exists()


def _stored(root: Path, cid: str, key: str | None = KEY) -> list[Message]:
    with ConversationStore(root, encryption_key=key).open(cid) as codec:
        return codec.load() or []


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
def test_save_after_load_rewrites_a_packed_conversation(tmp_path: Path, key: str | None) -> None:
    root = tmp_path / "store"
    _packed_store(root, key)
    store = ConversationStore(root, encryption_key=key)
    with store.open("a") as codec:
        got = codec.load()
        assert got == _msgs("a")
        codec.save([*got[:3], NEW])  # a rewrite: its first write unpacks the conversation
        assert codec.load() == [*_msgs("a")[:3], NEW]
        codec.save([NEW])  # and again, now loose
    assert store.path("a").exists()
    assert _stored(root, "a", key) == [NEW]


def test_a_pop_after_load_keeps_the_view_of_a_packed_conversation(tmp_path: Path) -> None:
    """As on a loose log, the caller handed back the popped message still holds the whole
    history: a rewrite after load(), pop() (the pop unpacks) goes through."""
    root = tmp_path / "store"
    _packed_store(root, KEY)
    with ConversationStore(root, encryption_key=KEY).open("a") as codec:
        got = codec.load()
        assert got is not None and codec.pop() == got[-1]
        codec.save([*got[:2], NEW])
    assert _stored(root, "a") == [*_msgs("a")[:2], NEW]


def test_save_after_load_through_the_async_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _packed_store(root, KEY)

    async def edit() -> None:
        store = AsyncConversationStore(root, encryption_key=KEY)
        async with await store.open("a") as codec:
            got = await codec.load()
            assert got is not None
            await codec.save([*got[:2], NEW])

    asyncio.run(edit())
    assert _stored(root, "a") == [*_msgs("a")[:2], NEW]


def test_save_after_load_while_another_conversation_leaves_the_pack(tmp_path: Path) -> None:
    """Another handle's write to ``b`` rewrites the pack both were in: ``a``'s bytes move
    to another file, unchanged, and its save still works."""
    root = tmp_path / "store"
    _packed_store(root, KEY, ("a", "b"))
    store, other = (ConversationStore(root, encryption_key=KEY) for _ in range(2))
    with store.open("a") as codec:
        got = codec.load()
        assert got is not None
        with other.open("b") as codec_b:
            codec_b.append(NEW)  # unpacks b: the pack is rewritten without it
        codec.save([*got[:3], NEW])
    assert _stored(root, "a") == [*_msgs("a")[:3], NEW]
    assert _stored(root, "b") == [*_msgs("b"), NEW]


_OTHER_WRITER = textwrap.dedent(
    """
    import os, sys
    from conversation_codec.store import ConversationStore

    store = ConversationStore(sys.argv[1], encryption_key=os.environ["CC_TEST_KEY"])
    with store.open("a") as codec:
        if sys.argv[2] == "pop-append":  # as many records as before, the last one new
            codec.append(codec.pop())
        else:
            codec.append({"role": "user", "content": "from the other process"})
    """
)


def _other_process_writes(root: Path, op: str) -> None:
    done = _children.run(
        [sys.executable, "-c", _OTHER_WRITER, str(root), op],
        env=subprocess_env(KEY),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("op", ["append", "pop-append"])
def test_a_change_by_another_process_between_load_and_save_conflicts(
    tmp_path: Path, op: str
) -> None:
    """The other process's write unpacks the conversation and changes it: the save of a
    list built from the packed history must not delete what it never saw."""
    root = tmp_path / "store"
    _packed_store(root, KEY)
    with ConversationStore(root, encryption_key=KEY).open("a") as codec:
        got = codec.load()
        assert got is not None
        _other_process_writes(root, op)
        after = _stored(root, "a")
        with pytest.raises(ConflictError):
            codec.save([*got[:3], NEW])
        assert _stored(root, "a") == after  # nothing changed
        assert codec.load() == after
        codec.save([*after[:3], NEW])  # reloaded: the save goes through
    assert _stored(root, "a") == [*after[:3], NEW]


class _WriteWhileUnpacked(FileIO):
    """Runs ``act`` at the ``unpack:released`` step: ``P`` written, its lock let go before
    the write that unpacked it takes it again."""

    def __init__(self) -> None:
        self.act: Any = None

    def step(self, name: str) -> None:
        if name == "unpack:released" and self.act is not None:
            act, self.act = self.act, None
            act()


@pytest.mark.parametrize("op", ["none", "append", "pop-append"])
def test_a_change_by_another_process_while_the_save_unpacks_conflicts(
    tmp_path: Path, op: str
) -> None:
    """Between the unpack and the save's write another process takes ``P.lock``: a
    change it makes there refuses the rewrite; a look that changes nothing does not."""
    root = tmp_path / "store"
    _packed_store(root, KEY)
    io = _WriteWhileUnpacked()
    with ConversationStore(root, encryption_key=KEY, io=io).open("a") as codec:
        got = codec.load()
        assert got is not None
        if op == "none":
            io.act = lambda: _stored(root, "a")  # a reader only
        else:
            io.act = lambda: _other_process_writes(root, op)
        if op == "none":
            codec.save([*got[:3], NEW])
            assert io.act is None, "the step was never reached: the test tests nothing"
            assert _stored(root, "a") == [*_msgs("a")[:3], NEW]
            return
        with pytest.raises(ConflictError):
            codec.save([*got[:3], NEW])
        assert io.act is None, "the step was never reached: the test tests nothing"
    other = [{"role": "user", "content": "from the other process"}] if op == "append" else []
    assert _stored(root, "a") == [*_msgs("a"), *other]  # as the other process left it

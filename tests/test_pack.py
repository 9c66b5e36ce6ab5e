"""Packs (FORMAT.md §18): ConversationStore.pack(), reads from packs, unpack on write,
deletion, damage, SIGKILL mid-pack and mid-unpack, and a packer racing a writer process."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import _children
from _writer import NO_UNNAMED_FILES, subprocess_env
from conversation_codec import (
    BindingError,
    ConversationCodec,
    ConversationCodecError,
    CorruptRecordError,
    DecryptionError,
    FileIO,
    FormatError,
    UnsupportedVersionError,
)
from conversation_codec.cli import main as cli_main
from conversation_codec.format.pack import decode_toc
from conversation_codec.store import ConversationStore

from conftest import KEY, OTHER_KEY, T0, Clock

IDS = ["alice", "Bob/chat", "ü 3", "dora", "eve-5", "frank"]


def message(cid: str, i: int) -> dict[str, Any]:
    return {"role": "user" if i % 2 else "assistant", "content": f"{cid} says hello {i} refund"}


def fill(root: Path, key: str | None, ids: list[str] = IDS, n: int = 6) -> dict[str, list[Any]]:
    store = ConversationStore(root, encryption_key=key, clock=Clock())
    for cid in ids:
        with store.open(cid) as codec:
            for i in range(n):
                codec.append(message(cid, i))
    return {cid: [message(cid, i) for i in range(n)] for cid in ids}


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def snapshot(store: ConversationStore) -> dict[str, list[Any]]:
    out = {}
    for cid in store.ids():
        with store.open(cid) as codec:
            out[cid] = codec.load()
    return out


@pytest.fixture(params=["sealed", "plain"])
def key(request: pytest.FixtureRequest) -> str | None:
    return KEY if request.param == "sealed" else None


def test_pack_then_every_read_api(tmp_path: Path, key: str | None) -> None:
    root = tmp_path / "store"
    expected = fill(root, key)
    before = ConversationStore(root, encryption_key=key)
    infos = before.infos()
    hits = [(cid, h.seq, h.timestamp) for cid, h in before.search("refund")]
    report = before.pack()
    assert sorted(report.packed) == sorted(IDS) and len(report.packs) == 1
    assert [f for f in files(root) if not f.startswith(".packs/")] == []
    assert (os.stat(root / ".packs" / report.packs[0]).st_mode & 0o777) == 0o600

    store = ConversationStore(root, encryption_key=key)  # a fresh handle: nothing cached
    assert store.ids() == sorted(IDS) and "alice" in store and "nobody" not in store
    assert snapshot(store) == expected
    assert [_listed(i) for i in store.infos()] == [_listed(i) for i in infos]
    assert [(cid, h.seq, h.timestamp) for cid, h in store.search("refund")] == hits
    with store.open("dora") as codec:
        assert len(codec) == 6 and codec.tail(2) == expected["dora"][-2:]
        assert codec.get(3) == expected["dora"][3] and codec.get(-1) == expected["dora"][-1]
        assert list(codec) == expected["dora"] and codec.wait(4, timeout=0)
        assert [h.seq for h in codec.search("hello 4")] == [4]
        assert codec.verify().ok and codec.verify().records == 6
        first, last = codec.timestamp(0), codec.timestamp(-1)
        assert [h.seq for h in codec.between(first + timedelta(microseconds=1), last)] == [
            1,
            2,
            3,
            4,
        ]
        sink = io.BytesIO()
        assert codec.export(sink) == 6 and sink.getvalue().count(b"hello") == 6
    locks = {".packs/pack.lock", ".packs/packer.lock"}
    assert set(files(root)) == {*locks, ".packs/" + report.packs[0]}  # reads: no writes


def _listed(info: Any) -> tuple[Any, ...]:
    return (
        info.conversation_id,
        info.message_count,
        info.first_timestamp,
        info.last_timestamp,
        info.encrypted,
        info.status,
    )


def test_copy_ls_search_verify_from_packs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, dst = tmp_path / "store", tmp_path / "copy"
    expected = fill(root, KEY)
    ConversationStore(root, encryption_key=KEY).pack()
    env = {"CONVERSATION_KEY": KEY}  # the CLI's default key variable
    os.environ.update(env)
    try:
        assert cli_main(["ls", str(root), "--json"]) == 0
        listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert sorted(r["conversation_id"] for r in listed) == sorted(IDS)
        assert all(r["message_count"] == 6 for r in listed)
        assert cli_main(["search", str(root), "refund", "--json"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 6 * len(IDS)
        assert cli_main(["verify", str(root)]) == 0
        assert capsys.readouterr().out.count(": ok, 6 intact records") == len(IDS)
        assert cli_main(["copy", str(root), str(dst)]) == 0
    finally:
        for name in env:
            del os.environ[name]
    copied = ConversationStore(dst, encryption_key=KEY)
    assert snapshot(copied) == expected
    # Byte for byte: the destination's log holds the packed entry's bytes.
    pack = next((root / ".packs").glob("*.pack"))
    data = pack.read_bytes()
    entry = decode_toc(data, len(data), pack.name)["alice"]
    assert (dst / "alice.log").read_bytes() == data[entry.offset : entry.offset + entry.length]


def test_append_unpacks_and_reopens(tmp_path: Path, key: str | None) -> None:
    root = tmp_path / "store"
    expected = fill(root, key)
    store = ConversationStore(root, encryption_key=key)
    store.pack()
    with store.open("alice") as codec:
        assert codec.append({"role": "user", "content": "after the pack"}) == 6
        expected["alice"].append({"role": "user", "content": "after the pack"})
        assert codec.load() == expected["alice"]
    assert (root / "alice.log").is_file() and (root / "alice.log.idx").is_file()
    other = ConversationStore(root, encryption_key=key)
    assert snapshot(other) == expected
    with other.open("alice") as codec:
        codec.pop()
        codec.append({"role": "user", "content": "again"})
    expected["alice"][-1] = {"role": "user", "content": "again"}
    assert snapshot(ConversationStore(root, encryption_key=key)) == expected
    with store.open("dora") as codec:  # a rewrite of a packed log (compaction) unpacks too
        codec.compact()
    assert snapshot(store) == expected


def test_a_reader_sees_a_change_made_through_another_handle(tmp_path: Path) -> None:
    root = tmp_path / "store"
    expected = fill(root, KEY)
    ConversationStore(root, encryption_key=KEY).pack()
    reader = ConversationStore(root, encryption_key=KEY).open("eve-5")
    writer = ConversationStore(root, encryption_key=KEY)
    try:
        assert reader.load() == expected["eve-5"]  # read from the pack (its TOC cached)
        with writer.open("eve-5") as codec:
            codec.append({"role": "user", "content": "new"})
        assert reader.load() == [*expected["eve-5"], {"role": "user", "content": "new"}]
        assert reader.tail(1) == [{"role": "user", "content": "new"}]
        writer.pack()  # packed again: the reader follows it back into a (new) pack
        assert not (root / "eve-5.log").exists()
        assert reader.tail(1) == [{"role": "user", "content": "new"}]
    finally:
        reader.close()


def test_delete_clear_and_prune_remove_every_byte(tmp_path: Path) -> None:
    root = tmp_path / "store"
    fill(root, KEY)
    store = ConversationStore(root, encryption_key=KEY, clock=Clock(T0 + 10**12))
    store.pack()
    pack = next((root / ".packs").glob("*.pack"))
    data = pack.read_bytes()
    toc = decode_toc(data, len(data), pack.name)
    records = {}  # 48 bytes of each conversation's last sealed record, as packed
    for cid in IDS:
        end = toc[cid].offset + toc[cid].length
        records[cid] = data[end - 48 : end]
        assert data.count(records[cid]) == 1
    assert store.delete("alice")
    with store.open("dora") as codec:
        codec.clear()
    assert store.prune(timedelta(0), on_error=None) == sorted(set(IDS) - {"alice", "dora"})
    assert store.ids() == []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(r in data for r in records.values()), path
    assert not list((root / ".packs").glob("*.pack"))  # an emptied pack is deleted


def test_wrong_key_and_no_key_on_a_packed_log(tmp_path: Path) -> None:
    root = tmp_path / "store"
    fill(root, KEY)
    ConversationStore(root, encryption_key=KEY).pack()
    with pytest.raises(DecryptionError):
        ConversationStore(root, encryption_key=OTHER_KEY).open("alice")
    listed = ConversationStore(root).infos(keyless=True)
    assert {i.status for i in listed} == {"unverified"}
    assert {i.message_count for i in listed} == {6}


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["record", "header"])
def test_a_flipped_byte_in_an_entry_fails_that_conversation_only(
    tmp_path: Path, where: str
) -> None:
    root = tmp_path / "store"
    expected = fill(root, KEY)
    store = ConversationStore(root, encryption_key=KEY)
    store.pack()
    pack = next((root / ".packs").glob("*.pack"))
    data = pack.read_bytes()
    entry = decode_toc(data, len(data), pack.name)["dora"]
    end = entry.offset + entry.length
    at = end - 20 if where == "record" else entry.offset + 2  # last record; header
    assert entry.offset <= at < entry.offset + entry.length
    _flip(pack, at)
    fresh = ConversationStore(root, encryption_key=KEY)
    with (
        pytest.raises(CorruptRecordError, match=r"dora.*CRC mismatch.*\.pack"),
        fresh.open("dora") as codec,
    ):
        codec.load()
    del expected["dora"]
    assert {cid: msgs for cid, msgs in snapshot_ok(fresh).items()} == expected
    statuses = {i.conversation_id: i.status for i in fresh.infos()}
    assert statuses.pop("dora") == "CorruptRecordError" and set(statuses.values()) == {"ok"}
    assert pack.read_bytes()[:at] == data[:at]  # nothing was rewritten
    with fresh.open("alice") as codec:  # a write to a neighbour keeps the damage detectable
        codec.append({"role": "user", "content": "x"})
    with pytest.raises(CorruptRecordError), fresh.open("dora") as codec:
        codec.load()


def snapshot_ok(store: ConversationStore) -> dict[str, list[Any]]:
    out = {}
    for cid in store.ids():
        try:
            with store.open(cid) as codec:
                out[cid] = codec.load()
        except ConversationCodecError:
            pass
    return out


@pytest.mark.parametrize("damage", ["toc", "truncated", "version"])
def test_a_damaged_or_newer_pack_is_refused_by_name(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "store"
    fill(root, KEY)
    store = ConversationStore(root, encryption_key=KEY)
    store.pack()
    fill(root, KEY, ["loose"])
    pack = next((root / ".packs").glob("*.pack"))
    data = pack.read_bytes()
    if damage == "toc":
        _flip(pack, 30)
    elif damage == "truncated":
        pack.write_bytes(data[:-5])
    else:
        pack.write_bytes(data[:6] + (2).to_bytes(2, "little") + data[8:])
    error = UnsupportedVersionError if damage == "version" else FormatError
    fresh = ConversationStore(root, encryption_key=KEY)
    with pytest.raises(error, match=re.escape(pack.name)):
        fresh.ids()
    with pytest.raises(error, match="upgrade" if damage == "version" else "pack"):
        fresh.open("alice")
    with fresh.open("loose") as codec:  # a loose conversation reads and writes as usual
        codec.append({"role": "user", "content": "still writable"})
        assert len(codec) == 7
    # A new conversation might be in the unreadable pack: it is not created over it.
    with pytest.raises(error), fresh.open("new") as codec:
        codec.append({"role": "user", "content": "x"})
    assert not (root / "new.log").exists()
    assert pack.read_bytes() != data or damage == "toc"  # as damaged: nothing rewrote it


# --- crashes and concurrency: real processes -------------------------------------------

_CHILD = NO_UNNAMED_FILES + textwrap.dedent(
    """
    import errno, os, signal, sys
    from conversation_codec import FileIO
    from conversation_codec.store import ConversationStore

    mode, root, mark = sys.argv[1], sys.argv[2], sys.argv[3]
    if sys.argv[4] == "named":  # a file system without unnamed (O_TMPFILE) files
        refuse_unnamed_files()

    class KillAt(FileIO):
        def step(self, name):
            if name == mark:
                os.kill(os.getpid(), signal.SIGKILL)

        def rename(self, src, dst, *, dir_fd=None):
            if mark == "publish" and str(dst).endswith(".pack"):
                os.kill(os.getpid(), signal.SIGKILL)
            if mark == "unpack-rename" and str(dst).endswith("dora.log"):
                os.kill(os.getpid(), signal.SIGKILL)  # P's temp copy written, not renamed
            super().rename(src, dst, dir_fd=dir_fd)

        def link(self, src, dst, *, dir_fd=None):
            if mark == "publish" and str(dst).endswith(".pack"):
                os.kill(os.getpid(), signal.SIGKILL)
            if mark == "unpack-rename" and str(dst).endswith("dora.log"):
                os.kill(os.getpid(), signal.SIGKILL)
            super().link(src, dst, dir_fd=dir_fd)

    store = ConversationStore(root, encryption_key=os.environ["CC_TEST_KEY"], io=KillAt())
    if mode == "pack":
        store.pack()
    else:
        with store.open("dora") as codec:
            codec.append({"role": "user", "content": "after"})
    print("finished")
    """
)


def _run_child(mode: str, root: Path, mark: str, temps: str = "unnamed") -> str:
    done = _children.run(
        [sys.executable, "-c", _CHILD, mode, str(root), mark, temps],
        env=subprocess_env(KEY),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, -signal.SIGKILL), done.stderr
    return "killed" if done.returncode else "finished"


@pytest.mark.parametrize(
    ("mode", "mark"),
    [
        ("pack", "publish"),  # before the new pack's link: nothing packed yet
        ("pack", "pack:written"),  # published, no loose log removed: every one both
        ("pack", "pack:retired"),  # one loose log removed
        ("unpack", "unpack-rename"),  # P's temp copy left beside it: swept as a leftover
        ("unpack", "unpack:loose-written"),  # P written, still in its pack: both
        ("unpack", "publish"),  # before the pack without it is renamed in: both
        ("merge", "merge:written"),  # the merged pack published, the old ones still there
    ],
)
def test_sigkill_mid_pack_or_unpack_loses_nothing(tmp_path: Path, mode: str, mark: str) -> None:
    root = tmp_path / "store"
    expected = fill(root, KEY)
    if mode in ("unpack", "merge"):
        ConversationStore(root, encryption_key=KEY).pack()
    if mode == "merge":  # a second pack, and a third run to merge them
        expected |= fill(root, KEY, ["gina"])
        ConversationStore(root, encryption_key=KEY).pack(max_bytes=1)  # no merge: too big
        assert len(list((root / ".packs").glob("*.pack"))) == 2
        mode = "pack"
    assert _run_child(mode, root, mark) == "killed"
    store = ConversationStore(root, encryption_key=KEY)
    assert store.ids() == sorted(expected)  # each once: never lost, never listed twice
    assert snapshot(store) == expected
    with store.open("dora") as codec:  # both states stay writable
        codec.append({"role": "user", "content": "later"})
    expected["dora"].append({"role": "user", "content": "later"})
    store.pack()  # finishes whatever the crash left
    assert snapshot(ConversationStore(root, encryption_key=KEY)) == expected
    assert [f for f in files(root) if not f.startswith(".packs/")] == []
    packs = root / ".packs"
    assert len(list(packs.glob("*.pack*"))) == len(list(packs.glob("*.pack")))  # no temp


_APPENDER = textwrap.dedent(
    """
    import os, sys
    from conversation_codec.store import ConversationStore

    store = ConversationStore(sys.argv[1], encryption_key=os.environ["CC_TEST_KEY"])
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        with store.open("hot") as codec:  # reopened each time: packed and unpacked between
            codec.append({"role": "user", "content": f"hot {i}"})
    print("done")
    """
)


def test_a_packer_racing_an_appender_process_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    expected = fill(root, KEY, ["hot", "cold"], n=2)
    n = 150
    child = _children.Popen(
        [sys.executable, "-c", _APPENDER, str(root), str(n)],
        env=subprocess_env(KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = ConversationStore(root, encryption_key=KEY)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    rounds = hot = 0
    while child.poll() is None or rounds < 3:
        hot += "hot" in store.pack().packed  # packed while the child appends to it
        rounds += 1
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0 and out.strip() == "done", err
    assert hot >= 1  # the race was run, not missed
    expected["hot"] += [{"role": "user", "content": f"hot {i}"} for i in range(n)]
    assert snapshot(ConversationStore(root, encryption_key=KEY)) == expected
    store.pack()
    assert snapshot(ConversationStore(root, encryption_key=KEY)) == expected


def test_pack_removes_a_crashed_rewrites_temp_copy(tmp_path: Path) -> None:
    root = tmp_path / "store"
    fill(root, KEY)
    temp = root / "alice.log.tmp-0123456789abcdef"  # a rewrite killed before its rename
    temp.write_bytes((root / "alice.log").read_bytes())
    ConversationStore(root, encryption_key=KEY).pack()
    assert not temp.exists()
    assert [f for f in files(root) if not f.startswith(".packs/")] == []


def test_packs_of_successive_runs_are_merged(tmp_path: Path) -> None:
    root = tmp_path / "store"
    expected = fill(root, KEY, IDS[:2])
    store = ConversationStore(root, encryption_key=KEY)
    store.pack()
    expected |= fill(root, KEY, IDS[2:4])
    store.pack()  # a second pack, merged with the first
    assert len(list((root / ".packs").glob("*.pack"))) == 1
    with store.open(IDS[0]) as codec:  # an unpack from the merged pack
        codec.append({"role": "user", "content": "again"})
    expected[IDS[0]].append({"role": "user", "content": "again"})
    assert snapshot(ConversationStore(root, encryption_key=KEY)) == expected
    big = ConversationStore(root, encryption_key=KEY).pack(max_bytes=100)
    assert big.packed == [IDS[0]] and len(list((root / ".packs").glob("*.pack"))) == 2
    assert snapshot(ConversationStore(root, encryption_key=KEY)) == expected


_READER = textwrap.dedent(
    """
    import json, os, sys
    from conversation_codec.store import ConversationStore

    store = ConversationStore(sys.argv[1], encryption_key=os.environ["CC_TEST_KEY"])
    with store.open("eve-5") as codec:  # held open across the other process's writes
        for _ in sys.stdin:
            print(json.dumps([len(codec), codec.tail(1)]), flush=True)
    """
)


def test_a_reader_process_holding_a_pack_sees_the_unpack_and_the_repack(tmp_path: Path) -> None:
    root = tmp_path / "store"
    expected = fill(root, KEY)
    store = ConversationStore(root, encryption_key=KEY)
    store.pack()
    reader = _children.Popen(
        [sys.executable, "-c", _READER, str(root)],
        env=subprocess_env(KEY),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdin is not None and reader.stdout is not None

    def ask() -> Any:
        assert reader.stdin is not None and reader.stdout is not None
        reader.stdin.write("read\n")
        reader.stdin.flush()
        return json.loads(reader.stdout.readline())

    try:
        assert ask() == [6, expected["eve-5"][-1:]]  # from the pack
        new = {"role": "user", "content": "written elsewhere"}
        with store.open("eve-5") as codec:  # unpacked (the pack replaced), then appended
            codec.append(new)
        assert ask() == [7, [new]]
        store.pack()  # packed again, into a new pack
        assert not (root / "eve-5.log").exists()
        assert ask() == [7, [new]]
    finally:
        reader.stdin.close()
        assert reader.wait(timeout=60) == 0
        reader.stdout.close()


def test_a_write_racing_a_merge_keeps_the_packed_history(tmp_path: Path) -> None:
    """Another process merges packs between a writer's listing of ``.packs`` and its look
    inside them: the merged pack was published after the listing and the old one removed
    before it was opened. The writer must still find the conversation (found by review:
    it created a new, empty log, and the next write dropped the packed history)."""
    root = tmp_path / "store"
    store = ConversationStore(root, encryption_key=KEY)
    for cid in ("a", "b"):
        with store.open(cid) as codec:
            codec.extend([message(cid, 0), message(cid, 1)])
    assert store.pack(max_bytes=300).packed == ["a", "b"]
    assert len(list((root / ".packs").glob("*.pack"))) == 2  # one each: a merge to come
    writer, other = (ConversationStore(root, encryption_key=KEY) for _ in range(2))
    packs, listed, armed = writer.backend.packs, writer.backend.packs.names, []

    def names() -> list[str]:
        got = listed()
        if armed:  # the other process's merge lands right after this listing
            armed.clear()
            assert other.backend.packs.merge(1 << 20) is not None
        return got

    packs.names = names  # type: ignore[method-assign]
    armed.append(1)
    with writer.open("a") as codec:
        codec.append(message("a", 2))
    del packs.names
    with ConversationStore(root, encryption_key=KEY).open("a") as codec:
        assert codec.load() == [message("a", i) for i in range(3)]


class _UnpackBetween(FileIO):
    """A reader's seam: at its ``store:decide`` step another handle unpacks and appends."""

    def __init__(self, act: Any) -> None:
        self.act = act

    def step(self, name: str) -> None:
        if name == "store:decide" and self.act is not None:
            act, self.act = self.act, None
            act()


def test_a_reader_never_takes_an_unpacked_conversation_for_an_absent_one(
    tmp_path: Path,
) -> None:
    """The reader looked for ``P`` (none: packed), then another process unpacked and
    appended before it looked in the packs: it must read the new ``P``, not an empty log."""
    root = tmp_path / "store"
    store = ConversationStore(root, encryption_key=KEY)
    with store.open("a") as codec:
        codec.extend([message("a", 0), message("a", 1)])
    store.pack()
    other = ConversationStore(root, encryption_key=KEY)

    def unpack_and_append() -> None:
        with other.open("a") as codec:
            codec.append(message("a", 2))

    reader = ConversationStore(root, encryption_key=KEY, io=_UnpackBetween(unpack_and_append))
    with reader.open("a") as codec:
        assert codec.load() == [message("a", i) for i in range(3)]


def test_a_damaged_packed_conversation_can_still_be_deleted(tmp_path: Path) -> None:
    """Erasure must not depend on the entry being readable: no one could remove it by hand
    without rewriting other conversations' pack (found by review: delete raised)."""
    root = tmp_path / "store"
    fill(root, KEY, ["a", "b"])
    store = ConversationStore(root, encryption_key=KEY)
    store.pack()
    pack = next((root / ".packs").glob("*.pack"))
    data = bytearray(pack.read_bytes())
    toc = decode_toc(bytes(data), len(data), pack.name)
    end = toc["b"].offset + toc["b"].length
    kept = bytes(data[end - 48 : end])
    data[end - 5] ^= 0xFF  # inside b's last record
    pack.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError), store.open("b") as codec:
        codec.load()
    assert store.delete("b")
    assert store.ids() == ["a"] and not store.backend.has_files("b")  # no lock file left
    for path in root.rglob("*"):
        if path.is_file():
            assert kept[:-8] not in path.read_bytes(), path
    with store.open("a") as codec:
        assert codec.load() == [message("a", i) for i in range(6)]


def _two_packs_one_damaged(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A store of a and b in one pack (its table of contents damaged), c and d in another,
    and "loose" as a file; return its root and the packs, oldest first."""
    root = tmp_path / "store"
    fill(root, KEY, ["a", "b"])
    ConversationStore(root, encryption_key=KEY).pack(max_bytes=3000)  # over half: not merged
    fill(root, KEY, ["c", "d"])
    ConversationStore(root, encryption_key=KEY).pack(max_bytes=3000)
    fill(root, KEY, ["loose"])
    packs = sorted((root / ".packs").glob("*.pack"), key=lambda p: p.stat().st_mtime_ns)
    assert len(packs) == 2
    _flip(packs[0], 30)  # a and b's pack: its table of contents
    return root, packs


def test_a_damaged_pack_does_not_stop_retention_elsewhere(tmp_path: Path) -> None:
    """prune() deletes the old conversations it can read (loose and in readable packs), keeps
    the unreadable pack's, and then raises its error naming it (found by review: one flipped
    byte in one pack's table of contents stopped retention for the whole store)."""
    root, packs = _two_packs_one_damaged(tmp_path)
    store = ConversationStore(root, encryption_key=KEY, clock=Clock(T0 + 10**12))
    with pytest.raises(FormatError, match=re.escape(packs[0].name)):
        store.prune(timedelta(0))
    assert not (root / "loose.log").exists()
    assert packs[0].exists() and not packs[1].exists()  # c and d went with their pack
    with pytest.raises(FormatError):
        store.ids()  # a and b may still be in it: never taken as absent


@pytest.mark.parametrize("temps", ["unnamed", "named"])
def test_deleting_a_conversation_removes_a_crashed_packs_temp_copy_of_it(
    tmp_path: Path, temps: str
) -> None:
    """A ``pack()`` killed before it published its pack leaves nothing where the file system
    has unnamed files (``O_TMPFILE``); elsewhere it leaves the pack's temp file in
    ``.packs/``: sealed copies of the conversations it was packing. Deleting one of them
    must not leave that copy behind until some later pack operation."""
    root = tmp_path / "store"
    fill(root, KEY)
    assert _run_child("pack", root, "publish", temps) == "killed"
    left = [f for f in files(root) if ".pack.tmp-" in f]  # the crash's temp copy
    assert bool(left) == (temps == "named"), left
    store = ConversationStore(root, encryption_key=KEY)
    assert store.delete("dora")
    assert [f for f in files(root) if ".pack.tmp-" in f or "dora" in f] == []


def test_a_damaged_pack_does_not_stop_listing_searching_or_verifying_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ids(), infos() and search() with ``on_error`` go on with every loose log and readable
    pack and report the unreadable pack to ``on_error`` by its path; without ``on_error``
    they raise its error, as before: a caller is never handed a partial list as the whole
    (found by review: one flipped byte in one pack stopped ls, search and verify)."""
    root, packs = _two_packs_one_damaged(tmp_path)
    store = ConversationStore(root, encryption_key=KEY)
    reported: list[tuple[str, Exception]] = []

    def report(name: str, exc: Exception) -> None:
        reported.append((name, exc))

    def one_report() -> None:
        assert [name for name, _ in reported] == [str(packs[0])]
        assert isinstance(reported[0][1], FormatError)
        assert packs[0].name in str(reported[0][1])
        reported.clear()

    rest = ["c", "d", "loose"]
    for call in (store.ids, store.infos, lambda: list(store.search("hello"))):
        with pytest.raises(FormatError, match=re.escape(packs[0].name)):
            call()
    assert store.ids(on_error=report) == rest
    one_report()
    infos = store.infos(on_error=report)
    assert [(i.conversation_id, i.status, i.message_count) for i in infos] == [
        (cid, "ok", 6) for cid in rest
    ]
    one_report()
    hits = list(store.search("hello", on_error=report))
    assert sorted({cid for cid, _ in hits}) == rest and len(hits) == 6 * len(rest)
    one_report()
    os.environ["CONVERSATION_KEY"] = KEY
    try:
        assert cli_main(["ls", str(root)]) == 1
        out, err = capsys.readouterr()
        assert [line.split()[0] for line in out.splitlines()[1:]] == rest
        assert packs[0].name in err
        assert cli_main(["search", str(root), "hello", "--json"]) == 1
        out, err = capsys.readouterr()
        assert len(out.splitlines()) == 6 * len(rest) and packs[0].name in err
        assert cli_main(["verify", str(root)]) == 3
        out, err = capsys.readouterr()
        assert out.count(": ok, 6 intact records") == len(rest) and packs[0].name in err
    finally:
        del os.environ["CONVERSATION_KEY"]
    assert packs[0].exists() and packs[1].exists()  # nothing rewrote either pack


def _append_after(store: ConversationStore, cid: str, start: Any, failed: list[Exception]) -> None:
    start.wait()  # every thread at once
    try:
        with store.open(cid) as codec:
            codec.append(message(cid, 1))
    except Exception as exc:
        failed.append(exc)


def test_threads_of_one_store_write_to_conversations_of_one_pack(tmp_path: Path) -> None:
    """Each unpack replaces the pack that the other threads' handles found their entries
    in: a write whose pack went between its lookup and its read looks again, as a read
    does (from review: 6-20 of 320 such appends raised StorageError, errno 0)."""
    import threading

    for round_ in range(12):
        root = tmp_path / f"r{round_}"
        store = ConversationStore(root, encryption_key=KEY)
        for i in range(8):
            with store.open(f"c{i}") as codec:
                codec.append(message(f"c{i}", 0))
        store.pack()
        store.ids()  # its table of contents cached by the shared handle
        start, failed = threading.Barrier(8), []
        threads = [
            threading.Thread(target=_append_after, args=(store, f"c{i}", start, failed))
            for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failed == []
        for i in range(8):
            with ConversationStore(root, encryption_key=KEY).open(f"c{i}") as codec:
                assert codec.load() == [message(f"c{i}", 0), message(f"c{i}", 1)]


def test_a_codec_opened_on_a_packed_conversations_path_keeps_its_history(
    tmp_path: Path,
) -> None:
    """``ConversationCodec(<root>/<id>.log, context=id)`` (what the CLI opens) reads a
    packed conversation as the store does, and its first write unpacks it: the packed
    history was read as empty, and an append started it afresh for good (from review)."""
    root = tmp_path / "store"
    fill(root, KEY, ["a", "b"])
    store = ConversationStore(root, encryption_key=KEY)
    assert sorted(store.pack().packed) == ["a", "b"]
    path = store.path("a")
    assert not path.exists()
    with ConversationCodec(path, encryption_key=KEY, context="a") as codec:
        assert codec.load() == [message("a", i) for i in range(6)]
        codec.append(message("a", 6))
    with ConversationStore(root, encryption_key=KEY).open("a") as codec:
        assert codec.load() == [message("a", i) for i in range(7)]
    with pytest.raises(BindingError):  # a store's log, bound to its id: nothing changes
        ConversationCodec(store.path("b"), encryption_key=KEY).append(message("b", 9))
    with ConversationStore(root, encryption_key=KEY).open("b") as codec:
        assert codec.load() == [message("b", i) for i in range(6)]

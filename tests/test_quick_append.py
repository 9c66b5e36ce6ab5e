"""The quick append (``storage/file/quick.py``): ``append()`` of one record in the steady state.

It must be the general procedure of FORMAT.md §8.2 with fewer Python layers, never another
one: the same system calls in the same order (counters, frame, sync, index entry), the same
bytes (a log written by quick appends reads, verifies and indexes as one written by
``extend``), the same answers to failures (a failed sync poisons the log, a failed write
leaves no partial record, a failed index write after the commit still acknowledges it), and
the same respect for other processes (their counters, a cleared or deleted lock file, a
deleted index). The system calls are watched by patching ``os`` (the default seam's calls
are looked up at each use, ``_fsio.default_syscalls``); each write is attributed to the
module that made it, so a test knows the quick path made it.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from tests._writer import subprocess_env
from tests.conftest import KEY, T0, Clock

import _children
from conversation_codec import ConversationCodec, FileIO, StorageError
from conversation_codec.compression import TRAIN_AFTER

ENTRY = struct.Struct("<Qq")  # FORMAT.md §7: end (top two bits: ENTRY_SYNCED), ts_us
HEADER_BYTES = 48  # FORMAT.md §7: the index header
SYNCED = 0b11 << 62


def message(i: int) -> dict[str, Any]:
    """A chat message whose JSON length varies with ``i`` (so do the frames)."""
    return {"role": "user" if i % 2 else "assistant", "content": f"message {i} " + "ab" * (i % 97)}


class Syscall:
    """One patched system call: what it touched (a file name) and which module called it."""

    def __init__(self, name: str, fd: int, caller: str, data: bytes = b"") -> None:
        try:
            self.file = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            self.file = "?"
        self.name, self.caller, self.data = name, caller, data

    def __repr__(self) -> str:
        return f"{self.name}({self.file}) from {self.caller}"


class Watch:
    """``os.pwrite`` and ``os.fdatasync`` patched to record each call, and to fail one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Syscall] = []
        # fail(call) -> an errno to raise instead of making it, or None
        self.fail: Callable[[Syscall], int | None] = lambda call: None
        real_pwrite, real_sync = os.pwrite, os.fdatasync

        def pwrite(fd: int, data: Any, offset: int) -> int:
            call = Syscall("pwrite", fd, sys._getframe(1).f_code.co_filename, bytes(data))
            return self._make(call, lambda: real_pwrite(fd, data, offset))

        def fdatasync(fd: int) -> None:
            call = Syscall("fdatasync", fd, sys._getframe(1).f_code.co_filename)
            self._make(call, lambda: real_sync(fd))

        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(os, "fdatasync", fdatasync)

    def _make(self, call: Syscall, real: Callable[[], Any]) -> Any:
        self.calls.append(call)
        code = self.fail(call)
        if code is not None:
            raise OSError(code, os.strerror(code))
        return real()

    def take(self) -> list[str]:
        """The calls since the last take, as ``name(file)``, checked to come from quick.py."""
        calls, self.calls = self.calls, []
        assert calls and all(c.caller.endswith("quick.py") for c in calls), calls
        return [f"{c.name}({c.file})" for c in calls]


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Watch:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("names written files through /proc/self/fd")
    return Watch(monkeypatch)


def entries(path: Path) -> list[tuple[int, bool, int]]:
    """The index file's entries as ``(end, synced, ts_us)``, read as FORMAT.md §7 says."""
    raw = Path(f"{path}.idx").read_bytes()[HEADER_BYTES:]
    out = []
    for end, ts in ENTRY.iter_unpack(raw):
        assert end >> 62 in (0, 3), "one flag bit alone: a garbled entry"
        out.append((end & ((1 << 62) - 1), end >> 62 == 3, ts))
    return out


@pytest.fixture(params=["fsync", "flush"])
def durability(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the procedure ------------------------------------------------------------------------


def test_a_steady_append_makes_the_general_procedure_s_calls_in_order(
    tmp_path: Path, watch: Watch, durability: str
) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY, durability=durability) as codec:
        codec.append(message(0))  # creates the log: the general path
        watch.calls.clear()
        for i in range(1, 4):
            assert codec.append(message(i)) == i
            sync = ["fdatasync(chat.log)"] if durability == "fsync" else []
            # FORMAT.md §8.2: counters bumped first, the frame, the sync, then the entry.
            assert watch.take() == ["pwrite(chat.log.lock)", "pwrite(chat.log)", *sync,
                                    "pwrite(chat.log.idx)"]  # fmt: skip
        assert codec.load() == [message(i) for i in range(4)]


def test_entries_of_quick_appends_are_evidence_under_fsync_only(
    tmp_path: Path, watch: Watch, durability: str
) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY, durability=durability) as codec:
        for i in range(5):
            codec.append(message(i))
        assert watch.calls[-1].caller.endswith("quick.py")
    found = entries(path)
    assert len(found) == 5
    # Entry 0 was written by the log's creation, a rewrite: evidence under both (§7, §8.4).
    assert [synced for _, synced, _ in found] == [True] + [durability == "fsync"] * 4
    ends = [end for end, _, _ in found]
    assert ends == sorted(ends) and ends[-1] == path.stat().st_size


@pytest.mark.parametrize("encrypted", [True, False], ids=["sealed", "plain"])
def test_a_log_of_quick_appends_is_the_log_extend_writes(
    tmp_path: Path, watch: Watch, durability: str, encrypted: bool
) -> None:
    """Same messages at the same times: appended one by one (quick) or extended in batches
    (the general path), the logs hold records of the same sizes at the same offsets with
    the same index entries; under "flush" across the dictionary's training (FORMAT.md
    §5.3) too, which both place after message 511 (after message 0, 73 batches of 7 end there)."""
    key = KEY if encrypted else None
    count = TRAIN_AFTER + 20 if encrypted and durability == "flush" else 40
    msgs = [message(i) for i in range(count)]
    times = [T0 + 1000 * (i + 1) for i in range(count)]  # what Clock() gives the appends
    quick, batched = tmp_path / "quick.log", tmp_path / "batched.log"
    with ConversationCodec(quick, encryption_key=key, durability=durability, clock=Clock()) as a:
        seqs = [a.append(m) for m in msgs]
    assert sum(c.caller.endswith("quick.py") for c in watch.calls) >= 3 * (count - 3)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    with ConversationCodec(batched, encryption_key=key, durability=durability) as b:
        # Message 0 alone creates each log (a rewrite: evidence under both modes, §8.4).
        for start in [0, *range(1, count, 7)]:
            stop = 1 if start == 0 else start + 7
            stamps = [epoch + timedelta(microseconds=t) for t in times[start:stop]]
            b.extend(msgs[start:stop], timestamps=stamps)
    assert seqs == list(range(count))
    assert [ts for _, _, ts in entries(quick)] == times
    assert entries(quick) == entries(batched)
    spans = [Path(f"{p}.idx").read_bytes()[32:48] for p in (quick, batched)]  # §7 dict span
    assert spans[0] == spans[1] and (spans[0] != bytes(16)) == (count > TRAIN_AFTER)
    assert quick.stat().st_size == batched.stat().st_size
    for path in (quick, batched):
        with ConversationCodec(path, encryption_key=key) as codec:
            assert codec.load() == msgs
            report = codec.verify()
            assert report.ok, report


# -- failures: as the general path ----------------------------------------------------------


def _seeded(path: Path, durability: str = "fsync") -> ConversationCodec:
    codec = ConversationCodec(path, encryption_key=KEY, durability=durability)
    for i in range(3):
        codec.append(message(i))
    return codec


def test_a_failed_sync_in_a_quick_append_poisons_the_log(tmp_path: Path, watch: Watch) -> None:
    path = tmp_path / "chat.log"
    codec = _seeded(path)
    before = entries(path)
    watch.fail = lambda call: errno.EIO if call.name == "fdatasync" else None
    with pytest.raises(StorageError):
        codec.append(message(3))
    assert watch.calls[-1].caller.endswith("quick.py")
    assert entries(path) == before, "an index entry written for a record never synced"
    watch.fail = lambda call: None
    watch.calls.clear()
    with pytest.raises(StorageError, match="fsync failed"):
        codec.append(message(4))  # refused until reopened...
    assert not [c for c in watch.calls if c.file == "chat.log"], "...and nothing written"
    assert codec.load() == [message(i) for i in range(4)]  # reads go on (the page is there)
    codec.close()
    with ConversationCodec(path, encryption_key=KEY) as again:  # reopening heals
        assert again.append(message(5)) == 4
        assert again.verify().ok


def test_a_failed_frame_write_in_a_quick_append_leaves_no_partial_record(
    tmp_path: Path, watch: Watch
) -> None:
    path = tmp_path / "chat.log"
    codec = _seeded(path)
    size = path.stat().st_size
    watch.calls.clear()
    writes = 0

    def half_then_enospc(call: Syscall) -> int | None:
        nonlocal writes
        if call.file == "chat.log" and call.name == "pwrite":
            writes += 1
            if writes == 1:  # the frame's first half lands, then the disk is full
                with open(path, "r+b") as f:
                    f.seek(size)
                    f.write(call.data[: len(call.data) // 2])
                return errno.ENOSPC
        return None

    watch.fail = half_then_enospc
    with pytest.raises(StorageError):
        codec.append(message(3))
    assert watch.calls[1].caller.endswith("quick.py") and watch.calls[1].file == "chat.log"
    assert path.stat().st_size == size, "the partial frame was not cut"
    watch.fail = lambda call: None
    assert codec.append(message(4)) == 3
    assert codec.load() == [*map(message, range(3)), message(4)]
    assert codec.verify().ok
    codec.close()


def test_a_failed_index_write_after_the_commit_still_acknowledges_the_record(
    tmp_path: Path, watch: Watch
) -> None:
    path = tmp_path / "chat.log"
    codec = _seeded(path)
    watch.fail = lambda call: errno.EIO if call.file == "chat.log.idx" else None
    assert codec.append(message(3)) == 3  # committed: synced before the entry
    assert watch.calls[-1].caller.endswith("quick.py")
    assert len(entries(path)) == 3
    watch.fail = lambda call: None
    assert codec.append(message(4)) == 4  # the general path rewrites the index
    assert [synced for _, synced, _ in entries(path)] == [True] * 5
    assert codec.load() == [message(i) for i in range(5)]
    codec.close()


def test_a_failed_counter_write_changes_nothing(tmp_path: Path, watch: Watch) -> None:
    path = tmp_path / "chat.log"
    codec = _seeded(path)
    size = path.stat().st_size
    watch.fail = lambda call: errno.ENOSPC if call.file == "chat.log.lock" else None
    with pytest.raises(StorageError):
        codec.append(message(3))
    assert watch.calls[-1].caller.endswith("quick.py")
    assert path.stat().st_size == size and len(entries(path)) == 3
    watch.fail = lambda call: None
    assert codec.append(message(4)) == 3
    codec.close()


def test_a_test_seam_sees_every_step_of_every_append(tmp_path: Path) -> None:
    """With any seam but the operating system's, appends take the general path: the seam
    sees each write and sync, and each fault step (the crash suites rely on them)."""

    class Steps(FileIO):
        def __init__(self) -> None:
            self.steps: list[str] = []

        def step(self, name: str) -> None:
            self.steps.append(name)

    io = Steps()
    with ConversationCodec(tmp_path / "chat.log", encryption_key=KEY, io=io) as codec:
        for i in range(4):
            codec.append(message(i))
    appended = [s for s in io.steps if s.startswith("append:")]
    assert appended == ["append:written", "append:synced"] * 3  # the first one creates the log:
    assert io.steps[: io.steps.index("append:written")] == [  # a rewrite holding it (§8.4)
        "rewrite:temp-written",
        "rewrite:temp-synced",
        "rewrite:renamed",
        "rewrite:index-written",
        "rewrite:dir-synced",
    ]


# -- other writers ----------------------------------------------------------------------------

_CHILD = """
import os, sys
from conversation_codec import ConversationCodec, LockTimeoutError
path, what, start, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
key, wait = os.environ["CC_TEST_KEY"], 0.2 if what == "try" else None
with ConversationCodec(path, encryption_key=key, lock_timeout=wait) as codec:
    if what == "clear":
        codec.clear()
    try:
        seqs = [codec.append({"role": "child", "content": str(start + i)}) for i in range(count)]
    except LockTimeoutError:
        seqs = []
    print(" ".join(map(str, seqs)), flush=True)
"""


def _child(path: Path, what: str, start: int, count: int) -> list[int]:
    out = _children.run(
        [sys.executable, "-c", _CHILD, str(path), what, str(start), str(count)],
        capture_output=True,
        text=True,
        env=subprocess_env(KEY),
        timeout=60,
        check=True,
    ).stdout
    return [int(s) for s in out.split()]


def test_quick_appends_see_another_process_s_appends(tmp_path: Path, watch: Watch) -> None:
    path = tmp_path / "chat.log"
    codec = _seeded(path)
    assert _child(path, "append", 0, 2) == [3, 4]  # the counters moved: ...
    watch.calls.clear()
    assert codec.append(message(3)) == 5  # ... so the general path reloads, at seq 5
    assert not watch.calls[0].caller.endswith("quick.py")
    watch.calls.clear()
    assert codec.append(message(4)) == 6
    assert watch.take()  # steady again: quick
    assert [m["content"] for m in codec.load() or []][3:] == ["0", "1", *(
        message(i)["content"] for i in (3, 4))]  # fmt: skip
    assert codec.verify().ok
    codec.close()


def test_quick_appends_see_another_process_clear_the_log(tmp_path: Path, watch: Watch) -> None:
    """clear() unlinks P.lock: the lock this codec keeps open then excludes nobody. Its
    counters moved first (FORMAT.md §8.5), so no quick append lands in the old files."""
    path = tmp_path / "chat.log"
    codec = _seeded(path)
    assert _child(path, "clear", 0, 1) == [0]
    assert codec.append(message(3)) == 1
    assert codec.append(message(4)) == 2
    with ConversationCodec(path, encryption_key=KEY) as other:
        assert [m["content"] for m in other.load() or []] == ["0", *(
            message(i)["content"] for i in (3, 4))]  # fmt: skip
    codec.close()


def test_a_deleted_lock_file_is_not_locked_again(tmp_path: Path) -> None:
    """A lock file deleted by hand (no counter moved): the quick path checks the name, and
    locks the file now there, which excludes the other processes."""
    path = tmp_path / "chat.log"
    codec = _seeded(path)
    os.unlink(f"{path}.lock")
    assert codec.append(message(3)) == 3
    assert os.path.exists(f"{path}.lock"), "locked the deleted file"
    with codec.transaction():
        assert _child(path, "try", 0, 1) == []  # locked out
        assert codec.append(message(4)) == 4
    assert _child(path, "try", 0, 1) == [5]
    assert codec.append(message(5)) == 6
    codec.close()


def test_a_deleted_index_is_written_again(tmp_path: Path) -> None:
    """An index deleted by hand: entries written to the unlinked file would reach no one."""
    path = tmp_path / "chat.log"
    codec = _seeded(path)
    os.unlink(f"{path}.idx")
    assert codec.append(message(3)) == 3
    assert [synced for _, synced, _ in entries(path)] == [True] * 4  # from memory, flags too
    assert codec.append(message(4)) == 4
    assert len(entries(path)) == 5
    codec.close()


def test_threads_share_a_codec_s_quick_appends(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    codec = _seeded(path, durability="flush")
    got: dict[int, list[int]] = {}

    def run(t: int) -> None:
        got[t] = [codec.append({"role": "t", "content": f"{t}-{i}"}) for i in range(50)]

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(s for seqs in got.values() for s in seqs) == list(range(3, 203))
    stored = codec.load() or []
    for t, seqs in got.items():
        assert [stored[s]["content"] for s in seqs] == [f"{t}-{i}" for i in range(50)]
    codec.close()


# -- from review -----------------------------------------------------------------------------


def test_a_clock_that_reads_the_codec_keeps_the_log_locked(tmp_path: Path, watch: Watch) -> None:
    # The clock runs inside the append's hold. One that reads the codec (len(), a time) once
    # took the lock file again, turned the exclusive lock shared and dropped it: another
    # process's append went in meanwhile and was written over.
    path = tmp_path / "chat.log"
    during: list[list[int]] = []
    ticks = Clock()

    def clock() -> int:
        if armed:
            armed.clear()
            assert len(codec) == 3  # nested in the append's hold
            during.append(_child(path, "try", 100, 1))  # another process: locked out
        return ticks()

    armed: list[bool] = []
    codec = ConversationCodec(path, encryption_key=KEY, clock=clock)
    for i in range(3):
        codec.append(message(i))
    watch.calls.clear()
    armed.append(True)
    assert codec.append(message(3)) == 3
    assert watch.calls[-1].caller.endswith("quick.py")  # the quick path made it
    assert during == [[]]  # the child timed out on the lock
    codec.close()
    with ConversationCodec(path, encryption_key=KEY) as fresh:
        assert fresh.load() == [message(i) for i in range(4)]
        assert fresh.verify().problems == ()


def test_an_exception_inside_a_quick_append_releases_the_lock_and_the_mutex(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C (or any exception that is no OSError) between the lock and the writes.
    path = tmp_path / "chat.log"
    codec = _seeded(path)
    real = os.fstat
    armed = [True]

    def fstat(fd: int, *args: Any, **kwargs: Any) -> os.stat_result:
        if armed and sys._getframe(1).f_code.co_filename.endswith("quick.py"):
            armed.clear()
            raise KeyboardInterrupt
        return real(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fstat", fstat)
    with pytest.raises(KeyboardInterrupt):
        codec.append(message(3))
    assert not armed
    monkeypatch.undo()
    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(codec.append(message(4))))
    worker.start()
    worker.join(20)
    assert done == [3]  # another thread gets the mutex
    assert _child(path, "try", 0, 1) == [4]  # another process gets the lock
    codec.close()


def test_without_fdatasync_a_flushed_append_takes_the_general_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # macOS has no os.fdatasync: a flushed append does not need it, and must not look it up.
    path = tmp_path / "chat.log"
    monkeypatch.delattr(os, "fdatasync")
    with ConversationCodec(path, encryption_key=KEY, durability="flush") as codec:
        assert [codec.append(message(i)) for i in range(4)] == [0, 1, 2, 3]
        assert codec.load() == [message(i) for i in range(4)]


def test_reindex_turns_the_quick_append_off_for_the_keyword_index(tmp_path: Path) -> None:
    # reindex() asks for the index: every later append keeps it, a deleted sidecar included.
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY) as codec:
        for i in range(3):
            codec.append(message(i))
        assert codec.reindex() == 3
        Path(f"{path}.kwi").unlink()
        codec.append(message(3))
        assert Path(f"{path}.kwi").exists()
        assert [h.seq for h in codec.search("message 3")] == [3]


def test_a_replaced_default_seam_sees_every_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FileIO.sync replaced on the class (instrumentation): the default seam is then no
    # longer the OS's calls, and the quick append gives way to the path that calls it.
    seen: list[int] = []
    real = FileIO.sync

    def sync(self: FileIO, fd: int, *, data_only: bool) -> None:
        seen.append(fd)
        real(self, fd, data_only=data_only)

    monkeypatch.setattr(FileIO, "sync", sync)
    with ConversationCodec(tmp_path / "chat.log", encryption_key=KEY) as codec:
        for i in range(5):
            codec.append(message(i))
    assert len(seen) >= 5


def test_an_interrupt_while_taking_the_lock_is_raised_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C landing in the quick append's flock: raised to the caller (not taken for a
    # busy lock and retried on the general path), and nothing stays held.
    import conversation_codec.storage.file.quick as quick

    assert quick.QUICK_FLOCK is not None
    real, take, untake = quick.QUICK_FLOCK
    armed: list[bool] = []  # armed once the log is seeded

    def flock(fd: int, operation: int) -> None:
        if operation == take and armed:
            armed.clear()
            raise KeyboardInterrupt
        real(fd, operation)

    monkeypatch.setattr(quick, "QUICK_FLOCK", (flock, take, untake))
    path = tmp_path / "chat.log"
    codec = _seeded(path)
    armed.append(True)
    with pytest.raises(KeyboardInterrupt):
        codec.append(message(3))
    assert not armed
    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(codec.append(message(4))))
    worker.start()
    worker.join(20)
    assert done == [3]
    assert _child(path, "try", 0, 1) == [4]
    codec.close()

"""I/O errors: every write, sync, truncate, rename and directory sync failing, once or for good.

A :class:`FaultyIO` passed as ``ConversationCodec(..., io=...)`` (the ``FileIO`` seam) fails
the Nth call of one kind with ``ENOSPC`` or ``EIO``, either once or from then on, while a
writer runs a fixed workload (appends, a batch, pops, an appending and a rewriting save, a
compaction). For every N up to the number of such calls the workload makes:

* each failing call surfaces as ``StorageError`` (a ``ConversationCodecError`` and an
  ``OSError``) carrying the injected errno;
* after each call a fresh reader (plain ``FileIO``) sees the acknowledged history, or, for
  the call that failed, the history before or after it (a prefix of a batch) — and the
  failing writer's own reads agree with it;
* after a failed sync of the log (FORMAT.md §8.2 step 5), or of the directory after a
  rename, the writer refuses every write with a ``StorageError`` that says to reopen, until
  it is reopened;
* reopened with working I/O, the log holds every acknowledged record, takes appends and
  verifies clean.

Short writes (``pwrite`` taking fewer bytes than offered) must be completed by the write
loop, and a write that runs out of space halfway must leave no partial batch behind.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conversation_codec import ConversationCodec, ConversationCodecError, FileIO, StorageError
from conversation_codec.compression import TRAIN_AFTER

from conftest import KEY, Clock, is_sidecar

Message = dict[str, Any]
KINDS = ("pwrite", "sync", "truncate", "rename", "sync_dir")
ERRNOS = (errno.ENOSPC, errno.EIO)


class FaultyIO(FileIO):
    """Fail the ``nth`` call of ``kind`` with ``err`` (and every later one if ``persistent``).

    ``short`` makes every ``pwrite`` take at most that many bytes; ``half_then`` makes the
    failing ``pwrite`` take half its bytes first and the next call fail (a disk filling up).
    """

    def __init__(
        self,
        kind: str = "",
        nth: int = 0,
        err: int = errno.EIO,
        *,
        persistent: bool = False,
        short: int = 0,
        half_then: bool = False,
        sidecars: bool = False,
    ) -> None:
        self.kind, self.nth, self.err = kind, nth, err
        self.persistent, self.short, self.half_then = persistent, short, half_then
        self.sidecars = sidecars  # count and fail the index and lock files' calls instead
        self.calls: Counter[str] = Counter()
        self.failures: list[str] = []
        self.data_syncs_failed = 0
        self.dir_syncs_failed = 0
        self._armed = False  # half_then: the next pwrite fails

    def _fail(self, kind: str) -> bool:
        self.calls[kind] += 1
        n = self.calls[kind]
        return kind == self.kind and (n == self.nth or (self.persistent and n > self.nth))

    def _raise(self, kind: str) -> None:
        self.failures.append(kind)
        raise OSError(self.err, os.strerror(self.err))

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        if is_sidecar(fd) is not self.sidecars:  # the log's calls, or the sidecars'
            return super().pwrite(fd, data, offset)
        if self._armed:
            self._armed = False
            self._raise("pwrite")
        if self._fail("pwrite"):
            if not self.half_then or len(data) < 2:
                self._raise("pwrite")
            self._armed = True
            return super().pwrite(fd, data[: len(data) // 2], offset)
        if self.short:
            data = data[: self.short]
        return super().pwrite(fd, data, offset)

    def sync(self, fd: int, *, data_only: bool) -> None:
        if is_sidecar(fd) is not self.sidecars:
            return super().sync(fd, data_only=data_only)
        if self._fail("sync"):
            self.data_syncs_failed += data_only  # the log's own fdatasync (FORMAT.md §8.2)
            self._raise("sync")
        super().sync(fd, data_only=data_only)

    def truncate(self, fd: int, size: int) -> None:
        if is_sidecar(fd) is not self.sidecars:
            return super().truncate(fd, size)
        if self._fail("truncate"):
            self._raise("truncate")
        super().truncate(fd, size)

    def rename(self, src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
        if is_sidecar(dst) is self.sidecars and self._fail("rename"):
            self._raise("rename")
        super().rename(src, dst, dir_fd=dir_fd)

    def sync_dir(self, path: str) -> None:
        if not self.sidecars and self._fail("sync_dir"):
            self.dir_syncs_failed += 1  # a rename may not be durable: poisons in any mode
            self._raise("sync_dir")
        super().sync_dir(path)


def _msg(i: int) -> Message:
    return {"role": "user" if i % 2 else "assistant", "content": f"message {i} " + "x" * (i * 37)}


@dataclass(frozen=True, slots=True)
class Step:
    """One writer call: its name, how to run it, and the histories it may leave."""

    name: str
    run: Callable[[ConversationCodec, list[Message]], object]
    after: Callable[[list[Message]], list[Message]]
    partial: bool = False  # a failure may keep a prefix of the appended batch


def _steps() -> list[Step]:
    batch = [_msg(20), _msg(21), _msg(22)]
    rewritten = [_msg(30), _msg(31)]
    return [
        Step("append", lambda c, s: c.append(_msg(10)), lambda s: [*s, _msg(10)]),
        Step("extend", lambda c, s: c.extend(batch), lambda s: s + batch, partial=True),
        Step("pop", lambda c, s: c.pop(), lambda s: s[:-1]),
        Step("save+", lambda c, s: c.save([*s, _msg(40)]), lambda s: [*s, _msg(40)]),
        Step("save~", lambda c, s: c.save(s[:2] + rewritten), lambda s: s[:2] + rewritten),
        Step("append", lambda c, s: c.append(_msg(11)), lambda s: [*s, _msg(11)]),
        Step("compact", lambda c, s: c.compact(), lambda s: s),
        Step("pop", lambda c, s: c.pop(), lambda s: s[:-1]),
        Step("append", lambda c, s: c.append(_msg(12)), lambda s: [*s, _msg(12)]),
    ]


def _outcomes(step: Step, before: list[Message]) -> list[list[Message]]:
    after = step.after(before)
    if step.partial:
        return [after[:k] for k in range(len(before), len(after) + 1)]
    return [before, after]


def _read(path: Path, key: str | None) -> list[Message]:
    with ConversationCodec(path, encryption_key=key) as reader:
        return reader.load() or []


def _seed(path: Path, key: str | None) -> list[Message]:
    initial = [_msg(i) for i in range(5)]
    with ConversationCodec(path, encryption_key=key, clock=Clock()) as codec:
        codec.extend(initial)
    return initial


@dataclass(slots=True)
class Result:
    """What one faulty run did."""

    errors: list[str] = field(default_factory=list)  # step names that raised
    refused_after_poison: int = 0


def run_workload(path: Path, key: str | None, io: FaultyIO, durability: str = "fsync") -> Result:
    """Run the workload through ``io`` and check every invariant of the module docstring."""
    state = _seed(path, key)
    result = Result()
    with ConversationCodec(
        path, encryption_key=key, durability=durability, clock=Clock(2 * 10**15), io=io
    ) as codec:
        for step in _steps():
            # A failed fdatasync of the log poisons the writer in any mode: under "flush"
            # pops (and torn-tail cuts) sync too (FORMAT.md §8.3).
            poisoned = io.dir_syncs_failed > 0 or io.data_syncs_failed > 0
            try:
                step.run(codec, state)
            except StorageError as exc:
                assert isinstance(exc, ConversationCodecError) and isinstance(exc, OSError)
                result.errors.append(step.name)
                if poisoned:
                    assert "reopen" in str(exc), f"a poisoned writer said: {exc}"
                    result.refused_after_poison += 1
                    assert _read(path, key) == state, "a refused write changed the log"
                    continue
                assert io.failures, f"{step.name} raised with no fault injected: {exc}"
                assert exc.errno == io.err, f"{step.name}: errno {exc.errno}, not {io.err}"
                now = _read(path, key)
                assert now in _outcomes(step, state), f"{step.name} failed and left {now}"
                state = now
            else:
                assert not poisoned, f"{step.name} succeeded after a failed fsync"
                state = step.after(state)
                assert _read(path, key) == state, f"{step.name} was acknowledged but is not there"
            assert (codec.load() or []) == state, f"after {step.name}: the writer's view differs"
    with ConversationCodec(path, encryption_key=key, clock=Clock(3 * 10**15)) as again:
        assert (again.load() or []) == state, "reopened: an acknowledged record is missing"
        assert again.append(_msg(99)) == len(state)
        report = again.verify()
        assert report.ok, report.problems
    return result


def _calls(
    tmp_path: Path, key: str | None, durability: str = "fsync", *, sidecars: bool = False
) -> Counter[str]:
    counter = FaultyIO(sidecars=sidecars)
    run_workload(tmp_path / "count.log", key, counter, durability)
    return counter.calls


@pytest.fixture(params=["sealed", "plain"])
def scheme(request: pytest.FixtureRequest) -> str | None:
    return KEY if request.param == "sealed" else None


@pytest.mark.parametrize(
    ("err", "persistent"),
    [  # each errno and each persistence once by default; the other two pairs under slow
        pytest.param(errno.ENOSPC, False, id="ENOSPC-once"),
        pytest.param(errno.EIO, True, id="EIO-persistent"),
        pytest.param(errno.ENOSPC, True, id="ENOSPC-persistent", marks=pytest.mark.slow),
        pytest.param(errno.EIO, False, id="EIO-once", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_fault_at_every_call(
    tmp_path: Path, scheme: str | None, kind: str, err: int, persistent: bool
) -> None:
    """Fail the Nth call of ``kind`` for every N the workload reaches."""
    total = _calls(tmp_path, scheme)[kind]
    assert total >= 1, f"the workload makes no {kind} call"
    for nth in range(1, total + 1):
        folder = tmp_path / f"n{nth}"
        folder.mkdir()
        io = FaultyIO(kind, nth, err, persistent=persistent)
        try:
            result = run_workload(folder / "chat.log", scheme, io)
        except AssertionError as exc:
            raise AssertionError(f"{kind} #{nth} failing ({os.strerror(err)}): {exc}") from exc
        assert io.failures, f"{kind} #{nth} was never reached"
        assert result.errors, f"{kind} #{nth} failed but no call raised"
    print(f"{kind}: failed call #1..#{total} of the workload")


@pytest.mark.parametrize("kind", ["pwrite", "sync", "truncate"])
def test_index_and_lock_faults_lose_nothing(tmp_path: Path, scheme: str | None, kind: str) -> None:
    """The index and lock files write through the same seam (issue 13): failing their Nth
    call, for every N the workload reaches, loses no acknowledged record and leaves a log
    that reopens, takes appends and verifies clean (the index is rebuilt from the log)."""
    total = _calls(tmp_path, scheme, sidecars=True)[kind]
    assert total >= 1, f"the workload makes no {kind} call on its sidecars"
    for nth in range(1, total + 1):
        folder = tmp_path / f"n{nth}"
        folder.mkdir()
        io = FaultyIO(kind, nth, errno.EIO, sidecars=True)
        try:
            run_workload(folder / "chat.log", scheme, io)
        except AssertionError as exc:
            raise AssertionError(f"sidecar {kind} #{nth} failing: {exc}") from exc
        assert io.failures, f"sidecar {kind} #{nth} was never reached"
    print(f"sidecar {kind}: failed call #1..#{total} of the workload")


def test_flush_mode_faults(tmp_path: Path, scheme: str | None) -> None:
    """Under "flush" only rewrites and pops sync (FORMAT.md §8.3: a pop's cut is synced so
    that no power loss brings the popped record back); their failures are reported and lose
    nothing."""
    calls = _calls(tmp_path, scheme, "flush")
    assert calls["truncate"] == 2, calls  # the workload's two pops
    assert calls["sync"] == 2 + 2 and calls["sync_dir"] == 2, calls  # two rewrites, two pops
    for kind in KINDS:
        for nth in range(1, calls[kind] + 1):
            folder = tmp_path / f"{kind}{nth}"
            folder.mkdir()
            io = FaultyIO(kind, nth, errno.EIO)
            run_workload(folder / "chat.log", scheme, io, "flush")
            assert io.failures


@pytest.mark.parametrize("err", ERRNOS, ids=["ENOSPC", "EIO"])
def test_failed_fsync_refuses_writes_until_reopened(
    tmp_path: Path, scheme: str | None, err: int
) -> None:
    """After a failed fdatasync every write is refused, reads go on, and reopening heals."""
    path = tmp_path / "chat.log"
    state = _seed(path, scheme)
    io = FaultyIO("sync", 1, err)
    with ConversationCodec(path, encryption_key=scheme, io=io) as codec:
        with pytest.raises(StorageError) as first:
            codec.append(_msg(10))
        assert first.value.errno == err
        assert isinstance(first.value, OSError) and isinstance(first.value, ConversationCodecError)
        io.kind = ""  # the disk works again: the writer must still refuse
        writes: list[Callable[[], object]] = [
            lambda: codec.append(_msg(11)),
            lambda: codec.extend([_msg(12)]),
            codec.pop,
            lambda: codec.save([*state, _msg(13)]),
            codec.compact,
        ]
        for write in writes:
            with pytest.raises(StorageError, match="reopen"):
                write()
        seen = codec.load() or []
        assert seen[:5] == state and len(seen) <= 6  # reads still work
    with ConversationCodec(path, encryption_key=scheme) as again:
        got = again.load() or []
        assert got in (state, [*state, _msg(10)])  # the unacknowledged append: either
        assert again.append(_msg(14)) == len(got)
        assert again.verify().ok


def test_failed_directory_fsync_refuses_writes(tmp_path: Path, scheme: str | None) -> None:
    """A rewrite renamed its temp file over the log but the directory fsync failed: the new
    name may not survive a power loss, so appends to the new file must not be acknowledged
    (they would vanish with it) until the log is reopened (they were before 71de437)."""
    path = tmp_path / "chat.log"
    state = _seed(path, scheme)
    with ConversationCodec(
        path, encryption_key=scheme, io=FaultyIO("sync_dir", 1, errno.EIO)
    ) as codec:
        assert codec.load() == state  # a divergent save() rewrites a history read in full
        with pytest.raises(StorageError):
            codec.save([_msg(50), *state])  # divergent: a rewrite
        with pytest.raises(StorageError, match="reopen"):
            codec.append(_msg(51))


def test_short_writes_are_completed(tmp_path: Path, scheme: str | None) -> None:
    """A pwrite that takes at most 7 bytes at a time still writes every record whole."""
    io = FaultyIO(short=7)
    path = tmp_path / "chat.log"
    result = run_workload(path, scheme, io)
    assert not result.errors
    assert io.calls["pwrite"] > path.stat().st_size // 7  # the loop went round many times


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_disk_full_halfway_leaves_no_partial_batch(
    tmp_path: Path, scheme: str | None, nth: int
) -> None:
    """ENOSPC after half a batch was written: the batch is not acknowledged and the log is
    cut back to where it was, so no torn bytes wait for the next writer."""
    path = tmp_path / "chat.log"
    state = _seed(path, scheme)
    size = path.stat().st_size
    with ConversationCodec(
        path, encryption_key=scheme, io=FaultyIO("pwrite", nth, errno.ENOSPC, half_then=True)
    ) as codec:
        failures = 0
        for i in range(nth):
            try:
                codec.extend([_msg(60 + i), _msg(70 + i)])
                state += [_msg(60 + i), _msg(70 + i)]
                size = path.stat().st_size
            except StorageError as exc:
                assert exc.errno == errno.ENOSPC
                failures += 1
        assert failures == 1
        assert path.stat().st_size == size, "a partial batch was left in the log"
        assert (codec.load() or []) == state
        assert codec.append(_msg(80)) == len(state)  # no fsync failed: still writable
    assert _read(path, scheme) == [*state, _msg(80)]


@pytest.mark.parametrize("kind", ["truncate", "sync"])
def test_fault_while_cutting_a_torn_tail(tmp_path: Path, scheme: str | None, kind: str) -> None:
    """The writer's recovery cut (FORMAT.md §10.1) fails: the append is refused with a
    StorageError, nothing acknowledged is lost, and a later writer cuts the tail."""
    path = tmp_path / "chat.log"
    state = _seed(path, scheme)
    with path.open("ab") as f:
        f.write(b"\x00" * 100)  # a zero-filled tail, as a power loss leaves
    with ConversationCodec(path, encryption_key=scheme, io=FaultyIO(kind, 1, errno.EIO)) as codec:
        with pytest.raises(StorageError):
            codec.append(_msg(90))
        assert (codec.load() or []) == state
        if kind == "sync":  # the cut was made but not synced: poisoned
            with pytest.raises(StorageError, match="reopen"):
                codec.append(_msg(91))
    with ConversationCodec(path, encryption_key=scheme) as again:
        assert again.load() == state
        assert again.append(_msg(92)) == len(state)
        assert again.verify().ok


def test_failed_pop_leaves_no_stale_view(tmp_path: Path, scheme: str | None) -> None:
    """pop() whose truncate fails: the message is still in the log, so this codec must keep
    returning it (as every other reader does), not only once its next write re-indexes it."""
    path = tmp_path / "chat.log"
    state = _seed(path, scheme)
    with ConversationCodec(
        path, encryption_key=scheme, io=FaultyIO("truncate", 1, errno.EIO)
    ) as codec:
        with pytest.raises(StorageError):
            codec.pop()
        assert _read(path, scheme) == state
        assert (codec.load() or []) == state


def test_failed_fsync_leaves_no_stale_view(tmp_path: Path, scheme: str | None) -> None:
    """append() whose fdatasync fails: readers see the record (it is in the file, and stays
    there after a reopen); the poisoned codec's own reads must agree with them."""
    path = tmp_path / "chat.log"
    _seed(path, scheme)
    with ConversationCodec(path, encryption_key=scheme, io=FaultyIO("sync", 1, errno.EIO)) as codec:
        with pytest.raises(StorageError):
            codec.append(_msg(10))
        assert (codec.load() or []) == _read(path, scheme)


def chat(n: int) -> list[dict[str, object]]:
    words = ["order", "coffee", "refund", "latte", "shipping", "account", "password", "invoice"]
    return [
        {"role": "user", "content": " ".join(words[(i * 7 + j) % len(words)] for j in range(12))}
        for i in range(n)
    ]


def test_a_failed_dictionary_write_does_not_fail_the_committed_append(tmp_path: Path) -> None:
    path = tmp_path / "c.log"

    class DictionaryWriteFails(FileIO):
        armed = False
        calls = 0

        def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
            if self.armed and not is_sidecar(fd):  # the log's own writes
                self.calls += 1
                if self.calls == 2:  # 1: the message frame, 2: the dictionary record
                    raise OSError(errno.ENOSPC, "No space left on device")
            return super().pwrite(fd, data, offset)

    io = DictionaryWriteFails()
    codec = ConversationCodec(path, encryption_key=KEY, durability="flush", io=io)
    codec.extend(chat(TRAIN_AFTER - 1))
    io.armed = True
    assert codec.append({"role": "user", "content": "the 512th"}) == TRAIN_AFTER - 1
    io.armed = False
    codec.append({"role": "user", "content": "the 513th"})
    codec.close()
    with ConversationCodec(path, encryption_key=KEY) as again:
        assert len(again) == TRAIN_AFTER + 1
        assert again.tail(2)[0] == {"role": "user", "content": "the 512th"}


# -- opens refused: a read-only file system, an unreadable file -----------------------------


def _refusing_opens(
    monkeypatch: pytest.MonkeyPatch, path: Path, code: int, *, reads_too: bool
) -> None:
    """Make os.open refuse ``path`` for writing (and, ``reads_too``, for reading) with
    ``code``: as a read-only mount (EROFS) or a file without permission (EACCES) would."""
    real = os.open

    def refusing(name: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(name) == str(path) and (reads_too or flags & (os.O_WRONLY | os.O_RDWR)):
            raise OSError(code, os.strerror(code), os.fspath(name))
        return real(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)


@pytest.mark.parametrize(
    "code", [errno.EROFS, errno.EACCES, errno.EPERM], ids=["erofs", "eacces", "eperm"]
)
def test_a_log_that_refuses_writes_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    # A read-only mount refuses O_RDWR with EROFS, not EACCES: the log is opened read-only
    # then, and reads as it is (it used to be a StorageError for EROFS).
    log = tmp_path / "c.log"
    with ConversationCodec(log, encryption_key=KEY, durability="flush") as codec:
        codec.extend([{"role": "user", "content": f"m{i}"} for i in range(5)])
    _refusing_opens(monkeypatch, log, code, reads_too=False)
    with ConversationCodec(log, encryption_key=KEY, durability="flush") as codec:
        assert codec.tail(2) == [{"role": "user", "content": f"m{i}"} for i in (3, 4)]
        with pytest.raises(StorageError):
            codec.append({"role": "user", "content": "more"})


@pytest.mark.parametrize(
    ("code", "reads_too"), [(errno.EROFS, False), (errno.EACCES, True)], ids=["erofs", "eacces"]
)
def test_an_empty_log_that_cannot_be_opened_is_an_empty_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reads_too: bool
) -> None:
    # FORMAT.md §9: an empty or missing P is an empty history, even when it cannot be
    # opened for writing (a read-only mount) or at all (no permission); a non-empty one
    # that cannot be read is an error.
    log = tmp_path / "c.log"
    log.write_bytes(b"")
    _refusing_opens(monkeypatch, log, code, reads_too=reads_too)
    with ConversationCodec(log, encryption_key=KEY, durability="flush") as codec:
        assert codec.load() is None
        assert len(codec) == 0
    monkeypatch.undo()
    with ConversationCodec(log, encryption_key=KEY, durability="flush") as codec:
        codec.append({"role": "user", "content": "hi"})
    _refusing_opens(monkeypatch, log, errno.EACCES, reads_too=True)
    with (
        pytest.raises(StorageError) as info,
        ConversationCodec(log, encryption_key=KEY, durability="flush") as codec,
    ):
        codec.load()
    assert info.value.errno == errno.EACCES

"""Crash safety: SIGKILLed writers, torn tails at every byte, zero-filled and garbage tails.

The promise under test (API.md): every acknowledged record survives; a torn tail is cut
back to the last intact record when a writer next opens; readers treat a torn final
record as the end of the log and never modify the file; and damage *followed by valid
records* is corruption (CorruptRecordError), never silently cut away.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import _children
from conversation_codec import ConversationCodec
from conversation_codec.errors import ConversationCodecError, CorruptRecordError

_WRITER = Path(__file__).resolve().with_name("_writer.py")
_spec = importlib.util.spec_from_file_location("_cc_writer_helper", _WRITER)
assert _spec is not None and _spec.loader is not None
_helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helper)
crash_message = _helper.crash_message

KILL_ROUNDS = 3  # per variant by default; SLOW_KILL_ROUNDS under -m slow
SLOW_KILL_ROUNDS = 50
TIMEOUT = 60.0  # seconds for any one child interaction; a hang fails, it does not stall
T0_US = 1_763_700_000_000_000  # 2025-11-21 in microseconds: the fixed clock's start


@pytest.fixture(params=["encrypted", "plaintext"])
def variant_key(request: pytest.FixtureRequest, key: str) -> str | None:
    """Run a test on an encrypted log (the fixed ``key``) and on a plaintext log."""
    return key if request.param == "encrypted" else None


def _clock(start_us: int = T0_US) -> Callable[[], int]:
    """Return a clock seam that ticks 1 ms per call."""
    ticks = iter(range(start_us, start_us + 10**12, 1000))
    return lambda: next(ticks)


def _small(i: int) -> dict[str, Any]:
    return {"role": "user" if i % 2 else "assistant", "content": f"message number {i}", "n": i}


NEW = {"role": "user", "content": "after recovery", "n": -1}
NEW_TS = datetime(2030, 1, 1, tzinfo=timezone.utc)  # later than anything the clock gives


class _Built:
    """A small log built with the fixed clock, plus snapshots after every append."""

    def __init__(
        self, path: Path, key: str | None, count: int = 5, durability: str = "fsync"
    ) -> None:
        self.path, self.key = path, key
        self.idx = Path(f"{path}.idx")
        self.messages = [_small(i) for i in range(count)]
        self.sizes: list[int] = []  # log size after each append
        self.idx_after: list[bytes | None] = []  # index bytes after each append
        with ConversationCodec(
            path, encryption_key=key, clock=_clock(), durability=durability
        ) as codec:
            for i, m in enumerate(self.messages):
                assert codec.append(m) == i
                self.sizes.append(path.stat().st_size)
                self.idx_after.append(self.idx.read_bytes() if self.idx.exists() else None)
        self.log = path.read_bytes()
        assert len(self.log) == self.sizes[-1]
        self.stamps = self._stamps()

    def _stamps(self) -> list[datetime]:
        with ConversationCodec(self.path, encryption_key=self.key) as codec:
            return [codec.timestamp(i) for i in range(len(self.messages))]

    def record(self, i: int) -> tuple[int, int]:
        """Return the ``[start, end)`` byte range of record ``i`` (``i >= 1``)."""
        assert i >= 1, "record 0's start is the header's end, which sizes do not show"
        return self.sizes[i - 1], self.sizes[i]

    def write(self, log: bytes, idx: bytes | None) -> None:
        """Replace the files on disk with ``log`` and ``idx`` (``None``: no index)."""
        self.path.write_bytes(log)
        if idx is None:
            self.idx.unlink(missing_ok=True)
        else:
            self.idx.write_bytes(idx)

    @functools.cached_property
    def new_record_size(self) -> int:
        """How many bytes appending NEW at NEW_TS adds to the intact log (and any prefix)."""
        clean = self.path.with_name("clean-copy.log")
        clean.write_bytes(self.log)
        Path(f"{clean}.idx").unlink(missing_ok=True)
        with ConversationCodec(clean, encryption_key=self.key) as codec:
            codec.append(NEW, timestamp=NEW_TS)
        size = clean.stat().st_size - len(self.log)
        with ConversationCodec(clean, encryption_key=self.key) as codec:
            codec.clear()
        return size


def _check_recovers(built: _Built, keep: int, damaged: bytes) -> None:
    """A damaged tail must read as the first ``keep`` messages and be cut by a writer.

    Readers must not modify the log; the first append cuts the tail, lands at seq
    ``keep`` and the log then loads as ``messages[:keep] + [NEW]`` in fresh instances.
    """
    expected = built.messages[:keep]
    with ConversationCodec(built.path, encryption_key=built.key) as reader:
        assert (reader.load() or []) == expected
        assert reader.message_count() == keep
        assert reader.tail(2) == expected[-2:]
        if keep:
            assert reader.get(-1) == expected[-1]
            assert reader.timestamp(keep - 1) == built.stamps[keep - 1]
        with pytest.raises(IndexError):
            reader.get(keep)
    assert built.path.read_bytes() == damaged, "a reader modified the log"
    with ConversationCodec(built.path, encryption_key=built.key) as writer:
        assert writer.append(NEW, timestamp=NEW_TS) == keep
        assert writer.load() == [*expected, NEW]
    with ConversationCodec(built.path, encryption_key=built.key) as again:
        assert again.load() == [*expected, NEW]
        assert again.message_count() == keep + 1
        assert [again.timestamp(i) for i in range(keep)] == built.stamps[:keep]
        assert again.timestamp(keep) == NEW_TS
    intact = built.sizes[keep - 1]
    after = built.path.read_bytes()
    assert after[:intact] == damaged[:intact], "intact records were rewritten"
    assert len(after) == intact + built.new_record_size, "the torn tail was not cut"


def _check_kept(built: _Built, keep: int, damaged: bytes) -> None:
    """A plain record that lost only its final newline, which a synced index entry proves
    committed (FORMAT.md §10.1), is kept: readers read it, leaving the file as it is; the
    first append puts the newline back, then writes after it."""
    expected = built.messages[: keep + 1]
    with ConversationCodec(built.path) as reader:
        assert reader.load() == expected
        assert reader.get(-1) == expected[-1]
    assert built.path.read_bytes() == damaged, "a reader modified the log"
    with ConversationCodec(built.path) as writer:
        assert writer.append(NEW, timestamp=NEW_TS) == keep + 1
    with ConversationCodec(built.path) as again:
        assert again.load() == [*expected, NEW]
    assert built.path.read_bytes().startswith(damaged + b"\n")


# --- (b) a torn last record, cut at every byte ---------------------------------------


@pytest.mark.parametrize("index", ["idx-after-5", "idx-after-4", "no-idx"])
def test_truncate_last_record_at_every_offset(
    tmp_path: Path, variant_key: str | None, index: str
) -> None:
    """Cut the log at every offset inside record 4: 4 messages remain, appends resume.

    The index is left as it was after the 5th append (ahead of the log: a power loss
    with durability="flush"), as after the 4th (a crash before the index write), or gone.
    One cut is no torn tail: a plain record short of only its newline, whose synced entry
    ("idx-after-5", written under "fsync") proves it committed, is kept (``_check_kept``).
    """
    built = _Built(tmp_path / "torn.log", variant_key)
    start, end = built.record(4)
    idx = {"idx-after-5": built.idx_after[4], "idx-after-4": built.idx_after[3]}.get(index)
    assert end - start > 20, "records are unexpectedly small; the sweep would prove little"
    for cut in range(start, end):
        damaged = built.log[:cut]
        built.write(damaged, idx)
        try:
            if variant_key is None and index == "idx-after-5" and cut == end - 1:
                _check_kept(built, 4, damaged)  # only its newline lost: committed
                continue
            _check_recovers(built, 4, damaged)
        except (AssertionError, ConversationCodecError) as exc:
            raise AssertionError(f"log cut at byte {cut} (record 4 is [{start}, {end})") from exc


@pytest.mark.parametrize("index", ["keep-idx", "no-idx"])
def test_truncate_every_record_boundary_region(
    tmp_path: Path, variant_key: str | None, index: str
) -> None:
    """Cut inside records 1..3 too (the log then ends there): the intact prefix survives
    (and, plain with the synced index, a record short of only its newline: ``_check_kept``)."""
    built = _Built(tmp_path / "torn.log", variant_key)
    idx = built.idx_after[-1] if index == "keep-idx" else None
    for rec in (1, 2, 3):
        start, end = built.record(rec)
        for cut in sorted({start, start + 1, (start + end) // 2, end - 1}):
            damaged = built.log[:cut]
            built.write(damaged, idx)
            try:
                if variant_key is None and idx is not None and cut == end - 1:
                    _check_kept(built, rec, damaged)  # only its newline lost: committed
                    continue
                _check_recovers(built, rec, damaged)
            except (AssertionError, ConversationCodecError) as exc:
                raise AssertionError(f"log cut at byte {cut} in record {rec}") from exc


# --- (c) zero-filled tails, (d) garbage tails ----------------------------------------


@pytest.mark.parametrize("zeros", [1, 7, 512, 4096])
@pytest.mark.parametrize("index", ["keep-idx", "no-idx"])
def test_zero_filled_tail_is_cut(
    tmp_path: Path, variant_key: str | None, zeros: int, index: str
) -> None:
    """Zeros after the last record (ext4 after a crash with delayed allocation) are cut."""
    built = _Built(tmp_path / "zeros.log", variant_key)
    damaged = built.log + b"\0" * zeros
    built.write(damaged, built.idx_after[-1] if index == "keep-idx" else None)
    _check_recovers(built, 5, damaged)


@pytest.mark.parametrize("where", ["whole", "second-half"])
def test_zero_filled_last_record_is_cut(
    tmp_path: Path, variant_key: str | None, where: str
) -> None:
    """The file grew but the last record's data never landed: it reads as zeros.

    That happens after a power loss under durability="flush", whose index entries are no
    evidence of a commit (FORMAT.md §7): the index may name the lost record ("idx-5").
    Under "fsync" the same index would prove the record committed: see
    test_zeroed_committed_record_is_refused.
    """
    built = _Built(tmp_path / "zeros.log", variant_key, durability="flush")
    start, end = built.record(4)
    keep_to = start if where == "whole" else (start + end) // 2
    damaged = built.log[:keep_to] + b"\0" * (end - keep_to)
    for name, idx in [
        ("idx-4", built.idx_after[3]),
        ("no-idx", None),
        ("idx-5", built.idx_after[4]),
    ]:
        built.write(damaged, idx)
        try:
            _check_recovers(built, 4, damaged)
        except (AssertionError, ConversationCodecError) as exc:
            raise AssertionError(f"index state {name}") from exc


@pytest.mark.parametrize("length", [1, 3, 16, 100, 1000, 70_000])
def test_garbage_tail_is_cut(
    tmp_path: Path, variant_key: str | None, rng: random.Random, length: int
) -> None:
    """Random bytes after the last record are a torn tail: cut, nothing committed lost."""
    built = _Built(tmp_path / "garbage.log", variant_key)
    for trial, idx in enumerate((built.idx_after[-1], None)):
        damaged = built.log + rng.randbytes(length)
        built.write(damaged, idx)
        try:
            _check_recovers(built, 5, damaged)
        except (AssertionError, ConversationCodecError) as exc:
            raise AssertionError(f"trial {trial}: garbage {damaged[-length:][:64]!r}") from exc


@pytest.mark.parametrize("huge", [b"\xff" * 16, b"\x7f\xff\xff\xff" * 4])
def test_tail_with_huge_length_field_is_cut(
    tmp_path: Path, variant_key: str | None, huge: bytes
) -> None:
    """A tail that starts with an absurd length is torn, not an allocation or a hang."""
    built = _Built(tmp_path / "huge.log", variant_key)
    damaged = built.log + huge
    built.write(damaged, None)
    _check_recovers(built, 5, damaged)


def _middle_damage(built: _Built, how: str) -> bytes:
    start, end = built.record(2)
    log = bytearray(built.log)
    if how == "flip-body":
        log[(start + end) // 2] ^= 0xFF
    elif how == "flip-first-byte":
        log[start] ^= 0x01
    elif how == "zero-record":
        log[start:end] = b"\0" * (end - start)
    elif how == "zero-block":  # one 64-byte run of zeros, ending inside record 2
        log[max(start, end - 64) : end - 8] = b"\0" * (end - 8 - max(start, end - 64))
    elif how == "drop-half":
        del log[(start + end) // 2 : end]
    else:
        raise AssertionError(how)
    return bytes(log)


@pytest.mark.parametrize(
    "how", ["flip-body", "flip-first-byte", "zero-record", "zero-block", "drop-half"]
)
@pytest.mark.parametrize("index", ["keep-idx", "no-idx"])
def test_damage_before_valid_records_is_corruption(
    tmp_path: Path, variant_key: str | None, how: str, index: str
) -> None:
    """Damage in record 2 with records 3 and 4 intact after it is never cut away.

    Reads that cover record 2 raise CorruptRecordError; a read that does not may answer
    (correctly). A writer either refuses (CorruptRecordError, file untouched) or appends
    after the damage without cutting anything — it need not scan the whole log to append.
    """
    built = _Built(tmp_path / "middle.log", variant_key)
    damaged = _middle_damage(built, how)
    built.write(damaged, built.idx_after[-1] if index == "keep-idx" else None)
    reads: dict[str, Callable[[ConversationCodec], object]] = {
        "load": lambda c: c.load(),
        "tail5": lambda c: c.tail(5),
        "iter": lambda c: list(c),
        "get2": lambda c: c.get(2),
    }
    for name, read in reads.items():
        try:
            with ConversationCodec(built.path, encryption_key=built.key) as codec:
                got = read(codec)
        except CorruptRecordError as exc:
            assert exc.path == built.path, name
        else:
            raise AssertionError(f"{name}() returned {got!r:.150} instead of raising")
        assert built.path.read_bytes() == damaged, f"{name} modified the damaged log"
    try:
        with ConversationCodec(built.path, encryption_key=built.key) as codec:
            tail = codec.tail(1)
    except CorruptRecordError:
        pass
    else:
        assert tail == built.messages[-1:]
    try:
        with ConversationCodec(built.path, encryption_key=built.key) as codec:
            seq = codec.append(NEW, timestamp=NEW_TS)
    except CorruptRecordError:
        assert built.path.read_bytes() == damaged, "a refusing writer modified the log"
    else:
        assert seq == 5, "the writer dropped records after the damage"
        assert built.path.read_bytes().startswith(damaged), "the writer rewrote the log"
        with (
            pytest.raises(CorruptRecordError),
            ConversationCodec(built.path, encryption_key=built.key) as codec,
        ):
            codec.load()


# --- (a) SIGKILL a writer process mid-stream ------------------------------------------


class _Child:
    """A ``_writer.py loop`` child whose stdout is read line by line with a timeout."""

    def __init__(self, path: Path, key: str | None, durability: str) -> None:
        self.proc = _children.Popen(
            [sys.executable, _helper.SCRIPT, "loop", str(path), "--durability", durability],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_helper.subprocess_env(key),
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._buf = b""

    def readline(self) -> str:
        """Return the next complete line; fail after TIMEOUT or if the child exits."""
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                raise AssertionError(f"child silent for {TIMEOUT} s")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise AssertionError(f"child exited early:\n{self.finish()[1]}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def kill(self) -> list[str]:
        """SIGKILL the child; return the complete lines it printed since the last read."""
        self.proc.send_signal(signal.SIGKILL)
        rc, err = self.finish()
        assert rc == -signal.SIGKILL, f"child exited {rc} before the kill:\n{err}"
        # A partial last line is an append whose acknowledgement never completed.
        return self._buf.decode().split("\n")[:-1]

    def finish(self) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=TIMEOUT)
        self._buf += out
        return self.proc.returncode, err.decode(errors="replace")


def _kill_rounds(
    path: Path, key: str | None, durability: str, rounds: int, rng: random.Random
) -> None:
    count = 0  # messages in the log after the last reopen
    acked_total = 0
    for rnd in range(rounds):
        child = _Child(path, key, durability)
        try:
            assert child.readline() == f"start {count}", f"round {rnd}"
            acked: list[int] = []
            if rng.random() < 0.2:  # sometimes kill before anything is acknowledged
                time.sleep(rng.uniform(0, 0.02))
            else:
                acked.append(int(child.readline()))
                time.sleep(rng.uniform(0, 0.15))
            acked += [int(s) for s in child.kill()]
        finally:
            if child.proc.poll() is None:
                child.proc.kill()
                child.finish()
        assert acked == list(range(count, count + len(acked))), f"round {rnd}: {acked[:5]}"
        floor = acked[-1] + 1 if acked else count
        with ConversationCodec(path, encryption_key=key) as codec:
            # Only what this round added is read back (the whole log is checked at the end).
            n = codec.message_count()
            assert floor <= n <= floor + 1, (
                f"round {rnd}: {n} records after reopen, {floor} acknowledged "
                "(all acknowledged must survive, at most one more)"
            )
            assert len(codec) == n
            fresh = codec.tail(n - count) if n > count else []
            if n:
                assert codec.get(-1) == crash_message(n - 1)
                assert codec.timestamp(n - 1) >= codec.timestamp(max(0, n - 2))
        expected = [crash_message(i) for i in range(count, n)]
        assert fresh == expected, f"round {rnd}: new records differ"
        acked_total += len(acked)
        count = n
    assert acked_total > 0, "no append was ever acknowledged; the test proved nothing"
    with ConversationCodec(path, encryption_key=key, lock_timeout=TIMEOUT) as codec:
        assert codec.append(NEW) == count, "appending did not resume at the right seq"
        everything = codec.load()
    assert everything == [*(crash_message(i) for i in range(count)), NEW]


@pytest.mark.parametrize(
    ("variant_key", "durability"),
    [
        pytest.param("encrypted", "fsync", id="encrypted-fsync"),
        pytest.param("plaintext", "flush", id="plaintext-flush"),
        # Each scheme and each durability once by default; the other two pairs under slow.
        pytest.param("encrypted", "flush", id="encrypted-flush", marks=pytest.mark.slow),
        pytest.param("plaintext", "fsync", id="plaintext-fsync", marks=pytest.mark.slow),
    ],
    indirect=["variant_key"],
)
def test_sigkill_writer_mid_stream(
    tmp_path: Path, variant_key: str | None, durability: str, rng: random.Random
) -> None:
    """Kill a writer process with SIGKILL at random moments; acknowledged records survive."""
    _kill_rounds(tmp_path / "killed.log", variant_key, durability, KILL_ROUNDS, rng)


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["fsync", "flush"])
def test_sigkill_writer_mid_stream_many_rounds(
    tmp_path: Path, variant_key: str | None, durability: str, rng: random.Random
) -> None:
    """The same, many more rounds."""
    _kill_rounds(tmp_path / "killed.log", variant_key, durability, SLOW_KILL_ROUNDS, rng)


def _digest(paths: Iterator[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


@pytest.mark.parametrize(
    "variant_key",
    ["encrypted", pytest.param("plaintext", marks=pytest.mark.slow)],  # the same file names
    indirect=True,
)
def test_sigkill_leaves_no_stray_files(tmp_path: Path, variant_key: str | None) -> None:
    """After kills and a clean reopen, the directory holds only log, index and lock."""
    path = tmp_path / "killed.log"
    _kill_rounds(path, variant_key, "fsync", 2, random.Random(7))
    names = set(_digest(tmp_path.iterdir()))
    assert names <= {"killed.log", "killed.log.idx", "killed.log.lock"}, names

"""Compaction and key rotation: ``ConversationCodec.compact`` / ``rotate_key``.

The promises under test (the compaction issue, FORMAT.md §8.4): every message keeps its
seq and timestamp; the rewrite holds the writer lock, so appends from other processes are
never lost and readers see the old log or the new one, never a mix; a crash between any
two steps of the rewrite (a real process killed with ``os._exit``, or a fault raised
in-process) leaves a log that opens with every message; after a rotation only the new key
opens the log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import _children
from conversation_codec import CompactionReport, ConversationCodec
from conversation_codec.errors import DecryptionError, KeyRequiredError
from conversation_codec.format.header import LOG_MAGIC

from conftest import Steps

KEY = "Qa3EwCEJr-ZK8_Wj1Z7pHqHDe7Ubwf2PY1M1hF_zqLk="  # fixed test keys, never real secrets
NEW_KEY = "y0XojHGqVqvD6Uw2uH_FU5nTh1DsJiTlwhUyDRyIWCs="
T0 = 1_763_700_000_000_000  # 2025-11-21T04:40:00Z in microseconds
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SRC = str(Path(__file__).resolve().parents[1] / "src")
TIMEOUT = 120.0  # seconds for any child process; a hang fails instead of stalling
REWRITE_STEPS = [
    "rewrite:temp-written",  # after the temp write, before its fsync
    "rewrite:temp-synced",  # after the fsync, before the rename
    "rewrite:renamed",  # after the rename, before the index and the directory fsync
    "rewrite:index-written",  # before the directory fsync
    "rewrite:dir-synced",  # after the directory fsync
]
SECRET = "zebra-crossing-7731"  # appears in every message: must never reach a sealed log


def message(i: int) -> dict[str, Any]:
    return {
        "role": "user" if i % 2 else "assistant",
        "content": f"{SECRET} message {i} " + "lorem ipsum " * (i % 9),
        "meta": {"i": i, "tags": ["a", "b"][: i % 3]},
    }


def clock(start: int = T0) -> Callable[[], int]:
    """A clock seam ticking 1 ms per call."""
    ticks = iter(range(start, start + 10**12, 1000))
    return lambda: next(ticks)


def build(path: Path, key: str | list[str] | None, n: int = 40) -> list[int]:
    """Write ``n`` messages with varied, increasing timestamps; return them in µs."""
    stamps = [T0 + i * 1_234_567 + (i % 3) for i in range(n)]
    with ConversationCodec(path, encryption_key=key, clock=clock()) as codec:
        for i in range(0, n, 7):
            chunk = range(i, min(n, i + 7))
            codec.extend([message(j) for j in chunk], timestamps=[us_dt(stamps[j]) for j in chunk])
        codec.pop()  # a truncation, so compaction has history to fold away
        codec.append(message(n - 1), timestamp=us_dt(stamps[n - 1]))
    return stamps


def us_dt(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def check_intact(path: Path, key: str | list[str] | None, stamps: list[int]) -> None:
    """Every message present, in place (seq), with its timestamp, in a fresh instance."""
    with ConversationCodec(path, encryption_key=key) as codec:
        assert codec.load() == [message(i) for i in range(len(stamps))]
        assert codec.message_count() == len(stamps)
        assert [codec.timestamp(i) for i in range(len(stamps))] == [us_dt(t) for t in stamps]
        assert [codec.get(i)["meta"]["i"] for i in (0, len(stamps) // 2, -1)] == [
            0,
            len(stamps) // 2,
            len(stamps) - 1,
        ]


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.fixture(params=["encrypted", "plaintext"])
def key(request: pytest.FixtureRequest) -> str | None:
    return KEY if request.param == "encrypted" else None


# --- what compaction keeps --------------------------------------------------------------


def test_compact_keeps_messages_seqs_and_timestamps(tmp_path: Path, key: str | None) -> None:
    path = tmp_path / "chat.log"
    stamps = build(path, key)
    before = path.stat().st_size + Path(f"{path}.idx").stat().st_size
    header = path.read_bytes()[:80]
    with ConversationCodec(path, encryption_key=key) as codec:
        report = codec.compact()
        assert report == CompactionReport(len(stamps), before, report.bytes_after)
        assert report.bytes_after == path.stat().st_size + Path(f"{path}.idx").stat().st_size
        assert codec.load() == [message(i) for i in range(len(stamps))]  # the same instance
        assert codec.append(message(len(stamps))) == len(stamps)  # and it keeps appending
        codec.pop()
    check_intact(path, key, stamps)
    assert path.read_bytes()[:80] != header, "a rewrite gets a fresh log_id"
    assert files(tmp_path) == {"chat.log", "chat.log.idx", "chat.log.lock"}
    assert path.stat().st_mode & 0o777 == 0o600


def test_compact_twice_is_stable_and_empty_log_is_a_no_op(tmp_path: Path, key: str | None) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=key) as codec:
        assert codec.compact() == CompactionReport(0, 0, 0)
    assert not path.exists()
    stamps = build(path, key, n=3)
    with ConversationCodec(path, encryption_key=key) as codec:
        first = codec.compact()
        second = codec.compact()
    assert first.messages == second.messages == 3
    assert second.bytes_before == second.bytes_after == first.bytes_after
    check_intact(path, key, stamps)


def test_compact_rebuilds_a_damaged_index(tmp_path: Path, key: str | None) -> None:
    path = tmp_path / "chat.log"
    stamps = build(path, key, n=10)
    idx = Path(f"{path}.idx")
    idx.write_bytes(idx.read_bytes()[:40] + b"\xff" * 64)  # garbled entries
    with ConversationCodec(path, encryption_key=key) as codec:
        codec.compact()
    check_intact(path, key, stamps)


def test_compact_encrypts_a_plaintext_log(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    stamps = build(path, None)
    with ConversationCodec(path) as codec:
        report = codec.compact(encryption_key=KEY)
        assert codec.encrypted
        codec.append(message(len(stamps)), timestamp=us_dt(stamps[-1] + 1))
        codec.pop()
    assert report.messages == len(stamps)
    assert path.read_bytes().startswith(LOG_MAGIC)
    for p in tmp_path.iterdir():  # no plaintext left anywhere: log, index, lock, temps
        assert SECRET.encode() not in p.read_bytes(), p.name
    check_intact(path, KEY, stamps)
    with pytest.raises(KeyRequiredError):
        ConversationCodec(path)


# --- rotation -------------------------------------------------------------------------


def test_rotate_key_new_key_opens_old_key_fails(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    stamps = build(path, KEY)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        report = codec.rotate_key(NEW_KEY)
        assert report.messages == len(stamps)
        assert codec.load() == [message(i) for i in range(len(stamps))]
    check_intact(path, NEW_KEY, stamps)
    with pytest.raises(DecryptionError, match="wrong key"):
        ConversationCodec(path, encryption_key=KEY)
    check_intact(path, [KEY, NEW_KEY], stamps)  # a key list still finds the right one
    with ConversationCodec(path, encryption_key=NEW_KEY) as codec:  # and rotating back
        codec.rotate_key(KEY)
    check_intact(path, KEY, stamps)
    with pytest.raises(DecryptionError):
        ConversationCodec(path, encryption_key=NEW_KEY)


def test_compact_finishes_a_rotation_in_progress(tmp_path: Path) -> None:
    """A key list whose first key is new: compact re-seals all under it."""
    path = tmp_path / "chat.log"
    stamps = build(path, KEY, n=10)
    with ConversationCodec(path, encryption_key=[NEW_KEY, KEY]) as codec:
        codec.append(message(10), timestamp=us_dt(stamps[-1] + 5))
        codec.compact()
    stamps.append(stamps[-1] + 5)
    check_intact(path, NEW_KEY, stamps)
    with pytest.raises(DecryptionError):
        ConversationCodec(path, encryption_key=KEY)


def test_failed_rotation_keeps_the_old_key(tmp_path: Path) -> None:
    """A rotation that fails before its rename leaves the log under the old key only."""
    path = tmp_path / "chat.log"
    stamps = build(path, KEY, n=5)
    steps = Steps(raise_at("rewrite:temp-synced"))
    with ConversationCodec(path, encryption_key=KEY, io=steps) as codec:
        with pytest.raises(_Injected):
            codec.rotate_key(NEW_KEY)
        steps.on_step = lambda step: None
        assert codec.append(message(5), timestamp=us_dt(stamps[-1] + 1)) == 5
        codec.pop()
    check_intact(path, KEY, stamps)
    with pytest.raises(DecryptionError):
        ConversationCodec(path, encryption_key=NEW_KEY)


# --- crashes between the steps ---------------------------------------------------------


class _Injected(Exception):
    pass


def raise_at(step: str) -> Callable[[str], None]:
    def fault(name: str) -> None:
        if name == step:
            raise _Injected(step)

    return fault


def test_rewrite_steps_are_the_ones_under_test(tmp_path: Path) -> None:
    """The crash tests cover every step: the fault seam reports exactly these."""
    path = tmp_path / "chat.log"
    build(path, KEY, n=3)
    seen: list[str] = []
    with ConversationCodec(path, encryption_key=KEY, io=Steps(seen.append)) as codec:
        codec.compact()
    assert seen == REWRITE_STEPS


# (open with, compact(encryption_key=...), key that opens the new log)
SCENARIOS = {
    "compact-plain": (None, None, None),
    "compact-sealed": (KEY, None, KEY),
    "rotate": (KEY, NEW_KEY, NEW_KEY),
    "encrypt": (None, KEY, KEY),
}

_CRASH_CHILD = r"""
import json, os, sys
from conversation_codec import ConversationCodec, FileIO
path, step, old, new = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
class Steps(FileIO):
    def step(self, name):
        if name == step:
            os._exit(17)  # no cleanup, no flush: as abrupt as a kill
codec = ConversationCodec(path, encryption_key=old, io=Steps())
codec.compact(encryption_key=new)
sys.exit(3)  # the step was never reached
"""


@pytest.mark.parametrize(
    "scenario",
    [  # by default the two that change the key: from a plaintext and from a sealed log
        "rotate",
        "encrypt",
        pytest.param("compact-plain", marks=pytest.mark.slow),
        pytest.param("compact-sealed", marks=pytest.mark.slow),
    ],
)
def test_killed_at_every_rewrite_step_reopens_intact(tmp_path: Path, scenario: str) -> None:
    """A process killed between any two rewrite steps leaves the old log or the new one.

    Before the rename the old key opens the log; from the rename on the new one does
    (and the old no longer does, for a rotation). Either way every message is there with
    its seq and timestamp, and the next writer sweeps the temp file away.
    """
    old, new, new_opener = SCENARIOS[scenario]
    runs = {}
    for step in REWRITE_STEPS:  # one child per step, all at once
        folder = tmp_path / step.replace(":", "_")
        folder.mkdir()
        stamps = build(folder / "chat.log", old, n=25)
        args = [sys.executable, "-c", _CRASH_CHILD, str(folder / "chat.log"), step]
        args += [json.dumps(old), json.dumps(new)]
        runs[step] = (folder, _children.Popen(args, env=child_env(), stderr=subprocess.PIPE))
    for step, (folder, proc) in runs.items():
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 17, f"{step}: child exited {proc.returncode}: {err.decode()}"
        path = folder / "chat.log"
        committed = REWRITE_STEPS.index(step) >= REWRITE_STEPS.index("rewrite:renamed")
        opener = new_opener if committed else old
        try:
            check_intact(path, opener, stamps)
            if new is not None and committed and old is not None:
                with pytest.raises(DecryptionError):
                    ConversationCodec(path, encryption_key=old)
            with ConversationCodec(path, encryption_key=opener) as writer:  # writes resume
                assert writer.append(message(25), timestamp=us_dt(stamps[-1] + 1)) == 25
            check_intact(path, opener, [*stamps, stamps[-1] + 1])
            assert files(folder) == {"chat.log", "chat.log.idx", "chat.log.lock"}
        except Exception as exc:
            raise AssertionError(f"after a crash at {step} ({scenario})") from exc


@pytest.mark.parametrize("step", REWRITE_STEPS)
def test_fault_raised_at_every_rewrite_step_reopens_intact(
    tmp_path: Path, key: str | None, step: str
) -> None:
    path = tmp_path / "chat.log"
    stamps = build(path, key, n=12)
    with (
        ConversationCodec(path, encryption_key=key, io=Steps(raise_at(step))) as codec,
        pytest.raises(_Injected),
    ):
        codec.compact()
    check_intact(path, key, stamps)
    if REWRITE_STEPS.index(step) < REWRITE_STEPS.index("rewrite:renamed"):
        assert files(tmp_path) == {"chat.log", "chat.log.idx", "chat.log.lock"}, "temp left"


def test_same_instance_after_a_fault_past_the_rename_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    stamps = build(path, None, n=5)
    steps = Steps(raise_at("rewrite:renamed"))
    with ConversationCodec(path, io=steps) as codec:
        with pytest.raises(_Injected):
            codec.compact()
        steps.on_step = lambda step: None
        assert codec.append(message(5), timestamp=us_dt(stamps[-1] + 1)) == 5
    check_intact(path, None, [*stamps, stamps[-1] + 1])


# --- other processes during compaction ---------------------------------------------------

# Paced (1 ms between appends, as turns come): on tmpfs, where a sync costs nothing, all
# 150 appends landed before the first compaction ended, and the test proved nothing.
_APPENDER = r"""
import json, os, sys, time
from conversation_codec import ConversationCodec
path, count = sys.argv[1], int(sys.argv[2])
codec = ConversationCodec(path, encryption_key=json.loads(os.environ["CC_KEYS"]))
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
for i in range(count):
    msg = {"role": "user", "content": f"appended {i}", "a": i}
    print(codec.append(msg), flush=True)
    time.sleep(0.001)
codec.close()
"""

_READER = r"""
import json, os, sys, time
from conversation_codec import ConversationCodec
path, base, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
keys = json.loads(os.environ["CC_KEYS"])
first = json.loads(os.environ["CC_BASE"])
def expected(n):
    out = []
    for i in range(n):
        if i < base:
            out.append(first[i])
        else:
            out.append({"role": "user", "content": f"appended {i - base}", "a": i - base})
    return out
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
codec = ConversationCodec(path, encryption_key=keys)
loads, last, deadline = 0, 0, time.monotonic() + 100
while last < total:
    if loads % 5 == 4:
        codec.close()
        codec = ConversationCodec(path, encryption_key=keys)  # fresh caches too
    got = codec.load() or []
    if len(got) < last:
        raise SystemExit(f"history went back from {last} to {len(got)}")
    if got != expected(len(got)):
        bad = next(i for i, (a, b) in enumerate(zip(got, expected(len(got)))) if a != b)
        raise SystemExit(f"load {loads} is not a prefix of the history: first bad seq {bad}")
    last, loads = len(got), loads + 1
    if time.monotonic() > deadline:
        raise SystemExit(f"timed out at {last} of {total}")
print(json.dumps({"loads": loads, "last": last}), flush=True)
"""


def _spawn(script: str, args: list[str], keys: object, base: list[dict[str, Any]]) -> Any:
    env = child_env(CC_KEYS=json.dumps(keys), CC_BASE=json.dumps(base))
    proc = _children.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
    return proc


@pytest.fixture
def children() -> Iterator[list[Any]]:
    procs: list[Any] = []
    yield procs
    for proc in procs:  # only the processes this test started
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    "count", [80, *(pytest.param(n, marks=pytest.mark.slow) for n in (150, 300))]
)
@pytest.mark.parametrize(  # "rotating" rewrites a sealed log as "encrypted" does, and rotates
    "variant", ["plaintext", pytest.param("encrypted", marks=pytest.mark.slow), "rotating"]
)
def test_appends_and_reads_from_other_processes_during_compaction(
    tmp_path: Path, variant: str, count: int, children: list[Any]
) -> None:
    """An appender process adds ``count`` messages (80 by default; 150 and 300 under slow) and a
    reader process loops ``load()`` while this process compacts at least 20 times (rotating
    between two keys, when "rotating"): nothing is lost, nothing is duplicated, and every
    load is a prefix of the history."""
    rotate = variant == "rotating"
    keys: list[str] | None = None if variant == "plaintext" else [KEY, NEW_KEY]
    path = tmp_path / "chat.log"
    base_n = 20
    stamps = build(path, keys, n=base_n)
    base = [message(i) for i in range(base_n)]
    appender = _spawn(_APPENDER, [str(path), str(count)], keys, base)
    reader = _spawn(_READER, [str(path), str(base_n), str(base_n + count)], keys, base)
    children += [appender, reader]
    compactions, seen_counts = 0, set()
    with ConversationCodec(path, encryption_key=keys) as codec:
        for proc in (appender, reader):
            proc.stdin.write("go\n")
            proc.stdin.flush()
        deadline = time.monotonic() + TIMEOUT
        while appender.poll() is None or compactions < 20:
            order = [KEY, NEW_KEY] if compactions % 2 else [NEW_KEY, KEY]
            report = codec.rotate_key(order) if rotate and keys else codec.compact()
            seen_counts.add(report.messages)
            compactions += 1
            assert time.monotonic() < deadline, "appender did not finish"
        out, err = appender.communicate(timeout=TIMEOUT)
        assert appender.returncode == 0, err
        seqs = [int(line) for line in out.split()]
        assert seqs == list(range(base_n, base_n + count)), "acknowledged seqs are not exact"
        out, err = reader.communicate(timeout=TIMEOUT)
        assert reader.returncode == 0, err
        summary = json.loads(out)
        assert summary["last"] == base_n + count and summary["loads"] >= 2
        codec.compact()
    assert len(seen_counts) > 2, "compaction never overlapped the appends; the test proved little"
    expected = base + [{"role": "user", "content": f"appended {i}", "a": i} for i in range(count)]
    with ConversationCodec(path, encryption_key=keys) as codec:
        assert codec.load() == expected
        assert [codec.timestamp(i) for i in range(base_n)] == [us_dt(t) for t in stamps]
        times = [codec.timestamp(i) for i in range(len(expected))]
        assert times == sorted(times)
    if rotate:  # the last rotation put NEW_KEY or KEY first; the log opens with that key
        final = [KEY, NEW_KEY] if (compactions - 1) % 2 else [NEW_KEY, KEY]
        ConversationCodec(path, encryption_key=final[0]).close()
        with pytest.raises(DecryptionError):
            ConversationCodec(path, encryption_key=final[1])


def test_compaction_waits_for_the_writer_lock(tmp_path: Path, key: str | None) -> None:
    """compact() takes the writer lock: with another holder it waits (and times out)."""
    path = tmp_path / "chat.log"
    stamps = build(path, key, n=4)
    holder = ConversationCodec(path, encryption_key=key)
    other = ConversationCodec(path, encryption_key=key, lock_timeout=0.2)
    try:
        with holder.transaction():
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                other.compact()
            assert time.monotonic() - started >= 0.2
        other.compact()
    finally:
        holder.close()
        other.close()
    check_intact(path, key, stamps)


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
def test_rotate_key_none_is_refused_and_changes_nothing(tmp_path: Path, key: str | None) -> None:
    """rotate_key(None) used to compact and return, leaving the old key working (issue 11)."""
    from conversation_codec import ConversationCodecError

    from conftest import messages, snapshot

    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=key) as codec:
        codec.extend(messages(3))
        before = snapshot(tmp_path)
        with pytest.raises(KeyRequiredError, match=r"new key.*export\(\)") as info:
            codec.rotate_key(None)  # type: ignore[arg-type]
        assert isinstance(info.value, ConversationCodecError) and isinstance(info.value, ValueError)
        assert snapshot(tmp_path) == before
        assert codec.load() == messages(3)

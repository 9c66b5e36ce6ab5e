"""The index's timestamps are a cache: no deletion and no time query rests on them alone.

Issue 11 §5: with the ``ts_us`` of index entries 0-4 set to 0 (FORMAT.md §7; the last entry,
which every open authenticates, left intact), ``prune`` deleted 5 messages instead of 2,
``between`` answered ``[]``, and a negative index timestamp raised a foreign
``OverflowError``. Every test runs on a sealed and on a plain log: a plain record line holds
its own ``ts``, and the record's time rules over the index's there too.
"""

from __future__ import annotations

import errno
import os
import random
import struct
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec, FileIO
from conversation_codec.errors import ConversationCodecError

from conftest import KEY, messages

DAY = 86_400  # seconds
T0 = 1_763_683_200  # 2025-11-21T00:00:00Z, epoch seconds
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_US = 253_402_300_800 * 1_000_000  # 10000-01-01T00:00:00Z: where datetime ends
_ENTRY_TS = struct.Struct("<q")  # FORMAT.md §7: entry k's ts_us at 48 + 16 k + 8


@pytest.fixture(params=[KEY, None], ids=["sealed", "plain"])
def key(request: pytest.FixtureRequest) -> str | None:
    return request.param  # type: ignore[no-any-return]


def day(d: float) -> datetime:
    return EPOCH + timedelta(seconds=T0 + d * DAY)


def six_days(tmp_path: Path, key: str | None) -> Path:
    """A 6-message log, one message a day (days 0-5); return its path."""
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=key, durability="flush") as codec:
        codec.extend(messages(6), timestamps=[day(d) for d in range(6)])
    return path


def set_index_ts(path: Path, stamps: dict[int, int]) -> None:
    """Overwrite the ``ts_us`` of some index entries (as someone without the key can)."""
    idx = Path(f"{path}.idx")
    raw = bytearray(idx.read_bytes())
    for k, ts in stamps.items():
        _ENTRY_TS.pack_into(raw, 48 + 16 * k + 8, ts)
    idx.write_bytes(bytes(raw))


def us(d: float) -> int:
    return (T0 + round(d * DAY)) * 1_000_000


# Index timestamps that stay non-decreasing (so the index loads as usable) but lie:
# each moves the binary search's cut away from where the records put it.
TAMPERED = {
    "zeros": {k: 0 for k in range(5)},  # the repro: the cut at 1.5 lands on 5
    "raised": {k: us(4) for k in range(5)},  # the cut at 1.5 lands on 0
    "middle": {2: us(1), 3: us(1)},  # the cut at 1.5 lands on 4
}


@pytest.mark.parametrize("how", TAMPERED)
def test_prune_deletes_by_the_records_own_times(tmp_path: Path, key: str | None, how: str) -> None:
    path = six_days(tmp_path, key)
    set_index_ts(path, TAMPERED[how])
    with ConversationCodec(path, encryption_key=key) as codec:
        assert codec.prune(before=day(1.5)) == 2
        assert codec.load() == messages(6)[2:]
        assert [codec.timestamp(i) for i in range(4)] == [day(d) for d in range(2, 6)]
    with ConversationCodec(path, encryption_key=key) as codec:  # and so it stays
        assert codec.load() == messages(6)[2:]
        assert [codec.timestamp(i) for i in range(4)] == [day(d) for d in range(2, 6)]
        assert codec.verify().problems == ()


@pytest.mark.parametrize("how", TAMPERED)
def test_time_queries_answer_by_the_records_own_times(
    tmp_path: Path, key: str | None, how: str
) -> None:
    path = six_days(tmp_path, key)
    set_index_ts(path, TAMPERED[how])
    queries: dict[str, Callable[[ConversationCodec], list[int]]] = {
        "between 0.5-2.5": lambda c: [h.seq for h in c.between(day(0.5), day(2.5))],
        "between 1.5-1.7": lambda c: [h.seq for h in c.between(day(1.5), day(1.7))],
        "between 3.5-9": lambda c: [h.seq for h in c.between(day(3.5), day(9))],
        "since 1.5": lambda c: [h.seq for h in c.search(since=day(1.5))],
        "until 2.5": lambda c: [h.seq for h in c.search(until=day(2.5))],
        "until 2.5 newest": lambda c: [h.seq for h in c.search(until=day(2.5), newest_first=True)],
        "times": lambda c: [(h.timestamp - day(0)).days for h in c.between(day(0), day(9))],
    }
    truth = {
        "between 0.5-2.5": [1, 2],
        "between 1.5-1.7": [],
        "between 3.5-9": [4, 5],
        "since 1.5": [2, 3, 4, 5],
        "until 2.5": [0, 1, 2],
        "until 2.5 newest": [2, 1, 0],
        "times": [0, 1, 2, 3, 4, 5],
    }
    for name, query in queries.items():
        with ConversationCodec(path, encryption_key=key) as codec:  # each on a fresh open
            assert query(codec) == truth[name], name


def test_a_reader_does_not_write_the_rebuilt_index(tmp_path: Path, key: str | None) -> None:
    path = six_days(tmp_path, key)
    set_index_ts(path, TAMPERED["zeros"])
    log, idx = path.read_bytes(), Path(f"{path}.idx").read_bytes()
    with ConversationCodec(path, encryption_key=key) as codec:
        assert [h.seq for h in codec.between(day(0.5), day(2.5))] == [1, 2]
    assert path.read_bytes() == log and Path(f"{path}.idx").read_bytes() == idx


BAD_TS = {
    "zero": 0,
    "minus-one": -1,
    "i64-min": -(1 << 63),
    "i64-max": (1 << 63) - 1,
    "year-10000": MAX_US,
    "last-us-of-9999": MAX_US - 1,
}


@pytest.mark.parametrize("bad", BAD_TS)
def test_timestamp_and_info_never_raise_a_foreign_error(
    tmp_path: Path, key: str | None, bad: str
) -> None:
    """``timestamp()``/``info()`` answer from the index; whatever it holds, they answer
    with a datetime or a library error, and an impossible time is read from the record."""
    path = six_days(tmp_path, key)
    value = BAD_TS[bad]
    set_index_ts(path, {k: value for k in range(5)})
    with ConversationCodec(path, encryption_key=key) as codec:
        try:
            stamps = [codec.timestamp(i) for i in range(6)]
            info = codec.info()
        except ConversationCodecError:
            return  # a library error is an answer too
    assert stamps[5] == day(5) and info.last_timestamp == day(5)
    if 0 <= value < MAX_US and value <= us(5):
        # A possible time that keeps the index in order: the index may be believed.
        believed = [EPOCH + timedelta(microseconds=value)] * 5
        assert stamps[:5] in ([day(d) for d in range(5)], believed)
    else:
        # Out of the range writers use, or out of order: the entries are rebuilt.
        assert stamps == [day(d) for d in range(6)]
        assert info.first_timestamp == day(0)


def test_verify_reports_tampered_index_timestamps(tmp_path: Path, key: str | None) -> None:
    path = six_days(tmp_path, key)
    set_index_ts(path, TAMPERED["zeros"])
    with ConversationCodec(path, encryption_key=key) as codec:
        report = codec.verify()
    assert [p.kind for p in report.problems] == ["index-ts-mismatch"]
    problem = report.problems[0]
    assert problem.offset == 48 + 8  # entry 0's ts_us in the .idx file
    assert "seqs 0-4" in problem.detail
    assert report.ok  # the log itself is intact; the index is a cache


@pytest.mark.parametrize("value", [-1, -(1 << 63)])
def test_verify_reports_a_negative_index_timestamp(
    tmp_path: Path, key: str | None, value: int
) -> None:
    path = six_days(tmp_path, key)
    set_index_ts(path, {3: value})
    with ConversationCodec(path, encryption_key=key) as codec:
        report = codec.verify()
    assert [(p.kind, p.offset) for p in report.problems] == [("index-ts-mismatch", 48 + 56)]
    assert "seq 3" in report.problems[0].detail


def _explore(folder: Path, key: str | None, seed: int) -> None:
    """Garble random index times of a random log; every query and prune must still give
    the records' own answer, and timestamp()/info()/verify() no foreign error."""
    rng = random.Random(seed)
    n = rng.randint(1, 20)
    quarters = sorted(rng.randrange(40) for _ in range(n))  # equal times included
    truth = [us(q / 4) for q in quarters]
    path = folder / f"{seed}.log"
    with ConversationCodec(path, encryption_key=key, durability="flush") as codec:
        codec.extend(messages(n), timestamps=[EPOCH + timedelta(microseconds=t) for t in truth])
    pool = [0, -1, -(1 << 63), (1 << 63) - 1, MAX_US, MAX_US - 1, *truth]
    garbled = {
        k: rng.choice([*pool, us(rng.uniform(-1, 11))])
        for k in rng.sample(range(n), rng.randint(1, n))
    }
    if seed % 3:
        # Keep the index in order, and its last entry (authenticated on open) true: such
        # an index loads as usable, and only the records can tell that it lies.
        order = sorted(min(max(garbled.get(k, truth[k]), 0), truth[-1]) for k in range(n - 1))
        garbled = {k: t for k, t in enumerate(order) if t != truth[k]}
    set_index_ts(path, garbled)
    cuts = [
        EPOCH + timedelta(microseconds=rng.choice(truth) + rng.choice((-1, 0, 1))) for _ in range(4)
    ]
    cuts += [day(rng.uniform(-1, 11)) for _ in range(4)]
    with ConversationCodec(path, encryption_key=key) as codec:
        for i in range(n):
            codec.timestamp(i)  # whatever the index says: a datetime, never a foreign error
        codec.info()
        report = codec.verify()
        assert report.ok and {p.kind for p in report.problems} <= {"index-ts-mismatch"}
        for lo, hi in (sorted(rng.sample(cuts, 2)) for _ in range(4)):
            lo_us, hi_us = ((c - EPOCH) // timedelta(microseconds=1) for c in (lo, hi))
            want = [i for i, t in enumerate(truth) if lo_us <= t < hi_us]
            assert [h.seq for h in codec.between(lo, hi)] == want, (seed, garbled, lo, hi)
            assert [h.seq for h in codec.search(since=lo)] == [
                i for i, t in enumerate(truth) if t >= lo_us
            ]
            assert [h.seq for h in codec.search(until=hi, newest_first=True, limit=2)] == [
                i for i, t in enumerate(truth) if t < hi_us
            ][::-1][:2]
    cut = rng.choice(cuts)
    cut_us = (cut - EPOCH) // timedelta(microseconds=1)
    gone = sum(t < cut_us for t in truth)
    with ConversationCodec(path, encryption_key=key) as codec:
        assert codec.prune(before=cut) == gone, (seed, garbled, cut)
        assert (codec.load() or []) == messages(n)[gone:]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_garbled_index_times_fixed_seeds(tmp_path: Path, key: str | None, seed: int) -> None:
    _explore(tmp_path, key, seed)


@pytest.mark.slow
def test_garbled_index_times_random_seeds(tmp_path: Path, key: str | None) -> None:
    base = int(os.environ.get("TEST_SEED", random.randrange(1 << 32)))
    print(f"random seeds {base}..{base + 299} (rerun with TEST_SEED={base})")
    for seed in range(base, base + 300):
        _explore(tmp_path, key, seed)


class _IndexOps(FileIO):
    """The operating system, noting each write, truncate and sync of the index sidecar."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, int]] = []

    def _note(self, op: str, fd: int, arg: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".idx"):
            self.ops.append((op, arg))

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self._note("pwrite", fd, offset)
        return super().pwrite(fd, data, offset)

    def truncate(self, fd: int, size: int) -> None:
        self._note("truncate", fd, size)
        super().truncate(fd, size)

    def sync(self, fd: int, *, data_only: bool) -> None:
        self._note("sync", fd, 0)
        super().sync(fd, data_only=data_only)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names descriptors via /proc")
def test_a_rewrite_empties_an_older_index_durably_but_not_one_it_creates(
    tmp_path: Path, key: str | None
) -> None:
    """FORMAT.md §7: a rewrite truncates an existing sidecar to zero bytes and syncs that
    before writing the new header (an older copy coming back would be false evidence); the
    sidecar a new log's creation makes has no older copy, and costs no sync."""
    io = _IndexOps()
    codec = ConversationCodec(tmp_path / "c.log", encryption_key=key, io=io)
    codec.append({"role": "user", "content": "first"})
    assert io.ops == [("pwrite", 0), ("pwrite", 48)]  # the header, then entry 0: no sync
    io.ops.clear()
    codec.replace([{"role": "user", "content": "another history"}])
    assert io.ops[:3] == [("truncate", 0), ("sync", 0), ("pwrite", 0)]
    assert ("sync", 0) not in io.ops[3:]
    assert [m["content"] for m in ConversationCodec(tmp_path / "c.log", encryption_key=key)] == [
        "another history"
    ]


class _Syncs(FileIO):
    """The operating system, noting every file and directory sync by the file's name."""

    def __init__(self) -> None:
        self.synced: list[str] = []

    def sync(self, fd: int, *, data_only: bool) -> None:
        self.synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).split("-")[0])
        super().sync(fd, data_only=data_only)

    def fsync_dir(self, folder: str | os.PathLike[str] | int) -> None:
        self.synced.append("directory")
        super().fsync_dir(folder)  # (sync_dir calls it)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names descriptors via /proc")
@pytest.mark.parametrize("durability", ["fsync", "flush"])
def test_a_new_log_is_created_holding_its_first_messages_with_two_syncs(
    tmp_path: Path, key: str | None, durability: str
) -> None:
    """The first append to a new log is its creation (FORMAT.md §8.4): the temp file with
    the header and the messages, synced, renamed, the directory synced; no third sync of
    an empty log first. Its entries are then evidence (``ENTRY_SYNCED``) under both modes;
    the next append is an append."""
    io = _Syncs()
    codec = ConversationCodec(tmp_path / "c.log", encryption_key=key, durability=durability, io=io)
    codec.extend(messages(3))
    assert io.synced == ["c.log.tmp", "directory"]
    io.synced.clear()
    codec.append({"role": "user", "content": "then"})
    assert io.synced == (["c.log"] if durability == "fsync" else [])
    raw = (tmp_path / "c.log.idx").read_bytes()[48:]
    synced = [end >> 62 == 3 for end, _ in struct.iter_unpack("<Qq", raw)]
    assert synced == [True, True, True, durability == "fsync"]
    assert ConversationCodec(tmp_path / "c.log", encryption_key=key).load() == [
        *messages(3),
        {"role": "user", "content": "then"},
    ]


class _IndexWriteFails(FileIO):
    """The operating system, but the first write to the index sidecar fails (ENOSPC)."""

    def __init__(self) -> None:
        self.failed = 0

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        if not self.failed and os.readlink(f"/proc/self/fd/{fd}").endswith(".idx"):
            self.failed += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().pwrite(fd, data, offset)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names descriptors via /proc")
@pytest.mark.parametrize("exists", [False, True], ids=["creating", "appending"])
def test_a_failed_index_write_after_the_commit_acknowledges_the_append(
    tmp_path: Path, key: str | None, exists: bool
) -> None:
    """The index is a cache (FORMAT.md §7): once the records are committed — written, or a
    new log renamed into place holding them — a failed index write is not reported (the
    caller would append them again); the index is rewritten by the next write, and the
    directory is still synced."""
    io = _IndexWriteFails()
    path = tmp_path / "c.log"
    if exists:
        with ConversationCodec(path, encryption_key=key) as first:
            first.append({"role": "system", "content": "s"})
    with ConversationCodec(path, encryption_key=key, io=io) as codec:
        assert codec.append({"role": "user", "content": "hello"}) == int(exists)
        assert io.failed == 1
        codec.append({"role": "user", "content": "next"})
        assert codec.verify().ok
    got = ConversationCodec(path, encryption_key=key).load() or []
    assert [m["content"] for m in got] == ["s"] * exists + ["hello", "next"]

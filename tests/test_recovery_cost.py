"""What plain resynchronisation (FORMAT.md §10.1) costs: linear in the bytes scanned.

A message that nests objects starting with ``"seq"`` (an event list kept as objects) puts a
``{"seq":`` candidate every few bytes of its record line. Damage in such a line, or a crash
in the middle of writing it, once made every candidate copy, depth-scan and parse the rest of
the line: seconds for a log under 1 MB, minutes at 10 MB. The work is counted here, not
timed: the bytes ``nests_deeper_than`` is given, the bytes ``os.pread`` returns and the bytes
``Reader.get`` copies out of its window, against a budget of a few times the file's size,
which the quadratic walk exceeds within a few candidates (the counter then raises, so the
old code fails fast).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conversation_codec import ConversationCodec, CorruptRecordError, records
from conversation_codec.format.record import SuffixDepths, nests_deeper_than
from conversation_codec.maintenance.verify import salvage
from conversation_codec.storage.file.reader import Reader

from conftest import messages


class _Budget(Exception):
    """Raised by a counter when the walk does more work than the budget allows."""


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], dict[str, int]]]:
    """Count the bytes depth-scanned, read and copied; ``work(budget)`` arms the counters
    (from zero: one budget for each)."""
    counts = {"scanned": 0, "read": 0, "copied": 0, "budget": 0}
    scan, pread, get = records.nests_deeper_than, os.pread, Reader.get

    def counted(name: str, n: int) -> None:
        counts[name] += n
        if counts["budget"] and counts[name] > counts["budget"]:
            raise _Budget(f"{name} {counts[name]} bytes, over the budget of {counts['budget']}")

    def counting_scan(text: Any, limit: int) -> bool:
        counted("scanned", len(text))
        return scan(text, limit)

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        data = pread(fd, n, offset)
        counted("read", len(data))
        return data

    def counting_get(reader: Reader, start: int, end: int) -> bytes:
        data = get(reader, start, end)
        counted("copied", len(data))
        return data

    monkeypatch.setattr(records, "nests_deeper_than", counting_scan)
    monkeypatch.setattr(Reader, "get", counting_get)
    monkeypatch.setattr(os, "pread", counting_pread)

    def arm(budget: int) -> dict[str, int]:
        counts.update(scanned=0, read=0, copied=0, budget=budget)
        return counts

    yield arm


def _events(n: int, pad: int) -> dict[str, Any]:
    return {
        "role": "tool",
        "content": "events",
        "events": [{"seq": i, "type": "tick", "v": "x" * pad} for i in range(n)],
    }


def _bit_rot_log(path: Path, n_events: int) -> None:
    """10 messages, one holding ``n_events`` nested ``{"seq":`` objects whose time is
    damaged, then 3 intact records after it (reviewer's d1a_resync_cost_bitrot.py)."""
    with ConversationCodec(path) as codec:
        codec.extend(messages(10))
        codec.append(_events(n_events, 20))
        codec.extend(messages(3))
    data = bytearray(path.read_bytes())
    at = data.find(b'{"seq":10,"ts":"') + 20
    data[at] = ord("#")
    path.write_bytes(bytes(data))
    os.remove(f"{path}.idx")


def _torn_log(path: Path, n_events: int, pad: int) -> None:
    """10 messages, then a record line of ``n_events`` nested ``{"seq":`` objects torn at
    90%: what SIGKILL during its write leaves (reviewer's d1b_resync_cost_torn_tail.py)."""
    with ConversationCodec(path) as codec:
        codec.extend(messages(10))
        codec.append(_events(n_events, pad))
    data = path.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(last + (len(data) - last) * 9 // 10)
    os.remove(f"{path}.idx")


def test_bit_rot_in_a_long_line_of_nested_seq_objects_costs_a_linear_scan(
    tmp_path: Path, work: Callable[[int], dict[str, int]]
) -> None:
    path = tmp_path / "rot.log"
    _bit_rot_log(path, 3_000)  # 163 KB: was 3,000 depth scans of up to 160 KB each
    size = path.stat().st_size
    before = path.read_bytes()
    with ConversationCodec(path) as codec:
        counts = work(4 * size)  # each operation on its own budget
        with pytest.raises(CorruptRecordError, match="intact one"):
            codec.load()
        counts = work(4 * size)
        with pytest.raises(CorruptRecordError, match="intact one"):
            codec.append({"role": "user", "content": "after"})
        counts = work(4 * size)
        report = codec.verify()
        assert (
            counts["scanned"] <= 4 * size
            and counts["read"] <= 4 * size
            and counts["copied"] <= 4 * size
        )
    counts["budget"] = 0
    assert [p.kind for p in report.problems if p.is_damage] == ["damaged"]
    assert path.read_bytes() == before
    assert salvage(path, tmp_path / "copy.log").recovered == 13


def test_a_torn_long_line_of_nested_seq_objects_costs_a_linear_scan(
    tmp_path: Path, work: Callable[[int], dict[str, int]]
) -> None:
    path = tmp_path / "torn.log"
    _torn_log(path, 6_000, 200)  # 1.4 MB: was ~5,400 searches of the rest of the line
    size = path.stat().st_size
    with ConversationCodec(path) as codec:
        counts = work(4 * size)  # each operation on its own budget
        assert codec.load() == messages(10)  # a reader ignores the torn tail
        counts = work(4 * size)
        report = codec.verify()
        counts = work(4 * size)
        assert codec.append({"role": "user", "content": "after"}) == 10  # a writer cuts it
        assert (
            counts["read"] <= 4 * size
            and counts["copied"] <= 4 * size
            and counts["scanned"] <= 4 * size
        )
    assert "torn-tail" in [p.kind for p in report.problems]


@pytest.mark.slow
@pytest.mark.parametrize("n_events", [10_000, 60_000])
def test_bit_rot_cost_at_the_reviewers_sizes(
    tmp_path: Path, work: Callable[[int], dict[str, int]], n_events: int
) -> None:
    path = tmp_path / "rot.log"
    _bit_rot_log(path, n_events)
    size = path.stat().st_size
    started = time.perf_counter()
    with ConversationCodec(path) as codec:
        work(4 * size)
        with pytest.raises(CorruptRecordError, match="intact one"):
            codec.load()
        counts = work(4 * size)
        codec.verify()
    print(f"bit rot, {size:,} bytes: load + verify {time.perf_counter() - started:.2f} s")
    assert (
        counts["scanned"] <= 4 * size
        and counts["read"] <= 4 * size
        and counts["copied"] <= 4 * size
    )


@pytest.mark.slow
@pytest.mark.parametrize("n_events", [20_000, 60_000, 200_000])
def test_torn_tail_cost_at_the_reviewers_sizes(
    tmp_path: Path, work: Callable[[int], dict[str, int]], n_events: int
) -> None:
    path = tmp_path / "torn.log"
    _torn_log(path, n_events, 20)
    size = path.stat().st_size
    counts = work(4 * size)
    started = time.perf_counter()
    with ConversationCodec(path) as codec:
        assert codec.load() == messages(10)
    print(f"torn tail, {size:,} bytes: load {time.perf_counter() - started:.2f} s")
    assert (
        counts["read"] <= 4 * size
        and counts["copied"] <= 4 * size
        and counts["scanned"] <= 4 * size
    )


def _exported_records(n: int) -> dict[str, Any]:
    """A message holding records laid out as writers write them (an exported history):
    each nested ``{"seq":N,"ts":"...","message":{`` reads as a record's head."""
    ts = "2026-01-01T00:00:00.000000Z"
    return {
        "role": "tool",
        "content": "export",
        "records": [{"seq": i, "ts": ts, "message": {"content": "x" * 20}} for i in range(n)],
    }


def test_bit_rot_in_a_line_of_nested_record_heads_costs_a_linear_scan(
    tmp_path: Path, work: Callable[[int], dict[str, int]]
) -> None:
    """Each nested head is a candidate that only the depth of the rest of its line can
    settle (a record too deep to parse is read by its head): the line is tokenized once
    for all of them, not depth-scanned once each."""
    path = tmp_path / "rot.log"
    with ConversationCodec(path) as codec:
        codec.extend(messages(10))
        codec.append(_exported_records(3_000))
        codec.extend(messages(3))
    data = bytearray(path.read_bytes())
    data[data.find(b'{"seq":10,"ts":"') + 20] = ord("#")
    path.write_bytes(bytes(data))
    os.remove(f"{path}.idx")
    size = len(data)
    with ConversationCodec(path) as codec:
        counts = work(4 * size)
        with pytest.raises(CorruptRecordError, match="intact one") as raised:
            codec.load()
        assert raised.value.offset == data.find(b'{"seq":10,"ts":"')
        counts = work(4 * size)
        report = codec.verify()
        assert max(counts["scanned"], counts["read"], counts["copied"]) <= 4 * size
    assert [p.kind for p in report.problems if p.is_damage] == ["damaged"]


@pytest.mark.parametrize("where", ["line-start", "after-torn-bytes"])
def test_a_record_too_deep_to_parse_after_damage_is_still_found(tmp_path: Path, where: str) -> None:
    """The depth a head-only candidate needs is still measured (FORMAT.md §5.2, §10.1): a
    whole record line too deep to parse, after a damaged one, is damage before a record."""
    path = tmp_path / "deep.log"
    with ConversationCodec(path) as codec:
        codec.extend(messages(3))
    deep = b"[" * 70 + b"]" * 70
    line = b'{"seq":3,"ts":"2026-01-01T00:00:00.000000Z","message":{"a":%s}}\n' % deep
    torn = b'{"seq":3,"ts":"2026-01-01T00:0' + (b"\n" if where == "line-start" else b"")
    with open(path, "ab") as f:
        f.write(torn + line)
    os.remove(f"{path}.idx")
    before = path.read_bytes()
    with ConversationCodec(path) as codec:
        with pytest.raises(CorruptRecordError, match="intact one"):
            codec.load()
        with pytest.raises(CorruptRecordError):
            codec.append({"role": "user", "content": "after"})
    assert path.read_bytes() == before


def test_suffix_depths_agree_with_nests_deeper_than() -> None:
    """The shared tokenization answers as a depth scan of each suffix would (fixed seed)."""
    rng = random.Random(5)
    for _ in range(1_500):
        text = bytes(rng.choice(b'[]{}"\\ax') for _ in range(rng.choice([10, 60, 300])))
        limit = rng.choice([1, 2, 3, 5])
        depths = SuffixDepths(text, limit)
        ats = sorted(rng.sample(range(len(text)), 10))
        if rng.random() < 0.3:  # out of order: tokenized again
            ats = [rng.randrange(len(text)) for _ in range(20)]
        for at in ats:
            assert depths.deeper(at) == nests_deeper_than(text[at:], limit), (text, at)

"""reading: batched decryption (issue 15) reads every path exactly as record by record did.

LogReader decrypts records in batches (HMACs first, then one AES-CBC call). A damaged
record inside a batch must still be reported with the same error class, message, seq and
byte offset as a record-by-record read gives, after the records before it, and must not
disturb the records around it. Offsets come from the index file (FORMAT.md §7), not from
the library.
"""

from __future__ import annotations

import random
import string
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conversation_codec import ConversationCodec, generate_key
from conversation_codec.errors import CorruptRecordError
from conversation_codec.reading import DECRYPT_BATCH

from conftest import KEY, Clock, messages

COUNT = 700  # past the dictionary (512) and two decryption batches
DATA_START = 80  # FORMAT.md §3.1: an unbound sealed header
END_MASK = (1 << 62) - 1  # FORMAT.md §7: the low 62 bits of an entry's end


def _starts(log: Path) -> list[int]:
    """Each record's frame offset, from the index file (FORMAT.md §7)."""
    raw = Path(f"{log}.idx").read_bytes()
    ends = [
        struct.unpack_from("<Q", raw, 48 + 16 * k)[0] & END_MASK
        for k in range((len(raw) - 48) // 16)
    ]
    return [DATA_START, *ends[:-1]]


_BUILT: dict[int, tuple[bytes, bytes]] = {}  # count -> the log and index it builds


def _build(path: Path, count: int = COUNT) -> list[dict[str, Any]]:
    """Write ``count`` messages (half in one extend, half appended one by one) to ``path``;
    built once per count and copied, to keep the default run fast."""
    written = messages(count)
    if count in _BUILT:
        path.write_bytes(_BUILT[count][0])
        Path(f"{path}.idx").write_bytes(_BUILT[count][1])
        return written
    with ConversationCodec(path, encryption_key=KEY, clock=Clock(), durability="flush") as codec:
        codec.extend(written[: count // 2])
        for m in written[count // 2 :]:
            codec.append(m)
    _BUILT[count] = (path.read_bytes(), Path(f"{path}.idx").read_bytes())
    return written


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("seq", [0, 1, DECRYPT_BATCH - 1, DECRYPT_BATCH, 300, 512, COUNT - 2])
def test_a_damaged_record_in_a_batch_is_reported_as_alone(tmp_path: Path, seq: int) -> None:
    path = tmp_path / "chat.log"
    written = _build(path)
    starts = _starts(path)
    # The frame's last bytes are its HMAC; for seq 512 the span starts at the dictionary.
    # (The last record is checked on opening, with another message: not a read path.)
    _flip(path, starts[seq + 1] - 5)
    where = f"record {seq}: record failed authentication (at byte {starts[seq]} of {path})"
    reads: dict[str, Callable[[ConversationCodec], object]] = {
        "load": lambda c: c.load(),
        "get": lambda c: c.get(seq),
        "tail": lambda c: c.tail(COUNT - seq),
        "between": lambda c: c.between(c.timestamp(0), c.timestamp(COUNT - 1)),
        "search": lambda c: list(c.search("order")),
    }
    with ConversationCodec(path, encryption_key=KEY) as codec:
        for name, read in reads.items():
            with pytest.raises(CorruptRecordError) as info:
                read(codec)
            assert str(info.value) == where, name
            assert info.value.offset == starts[seq], name
        got: list[dict[str, Any]] = []
        with pytest.raises(CorruptRecordError, match=f"^record {seq}: "):
            got.extend(codec)
        assert got == written[: seq - seq % 256]  # iteration hands out whole batches of 256
        assert codec.tail(COUNT - seq - 1) == written[seq + 1 :]
        assert [codec.get(s) for s in range(seq)] == written[:seq]


def test_records_before_a_damaged_one_stream_out_first(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    written = _build(path)
    starts = _starts(path)
    _flip(path, starts[401] - 5)  # record 400 (appended alone: its own time)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        hits = codec.search("order", newest_first=True, limit=None)
        seen = []
        with pytest.raises(CorruptRecordError, match=r"^record 400: "):
            for hit in hits:
                seen.append(hit.seq)
        assert seen and min(seen) > 400  # the newer batches were read before it
        assert (
            codec.between(codec.timestamp(402), codec.timestamp(COUNT - 1))[0].message
            == (written[402])
        )


def test_a_log_under_two_keys_reads_in_batches(tmp_path: Path) -> None:
    """A rotation in progress: records sealed under the old key and under the new one
    interleave in one batch; each opens with its own key, and damage is reported as alone."""
    path = tmp_path / "chat.log"
    new = generate_key()
    written = _build(path, count=300)
    more = messages(300, start=300)
    with ConversationCodec(
        path, encryption_key=[new, KEY], clock=Clock(2 * 10**15), durability="flush"
    ) as codec:
        for m in more:
            codec.append(m)
        assert codec.load() == written + more
        assert codec.tail(400) == (written + more)[-400:]
    starts = _starts(path)
    _flip(path, starts[451] - 5)  # a record sealed under the new key
    with ConversationCodec(path, encryption_key=[new, KEY]) as codec:
        with pytest.raises(CorruptRecordError) as info:
            codec.load()
        assert info.value.offset == starts[450]
        assert str(info.value).startswith("record 450: record failed authentication")
        assert codec.tail(149) == more[151:]
        assert [codec.get(s) for s in range(440, 450)] == more[140:150]


@pytest.mark.parametrize("seq", [0, DECRYPT_BATCH - 1, DECRYPT_BATCH, 300, 512, COUNT - 2])
def test_verify_reports_a_damaged_record_inside_a_batch_where_it_is(
    tmp_path: Path, seq: int
) -> None:
    """verify() opens runs of intact records as one batch (issue 15): a record that fails
    inside a run is still the one problem, at its own offset, and every other record is
    counted."""
    path = tmp_path / "chat.log"
    _build(path)
    starts = _starts(path)
    first = starts[seq]
    if seq == 512:  # this span opens with the dictionary record: skip its frame (FORMAT.md §5)
        data, value, shift = path.read_bytes(), 0, 0
        while data[first] & 0x80:
            value, shift, first = value | (data[first] & 0x7F) << shift, shift + 7, first + 1
        first += 1 + ((value | data[first] << shift) >> 1)
    _flip(path, starts[seq + 1] - 5)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        report = codec.verify()
    assert [(p.kind, p.offset) for p in report.problems] == [("unauthenticated", first)]
    assert report.records == COUNT - 1


def test_records_around_the_two_byte_frame_prefix_read_back(tmp_path: Path) -> None:
    """Frames whose body fits a two-byte length prefix (bodies up to 8,184 bytes) are cut
    out of a read without a parse; longer ones, beside them, take the full frame parse."""
    rng = random.Random(15)  # base-62 text: zstd keeps ~3/4 of it, so bodies grow steadily
    alphabet = string.ascii_letters + string.digits
    written: list[dict[str, Any]] = [
        {"role": "user", "content": "".join(rng.choices(alphabet, k=size))}
        for size in range(10_600, 11_400, 16)
    ]
    written += messages(5)
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY, durability="flush") as codec:
        codec.extend(written)
    starts = _starts(path)
    frames = [b - a for a, b in zip(starts, [*starts[1:], path.stat().st_size], strict=True)]
    assert min(frames) < 8_186 + 2 and max(frames) > 8_200 + 3  # both prefix lengths
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.load() == written
        assert codec.tail(len(written)) == written
        assert [codec.get(i) for i in range(len(written))] == written
        report = codec.verify()
        assert report.ok and report.records == len(written)

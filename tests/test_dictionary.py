"""The per-log zstd dictionary (FORMAT.md §5.3): trained once, sealed in the log, kept readable."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from _spec_reader import read as spec_read
from conversation_codec import ConversationCodec
from conversation_codec.cli import main
from conversation_codec.compression import TRAIN_AFTER, train_dictionary
from conversation_codec.crypto import Keyring, LogCipher
from conversation_codec.errors import CorruptRecordError, DecryptionError
from conversation_codec.format.header import decode_sealed_header
from conversation_codec.format.record import encode_envelope, encode_frame
from conversation_codec.records import SealedRecords

from conftest import KEY, messages

NEW_KEY = "y0XojHGqVqvD6Uw2uH_FU5nTh1DsJiTlwhUyDRyIWCs="  # a fixed test key, never a real secret

WORDS = [
    "order",
    "coffee",
    "latte",
    "refund",
    "shipping",
    "address",
    "delivery",
    "tracking",
    "number",
    "account",
    "password",
    "reset",
    "invoice",
    "payment",
    "card",
    "declined",
    "subscription",
    "cancel",
    "upgrade",
    "plan",
    "support",
    "ticket",
]


def chat(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))
        if i % 3 == 2:
            out.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{i}",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": f'{{"q": "{text[:20]}"}}'},
                        }
                    ],
                }
            )
        else:
            out.append({"role": "user" if i % 3 == 0 else "assistant", "content": text})
    return out


def open_codec(path: Path) -> ConversationCodec:
    return ConversationCodec(path, encryption_key=KEY, durability="flush")


def dict_span(codec: ConversationCodec) -> tuple[int, int]:
    codec.message_count()
    return codec.storage.index.dict_span


def test_dictionary_is_trained_once_and_shrinks_records(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    msgs = chat(TRAIN_AFTER + 300)
    with open_codec(path) as codec:
        codec.extend(msgs[: TRAIN_AFTER - 1])
        assert dict_span(codec) == (0, 0)
        before = path.stat().st_size
        codec.extend(msgs[TRAIN_AFTER - 1 : TRAIN_AFTER + 100])
        span = dict_span(codec)
        assert span != (0, 0) and span[0] >= before
        codec.extend(msgs[TRAIN_AFTER + 100 :])
        assert dict_span(codec) == span  # trained once
    with open_codec(path) as codec:
        assert codec.load() == msgs
        assert codec.tail(5) == msgs[-5:]
        assert codec.get(TRAIN_AFTER + 50) == msgs[TRAIN_AFTER + 50]
        assert codec.verify().ok


def test_records_compress_better_with_the_dictionary(tmp_path: Path) -> None:
    msgs = chat(TRAIN_AFTER + 200, seed=3)
    later = msgs[TRAIN_AFTER:]
    with open_codec(tmp_path / "trained.log") as codec:
        codec.extend(msgs[:TRAIN_AFTER])  # the dictionary is trained here
        assert dict_span(codec) != (0, 0)
        start = (tmp_path / "trained.log").stat().st_size
        codec.extend(later)
        with_dictionary = (tmp_path / "trained.log").stat().st_size - start
    with open_codec(tmp_path / "fresh.log") as codec:
        codec.extend(later)  # too few messages to train: zstd alone
        assert dict_span(codec) == (0, 0)
        without = (tmp_path / "fresh.log").stat().st_size - 80
    assert with_dictionary < 0.8 * without


@pytest.mark.parametrize("how", ["deleted", "garbled"])
def test_index_loss_rebuilds_and_finds_the_dictionary(tmp_path: Path, how: str) -> None:
    path = tmp_path / "c.log"
    msgs = chat(TRAIN_AFTER + 50)
    with open_codec(path) as codec:
        codec.extend(msgs)
        span = dict_span(codec)
    idx = Path(str(path) + ".idx")
    if how == "deleted":
        idx.unlink()
    else:
        data = bytearray(idx.read_bytes())
        data[32:48] = bytes(16)  # forget where the dictionary is
        idx.write_bytes(bytes(data))
    with open_codec(path) as codec:
        assert codec.load() == msgs
        assert dict_span(codec) == span
        codec.append({"role": "user", "content": "after rebuild"})
    with open_codec(path) as codec:
        assert codec.tail(1) == [{"role": "user", "content": "after rebuild"}]


def test_popping_below_the_dictionary_drops_it_and_retrains(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    msgs = chat(TRAIN_AFTER + 20)
    with open_codec(path) as codec:
        codec.extend(msgs)
        assert dict_span(codec) != (0, 0)
        for _ in range(25):
            codec.pop()
        assert dict_span(codec) == (0, 0)
        assert codec.load() == msgs[:-25]
        codec.extend(msgs[-25:])
        assert dict_span(codec) != (0, 0)
    with open_codec(path) as codec:
        assert codec.load() == msgs
        assert codec.verify().ok


def test_compaction_retrains_on_the_whole_history(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    msgs = chat(3 * TRAIN_AFTER)
    with open_codec(path) as codec:
        codec.extend(msgs)
        before = path.stat().st_size
        report = codec.compact()
        assert report.messages == len(msgs)
        assert path.stat().st_size < before  # the first TRAIN_AFTER records shrink too
        span = dict_span(codec)
        assert span[0] == 80  # the dictionary record follows the header
    with open_codec(path) as codec:
        assert codec.load() == msgs
        assert codec.verify().ok


def test_salvage_and_verify_understand_dictionaries(tmp_path: Path) -> None:
    from conversation_codec.maintenance.verify import salvage

    path = tmp_path / "c.log"
    msgs = chat(TRAIN_AFTER + 40)
    with open_codec(path) as codec:
        codec.extend(msgs)
    Path(str(path) + ".idx").unlink()
    report = salvage(path, tmp_path / "copy.log", encryption_key=KEY)
    assert report.recovered == len(msgs) and report.lost_seqs == ()
    with open_codec(tmp_path / "copy.log") as codec:
        assert codec.load() == msgs


def test_plaintext_logs_never_get_a_dictionary(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    with ConversationCodec(path, durability="flush") as codec:
        codec.extend(chat(TRAIN_AFTER + 10))
        assert dict_span(codec) == (0, 0)
    assert all(line.startswith(b"{") for line in path.read_bytes().splitlines())


def test_an_extend_across_512_seals_the_records_after_the_dictionary_with_it(
    tmp_path: Path,
) -> None:
    """FORMAT.md §5.3: the dictionary goes where the log first holds 512 messages, trained on
    those 512, and the rest of the same batch is already sealed with it (read back with the
    independent spec reader, not the library)."""
    path = tmp_path / "c.log"
    msgs = chat(1102)
    with open_codec(path) as codec:
        codec.extend(msgs)
    log = spec_read(path.read_bytes(), key=KEY)
    assert log.messages == msgs
    kinds = [r.kind for r in log.records]
    at = kinds.index(1)
    assert kinds.count(1) == 1 and at == TRAIN_AFTER  # right after the record with seq 511
    dictionary, before, after = log.records[at], log.records[:at], log.records[at + 1 :]
    assert dictionary.ts_us == before[-1].ts_us  # stamped with the record before it
    assert not any(r.dict_id for r in before)
    assert sum(r.dict_id == 1 for r in after) >= 0.9 * len(after)
    trained_on_512 = train_dictionary(
        [json.dumps(m, separators=(",", ":")).encode() for m in msgs[:TRAIN_AFTER]]
    )
    assert trained_on_512 is not None and len(dictionary.payload) == len(trained_on_512)
    with open_codec(path) as codec:
        assert codec.load() == msgs and codec.verify().ok


def test_a_batch_that_reaches_512_exactly_ends_with_the_dictionary(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    msgs = chat(TRAIN_AFTER + 3)
    with open_codec(path) as codec:
        codec.extend(msgs[:TRAIN_AFTER])
        codec.extend(msgs[TRAIN_AFTER:])
    log = spec_read(path.read_bytes(), key=KEY)
    assert [r.kind for r in log.records].index(1) == TRAIN_AFTER
    assert all(r.dict_id == 1 for r in log.records[TRAIN_AFTER + 1 :])


@pytest.mark.parametrize("how", ["replace", "compact"])
def test_a_rewrite_puts_a_larger_dictionary_first(tmp_path: Path, how: str) -> None:
    path = tmp_path / "c.log"
    msgs = chat(1102, seed=5)
    appended = b""
    with open_codec(path) as codec:
        if how == "replace":
            codec.replace(msgs)
        else:
            codec.extend(msgs)
            before = spec_read(path.read_bytes(), key=KEY)
            appended = next(r.payload for r in before.records if r.kind == 1)
            codec.compact()
    log = spec_read(path.read_bytes(), key=KEY)
    assert log.messages == msgs
    assert log.records[0].kind == 1 and log.records[0].start == 80
    # Compaction keeps the log's own dictionary unless the new one wins (issue 15).
    assert 8 * 1024 < len(log.records[0].payload) <= 16 * 1024 or (
        how == "compact" and log.records[0].payload == appended
    )
    assert log.records[0].ts_us == log.records[1].ts_us  # the first message's time
    assert sum(r.dict_id == 1 for r in log.records[1:]) >= 0.9 * len(msgs)


def test_pop_below_the_dictionary_in_another_instance(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    msgs = chat(TRAIN_AFTER + 5)
    a = ConversationCodec(path, encryption_key=KEY, durability="flush")
    b = ConversationCodec(path, encryption_key=KEY, durability="flush")
    a.extend(msgs)
    assert b.tail(1) == msgs[-1:]  # b has loaded the dictionary
    for _ in range(10):
        a.pop()  # cuts the dictionary record away
    b.append({"role": "user", "content": "after the pop"})
    with ConversationCodec(path, encryption_key=KEY) as fresh:
        assert fresh.load() == [*msgs[:-10], {"role": "user", "content": "after the pop"}]
        assert fresh.verify().ok
    a.close()
    b.close()


def _base64(n: int) -> list[dict[str, Any]]:
    """Messages of random base64 text: little for a dictionary to find."""
    rng = random.Random(11)
    return [
        {"role": "user", "content": base64.b64encode(rng.randbytes(60 + i % 50)).decode()}
        for i in range(n)
    ]


def _appended(path: Path, msgs: list[dict[str, Any]]) -> None:
    with open_codec(path) as codec:
        for m in msgs:
            codec.append(m)


def _extended(path: Path, msgs: list[dict[str, Any]]) -> None:
    with open_codec(path) as codec:
        codec.extend(msgs)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda p: _appended(p, messages(2_000)), id="2000-single-appends"),
        pytest.param(lambda p: _extended(p, chat(1_500)), id="1500-in-one-extend"),
        pytest.param(lambda p: _appended(p, chat(700, seed=3)), id="700-single-appends"),
        pytest.param(lambda p: _extended(p, _base64(700)), id="base64-content"),
    ],
)
def test_compaction_is_never_larger_than_its_input(
    tmp_path: Path, build: Callable[[Path], None]
) -> None:
    """Issue 15: compaction grew logs (15.5 -> 17.4 MB, 2.79 -> 3.03 MB). A new dictionary
    must beat the log's own on messages it was not trained on, and records written before
    the dictionary may stay compressed without it."""
    path = tmp_path / "c.log"
    build(path)
    with open_codec(path) as codec:
        msgs = codec.load()
        first = codec.compact()
        assert first.bytes_after <= first.bytes_before
        second = codec.compact()
        assert second.bytes_after <= second.bytes_before
        assert codec.load() == msgs
    log = spec_read(path.read_bytes(), key=KEY)
    if any(r.kind == 1 for r in log.records):  # a dictionary only when records use it
        assert sum(r.dict_id == 1 for r in log.records) >= len(log.records) // 2


def test_compaction_drops_a_dictionary_nothing_uses(tmp_path: Path) -> None:
    """Messages under 24 bytes of JSON are never compressed (FORMAT.md §5.2): a dictionary
    in their log is pure cost, and compaction writes none."""
    path = tmp_path / "c.log"
    _extended(path, [{"n": i} for i in range(700)])
    with open_codec(path) as codec:
        codec.compact()
    log = spec_read(path.read_bytes(), key=KEY)
    assert [r.kind for r in log.records] == [0] * 700


def test_a_compaction_that_keeps_the_dictionary_reseals_each_payload_as_stored(
    tmp_path: Path,
) -> None:
    """Issue 15: when a rewrite keeps the log's dictionary, a record compressed with it keeps
    its payload, sealed again under the new log's keys (a fresh log_id), and a key rotation
    re-encrypts it under the new key: every message reads back, at its seq, and no record
    grows."""
    path = tmp_path / "c.log"
    msgs = chat(1_500, seed=9)
    with open_codec(path) as codec:
        codec.extend(msgs)
        codec.compact()  # its own dictionary, trained on the whole history
    before_bytes = path.read_bytes()
    before = spec_read(before_bytes, key=KEY)
    for how in ("compact", "rotate"):
        with open_codec(path) as codec:
            report = codec.compact() if how == "compact" else codec.rotate_key(NEW_KEY)
            assert codec.load() == msgs  # the same instance
        assert report.bytes_after <= report.bytes_before
        after_bytes = path.read_bytes()
        after = spec_read(after_bytes, key=KEY if how == "compact" else NEW_KEY)
        assert after.messages == msgs
        assert after.records[0].kind == 1 and after.records[0].payload == before.records[0].payload
        kept = [
            (a.seq, a.dict_id, a.payload, a.end - a.start) for a in after.records[1 + TRAIN_AFTER :]
        ]
        assert kept == [
            (b.seq, b.dict_id, b.payload, b.end - b.start)
            for b in before.records[1 + TRAIN_AFTER :]
        ]
        assert sum(dict_id == 1 for _, dict_id, _, _ in kept) >= 0.9 * len(kept)
        assert after_bytes[:96] != before_bytes[:96], "a fresh log_id"
        assert before_bytes[-64:] not in after_bytes, "every record sealed again"
        with (
            open_codec(path)
            if how == "compact"
            else ConversationCodec(path, encryption_key=NEW_KEY) as fresh
        ):
            assert fresh.load() == msgs
            assert fresh.verify().ok
    with pytest.raises(DecryptionError):
        open_codec(path)


def test_a_kept_dictionary_compresses_a_frame_without_its_content_size_again(
    tmp_path: Path,
) -> None:
    """Early versions wrote zstd frames without their content size (slow to read,
    compression.py): a compaction that keeps the dictionary compresses such a record again
    instead of carrying its payload over."""
    path = tmp_path / "c.log"
    msgs = chat(1_500, seed=9)
    with open_codec(path) as codec:
        codec.extend(msgs)
        codec.compact()
    compacted = spec_read(path.read_bytes(), key=KEY)
    dictionary = compacted.records[0].payload
    old = {"role": "user", "content": "written by an early version " * 4}
    text = json.dumps(old, separators=(",", ":")).encode()
    frame = zstandard.ZstdCompressor(
        dict_data=zstandard.ZstdCompressionDict(dictionary), write_content_size=False
    ).compress(text)
    assert not frame[4] & 0xE0  # no content size
    header, covered, mac = decode_sealed_header(path.read_bytes())
    records = SealedRecords(LogCipher.open(Keyring.from_input(KEY), header, covered, mac))
    ts = compacted.last_ts + 10**6
    envelope = encode_envelope(len(msgs), ts, frame, compressed=True, dict_id=1)
    with open(path, "ab") as f:  # as an early version appended it
        f.write(encode_frame(records.cipher.seal(envelope, ts // 10**6)))
    before = spec_read(path.read_bytes(), key=KEY)
    assert before.records[-1].payload == frame
    with open_codec(path) as codec:
        assert codec.load() == [*msgs, old]
        codec.compact()
    log = spec_read(path.read_bytes(), key=KEY)
    assert log.records[0].payload == dictionary  # kept
    assert log.messages == [*msgs, old]
    assert log.records[-1].dict_id == 1 and log.records[-1].payload[4] & 0xE0
    assert log.records[-2].payload == before.records[-2].payload  # the others carried over


def _with_unloadable_dictionary(path: Path) -> tuple[list[dict[str, Any]], int, int]:
    """A log whose dictionary record zstd refuses: raw content that happens to start with
    the zstd dictionary magic (FORMAT.md §5.3), then message 1 compressed with it as raw
    content, and message 2 without it. Return the messages, the dictionary record's offset
    and message 1's."""
    msgs = [{"role": "user", "content": f"message {i} " * 6} for i in range(3)]
    with open_codec(path) as codec:
        codec.append(msgs[0])
    header, covered, mac = decode_sealed_header(path.read_bytes())
    records = SealedRecords(LogCipher.open(Keyring.from_input(KEY), header, covered, mac))
    content = bytes.fromhex("37a430ec") + json.dumps(msgs[1]).encode() * 3
    raw = zstandard.ZstdCompressionDict(content, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    text = json.dumps(msgs[1], separators=(",", ":")).encode()
    frame = zstandard.ZstdCompressor(dict_data=raw, write_dict_id=False).compress(text)
    assert len(frame) < len(text) // 2  # it does use the dictionary's content
    ts = spec_read(path.read_bytes(), key=KEY).last_ts
    envelope = encode_envelope(1, ts, frame, compressed=True, dict_id=1)
    dictionary_at = path.stat().st_size
    with open(path, "ab") as f:
        f.write(encode_frame(records.encode_dictionary(1, ts, content), control=True))
        message_at = f.tell()
        f.write(encode_frame(records.cipher.seal(envelope, ts // 10**6)))
        text = json.dumps(msgs[2], separators=(",", ":")).encode()
        f.write(encode_frame(records.encode(2, ts, text)))
    return msgs, dictionary_at, message_at


def test_a_dictionary_zstd_refuses_damages_only_the_records_that_use_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The payload starts with the magic, so it is a zstd dictionary (FORMAT.md §5.3), and
    zstd refuses it: each record compressed with it is damage (``CorruptRecordError`` at its
    offset, never zstandard's own error); the others read, verify reports both, salvage
    copies what it can."""
    from conversation_codec.maintenance.verify import salvage

    path = tmp_path / "c.log"
    msgs, dictionary_at, message_at = _with_unloadable_dictionary(path)
    for attempt in ("index rebuilt", "index read"):
        with open_codec(path) as codec:
            assert codec.get(0) == msgs[0], attempt
            assert codec.get(2) == msgs[2] and codec.tail(1) == msgs[2:]
            for read in (codec.load, lambda: codec.get(1), lambda: codec.tail(2)):
                with pytest.raises(CorruptRecordError, match="dictionary") as raised:
                    read()
                assert raised.value.offset == dictionary_at  # record 1's span (§5.3)
            report = codec.verify()
    with open_codec(path) as codec:
        codec.append({"role": "user", "content": "appended " * 8})  # compressed without it
        assert codec.tail(1) == [{"role": "user", "content": "appended " * 8}]
    assert not report.ok
    assert [(p.kind, p.offset) for p in report.problems] == [
        ("damaged", dictionary_at),
        ("damaged", message_at),
    ]
    saved = salvage(path, tmp_path / "copy.log", encryption_key=KEY)
    assert saved.recovered == 3 and saved.lost_seqs == (1,)
    with open_codec(tmp_path / "copy.log") as codec:
        assert codec.load() == [msgs[0], msgs[2], {"role": "user", "content": "appended " * 8}]
    monkeypatch.setenv("CONVERSATION_KEY", KEY)
    assert main(["verify", str(path)]) == 3
    assert main(["cat", str(path)]) == 3  # corruption found, as for any damaged record
    assert "Traceback" not in capsys.readouterr().err

"""usual: the one-loop read of a batch of usual records (issue 15) gives what the staged read
gives, and answers None (changing nothing) for every record that is not the usual case.

``read_usual`` is handed envelopes built here byte by byte (FORMAT.md §5.2), so each case
names the one thing that differs from what writers write. Whole logs read through the
public API (``load()``, ``tail()``, ``get()``, iteration and search, all of which take the
one loop) are checked against the spec's own reader (``tests/_spec_reader.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard

from _spec_reader import SpecError
from _spec_reader import read as spec_read
from conversation_codec import ConversationCodec, ConversationStore
from conversation_codec.crypto import Keyring, LogCipher
from conversation_codec.errors import CorruptRecordError, DatabaseError
from conversation_codec.format.header import (
    SEALED_HEADER_BYTES,
    context_digest,
    decode_sealed_header,
)
from conversation_codec.format.index import MAX_TS_US
from conversation_codec.format.record import MAX_DEPTH, encode_envelope, encode_frame
from conversation_codec.format.varint import encode_varint
from conversation_codec.maintenance.verify import salvage
from conversation_codec.records import SealedRecords
from conversation_codec.storage.postgres import log as postgres_log
from conversation_codec.usual import read_usual

from conftest import KEY, Clock, messages

US = 1_000_000
SECS = 1_760_000_000
DICT_ID = 1
_SAMPLES = [json.dumps(m).encode() for m in messages(600)]
_DICT = zstandard.train_dictionary(2048, _SAMPLES).as_bytes()
_PLAIN = zstandard.ZstdDecompressor()
_WITH_DICT = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(_DICT))
_COMPRESS = zstandard.ZstdCompressor(write_content_size=True, write_checksum=False)
_COMPRESS_DICT = zstandard.ZstdCompressor(
    dict_data=zstandard.ZstdCompressionDict(_DICT), write_content_size=True, write_dict_id=False
)


def _body(ts_us: int) -> bytes:
    """A stored body as far as ``read_usual`` reads it: the token's seconds, then anything."""
    return (ts_us // US).to_bytes(8, "big") + bytes(64)


def _read(
    envelopes: list[tuple[int, int, bytes | None]],
    *,
    tss: list[int] | None = None,
    parse: bool = True,
) -> tuple[list[bytes], list[dict[str, Any]]] | None:
    """``read_usual`` of ``(seq, ts_us, envelope)`` records; the index's times are theirs
    unless ``tss`` (by seq) is given."""
    index = tss if tss is not None else [0] * 50_000
    if tss is None:
        for seq, ts, _ in envelopes:
            index[seq] = ts
    records = [(seq, _body(ts)) for seq, ts, _ in envelopes]
    plains = [plain for _, _, plain in envelopes]
    dict_inflate = (DICT_ID, _WITH_DICT.decompress)
    return read_usual(records, plains, index, _PLAIN.decompress, dict_inflate, parse)


def _usual(seq: int, ts: int, text: bytes, how: str) -> bytes:
    if how == "dict":
        frame = _COMPRESS_DICT.compress(text)
        return encode_envelope(seq, ts, frame, compressed=True, dict_id=DICT_ID)
    if how == "zstd":
        return encode_envelope(seq, ts, _COMPRESS.compress(text), compressed=True)
    return encode_envelope(seq, ts, text, compressed=False)


# Seqs and time remainders of one, two and three varint bytes (and a seq of three, which
# is decoded by decode_varint rather than inline).
@pytest.mark.parametrize("seq", [0, 5, 127, 128, 300, 16_383, 16_384, 40_000])
@pytest.mark.parametrize("rem", [0, 99, 128, 16_383, 16_384, 999_999])
@pytest.mark.parametrize("how", ["dict", "zstd", "plain"])
def test_a_usual_record_reads_as_written(seq: int, rem: int, how: str) -> None:
    text = _SAMPLES[seq % len(_SAMPLES)]
    ts = SECS * US + rem
    assert _read([(seq, ts, _usual(seq, ts, text, how))]) == ([text], [json.loads(text)])


def test_a_shallow_record_with_many_brackets_reads() -> None:
    # More opening brackets than MAX_DEPTH levels, two deep: a tool result listing rows.
    text = json.dumps({"role": "tool", "rows": [[i] for i in range(3 * MAX_DEPTH)]}).encode()
    assert _read([(9, TS, _usual(9, TS, text, "zstd"))]) == ([text], [json.loads(text)])


def test_a_batch_reads_in_order() -> None:
    hows = ["dict", "zstd", "plain"]
    batch = [
        (seq, SECS * US + seq * 7919, _usual(seq, SECS * US + seq * 7919, t, hows[seq % 3]))
        for seq, t in enumerate(_SAMPLES[:300])
    ]
    assert _read(batch) == (_SAMPLES[:300], [json.loads(t) for t in _SAMPLES[:300]])


def _frame_without_size(text: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=False).compress(text)


def _claiming(size: int) -> bytes:
    """A frame header that claims ``size`` bytes of content (RFC 8878 §3.1.1.1: an 8-byte
    Frame_Content_Size, single segment), then one empty raw last block."""
    return b"\x28\xb5\x2f\xfd" + bytes((0xE0,)) + size.to_bytes(8, "little") + b"\x01\x00\x00"


TS = SECS * US + 1234
TEXT = _SAMPLES[3]
NOT_USUAL: dict[str, tuple[int, int, bytes | None]] = {
    "bad padding (no envelope)": (7, TS, None),
    "another seq inside": (7, TS, _usual(8, TS, TEXT, "dict")),
    "a remainder of a second or more": (
        7,
        TS,
        b"\x03\x07" + encode_varint(US) + b"\x01" + _COMPRESS_DICT.compress(TEXT),
    ),
    "a non-canonical seq varint": (7, TS, b"\x03\x87\x00" + encode_varint(1234) + b"\x01"),
    "a non-canonical remainder varint": (7, TS, b"\x03\x07\xd2\x89\x00\x01"),
    "another dictionary": (
        7,
        TS,
        encode_envelope(7, TS, _COMPRESS_DICT.compress(TEXT), compressed=True, dict_id=2),
    ),
    "a dictionary flag without compression": (7, TS, b"\x02\x07" + encode_varint(1234) + b"\x01"),
    "a dictionary record": (7, TS, bytes((0b101,)) + encode_varint(7) + encode_varint(1234)),
    "an unknown kind": (7, TS, bytes((0b1001,)) + encode_varint(7) + encode_varint(1234) + TEXT),
    "a frame without its content size": (
        7,
        TS,
        encode_envelope(7, TS, _frame_without_size(TEXT), compressed=True),
    ),
    "an empty frame": (7, TS, encode_envelope(7, TS, _COMPRESS.compress(b""), compressed=True)),
    "a frame claiming too much": (
        7,
        TS,
        encode_envelope(7, TS, _claiming(1 << 40), compressed=True),
    ),
    "bytes after the frame": (
        7,
        TS,
        encode_envelope(7, TS, _COMPRESS.compress(TEXT) + b"\x00", compressed=True),
    ),
    "a truncated frame": (
        7,
        TS,
        encode_envelope(7, TS, _COMPRESS.compress(TEXT)[:-3], compressed=True),
    ),
    # FORMAT.md §9.2: no writer stamps a time at or after 10000-01-01, and the index
    # never holds one (§7), so the record is damage even where an index agrees with it.
    "a time at 10000-01-01": (7, MAX_TS_US, _usual(7, MAX_TS_US, TEXT, "dict")),
    "a time far past 10000-01-01": (7, 600_000 * 10**12, _usual(7, 600_000 * 10**12, TEXT, "zstd")),
    "a truncated envelope": (7, TS, b"\x03\x87"),
    "an empty envelope": (7, TS, b""),
    "malformed JSON": (7, TS, encode_envelope(7, TS, b'{"role": ', compressed=False)),
    "JSON that is not an object": (7, TS, encode_envelope(7, TS, b"[1, 2]", compressed=False)),
    "JSON nesting too deep": (
        7,
        TS,
        encode_envelope(
            7, TS, b'{"a":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}", compressed=False
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(NOT_USUAL))
def test_a_record_that_is_not_the_usual_case_reads_as_none(case: str) -> None:
    usual = [(6, TS - 5, _usual(6, TS - 5, _SAMPLES[0], "dict"))]
    assert _read(usual) is not None
    assert _read([*usual, NOT_USUAL[case]]) is None


JSON_CASES = {"malformed JSON", "JSON that is not an object", "JSON nesting too deep"}


@pytest.mark.parametrize("case", sorted(NOT_USUAL))
def test_texts_alone_are_read_as_payloads_gives_them(case: str) -> None:
    """Without parsing (a keyword scan), what is wrong with a message's JSON is left to the
    parse of a candidate, as ``payloads`` leaves it; everything else still reads as None."""
    usual = [(6, TS - 5, _usual(6, TS - 5, _SAMPLES[0], "dict"))]
    got = _read([*usual, NOT_USUAL[case]], parse=False)
    if case in JSON_CASES:
        plain = NOT_USUAL[case][2]
        assert plain is not None
        assert got == ([_SAMPLES[0], plain[4:]], [])  # flags, seq, a 2-byte remainder
    else:
        assert got is None


def test_a_time_other_than_the_index_s_reads_as_none() -> None:
    plain = _usual(7, TS, TEXT, "dict")
    index = [0] * 8
    index[7] = TS
    assert _read([(7, TS, plain)], tss=index) is not None
    index[7] = TS + 1  # the index disagrees: the staged read rebuilds it
    assert _read([(7, TS, plain)], tss=index) is None
    index[7] = TS
    # The token's seconds are the body's, not the envelope's: one second off is not usual.
    assert read_usual([(7, _body(TS + US))], [plain], index, _PLAIN.decompress, None) is None


def test_without_a_dictionary_a_dictionary_record_reads_as_none() -> None:
    plain = _usual(7, TS, TEXT, "dict")
    index = [0] * 8
    index[7] = TS
    assert read_usual([(7, _body(TS))], [plain], index, _PLAIN.decompress, None) is None


def _write(path: Path, count: int) -> list[dict[str, Any]]:
    """A log of ``count`` messages: before and after its dictionary (512), short ones
    stored uncompressed, half appended one by one."""
    written: list[dict[str, Any]] = [dict(m) for m in messages(count)]
    for i in range(0, count, 9):
        written[i] = {"role": "user", "content": "zqx"}  # too short to compress
    with ConversationCodec(path, encryption_key=KEY, clock=Clock(), durability="flush") as codec:
        codec.extend(written[: count // 2])
        for m in written[count // 2 :]:
            codec.append(m)
    return written


@pytest.mark.parametrize("count", [1, 40, 700])
def test_load_tail_get_and_search_read_what_the_spec_reads(tmp_path: Path, count: int) -> None:
    path = tmp_path / "c.log"
    written = _write(path, count)
    assert spec_read(path.read_bytes(), key=KEY).messages == written  # the reference
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert [hit.message for hit in codec.search(None)] == written
        assert [hit.seq for hit in codec.search("zqx")] == list(range(0, count, 9))
        assert codec.load() == written
        assert codec.tail(25) == written[-25:]
        assert [codec.get(i) for i in (0, count // 2, count - 1)] == [
            written[0],
            written[count // 2],
            written[-1],
        ]
        assert list(codec) == written


BAD_JSON = b'{"role": "user", "content": '  # authentic, yet no message: a buggy key holder's


def _records(header: bytes, context: str | None = None) -> SealedRecords:
    """The record codec of the log whose header bytes these are (the writers' keys); a
    store's conversation is bound to its id (FORMAT.md §4.2)."""
    parsed, covered, mac = decode_sealed_header(header)
    binding = None if context is None else context_digest(context)
    cipher = LogCipher.open(
        Keyring.from_input(KEY),
        parsed,
        covered,
        mac,
        binding=binding,
        binding_mac=header[SEALED_HEADER_BYTES : parsed.size],
    )
    return SealedRecords(cipher)


def test_a_reindex_reports_the_records_before_a_damaged_message(tmp_path: Path) -> None:
    """A message that fails to parse ends its batch: the records before it are read (and
    reported to progress) first, as one by one; then its error, at its seq."""
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY, clock=Clock(), durability="flush") as c:
        c.extend(messages(5))
        ts = int(c.timestamp(4).timestamp() * US) + 1
    with path.open("ab") as f:
        f.write(encode_frame(_records(path.read_bytes()).encode(5, ts, BAD_JSON)))
    done: list[int] = []
    codec = ConversationCodec(path, encryption_key=KEY)
    with codec, pytest.raises(CorruptRecordError, match="record 5"):
        codec.reindex(progress=lambda n, total: done.append(n))
    assert done == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("ts", [MAX_TS_US - 1, MAX_TS_US, 600_000 * 10**12])
def test_a_record_time_at_10000_or_later_is_damage_on_every_path(tmp_path: Path, ts: int) -> None:
    """FORMAT.md §9.2: a message record stamped at or after 10000-01-01 (which no writer
    stamps, and no index entry holds, §7) is damaged wherever it is read: never read by one
    call and refused by another, nor its time copied by the next append."""
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY, clock=Clock(), durability="flush") as c:
        c.extend(messages(3))
        start = path.stat().st_size
    text = json.dumps(messages(4)[3]).encode()
    with path.open("ab") as f:
        f.write(encode_frame(_records(path.read_bytes()).encode(3, ts, text)))
    with ConversationCodec(path, encryption_key=KEY) as codec:
        if ts < MAX_TS_US:  # the last time a writer may stamp: an ordinary record
            assert codec.load() == messages(4) and codec.timestamp(3).year == 9999
            assert codec.info().message_count == 4 and codec.verify().ok
            return
        reads = {
            "load": codec.load,
            "tail": lambda: codec.tail(1),
            "get": lambda: codec.get(3),
            "search": lambda: list(codec.search(None)),
            "timestamp": lambda: codec.timestamp(0),
            "info": codec.info,
            "append": lambda: codec.append({"role": "user", "content": "later"}),
        }
        for name, read in reads.items():
            with pytest.raises(CorruptRecordError, match="10000") as raised:
                read()
            assert raised.value.offset == start, name
        report = codec.verify()
    assert [(p.kind, p.offset) for p in report.problems] == [("damaged", start)]
    saved = salvage(path, tmp_path / "copy.log", encryption_key=KEY)
    assert saved.recovered == 3 and saved.lost_seqs == (3,)
    with pytest.raises(SpecError, match="10000"):  # as the spec's own reader judges it
        spec_read(path.read_bytes(), key=KEY)


@pytest.mark.parametrize("batch", [1, 2])
def test_a_clock_at_10000_is_refused_before_anything_is_written(tmp_path: Path, batch: int) -> None:
    """A writer never stamps a record that readers refuse (FORMAT.md §8.2, §9.2), whatever
    its clock says: the quick single append and a batch alike."""
    path = tmp_path / "c.log"
    clock = Clock()
    with ConversationCodec(path, encryption_key=KEY, clock=clock, durability="flush") as codec:
        codec.extend(messages(3))
        before = path.read_bytes()
        clock.now = MAX_TS_US - 1000  # the next read is 10000-01-01T00:00:00Z
        with pytest.raises(ValueError, match="9999"):
            codec.extend(messages(batch))
        assert path.read_bytes() == before and codec.load() == messages(3)


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
@pytest.mark.parametrize("how", ["replace", "save-rewrites", "extend"])
def test_a_clock_at_10000_is_refused_by_every_rewrite_too(
    tmp_path: Path, key: str | None, how: str
) -> None:
    """replace() stamps its messages with the clock as appends do, and refuses a reading at
    10000-01-01 the same way (ValueError, nothing written): it once wrote a sealed log that
    no reader would open, and raised OverflowError on a plain one."""
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=key, clock=Clock()) as codec:
        codec.extend(messages(3))
    before = path.read_bytes()
    clock = Clock(MAX_TS_US - 1000)  # its first read is 10000-01-01T00:00:00Z
    with ConversationCodec(path, encryption_key=key, clock=clock) as codec:
        assert codec.load() == messages(3)  # save() rewrites only a history it read
        with pytest.raises(ValueError, match="9999"):
            if how == "replace":
                codec.replace(messages(2))
            elif how == "save-rewrites":
                codec.save([messages(1)[0], {"role": "user", "content": "edited"}])
            else:
                codec.extend(messages(2))
    assert path.read_bytes() == before
    with ConversationCodec(path, encryption_key=key) as codec:
        assert codec.load() == messages(3)


def _store_conversation(url: str, count: int) -> tuple[ConversationStore, str]:
    cid = f"usual-{uuid.uuid4().hex[:8]}"
    store = ConversationStore(url, encryption_key=KEY)
    with store.open(cid) as codec:
        codec.extend(messages(count))
    return store, cid


def test_a_database_verify_reports_a_damaged_message_at_its_seq(postgres_url: str) -> None:
    store, cid = _store_conversation(postgres_url, 9)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        row = conn.execute("SELECT header FROM cc_conversations WHERE id = %s", (cid,)).fetchone()
        ts = conn.execute(
            "SELECT ts FROM cc_records WHERE conversation_id = %s AND seq = 6", (cid,)
        ).fetchone()
        assert row is not None and ts is not None
        body = _records(bytes(row[0]), cid).encode(6, ts[0], BAD_JSON)
        conn.execute(
            "UPDATE cc_records SET record = %s WHERE conversation_id = %s AND seq = 6", (body, cid)
        )
    with store.open(cid) as codec:
        report = codec.verify()
    assert report.records == 6
    assert [(p.kind, p.offset) for p in report.problems] == [("damaged", 6)]


def test_a_database_error_while_reading_is_raised_as_it_happened(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server cancels the read of the records (a statement timeout): the reader sees
    that error, not a second read's in the aborted transaction."""
    store, cid = _store_conversation(postgres_url, 9)
    real: Callable[..., Any] = postgres_log.read_range
    calls: list[object] = []

    def read_range(conn: psycopg.Connection[Any], *args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            conn.execute("SET LOCAL statement_timeout = '1ms'")
            conn.execute("SELECT pg_sleep(0.2)")
        return real(conn, *args)

    monkeypatch.setattr(postgres_log, "read_range", read_range)
    codec = store.open(cid)
    with codec, pytest.raises(DatabaseError, match="statement timeout") as raised:
        codec.get(3)
    assert raised.value.sqlstate == "57014"  # query_canceled
    assert len(calls) == 1

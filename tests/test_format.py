"""format/: pure bytes <-> values, at every boundary, and hostile lengths."""

from __future__ import annotations

import pytest

from conversation_codec.errors import FormatError, UnsupportedVersionError
from conversation_codec.format.header import (
    FLAG_BOUND,
    LOG_MAGIC,
    SEALED_HEADER_BYTES,
    Kdf,
    LogKind,
    PlainHeader,
    SealedHeader,
    decode_plain_header,
    decode_sealed_header,
    encode_plain_header,
    encode_sealed_header,
    sniff_log,
)
from conversation_codec.format.index import decode_index_header, encode_index_header
from conversation_codec.format.record import (
    FERNET_OVERHEAD_BYTES,
    KIND_DICTIONARY,
    KIND_MESSAGE,
    MAX_BODY_BYTES,
    MIN_BODY_BYTES,
    decode_envelope,
    decode_frame_header,
    decode_plain_line,
    encode_envelope,
    encode_frame,
    encode_plain_line,
    format_ts,
)
from conversation_codec.format.varint import decode_varint, encode_varint


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 129, 16383, 16384, 2**21 - 1, 2**21, 2**28, 2**35 - 1]
)
def test_varint_round_trip_at_boundaries(value: int) -> None:
    data = encode_varint(value)
    assert decode_varint(data) == (value, len(data))
    assert decode_varint(b"\xff" + data, 1) == (value, len(data) + 1)


@pytest.mark.parametrize("value", [-1, 2**35])
def test_varint_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(value)


@pytest.mark.parametrize(
    "data", [b"", b"\x80", b"\xff\xff\xff\xff\xff\x01", b"\x80\x00", b"\xff\x80\x00"]
)
def test_varint_rejects_truncated_overlong_and_non_canonical(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_varint(data)


@pytest.mark.parametrize(
    "length",
    [
        MIN_BODY_BYTES,
        MIN_BODY_BYTES + 16,
        MAX_BODY_BYTES,
    ],
)
def test_frame_lengths_that_fit_a_token(length: int) -> None:
    for control in (False, True):
        frame = encode_varint(length << 1 | control)
        start, end, got_control = decode_frame_header(frame)
        assert (start, end - start, got_control) == (len(frame), length, control)


@pytest.mark.parametrize(
    "length",
    [
        0,
        1,
        MIN_BODY_BYTES - 16,
        MIN_BODY_BYTES - 1,
        MIN_BODY_BYTES + 1,
        MAX_BODY_BYTES + 16,
        MAX_BODY_BYTES + 1,
        4 * 1024**3,
        2**34 - 1,
    ],
)
def test_impossible_frame_lengths_are_rejected_without_allocating(length: int) -> None:
    # A 4 GB length is refused from the 5-byte prefix alone: nothing is read or allocated.
    with pytest.raises(ValueError, match="impossible record length"):
        decode_frame_header(encode_varint(length << 1))


def test_frame_round_trip() -> None:
    body = bytes(range(FERNET_OVERHEAD_BYTES + 32))
    for control in (False, True):
        frame = encode_frame(body, control=control)
        start, end, got = decode_frame_header(frame)
        assert (frame[start:end], got) == (body, control)


@pytest.mark.parametrize("ts_us", [0, 999_999, 1_000_000, 1_763_700_000_123_456])
@pytest.mark.parametrize("seq", [0, 127, 128, 2**32])
def test_envelope_round_trip(seq: int, ts_us: int) -> None:
    for dict_id in (0, 1, 300):
        env = encode_envelope(seq, ts_us, b"payload", compressed=True, dict_id=dict_id)
        got = decode_envelope(env, ts_us // 1_000_000)
        assert (got.seq, got.ts_us, got.compressed, got.dict_id, bytes(got.payload)) == (
            seq,
            ts_us,
            True,
            dict_id,
            b"payload",
        )
        assert got.kind == KIND_MESSAGE
    control = decode_envelope(
        encode_envelope(1, ts_us, b"dict", compressed=False, kind=KIND_DICTIONARY), 0
    )
    assert (control.kind, control.seq, bytes(control.payload)) == (KIND_DICTIONARY, 1, b"dict")


def test_envelope_rejects_unknown_flags_and_bad_remainder() -> None:
    with pytest.raises(NotImplementedError):
        decode_envelope(b"\x10\x00\x00", 0)
    with pytest.raises(NotImplementedError):
        decode_envelope(b"\x80\x00\x00", 0)
    with pytest.raises(ValueError, match="dictionary flag"):
        decode_envelope(b"\x02\x00\x00\x01", 0)  # a dictionary id on an uncompressed payload
    with pytest.raises(ValueError, match="dictionary flag"):
        decode_envelope(b"\x03\x00\x00\x00", 0)  # dictionary id 0
    with pytest.raises(ValueError):
        decode_envelope(b"\x00\x00" + encode_varint(1_000_000), 0)
    with pytest.raises(ValueError):
        decode_envelope(b"", 0)


def test_sealed_header_round_trip_and_checks() -> None:
    header = SealedHeader(
        log_id=b"L" * 16, kdf=Kdf.SCRYPT, kdf_log2_n=15, kdf_r=8, kdf_p=1, kdf_salt=b"S" * 16
    )
    covered = encode_sealed_header(header)
    mac = b"M" * 32
    got, got_covered, got_mac = decode_sealed_header(covered + mac)
    assert (got, got_covered, got_mac) == (header, covered, mac)
    assert len(covered + mac) == SEALED_HEADER_BYTES
    with pytest.raises(FormatError, match="truncated"):
        decode_sealed_header((covered + mac)[:-1])
    newer = bytearray(covered + mac)
    newer[8] = 3  # 2 is the newest version this library reads
    with pytest.raises(UnsupportedVersionError):
        decode_sealed_header(bytes(newer))
    newer[8] = 0
    with pytest.raises(FormatError, match="invalid"):
        decode_sealed_header(bytes(newer))
    unknown_kdf = bytearray(covered + mac)
    unknown_kdf[10] = 2
    with pytest.raises(UnsupportedVersionError, match="kdf 2"):
        decode_sealed_header(bytes(unknown_kdf))
    # header_flags are judged after the header MAC (FORMAT.md §9.1): decoding keeps them,
    # check_flags() refuses the bits the header's version does not define.
    flagged = bytearray(covered + mac)
    flagged[14] = 1
    got = decode_sealed_header(bytes(flagged))[0]
    assert got.header_flags == 1 and got.format_version == 1
    with pytest.raises(UnsupportedVersionError, match="header_flags 0x0001"):
        got.check_flags()
    bound = SealedHeader(b"L" * 16, format_version=2, header_flags=FLAG_BOUND)
    bound.check_flags()
    assert bound.bound and bound.size == SEALED_HEADER_BYTES + 32
    with pytest.raises(UnsupportedVersionError, match="header_flags 0x0002"):
        SealedHeader(b"L" * 16, format_version=2, header_flags=3).check_flags()


def test_plain_header_round_trip_and_checks() -> None:
    line = encode_plain_header(PlainHeader(b"\x01" * 16))
    assert decode_plain_header(line.rstrip(b"\n")) == PlainHeader(b"\x01" * 16)
    for bad in (b"{}", b'{"conversation_codec":1,"log_id":"zz"}', b"[1]", b"\xff"):
        with pytest.raises(FormatError):
            decode_plain_header(bad)


def test_sniff() -> None:
    assert sniff_log(b"") is LogKind.EMPTY
    assert sniff_log(LOG_MAGIC) is LogKind.SEALED
    assert sniff_log(b'{"conversation_codec":1') is LogKind.PLAIN
    assert sniff_log(b'{"role":"user"}') is LogKind.FOREIGN
    assert sniff_log(b"gAAAAAB") is LogKind.FOREIGN


def test_plain_line_round_trip() -> None:
    line = encode_plain_line(7, 1_763_700_000_000_001, b'{"a":[1,2]}')
    assert line.endswith(b"\n")
    assert decode_plain_line(line) == (7, 1_763_700_000_000_001, {"a": [1, 2]})
    assert format_ts(1_000_000) == "1970-01-01T00:00:01.000000Z"
    for bad in (
        b'{"seq":-1,"ts":"1970-01-01T00:00:01Z","message":{}}',
        b'{"seq":1,"ts":"1970-01-01T00:00:01","message":{}}',
        b'{"seq":1,"message":{}}',
        b"not json",
    ):
        with pytest.raises(ValueError):
            decode_plain_line(bad)


def test_index_header() -> None:
    header = encode_index_header(b"I" * 16)
    assert len(header) == 48
    assert decode_index_header(header) == (b"I" * 16, (0, 0), 2)
    assert decode_index_header(encode_index_header(b"I" * 16, (80, 900))) == (
        b"I" * 16,
        (80, 900),
        2,
    )
    assert decode_index_header(encode_index_header(b"I" * 16, (900, 80))) is None
    assert decode_index_header(header[:-1]) is None
    assert decode_index_header(b"\x00" * 48) is None


@pytest.mark.parametrize(
    "ts",
    [
        "2025-11-21T04:40:01Z",  # no fraction
        "2025-11-21T04:40:01.123Z",  # three digits
        "2025-11-21T04:40:01.1234567Z",  # seven
        "2025-11-21T05:40:01.000000+01:00",  # another offset
        "2025-11-21T04:40:01.000000+00:00",
        "2025-11-21t04:40:01.000000z",
        "2025-11-21 04:40:01.000000Z",
        "2025-11-21T04:40:60.000000Z",  # leap second
        "2025-02-29T04:40:01.000000Z",  # not a leap year
        "1969-12-31T23:59:59.999999Z",  # before the epoch
        "2025-11-21T04:40:01.\\u0031Z",  # an escape
    ],
)
def test_a_plain_ts_has_exactly_one_form(ts: str) -> None:
    line = b'{"seq":1,"ts":"%s","message":{}}' % ts.encode()
    with pytest.raises(ValueError, match="ts"):
        decode_plain_line(line)


@pytest.mark.parametrize(
    "line",
    [
        b'{"seq":1,"ts":"2025-11-21T04:40:01.000000Z","message":{},"extra":1}',
        b'{"seq":1,"ts":"2025-11-21T04:40:01.000000Z"}',
        b'{"seq":1.0,"ts":"2025-11-21T04:40:01.000000Z","message":{}}',
        b'{"seq":true,"ts":"2025-11-21T04:40:01.000000Z","message":{}}',
        b'{"seq":1,"ts":"2025-11-21T04:40:01.000000Z","message":[]}',
        b'{"seq":1,"ts":"2025-11-21T04:40:01.000000Z","message":{"a":NaN}}',
        b'{"seq":1,"ts":"2025-11-21T04:40:01.000000Z","message":{"a":-Infinity}}',
        b'{"seq":1,"ts":"2025-11-21T04:40:01.000000Z","message":{"a":1e400}}',
        b'{"seq":1,"ts":"2025-11-21T04:40:01.000000Z","message":{"a":"\\ud800"}}',
        b'{"seq":1,"ts":"2025-11-21T04:40:01.000000Z","message":{"a":"\xff"}}',
    ],
)
def test_a_plain_line_is_strict_json_with_exactly_three_members(line: bytes) -> None:
    with pytest.raises(ValueError, match="invalid record line"):
        decode_plain_line(line)


def test_what_a_plain_line_may_vary() -> None:
    """Insignificant whitespace and member order are JSON's; a repeated member: the last."""
    us = 1_763_700_001_000_000
    spaced = b' { "message" : {"a": [1, 2]} , "ts" : "2025-11-21T04:40:01.000000Z", "seq" : 3 } '
    assert decode_plain_line(spaced) == (3, us, {"a": [1, 2]})
    twice = b'{"seq":1,"seq":2,"ts":"2025-11-21T04:40:01.000000Z","message":{}}'
    assert decode_plain_line(twice)[0] == 2
    big = b'{"seq":1,"ts":"2025-11-21T04:40:01.000000Z","message":{"n":18446744073709551616}}'
    assert decode_plain_line(big)[2] == {"n": 2**64}


def test_plain_header_is_strict_and_carries_the_binding() -> None:
    log_id = b"\xab" * 16
    bound = PlainHeader(log_id, 2, b"\x01" * 32)
    line = encode_plain_header(bound)
    assert line == (
        b'{"conversation_codec":2,"log_id":"'
        + b"ab" * 16
        + b'","context_sha256":"'
        + b"01" * 32
        + b'"}\n'
    )
    assert decode_plain_header(line) == bound
    assert decode_plain_header(b'{"conversation_codec":2,"log_id":"' + b"ab" * 16 + b'"}') == (
        PlainHeader(log_id, 2)
    )
    for bad in (
        b'{"conversation_codec":1,"log_id":"' + b"ab" * 16 + b'","x":1}',
        b'{"conversation_codec":1,"log_id":"' + b"AB" * 16 + b'"}',
        b'{"conversation_codec":1,"log_id":"'
        + b"ab" * 16
        + b'","context_sha256":"'
        + b"01" * 32
        + b'"}',
        b'{"conversation_codec":2,"log_id":"' + b"ab" * 16 + b'","context_sha256":"01"}',
        b'{"conversation_codec":0,"log_id":"' + b"ab" * 16 + b'"}',
        b'{"conversation_codec":true,"log_id":"' + b"ab" * 16 + b'"}',
    ):
        with pytest.raises(FormatError) as caught:
            decode_plain_header(bad)
        assert not isinstance(caught.value, UnsupportedVersionError), bad
    with pytest.raises(UnsupportedVersionError):  # a newer version may add members
        decode_plain_header(b'{"conversation_codec":3,"log_id":"x","new":1}')

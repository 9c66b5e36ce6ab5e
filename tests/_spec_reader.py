"""An independent reader of spec/FORMAT.md, for the vectors and for inspecting logs in tests.

It imports nothing from conversation_codec: HKDF, HMAC, AES-CBC and scrypt come straight from
``cryptography``, zstd frames from ``zstandard``, JSON from the standard library. It follows
FORMAT.md §2-§6, §9.1 (the order of the header checks and the error class of each refusal)
and the torn-tail rule of §10.1 in its simplest form (any later offset that starts an
authentic record makes bad bytes damage), so a vector's expected outcome is checked by two
implementations that share no code.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import zstandard
from cryptography.hazmat.primitives import hashes, hmac, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

SEALED_MAGIC = b"\x89CCL\r\n\x1a\n"
PLAIN_PREFIX = b'{"conversation_codec":'
MAX_MESSAGE = 64 * 1024 * 1024
MAX_BODY = 56 + 16 * math.ceil((MAX_MESSAGE + 11) / 16)
KNOWN_FLAGS = {1: 0x0000, 2: 0x0001}  # §3.1: header_flags bits each version defines


class SpecError(Exception):
    """A refusal, named by the library error class FORMAT.md assigns to it."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.name = name


class _Bad(Exception):
    """The bytes at a position are not an intact record (§10.1 decides what that means)."""


@dataclass
class Record:
    """One record as the spec describes it."""

    start: int
    end: int
    control: bool
    kind: int  # 0 message, 1 dictionary
    seq: int
    ts_us: int
    envelope_flags: int
    dict_id: int
    payload: bytes


@dataclass
class Log:
    """What a reader found: the header fields, the records and where the intact ones end."""

    sealed: bool
    format_version: int
    header_flags: int = 0
    data_start: int = 0
    records: list[Record] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    torn_at: int | None = None  # where a torn tail starts, if any
    count: int = 0  # message records so far
    last_ts: int = -1


def _mac(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    """§2: at most 5 bytes, shortest form, complete; raise _Bad otherwise."""
    value = 0
    for i in range(5):
        if pos + i >= len(buf):
            raise _Bad("truncated varint")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if i and byte == 0:
                raise _Bad("non-shortest varint")
            return value, pos + i + 1
    raise _Bad("varint longer than 5 bytes")


def strict_json(text: bytes) -> Any:
    """RFC 8259 JSON as §5.2/§6 require: UTF-8, no NaN/Infinity, no out-of-range number."""

    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")

    def number(token: str) -> float:
        value = float(token)
        if math.isinf(value):
            raise ValueError("number out of range")
        return value

    value = json.loads(text.decode("utf-8"), parse_constant=refuse, parse_float=number)
    _no_lone_surrogates(value)
    return value


def _no_lone_surrogates(value: Any) -> None:
    if isinstance(value, str):
        value.encode("utf-8")  # raises on a lone surrogate
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_lone_surrogates(k)
            _no_lone_surrogates(v)
    elif isinstance(value, list):
        for v in value:
            _no_lone_surrogates(v)


def read(
    data: bytes,
    *,
    key: str | None = None,
    password: str | None = None,
    context: str | None = None,
) -> Log:
    """Read a whole log as FORMAT.md says; raise SpecError for a refusal."""
    if not data:
        return Log(sealed=False, format_version=0)
    if data.startswith(SEALED_MAGIC):
        return _read_sealed(data, key, password, context)
    if data.startswith(PLAIN_PREFIX):
        if key is not None or password is not None:
            raise SpecError("NotEncryptedError", "a key for a plain log")
        return _read_plain(data, context)
    raise SpecError("FormatError", "bad magic")


def verdict(data: bytes, **options: Any) -> str:
    """The outcome in the vectors' words: an error class, or "ok"/"torn tail: N messages"."""
    try:
        log = read(data, **options)
    except SpecError as exc:
        return exc.name
    n = len(log.messages)
    state = "ok" if log.torn_at is None else "torn tail"
    return f"{state}: {n} message{'s' * (n != 1)}"


# -- sealed logs -----------------------------------------------------------------------------


def _read_sealed(data: bytes, key: str | None, password: str | None, context: str | None) -> Log:
    if len(data) < 80:
        raise SpecError("FormatError", "truncated header")
    version, kdf, log2_n, r, p, flags = struct.unpack_from("<HBBBBH", data, 8)
    log_id, salt = data[16:32], data[32:48]
    if version == 0:
        raise SpecError("FormatError", "format_version 0")
    if version > 2:
        raise SpecError("UnsupportedVersionError", "newer format_version")
    if kdf not in (0, 1):
        raise SpecError("UnsupportedVersionError", "unknown kdf")
    if kdf == 1:
        if password is None:
            raise SpecError("PasswordRequiredError", "a password log")
        if not (10 <= log2_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16) or (
            128 * r * 2**log2_n > 256 * 1024 * 1024
        ):
            raise SpecError("FormatError", "scrypt parameters out of bounds")
        master = Scrypt(salt=salt, length=32, n=2**log2_n, r=r, p=p).derive(password.encode())
    else:
        if key is None:
            raise SpecError("KeyRequiredError", "a key log")
        master = base64.urlsafe_b64decode(key)
    okm = HKDF(hashes.SHA256(), 64, salt=log_id, info=b"conversation-codec/1 log keys").derive(
        master
    )
    signing, encryption, mac_key = okm[:16], okm[16:32], okm[32:]
    if _mac(mac_key, data[:48]) != data[48:80]:
        raise SpecError("DecryptionError", "header MAC")
    if flags & ~KNOWN_FLAGS[version]:
        raise SpecError("UnsupportedVersionError", "unknown header_flags")
    data_start = 80
    if flags & 1:
        if len(data) < 112:
            raise SpecError("FormatError", "truncated binding_mac")
        if context is None:
            raise SpecError("BindingError", "bound log opened without a context")
        digest = hashlib.sha256(context.encode()).digest()
        if _mac(mac_key, data[:80] + digest) != data[80:112]:
            raise SpecError("BindingError", "bound to another context")
        data_start = 112
    log = Log(True, version, flags, data_start)
    _walk_sealed(data, log, signing, encryption)
    _decode_sealed_messages(log)
    return log


def _open_record(data: bytes, pos: int, signing: bytes, encryption: bytes) -> Record:
    """§5.1-§5.2: one whole frame at ``pos`` that authenticates and is well formed."""
    prefix, start = varint(data, pos)
    body_len, control = prefix >> 1, bool(prefix & 1)
    if body_len < 72 or body_len > MAX_BODY or (body_len - 56) % 16:
        raise _Bad("impossible length")
    end = start + body_len
    if end > len(data):
        raise _Bad("frame runs past the end")
    body = data[start:end]
    if _mac(signing, b"\x80" + body[:-32]) != body[-32:]:
        raise _Bad("record MAC")
    dec = Cipher(algorithms.AES(encryption), modes.CBC(body[8:24])).decryptor()
    padded = dec.update(body[24:-32]) + dec.finalize()
    try:
        unpadder = padding.PKCS7(128).unpadder()
        envelope = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise _Bad("bad padding") from None
    if not envelope:
        raise _Bad("empty envelope")
    flags = envelope[0]
    kind = (flags >> 2) & 3
    if flags & 0xF0 or kind > 1:
        raise SpecError("UnsupportedVersionError", "envelope flags of a newer writer")
    seq, q = varint(envelope, 1)
    rem, q = varint(envelope, q)
    if rem >= 1_000_000:
        raise _Bad("ts_rem_us out of range")
    dict_id = 0
    if flags & 2:
        dict_id, q = varint(envelope, q)
        if not dict_id or not flags & 1:
            raise _Bad("dictionary flag without compression or id")
    if control != (kind == 1):
        raise _Bad("control bit disagrees with the envelope kind")
    ts_us = int.from_bytes(body[:8], "big") * 1_000_000 + rem
    return Record(pos, end, control, kind, seq, ts_us, flags, dict_id, envelope[q:])


def _walk_sealed(data: bytes, log: Log, signing: bytes, encryption: bytes) -> None:
    pos, dictionary = log.data_start, None
    while pos < len(data):
        try:
            rec = _open_record(data, pos, signing, encryption)
            if rec.kind == 1 and (rec.seq != 1 or rec.envelope_flags & 3):
                raise _Bad("dictionary record must be id 1, stored uncompressed")
        except _Bad:
            _torn_or_damaged(data, pos, log, lambda q: _open_record(data, q, signing, encryption))
            return
        if rec.kind == 1:
            if dictionary is not None:
                raise SpecError("UnsupportedVersionError", "a second dictionary record")
            dictionary = rec
        else:
            _check_place(rec.seq, rec.ts_us, log)
        log.records.append(rec)
        pos = rec.end


def _check_place(seq: int, ts_us: int, log: Log) -> None:
    """§5.2/§6/§9.2: seq is the position; timestamps never decrease and stay before the
    year 10000 (messages only)."""
    if seq != log.count:
        raise SpecError("CorruptRecordError", "a record out of place")
    if ts_us < log.last_ts:
        raise SpecError("CorruptRecordError", "time runs backwards")
    if ts_us >= 253_402_300_800_000_000:
        raise SpecError("CorruptRecordError", "a time at or after 10000-01-01")
    log.count, log.last_ts = log.count + 1, ts_us


def _torn_or_damaged(data: bytes, pos: int, log: Log, opens: Any) -> None:
    """§10.1: bad bytes are a torn tail unless a later offset starts an authentic record."""
    for q in range(pos + 1, len(data)):
        try:
            opens(q)
        except (_Bad, SpecError):
            continue
        raise SpecError("CorruptRecordError", f"damage at {pos} before an intact record")
    log.torn_at = pos


def zstd_frame_end(frame: bytes) -> int:
    """RFC 8878 §3.1.1: where the zstd frame at the start of ``frame`` ends."""
    if frame[:4] != b"\x28\xb5\x2f\xfd" or len(frame) < 6:
        raise ValueError("not a zstd frame")
    fhd = frame[4]
    single = fhd >> 5 & 1
    fcs = (single, 2, 4, 8)[fhd >> 6]
    pos = 5 + (1 - single) + (0, 1, 2, 4)[fhd & 3] + fcs
    while True:
        if pos + 3 > len(frame):
            raise ValueError("truncated zstd block")
        header = int.from_bytes(frame[pos : pos + 3], "little")
        kind = header >> 1 & 3
        if kind == 3:
            raise ValueError("reserved zstd block type")
        pos += 3 + (1 if kind == 1 else header >> 3)
        if header & 1:
            return pos + 4 * (fhd >> 2 & 1)


def _decode_sealed_messages(log: Log) -> None:
    zdict = None
    for rec in log.records:
        if rec.kind == 1:
            zdict = zstandard.ZstdCompressionDict(rec.payload)
            continue
        payload = rec.payload
        try:
            if rec.envelope_flags & 1:
                if rec.dict_id and (rec.dict_id != 1 or zdict is None):
                    raise ValueError("names a dictionary the log does not hold")
                if zstd_frame_end(payload) != len(payload):
                    raise ValueError("bytes after the zstd frame")
                size = zstandard.frame_content_size(payload)
                if size > MAX_MESSAGE:
                    raise ValueError("zstd frame claims too much")
                dctx = zstandard.ZstdDecompressor(dict_data=zdict if rec.dict_id else None)
                if size < 0:
                    payload = dctx.decompress(payload, max_output_size=MAX_MESSAGE)
                else:
                    payload = dctx.decompress(payload, allow_extra_data=False)
            message = strict_json(payload)
        except (ValueError, zstandard.ZstdError) as exc:
            raise SpecError("CorruptRecordError", f"record {rec.seq}: {exc}") from None
        if not isinstance(message, dict):
            raise SpecError("CorruptRecordError", f"record {rec.seq}: not a JSON object")
        log.messages.append(message)


# -- plain logs ------------------------------------------------------------------------------

_DIGITS = set("0123456789")
_HEX = set("0123456789abcdef")


def _read_plain(data: bytes, context: str | None) -> Log:
    newline = data.find(b"\n")
    if newline < 0:
        raise SpecError("FormatError", "truncated header line")
    try:
        header = strict_json(data[:newline])
        version = header["conversation_codec"]
    except (ValueError, KeyError, TypeError):
        raise SpecError("FormatError", "header line is not valid") from None
    if type(version) is not int:
        raise SpecError("FormatError", "header line is not valid")
    if version > 2:
        raise SpecError("UnsupportedVersionError", "newer format_version")
    required = {"conversation_codec", "log_id"}
    allowed = required | ({"context_sha256"} if version == 2 else set())
    log_id, digest = header.get("log_id"), header.get("context_sha256")
    if (
        version < 1
        or not set(header) >= required
        or not set(header) <= allowed
        or not (isinstance(log_id, str) and len(log_id) == 32 and set(log_id) <= _HEX)
        or not (digest is None or (isinstance(digest, str) and len(digest) == 64))
        or not set(digest or "") <= _HEX
    ):
        raise SpecError("FormatError", "header line has invalid fields")
    if digest is not None:
        if context is None:
            raise SpecError("BindingError", "bound log opened without a context")
        if hashlib.sha256(context.encode()).hexdigest() != digest:
            raise SpecError("BindingError", "written for another context")
    log = Log(False, version, data_start=newline + 1)
    pos = newline + 1
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            log.torn_at = pos  # a last line without its newline
            break
        try:
            seq, ts_us, message = plain_line(data[pos:end])
        except ValueError:
            _torn_or_damaged(data, pos, log, lambda q: _plain_at(data, q))
            _no_whole_line(data, pos)
            break
        _check_place(seq, ts_us, log)
        log.records.append(Record(pos, end + 1, False, 0, seq, ts_us, 0, 0, data[pos:end]))
        log.messages.append(message)
        pos = end + 1
    return log


def _no_whole_line(data: bytes, pos: int) -> None:
    """§10.1: a torn tail holds no whole line (to a newline) without a zero byte that is
    one JSON object: no crash leaves one, so a person wrote it."""
    for line in data[pos:].split(b"\n")[:-1]:
        try:
            is_object = b"\x00" not in line and isinstance(strict_json(line), dict)
        except (ValueError, RecursionError):
            is_object = False
        if is_object:
            raise SpecError("CorruptRecordError", "a whole line that is not a record line")


def _plain_at(data: bytes, pos: int) -> None:
    """A later candidate (§10.1): a line start, the end of zero bytes, or ``{"seq":``; its
    whole line parses as §6 reads a record line."""
    after_gap = data[pos - 1 : pos] in (b"\n", b"\x00") and data[pos : pos + 1] not in b"\n\x00"
    if not (after_gap or data.startswith(b'{"seq":', pos)):
        raise _Bad("no record line starts here")
    end = data.find(b"\n", pos)
    if end < 0:
        raise _Bad("no newline")
    try:
        plain_line(data[pos:end])
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def plain_line(line: bytes) -> tuple[int, int, dict[str, Any]]:
    """§6: exactly seq (integer >= 0), ts (YYYY-MM-DDTHH:MM:SS.ffffffZ), message (object)."""
    record = strict_json(line)
    if not isinstance(record, dict) or set(record) != {"seq", "ts", "message"}:
        raise ValueError("not exactly seq, ts, message")
    seq, ts, message = record["seq"], record["ts"], record["message"]
    if type(seq) is not int or seq < 0 or not isinstance(message, dict):
        raise ValueError("bad seq or message")
    return seq, parse_ts(ts), message


def parse_ts(ts: Any) -> int:
    """§6: the one timestamp form, from 1970 on; microseconds since the epoch."""
    if not isinstance(ts, str) or len(ts) != 27:
        raise ValueError("bad ts")
    shape = "dddd-dd-ddTdd:dd:dd.ddddddZ"
    for ch, want in zip(ts, shape, strict=True):
        if (want == "d" and ch not in _DIGITS) or (want != "d" and ch != want):
            raise ValueError("bad ts")
    y, mo, d, h, mi, s = (int(ts[a : a + 2 + 2 * (a == 0)]) for a in (0, 5, 8, 11, 14, 17))
    days = calendar.monthrange(y, mo)[1] if 1 <= mo <= 12 and y >= 1 else 0
    if not (y >= 1970 and 1 <= d <= days and h < 24 and mi < 60 and s < 60):
        raise ValueError("bad ts")
    return calendar.timegm((y, mo, d, h, mi, s)) * 1_000_000 + int(ts[20:26])

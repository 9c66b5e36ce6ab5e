"""Write spec/vectors/negative/: one small log per reader rule of FORMAT.md, and its outcome.

Run by hand: ``python spec/vectors/generate_negative.py``. Like age's test suite, each vector
is a file plus the outcome a reader must reach: the error class FORMAT.md names, or
"ok: N messages", or "torn tail: N messages" (N messages, then bytes a reader ignores).
``manifest.json`` lists them with the key, password or context to open them with.

The files are built here from FORMAT.md alone, with ``cryptography``'s primitives and
hand-made zstd frames (raw blocks), never with the library: fixed keys, a fixed log id, fixed
timestamps and IVs derived from each vector's name, so every run writes the same bytes
(tests/test_vectors.py regenerates them and compares). The expected outcomes are written
down here by hand; tests/test_vectors.py checks that both the library and the independent
reader in tests/_spec_reader.py reach each one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

HERE = Path(__file__).parent / "negative"
KEY = "cw_0x689RpI-jtRR7oE8h8Eg-Uf-2bX47Y-Xv3-Cdg4="  # published test key: never use it
OTHER_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()  # ditto
PASSWORD = "correct horse battery staple"  # noqa: S105 - a published test password
SCRYPT = (10, 8, 1)  # log2(N), r, p: the cheapest parameters FORMAT.md §4.1 allows
LOG_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
SALT = bytes.fromhex("5a17" * 8)
MESSAGES = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "Hello! How can I help you today?"},
    {"role": "user", "content": "Where is my order?"},
]
TS = [1_763_700_000_123_456, 1_763_700_001_000_000, 1_763_700_002_999_999]
DICTIONARY = b'{"role":"assistant","content":"Hello! How can I help you today?"}'
MAX_BODY = 67_108_936  # FORMAT.md §5.1


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _hmac(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def varint(n: int) -> bytes:
    """FORMAT.md §2, shortest form."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def zstd_raw(data: bytes, content_size: int | None = None) -> bytes:
    """A one-block zstd frame holding ``data`` stored raw (RFC 8878), with its content size
    (8 bytes, single segment) and no checksum or dictionary id."""
    size = len(data) if content_size is None else content_size
    block = (len(data) << 3 | 1).to_bytes(3, "little")  # last block, type raw
    return b"\x28\xb5\x2f\xfd\xe0" + size.to_bytes(8, "little") + block + data


def zstd_raw_unsized(data: bytes) -> bytes:
    """The same without a content size (as early version-1 writers wrote): a 1 KiB window."""
    block = (len(data) << 3 | 1).to_bytes(3, "little")
    return b"\x28\xb5\x2f\xfd\x00\x00" + block + data


class Sealed:
    """Builds one sealed log (FORMAT.md §3-§5) with deterministic IVs."""

    def __init__(
        self,
        name: str,
        *,
        version: int = 1,
        kdf: int = 0,
        flags: int = 0,
        context: str | None = None,
        key: str = KEY,
    ) -> None:
        self.name, self.count = name, 0
        params = SCRYPT if kdf == 1 else (0, 0, 0)
        salt = SALT if kdf == 1 else bytes(16)
        covered = struct.pack("<8sHBBBBH", b"\x89CCL\r\n\x1a\n", version, kdf, *params, flags)
        covered += LOG_ID + salt
        if kdf == 1:
            master = Scrypt(salt=salt, length=32, n=2 ** params[0], r=params[1], p=params[2])
            master = master.derive(PASSWORD.encode())
        else:
            master = base64.urlsafe_b64decode(key)
        okm = HKDF(hashes.SHA256(), 64, salt=LOG_ID, info=b"conversation-codec/1 log keys")
        keys = okm.derive(master)
        self.signing, self.encryption, mac_key = keys[:16], keys[16:32], keys[32:]
        self.header = covered + _hmac(mac_key, covered)
        if context is not None:  # FORMAT.md §4.2
            digest = hashlib.sha256(context.encode()).digest()
            self.header += _hmac(mac_key, self.header + digest)

    def seal(self, envelope: bytes, ts_seconds: int, *, pad: bytes | None = None) -> bytes:
        """A Fernet token without its version byte (FORMAT.md §5.1)."""
        self.count += 1
        iv = hashlib.sha256(f"{self.name}/{self.count}".encode()).digest()[:16]
        if pad is None:
            padder = padding.PKCS7(128).padder()
            padded = padder.update(envelope) + padder.finalize()
        else:
            padded = envelope + pad
        enc = Cipher(algorithms.AES(self.encryption), modes.CBC(iv)).encryptor()
        token = b"\x80" + ts_seconds.to_bytes(8, "big") + iv + enc.update(padded) + enc.finalize()
        return token[1:] + _hmac(self.signing, token)

    def record(
        self,
        seq: int,
        ts_us: int,
        payload: bytes,
        *,
        flags: int = 0,
        dict_id: int = 0,
        control: bool | None = None,
        envelope: bytes | None = None,
        pad: bytes | None = None,
    ) -> bytes:
        """One frame: ``varint(len << 1 | control) || body`` (FORMAT.md §5.1-§5.2)."""
        if envelope is None:
            envelope = bytes((flags,)) + varint(seq) + varint(ts_us % 1_000_000)
            envelope += (varint(dict_id) if flags & 2 else b"") + payload
        body = self.seal(envelope, ts_us // 1_000_000, pad=pad)
        is_control = bool(flags & 0x04) if control is None else control
        return varint(len(body) << 1 | is_control) + body

    def message(self, i: int, **kwargs: Any) -> bytes:
        """Record ``i`` of MESSAGES, uncompressed, in its place."""
        return self.record(i, TS[i], _json(MESSAGES[i]), **kwargs)

    def dictionary(self, ts_us: int, *, dict_id: int = 1, **kwargs: Any) -> bytes:
        """A dictionary record (FORMAT.md §5.3): kind 1, seq = dict_id, raw content."""
        return self.record(dict_id, ts_us, DICTIONARY, flags=0x04, **kwargs)

    def log(self, *middle: bytes) -> bytes:
        """Header, message 0, the given frames, messages 1 and 2 (an intact record last)."""
        return self.header + self.message(0) + b"".join(middle) + self.message(1) + self.message(2)


def _plain(lines: list[bytes], header: bytes | None = None) -> bytes:
    head = header or b'{"conversation_codec":1,"log_id":"%s"}' % LOG_ID.hex().encode()
    return b"".join(line + b"\n" for line in [head, *lines])


def _line(i: int, *, seq: int | None = None, ts: str | None = None, message: bytes = b"") -> bytes:
    stamp = ts or _plain_ts(TS[i])
    text = message or _json(MESSAGES[i])
    return b'{"seq":%d,"ts":"%s","message":%s}' % (i if seq is None else seq, stamp.encode(), text)


def _plain_ts(ts_us: int) -> str:
    from datetime import datetime, timedelta, timezone

    when = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=ts_us)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _good_plain(*middle: bytes) -> bytes:
    return _plain([_line(0), *middle, _line(1), _line(2)])


Vector = tuple[bytes, dict[str, Any], str, str, str]  # data, open, expect, spec, description
OK3 = "ok: 3 messages"
CORRUPT = "CorruptRecordError"
NEWER = "UnsupportedVersionError"


def _header_vectors() -> dict[str, Vector]:
    key = {"encryption_key": KEY}
    base = Sealed("header")
    good = base.log()
    v: dict[str, Vector] = {
        "ok-v1": (good, key, OK3, "§3", "an unbound version-1 log"),
        "ok-v1-opened-with-a-context": (
            good,
            {**key, "context": "alice"},
            OK3,
            "§4.2",
            "an unbound log opens with any context (it binds when next rewritten)",
        ),
        "ok-empty": (base.header, key, "ok: 0 messages", "§3", "a header and no records"),
        "bad-magic": (b"\x88" + good[1:], key, "FormatError", "§9.1", "first magic byte"),
        "truncated-header": (good[:60], key, "FormatError", "§9.1", "60 of the 80 bytes"),
        "version-0": (_patch(good, 8, b"\x00\x00"), key, "FormatError", "§9.1", ""),
        "version-3": (_patch(good, 8, b"\x03\x00"), key, NEWER, "§12", "a newer major version"),
        "unknown-kdf": (_patch(good, 10, b"\x02"), key, NEWER, "§9.1", "kdf = 2"),
        "header-mac-mismatch": (
            _patch(good, 16, bytes([good[16] ^ 1])),
            key,
            "DecryptionError",
            "§4",
            "one bit of log_id flipped",
        ),
        "header-flags-flipped": (
            _patch(good, 14, b"\x01"),
            key,
            "DecryptionError",
            "§9.1",
            "header_flags changed without the key: the header MAC is checked before the flags",
        ),
        "wrong-key": (good, {"encryption_key": OTHER_KEY}, "DecryptionError", "§4", ""),
        "no-key": (good, {}, "KeyRequiredError", "§9.1", "a sealed log opened without a key"),
        "password-for-a-key-log": (
            good,
            {"password": PASSWORD},
            "KeyRequiredError",
            "§9.1",
            "",
        ),
        "v1-header-flags": (
            Sealed("v1-flags", flags=1).log(),
            key,
            NEWER,
            "§3.1",
            "an authentic version-1 header with header_flags 1 (defined only in version 2)",
        ),
        "v2-unknown-header-flag": (
            Sealed("v2-flags", version=2, flags=2).log(),
            key,
            NEWER,
            "§3.1",
            "an authentic version-2 header with header_flags bit 1",
        ),
        "ok-v2-unbound": (
            Sealed("v2-unbound", version=2).log(),
            key,
            OK3,
            "§3.1",
            "version 2 with the bound flag clear: read as version 1",
        ),
    }
    pw = Sealed("password", kdf=1)
    v["ok-password"] = (pw.log(), {"password": PASSWORD}, OK3, "§4.1", "scrypt 2^10, 8, 1")
    v["key-for-a-password-log"] = (pw.log(), key, "PasswordRequiredError", "§9.1", "")
    return v


def _binding_vectors() -> dict[str, Vector]:
    key = {"encryption_key": KEY}
    bound = Sealed("bound", version=2, flags=1, context="alice")
    data = bound.log()
    alice = {**key, "context": "alice"}
    return {
        "ok-v2-bound": (data, alice, OK3, "§4.2", "bound to the context 'alice'"),
        "bound-opened-without-a-context": (data, key, "BindingError", "§4.2", ""),
        "bound-opened-with-another-context": (
            data,
            {**key, "context": "bob"},
            "BindingError",
            "§4.2",
            "another conversation's log under the same key (a swapped file)",
        ),
        "binding-mac-flipped": (
            _patch(data, 100, bytes([data[100] ^ 0x80])),
            alice,
            "BindingError",
            "§4.2",
            "",
        ),
        "bound-header-truncated": (data[:100], alice, "FormatError", "§3.1", "ends in binding_mac"),
        "bound-wrong-key": (
            data,
            {"encryption_key": OTHER_KEY, "context": "alice"},
            "DecryptionError",
            "§9.1",
            "the key is judged before the binding",
        ),
    }


def _record_vectors() -> dict[str, Vector]:
    key = {"encryption_key": KEY}
    v: dict[str, Vector] = {}

    def add(name: str, middle: Callable[[Sealed], bytes], expect: str, spec: str, why: str) -> None:
        s = Sealed(name)
        v[name] = (s.log(middle(s)), key, expect, spec, why)

    # Each bad frame stands where record 1 belongs, with records 1 and 2 intact after it:
    # damage, never a torn tail (§10.1), whatever the index says.
    s = Sealed("record-mac")
    flipped = bytearray(s.message(1))
    flipped[40] ^= 0x01
    v["record-mac"] = (
        s.header + s.message(0) + bytes(flipped) + s.message(2),
        key,
        CORRUPT,
        "§5.1",
        "one bit of record 1 flipped, record 2 intact",
    )
    s = Sealed("seq-mismatch")
    v["seq-mismatch"] = (
        s.header + s.message(0) + s.record(5, TS[1], _json(MESSAGES[1])) + s.message(2),
        key,
        CORRUPT,
        "§5.2",
        "record 1 carries seq 5",
    )
    s = Sealed("seq-duplicate")
    v["seq-duplicate"] = (
        s.header + s.message(0) + s.message(0) + s.message(1),
        key,
        CORRUPT,
        "§5.2",
        "record 0 twice",
    )
    s = Sealed("time-reversal")
    v["time-reversal"] = (
        s.header + s.message(0) + s.record(1, TS[0] - 1, _json(MESSAGES[1])) + s.message(2),
        key,
        CORRUPT,
        "§5.2",
        "record 1 one microsecond before record 0",
    )
    s = Sealed("torn-tail")
    v["torn-tail"] = (
        s.header + s.message(0) + s.message(1) + s.message(2)[:50],
        key,
        "torn tail: 2 messages",
        "§10.1",
        "the last frame cut short (a crash mid-append)",
    )
    s = Sealed("varint-truncated")
    v["varint-truncated"] = (
        s.header + s.message(0) + s.message(1) + b"\x80",
        key,
        "torn tail: 2 messages",
        "§2",
        "the log ends inside a frame's length varint",
    )

    def prefixed(raw_prefix: bytes) -> Callable[[Sealed], bytes]:
        return lambda s: raw_prefix + s.message(1)[2:]

    frame_len = len(Sealed("probe").message(1)) - 2  # body bytes (two-byte prefix)
    add(
        "varint-too-long",
        prefixed(bytes([0x80 | (frame_len << 1 & 0x7F), 0x80, 0x80, 0x80, 0x80, 0x00])),
        CORRUPT,
        "§2",
        "a 6-byte frame length",
    )
    add(
        "varint-non-shortest",
        prefixed(varint(frame_len << 1)[:1] + bytes([varint(frame_len << 1)[1] | 0x80, 0x00])),
        CORRUPT,
        "§2",
        "a frame length with a trailing 0x00 group",
    )
    add("length-too-large", prefixed(varint((MAX_BODY + 16) << 1)), CORRUPT, "§5.1", "")
    add("length-too-small", prefixed(varint(56 << 1)), CORRUPT, "§5.1", "below 72")
    add("length-not-a-block", prefixed(varint(73 << 1)), CORRUPT, "§5.1", "(73 - 56) mod 16 != 0")
    add(
        "envelope-varint-non-shortest",
        lambda s: s.record(1, TS[1], b"", envelope=b"\x00\x81\x00\x00" + _json(MESSAGES[1])),
        CORRUPT,
        "§2",
        "seq 1 written as 81 00 inside an authentic envelope",
    )
    add(
        "envelope-varint-truncated",
        lambda s: s.record(1, TS[1], b"", envelope=b"\x00\x80"),
        CORRUPT,
        "§2",
        "an authentic envelope that ends inside seq",
    )
    add(
        "ts-rem-out-of-range",
        lambda s: s.record(1, TS[1], b"", envelope=b"\x00\x01" + varint(10**6) + b"{}"),
        CORRUPT,
        "§5.2",
        "ts_rem_us = 1,000,000",
    )
    add(
        "bad-padding",
        lambda s: s.record(1, TS[1], b"", envelope=b"\x00\x01\x00{}", pad=b"\x00" * 11),
        CORRUPT,
        "§5.1",
        "an authentic token whose PKCS7 padding is invalid",
    )
    add(
        "envelope-unknown-flag",
        lambda s: s.message(1, flags=0x10),
        NEWER,
        "§5.2",
        "envelope_flags bit 4",
    )
    add(
        "envelope-kind-2",
        lambda s: s.message(1, flags=0x08, control=True),
        NEWER,
        "§5.2",
        "record kind 2",
    )
    add(
        "control-bit-on-a-message",
        lambda s: s.message(1, control=True),
        CORRUPT,
        "§5.1",
        "a message record framed as a control record",
    )
    add(
        "dictionary-without-control-bit",
        lambda s: s.dictionary(TS[0], control=False),
        CORRUPT,
        "§5.1",
        "a dictionary record framed as a message",
    )
    add(
        "second-dictionary",
        lambda s: s.dictionary(TS[0]) + s.message(1) + s.dictionary(TS[1]),
        NEWER,
        "§5.3",
        "two authentic dictionary records",
    )
    add(
        "dictionary-compressed-flag",
        lambda s: s.record(1, TS[0], DICTIONARY, flags=0x05),
        CORRUPT,
        "§5.3",
        "a dictionary record with envelope bit 0 set",
    )
    add(
        "dictionary-id-2",
        lambda s: s.dictionary(TS[0], dict_id=2),
        CORRUPT,
        "§5.3",
        "version 1 and 2 logs hold dictionary 1 only",
    )
    s = Sealed("ok-dictionary")
    v["ok-dictionary"] = (
        s.header
        + s.message(0)
        + s.dictionary(TS[0])
        + s.message(1)
        + s.record(2, TS[2], zstd_raw(_json(MESSAGES[2])), flags=0x03, dict_id=1),
        key,
        OK3,
        "§5.3",
        "a dictionary record, then a record naming it",
    )
    add(
        "dictionary-flag-without-compression",
        lambda s: s.record(1, TS[1], _json(MESSAGES[1]), flags=0x02, dict_id=1),
        CORRUPT,
        "§5.2",
        "",
    )
    return _record_vectors_2(v)


def _record_vectors_2(v: dict[str, Vector]) -> dict[str, Vector]:
    key = {"encryption_key": KEY}

    def replace_1(
        name: str, payload: bytes, flags: int, expect: str, why: str, dict_id: int = 0
    ) -> None:
        # Record 1 authenticates and is in its place; only its payload is wrong, which a
        # reader finds when it decompresses and parses, wherever the record stands.
        s = Sealed(name)
        v[name] = (
            s.header
            + s.message(0)
            + s.record(1, TS[1], payload, flags=flags, dict_id=dict_id)
            + s.message(2),
            key,
            expect,
            "§5.2",
            why,
        )

    one = _json(MESSAGES[1])
    replace_1("ok-zstd-frame", zstd_raw(one), 0x01, OK3, "a compressed payload (raw block)")
    replace_1(
        "zstd-trailing-bytes", zstd_raw(one) + b"\x00", 0x01, CORRUPT, "a byte after the frame"
    )
    replace_1(
        "zstd-content-size-too-large",
        zstd_raw(b"{", content_size=64 * 1024 * 1024 + 1),
        0x01,
        CORRUPT,
        "the frame claims 64 MiB + 1",
    )
    replace_1("ok-zstd-frame-without-size", zstd_raw_unsized(one), 0x01, OK3, "")
    replace_1(
        "zstd-trailing-bytes-without-size",
        zstd_raw_unsized(one) + b"\x00",
        0x01,
        CORRUPT,
        "a byte after a frame that carries no content size",
    )
    replace_1(
        "zstd-trailing-bytes-after-an-empty-frame",
        zstd_raw(b"") + b"{}",
        0x01,
        CORRUPT,
        "an empty frame, then bytes",
    )
    replace_1("zstd-malformed", b"\x28\xb5\x2f\xfd\x00", 0x01, CORRUPT, "")
    replace_1("payload-not-json", b"{role", 0x00, CORRUPT, "")
    replace_1("payload-nan", b'{"score":NaN}', 0x00, CORRUPT, "NaN is not JSON")
    replace_1("payload-number-out-of-range", b'{"n":1e400}', 0x00, CORRUPT, "")
    replace_1("payload-not-an-object", b"[1,2]", 0x00, CORRUPT, "")
    replace_1("payload-invalid-utf8", b'{"a":"\xff"}', 0x00, CORRUPT, "")
    replace_1("payload-lone-surrogate", b'{"a":"\\ud800"}', 0x00, CORRUPT, "")
    replace_1(
        "dictionary-missing",
        zstd_raw(one),
        0x03,
        CORRUPT,
        "a record names dictionary 1 and the log holds none",
        dict_id=1,
    )
    return v


def _plain_vectors() -> dict[str, Vector]:
    v: dict[str, Vector] = {}
    digest = hashlib.sha256(b"alice").hexdigest().encode()
    bound = b'{"conversation_codec":2,"log_id":"%s","context_sha256":"%s"}' % (
        LOG_ID.hex().encode(),
        digest,
    )
    body = [_line(0), _line(1), _line(2)]
    v["plain-ok"] = (_good_plain(), {}, OK3, "§6", "")
    v["plain-with-a-key"] = (
        _good_plain(),
        {"encryption_key": KEY},
        "NotEncryptedError",
        "§9.1",
        "",
    )
    v["plain-ok-bound"] = (_plain(body, bound), {"context": "alice"}, OK3, "§6", "")
    v["plain-bound-opened-without-a-context"] = (_plain(body, bound), {}, "BindingError", "§6", "")
    v["plain-bound-opened-with-another-context"] = (
        _plain(body, bound),
        {"context": "bob"},
        "BindingError",
        "§6",
        "an accident check only: the hash is not authenticated",
    )
    headers = {
        "plain-header-unknown-key": (
            b'{"conversation_codec":1,"log_id":"%s","x":1}',
            "FormatError",
        ),
        "plain-header-version-3": (b'{"conversation_codec":3,"log_id":"%s","x":1}', NEWER),
        "plain-header-v1-with-context": (
            b'{"conversation_codec":1,"log_id":"%s","context_sha256":"' + digest + b'"}',
            "FormatError",
        ),
    }
    for name, (template, expect) in headers.items():
        v[name] = (_plain(body, template % LOG_ID.hex().encode()), {}, expect, "§6", "")
    upper = b'{"conversation_codec":1,"log_id":"%s"}' % LOG_ID.hex().upper().encode()
    v["plain-header-uppercase-log-id"] = (_plain(body, upper), {}, "FormatError", "§6", "")
    v["plain-header-truncated"] = (_good_plain().split(b"\n")[0], {}, "FormatError", "§6", "")
    v["foreign-file"] = (b'{"role":"user","content":"hi"}\n', {}, "FormatError", "§9.1", "")
    lines = {
        "plain-bad-json": b'{"seq":1,"ts":',
        "plain-nan": _line(1, message=b'{"score":NaN}'),
        "plain-number-out-of-range": _line(1, message=b'{"n":-1e400}'),
        "plain-lone-surrogate": _line(1, message=b'{"a":"\\udc00"}'),
        "plain-ts-offset": _line(1, ts="2025-11-21T05:40:01.000000+01:00"),
        "plain-ts-three-digits": _line(1, ts="2025-11-21T04:40:01.000Z"),
        "plain-ts-no-fraction": _line(1, ts="2025-11-21T04:40:01Z"),
        "plain-ts-lowercase": _line(1, ts="2025-11-21t04:40:01.000000z"),
        "plain-ts-leap-second": _line(1, ts="2025-11-21T04:40:60.000000Z"),
        "plain-ts-before-1970": _line(1, ts="1969-12-31T23:59:59.000000Z"),
        "plain-extra-key": _line(1)[:-1] + b',"x":1}',
        "plain-seq-float": _line(1).replace(b'"seq":1', b'"seq":1.0'),
        "plain-message-not-an-object": _line(1, message=b"[1]"),
    }
    for name, line in lines.items():
        v[name] = (_plain([_line(0), line, _line(2)]), {}, CORRUPT, "§6", "")
    v["plain-seq-mismatch"] = (_plain([_line(0), _line(1, seq=7), _line(2)]), {}, CORRUPT, "§6", "")
    reversed_ = _line(1, ts=_plain_ts(TS[0] - 1))
    v["plain-time-reversal"] = (_plain([_line(0), reversed_, _line(2)]), {}, CORRUPT, "§6", "")
    torn = _plain([_line(0), _line(1)]) + _line(2)[:30]
    v["plain-torn-tail"] = (torn, {}, "torn tail: 2 messages", "§6", "no newline at the end")
    return v


def _patch(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


def build() -> dict[str, Vector]:
    """Every vector by name, in a stable order."""
    out: dict[str, Vector] = {}
    for part in (_header_vectors, _binding_vectors, _record_vectors, _plain_vectors):
        for name, vector in part().items():
            assert name not in out, name
            out[name] = vector
    return dict(sorted(out.items()))


def manifest(vectors: dict[str, Vector]) -> dict[str, Any]:
    """The manifest: each vector's file, how to open it, and the outcome a reader reaches."""
    return {
        "description": (
            "Negative (and a few positive) vectors for spec/FORMAT.md, one file each. Open the "
            "file with `open` (a key, a password, a context), read every message; the outcome "
            "is `expect`: the error class FORMAT.md names, 'ok: N messages', or 'torn tail: N "
            "messages' (N messages, then bytes a reader ignores and a writer cuts)."
        ),
        "vectors": [
            {
                "name": name,
                "file": f"{name}.log",
                "open": opening,
                "expect": expect,
                "spec": spec,
                "description": why,
            }
            for name, (_, opening, expect, spec, why) in vectors.items()
        ],
    }


def main() -> None:
    vectors = build()
    HERE.mkdir(exist_ok=True)
    for old in HERE.glob("*.log"):
        old.unlink()
    for name, (data, *_) in vectors.items():
        (HERE / f"{name}.log").write_bytes(data)
    (HERE / "manifest.json").write_text(json.dumps(manifest(vectors), indent=2) + "\n")


if __name__ == "__main__":
    main()

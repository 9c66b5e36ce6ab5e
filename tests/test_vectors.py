"""spec/vectors: the library reads them, and an independent FORMAT.md reader agrees byte by byte.

The independent reader here uses only ``cryptography``'s primitives (HKDF, HMAC, AES-CBC) and
``zstandard``, following FORMAT.md §3 to §7 without importing the library's format code. The
negative vectors (spec/vectors/negative, FORMAT.md §13.1) are checked by the library and by
the independent reader in ``_spec_reader``, which shares no code with it.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import struct
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cryptography.hazmat.primitives import hashes, hmac, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from _spec_reader import verdict as spec_verdict
from conversation_codec import ConversationCodec, ConversationCodecError

VECTORS = Path(__file__).parent.parent / "spec" / "vectors"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# The §13 vectors: what this library writes now (index version 2, ENTRY_SYNCED entries), and
# the sealed one as the first writers wrote it (index version 1), which must stay readable.
SEALED = {"sealed_log.json": 2, "sealed_log_index_v1.json": 1}
ENTRY_SYNCED = 0b11 << 62


def load_vector(name: str) -> dict[str, Any]:
    return dict(json.loads((VECTORS / name).read_text()))


def write_vector(vector: dict[str, Any], folder: Path) -> Path:
    path = folder / "chat.log"
    path.write_bytes(bytes.fromhex(vector["log_hex"]))
    Path(str(path) + ".idx").write_bytes(bytes.fromhex(vector["index_hex"]))
    return path


@pytest.mark.parametrize("name", [*SEALED, "plain_log.json"])
@pytest.mark.parametrize("with_index", [True, False])
def test_library_reads_vectors(name: str, with_index: bool, tmp_path: Path) -> None:
    vector = load_vector(name)
    path = write_vector(vector, tmp_path)
    if not with_index:
        Path(str(path) + ".idx").unlink()
    with ConversationCodec(path, encryption_key=vector["key"]) as codec:
        assert codec.load() == vector["messages"]
        stamps = [EPOCH + timedelta(microseconds=t) for t in vector["timestamps_us"]]
        assert [codec.timestamp(i) for i in range(len(stamps))] == stamps


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fernet_token(signing: bytes, encryption: bytes, ts: int, iv: bytes, plain: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    enc = Cipher(algorithms.AES(encryption), modes.CBC(iv)).encryptor()
    basic = b"\x80" + struct.pack(">Q", ts) + iv + enc.update(padded) + enc.finalize()
    mac = hmac.HMAC(signing, hashes.SHA256())
    mac.update(basic)
    return basic + mac.finalize()


def _check_index(vector: dict[str, Any], version: int, ends: list[int], span: Any) -> None:
    """§7: the header, the dictionary span, and one entry per message (its end and time)."""
    index = bytes.fromhex(vector["index_hex"])
    assert index[:8] == b"\x89CCX\r\n\x1a\n"
    assert struct.unpack_from("<HHI", index, 8) == (version, 16, 0)
    assert index[16:32].hex() == vector["log_id"]
    assert struct.unpack_from("<QQ", index, 32) == span
    assert len(index) == 48 + 16 * len(ends)
    entries = [struct.unpack_from("<Qq", index, 48 + 16 * i) for i in range(len(ends))]
    assert [(e & ~ENTRY_SYNCED, t) for e, t in entries] == list(
        zip(ends, vector["timestamps_us"], strict=True)
    )
    # Version 1 has no entry flags; a writer under durability="fsync" (the generator's
    # default) marks every entry committed evidence.
    assert {e & ENTRY_SYNCED for e, _ in entries} == {ENTRY_SYNCED if version == 2 else 0}


@pytest.mark.parametrize("name", SEALED)
def test_sealed_vector_matches_the_spec_byte_by_byte(name: str) -> None:
    vector = load_vector(name)
    log = bytes.fromhex(vector["log_hex"])
    master = base64.urlsafe_b64decode(vector["key"])
    # §3.1 header
    assert log[:8] == b"\x89CCL\r\n\x1a\n"
    assert struct.unpack_from("<HBBBBH", log, 8) == (1, 0, 0, 0, 0, 0)
    log_id = log[16:32]
    assert log_id.hex() == vector["log_id"]
    # §4 keys
    okm = HKDF(hashes.SHA256(), 64, salt=log_id, info=b"conversation-codec/1 log keys").derive(
        master
    )
    signing, encryption, mac_key = okm[:16], okm[16:32], okm[32:]
    header_mac = hmac.HMAC(mac_key, hashes.SHA256())
    header_mac.update(log[:48])
    assert header_mac.finalize() == log[48:80]
    # §5 records: decrypt independently, then re-seal with the recorded IV: same bytes.
    pos, ends, dictionary, control_span = 80, [], None, (0, 0)
    stamps = iter(zip(vector["messages"], vector["timestamps_us"], strict=True))
    seq = 0
    while pos < len(log):
        prefix, start = _varint(log, pos)
        body_len, control = prefix >> 1, prefix & 1
        body = log[start : start + body_len]
        ts, iv = struct.unpack(">Q", body[:8])[0], body[8:24]
        dec = Cipher(algorithms.AES(encryption), modes.CBC(iv)).decryptor()
        padded = dec.update(body[24:-32]) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        envelope = unpadder.update(padded) + unpadder.finalize()
        assert _fernet_token(signing, encryption, ts, iv, envelope)[1:] == body
        flags = envelope[0]
        got_seq, p = _varint(envelope, 1)
        rem, p = _varint(envelope, p)
        if control:  # §5.3: a dictionary record, kind 1, seq = dictionary id
            assert (flags, got_seq) == (1 << 2, 1)
            dictionary = envelope[p:]
            assert dictionary.hex() == vector["dictionary_hex"]
            control_span = (pos, start + body_len)
            pos = start + body_len
            continue
        dict_id = 0
        if flags & 2:
            dict_id, p = _varint(envelope, p)
        payload = envelope[p:]
        if flags & 1:
            zdict = zstandard.ZstdCompressionDict(dictionary) if dict_id else None
            payload = zstandard.ZstdDecompressor(dict_data=zdict).decompress(
                payload, max_output_size=1 << 20
            )
        assert flags & ~3 == 0
        message, ts_us = next(stamps)
        assert got_seq == seq
        assert ts * 1_000_000 + rem == ts_us
        assert json.loads(payload) == message
        pos = start + body_len
        ends.append(pos)
        seq += 1
    assert pos == len(log) and seq == len(vector["messages"])
    assert dictionary is not None and control_span != (0, 0)
    _check_index(vector, SEALED[name], ends, control_span)


def test_plain_vector_matches_the_spec() -> None:
    vector = load_vector("plain_log.json")
    log = bytes.fromhex(vector["log_hex"])
    lines = log.split(b"\n")
    assert lines[-1] == b""
    assert json.loads(lines[0]) == {"conversation_codec": 1, "log_id": vector["log_id"]}
    ends = [log.index(b"\n", log.index(b'{"seq":%d,' % k)) + 1 for k in range(len(lines) - 2)]
    _check_index(vector, 2, ends, (0, 0))
    for seq, (line, message, ts_us) in enumerate(
        zip(lines[1:-1], vector["messages"], vector["timestamps_us"], strict=True)
    ):
        record = json.loads(line)
        assert record["seq"] == seq
        assert record["message"] == message
        when = datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert when == EPOCH + timedelta(microseconds=ts_us)


def test_the_vectors_regenerate_byte_for_byte(tmp_path: Path) -> None:
    """spec/vectors/generate.py still runs, and writes exactly the committed §13 vectors: what
    this library writes today (FORMAT.md §13). When a change to the writer alters these bytes
    on purpose, run the generator and let the byte-by-byte checks above vouch for the result."""
    subprocess.run(
        [sys.executable, str(VECTORS / "generate.py"), str(tmp_path)], check=True, timeout=60
    )
    for name in ("sealed_log.json", "plain_log.json"):
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), name


# -- negative vectors (spec/vectors/negative): every reader rule, two readers ----------------

NEGATIVE = VECTORS / "negative"
MANIFEST = json.loads((NEGATIVE / "manifest.json").read_text())["vectors"]
NAMES = [v["name"] for v in MANIFEST]


def _library_outcome(path: Path, opening: dict[str, Any]) -> str:
    """Open, read every message, and say what happened in the manifest's words."""
    try:
        with ConversationCodec(path, **opening) as codec:
            count = len(codec.load() or [])
            report = codec.verify()
    except ConversationCodecError as exc:
        return type(exc).__name__
    torn = any(p.kind == "torn-tail" for p in report.problems)
    assert torn or report.ok, report.problems
    return f"{'torn tail' if torn else 'ok'}: {count} message{'s' * (count != 1)}"


@pytest.mark.parametrize("vector", MANIFEST, ids=NAMES)
def test_library_reaches_each_negative_vectors_outcome(
    vector: dict[str, Any], tmp_path: Path
) -> None:
    data = (NEGATIVE / vector["file"]).read_bytes()
    path = tmp_path / "chat.log"
    path.write_bytes(data)
    assert _library_outcome(path, vector["open"]) == vector["expect"], vector["description"]
    assert path.read_bytes() == data  # a reader never changes the log


@pytest.mark.parametrize("vector", MANIFEST, ids=NAMES)
def test_independent_reader_reaches_each_negative_vectors_outcome(vector: dict[str, Any]) -> None:
    data = (NEGATIVE / vector["file"]).read_bytes()
    opening = vector["open"]
    got = spec_verdict(
        data,
        key=opening.get("encryption_key"),
        password=opening.get("password"),
        context=opening.get("context"),
    )
    assert got == vector["expect"], vector["description"]


def test_negative_vectors_are_reproducible_and_complete() -> None:
    """generate_negative.py writes exactly the checked-in files (fixed keys, IVs, clock)."""
    spec = importlib.util.spec_from_file_location(
        "generate_negative", VECTORS / "generate_negative.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vectors = module.build()
    assert module.manifest(vectors)["vectors"] == MANIFEST
    assert {p.name for p in NEGATIVE.glob("*.log")} == {v["file"] for v in MANIFEST}
    for name, (data, *_) in vectors.items():
        assert (NEGATIVE / f"{name}.log").read_bytes() == data, name
    outcomes = {v["expect"] for v in MANIFEST}
    assert outcomes >= {
        "BindingError",
        "CorruptRecordError",
        "DecryptionError",
        "FormatError",
        "KeyRequiredError",
        "NotEncryptedError",
        "UnsupportedVersionError",
        "ok: 3 messages",
        "torn tail: 2 messages",
    }

"""Key and password arguments of migrate, migrate_many, import_ and salvage: each is checked
up front, as ``ConversationCodec`` checks its own, before any file is touched.

An empty ``log_password`` once fell through a truthiness test and an encrypted source was
written as a plaintext log (outside review, mig.md defect 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from conversation_codec import ConversationCodec, ConversationStore, migrate, migrate_many, salvage
from conversation_codec.errors import FormatError, InvalidKeyError, KeyTypeError

from conftest import snapshot

KEY = "Qa3EwCEJr-ZK8_Wj1Z7pHqHDe7Ubwf2PY1M1hF_zqLk="  # the new logs' key (tests only)
LEGACY_KEY = "qsaLzMvJjEw-zJjkxF2ovDTZySvHckf4NDTI-P8sBdE="  # the legacy app's Fernet key
SECRET = "okapi-lantern-5521"  # must never reach disk in plaintext
MESSAGES = [
    {"role": "user", "content": f"my card {SECRET}"},
    {"role": "assistant", "content": "ok"},
]

# (value, the error ConversationCodec(password=value) raises)
BAD_PASSWORDS: list[tuple[Any, type[Exception]]] = [
    ("", InvalidKeyError),
    (b"", KeyTypeError),
    (b"pw", KeyTypeError),
    (0, KeyTypeError),
    ("p\udc80w", InvalidKeyError),
]
BAD_IDS = ["empty", "empty-bytes", "bytes", "int", "lone-surrogate"]


def fernet_source(folder: Path) -> Path:
    src = folder / "h.enc"
    plain = "".join(json.dumps(m) + "\n" for m in MESSAGES).encode()
    src.write_bytes(Fernet(LEGACY_KEY.encode()).encrypt(plain))
    return src


@pytest.mark.parametrize(("value", "error"), BAD_PASSWORDS, ids=BAD_IDS)
def test_codec_refuses_the_same_passwords(tmp_path: Path, value: Any, error: type) -> None:
    with pytest.raises(error):
        ConversationCodec(tmp_path / "x.log", password=value)


@pytest.mark.parametrize(("value", "error"), BAD_PASSWORDS, ids=BAD_IDS)
@pytest.mark.parametrize("where", ["in-place", "new-path"])
def test_migrate_refuses_a_bad_log_password(
    tmp_path: Path, value: Any, error: type, where: str
) -> None:
    src = fernet_source(tmp_path)
    before = snapshot(tmp_path)
    dst = None if where == "in-place" else tmp_path / "new.log"
    with pytest.raises(error) as caught:
        migrate(src, dst, legacy_key=LEGACY_KEY, log_password=value)
    assert "log_password" in str(caught.value)
    assert snapshot(tmp_path) == before  # no plaintext log, no .bak, nothing
    assert not (tmp_path / "new.log").exists()


@pytest.mark.parametrize(("value", "error"), BAD_PASSWORDS, ids=BAD_IDS)
def test_migrate_many_refuses_a_bad_log_password_before_any_file(
    tmp_path: Path, value: Any, error: type
) -> None:
    fernet_source(tmp_path)
    (tmp_path / "plain.jsonl").write_text(json.dumps(MESSAGES[0]) + "\n")
    before = snapshot(tmp_path)
    with pytest.raises(error):
        migrate_many([tmp_path], legacy_key=LEGACY_KEY, log_password=value)
    assert snapshot(tmp_path) == before


def test_migrate_refuses_a_key_and_a_password_together(tmp_path: Path) -> None:
    src = fernet_source(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="not both"):
        migrate(src, legacy_key=LEGACY_KEY, encryption_key=KEY, log_password="pw")
    with pytest.raises(ValueError, match="not both"):
        migrate_many([src], legacy_key=LEGACY_KEY, encryption_key=KEY, log_password="pw")
    assert snapshot(tmp_path) == before


# The legacy password of a whole-file Fernet source: str or bytes (the legacy app's PBKDF2
# takes bytes), never empty, never a lone surrogate.
BAD_LEGACY: list[tuple[Any, type[Exception]]] = [
    ("", InvalidKeyError),
    (b"", InvalidKeyError),
    (0, KeyTypeError),
    (["pw"], KeyTypeError),
    ("p\udc80w", InvalidKeyError),
]
BAD_LEGACY_IDS = ["empty", "empty-bytes", "int", "list", "lone-surrogate"]


@pytest.mark.parametrize(("value", "error"), BAD_LEGACY, ids=BAD_LEGACY_IDS)
def test_migrate_refuses_a_bad_legacy_password(tmp_path: Path, value: Any, error: type) -> None:
    src = fernet_source(tmp_path)
    (tmp_path / "h.enc.salt").write_bytes(bytes(16))
    before = snapshot(tmp_path)
    with pytest.raises(error) as caught:
        migrate(src, encryption_key=KEY, password=value)
    assert "password" in str(caught.value)
    with pytest.raises(error):
        migrate_many([tmp_path], encryption_key=KEY, password=value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("value", "error"), BAD_LEGACY, ids=BAD_LEGACY_IDS)
def test_import_refuses_a_bad_legacy_password(tmp_path: Path, value: Any, error: type) -> None:
    src = fernet_source(tmp_path)
    target = tmp_path / "t.log"
    with ConversationCodec(target, KEY) as codec:
        codec.append({"role": "user", "content": "kept"})
        before = snapshot(tmp_path)
        with pytest.raises(error):
            codec.import_(src, password=value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("value", "error"), BAD_PASSWORDS, ids=BAD_IDS)
def test_salvage_refuses_a_bad_password(tmp_path: Path, value: Any, error: type) -> None:
    src = tmp_path / "a.log"
    with ConversationCodec(src, password="pw") as codec:
        codec.append(MESSAGES[0])
    before = snapshot(tmp_path)
    with pytest.raises(error):
        salvage(src, tmp_path / "b.log", password=value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("value", "error"), BAD_PASSWORDS, ids=BAD_IDS)
def test_store_refuses_a_bad_password_when_made(tmp_path: Path, value: Any, error: type) -> None:
    with pytest.raises(error):
        ConversationStore(tmp_path / "store", password=value)
    assert not (tmp_path / "store").exists()


# mig.md defect 9: an ISO time whose UTC instant is outside years 1-9999 raised a raw
# OverflowError from migrate (import_ refuses it with FormatError).
OUT_OF_RANGE = ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"]


@pytest.mark.parametrize("stamp", OUT_OF_RANGE, ids=["past-9999", "before-year-1"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry-run"])
def test_migrate_refuses_a_time_outside_years_1_to_9999(
    tmp_path: Path, stamp: str, dry_run: bool
) -> None:
    src = tmp_path / "h.jsonl"
    lines = [
        {"role": "user", "content": "a", "timestamp": "2024-01-01T00:00:00Z"},
        {"role": "user", "content": "b", "timestamp": stamp},
    ]
    src.write_text("".join(json.dumps(m) + "\n" for m in lines))
    before = snapshot(tmp_path)
    with pytest.raises(FormatError, match="1 message") as caught:
        migrate(src, encryption_key=KEY, dry_run=dry_run)
    assert str(src) in str(caught.value)
    with pytest.raises(FormatError):
        migrate(src, tmp_path / "new.log", encryption_key=KEY, dry_run=dry_run)
    batch = migrate_many([src], encryption_key=KEY, dry_run=dry_run)
    assert batch.items[0].status == "failed"
    assert "OverflowError" not in batch.items[0].reason
    assert snapshot(tmp_path) == before

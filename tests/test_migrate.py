"""Tests for conversation_codec.maintenance.migrate: every legacy layout, crashes, and batches.

Every fixture is a real file the test writes itself, in exactly the layout the legacy
application wrote: JSONL, a JSON array with ISO timestamps, whole-file Fernet tokens over
either (with a key, or a password and a 16-byte ``.salt`` file beside it, PBKDF2-HMAC-SHA256
at 480,000 iterations), LangChain ``FileChatMessageHistory`` files, and our own logs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

import _children
from conversation_codec import ConversationCodec
from conversation_codec.errors import (
    ConversationCodecError,
    DecryptionError,
    FormatError,
    KeyRequiredError,
    NotSerializableError,
    StorageError,
    UnsupportedVersionError,
)
from conversation_codec.format.header import LOG_MAGIC
from conversation_codec.maintenance.legacy import LegacyFormat
from conversation_codec.maintenance.migrate import BatchItem, MigrationReport, migrate, migrate_many

from conftest import SPECIAL_FILES, Steps, make_special, unblocked

KEY = "Qa3EwCEJr-ZK8_Wj1Z7pHqHDe7Ubwf2PY1M1hF_zqLk="  # the new logs' key (tests only)
LEGACY_KEY = "qsaLzMvJjEw-zJjkxF2ovDTZySvHckf4NDTI-P8sBdE="  # the legacy app's Fernet key
OTHER_KEY = "VTc7qcgxoeOXhVHyAWpFQkDKN0zUX9vD6bu13m5E24I="
PASSWORD = "correct horse battery staple"
SALT = bytes(range(100, 116))
SECRET = "okapi-lantern-5521"  # in every message: must never reach disk in plaintext
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SRC = str(Path(__file__).resolve().parents[1] / "src")
TIMEOUT = 120.0  # seconds for a child process
CHILD_ENV = dict(
    os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
)


def us(text: str) -> int:
    """Microseconds since the epoch of an aware ISO time (computed without the library)."""
    return (datetime.fromisoformat(text) - EPOCH) // timedelta(microseconds=1)


MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": f"You are terse. {SECRET}"},
    {"role": "user", "content": f'Ünïcode ✓ and "quotes"\nnewline {SECRET}'},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q": "' + SECRET + '"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": f"found {SECRET}"},
    {"role": "assistant", "content": [{"type": "text", "text": SECRET}], "score": 0.5},
]
STAMPS = [
    "2024-05-01T12:00:00+00:00",
    "2024-05-01T12:00:01.250000+00:00",
    "2024-05-01T14:00:02.000001+02:00",  # an offset: 12:00:02.000001Z
    "2024-05-01T12:00:03+00:00",
    "2024-05-01T12:00:04.999999+00:00",
]


def jsonl(messages: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in messages).encode()


def timed(messages: list[dict[str, Any]], stamps: list[str]) -> list[dict[str, Any]]:
    return [{**m, "timestamp": t} for m, t in zip(messages, stamps, strict=True)]


def array(messages: list[dict[str, Any]]) -> bytes:
    return json.dumps(messages, indent=2, ensure_ascii=False).encode()


def password_key(password: str, salt: bytes) -> bytes:
    """The legacy app's key derivation, written out independently of the library."""
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=480_000)
    return base64.urlsafe_b64encode(kdf.derive(password.encode()))


def langchain(messages: list[tuple[str, str]]) -> bytes:
    """What FileChatMessageHistory writes: json.dumps(messages_to_dict(messages))."""
    out = []
    for kind, content in messages:
        data: dict[str, Any] = {
            "content": content,
            "additional_kwargs": {},
            "response_metadata": {},
            "type": kind,
            "name": None,
            "id": None,
            "example": False,
        }
        if kind == "ai":
            data.update(tool_calls=[], invalid_tool_calls=[], usage_metadata=None)
        out.append({"type": kind, "data": data})
    return json.dumps(out).encode()


LANGCHAIN = [("human", f"hi {SECRET}"), ("ai", "hello ✓"), ("human", "bye")]
LANGCHAIN_AS_MESSAGES = [
    {"role": "user", "content": f"hi {SECRET}"},
    {"role": "assistant", "content": "hello ✓"},
    {"role": "user", "content": "bye"},
]

# name -> (file bytes, expected format, expected messages, expected µs timestamps or None)
LAYOUTS: dict[str, tuple[bytes, LegacyFormat, list[dict[str, Any]], list[int] | None]] = {
    "jsonl": (jsonl(MESSAGES), LegacyFormat.JSONL, MESSAGES, None),
    "jsonl-timed": (
        jsonl(timed(MESSAGES, STAMPS)),
        LegacyFormat.JSONL,
        MESSAGES,
        [us(t) for t in STAMPS],
    ),
    "json-array": (
        array(timed(MESSAGES, STAMPS)),
        LegacyFormat.JSON_ARRAY,
        MESSAGES,
        [us(t) for t in STAMPS],
    ),
    "langchain": (langchain(LANGCHAIN), LegacyFormat.LANGCHAIN_JSON, LANGCHAIN_AS_MESSAGES, None),
    "fernet-jsonl": (
        Fernet(LEGACY_KEY).encrypt(jsonl(MESSAGES)),
        LegacyFormat.FERNET_JSONL,
        MESSAGES,
        None,
    ),
    "fernet-json-array": (
        Fernet(LEGACY_KEY).encrypt(array(timed(MESSAGES, STAMPS))),
        LegacyFormat.FERNET_JSON_ARRAY,
        MESSAGES,
        [us(t) for t in STAMPS],
    ),
}


def now_us() -> int:
    return time.time_ns() // 1000


def stamps_of(path: Path, key: str | None, n: int) -> list[int]:
    with ConversationCodec(path, encryption_key=key) as codec:
        return [(codec.timestamp(i) - EPOCH) // timedelta(microseconds=1) for i in range(n)]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``folder`` with its bytes, mtime and mode: to prove nothing changed."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def no_plaintext(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), f"plaintext in {p.name}"


# --- each layout ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "encrypt"),
    [(name, True) for name in LAYOUTS]
    + [(name, False) for name in LAYOUTS if "fernet" not in name],
)
def test_each_layout_in_place_with_backup(tmp_path: Path, layout: str, encrypt: bool) -> None:
    """Each layout, to a sealed log and (unless the source is encrypted) a plaintext one."""
    raw, fmt, expected, stamps = LAYOUTS[layout]
    encrypted_source = fmt in (LegacyFormat.FERNET_JSONL, LegacyFormat.FERNET_JSON_ARRAY)
    path = tmp_path / "history.json"
    path.write_bytes(raw)
    path.chmod(0o644)
    key = KEY if encrypt else None
    started = now_us()
    report = migrate(path, encryption_key=key, legacy_key=LEGACY_KEY)
    finished = now_us()
    assert names(tmp_path) == {"history.json", "history.json.bak", "history.json.idx"}
    bak = tmp_path / "history.json.bak"
    assert report == MigrationReport(
        source=path,
        destination=path,
        format=fmt,
        messages=len(expected),
        bytes_before=len(raw),
        bytes_after=path.stat().st_size + Path(f"{path}.idx").stat().st_size,
        backup=bak,
        converted=True,
        notes=report.notes,
    )
    assert bak.read_bytes() == raw
    assert bak.stat().st_mode & 0o777 == 0o600
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(LOG_MAGIC if encrypt else b'{"conversation_codec":1')
    with ConversationCodec(path, encryption_key=key) as codec:
        assert codec.load() == expected
    got = stamps_of(path, key, len(expected))
    if stamps is None:
        assert all(started <= t <= finished for t in got), "untimed: the migration time"
        assert any("no timestamps" in n for n in report.notes)
    else:
        assert got == stamps
    if encrypt:
        for p in (path, Path(f"{path}.idx")):
            assert SECRET.encode() not in p.read_bytes()
        if not encrypted_source:
            assert any("plaintext original" in n for n in report.notes)


def test_password_and_salt_file(tmp_path: Path) -> None:
    """history.enc + history.salt: PBKDF2-HMAC-SHA256, 480,000 iterations; wrong password
    first (nothing changes), then the right one, in place with a backup."""
    path, salt = tmp_path / "history.enc", tmp_path / "history.salt"
    token = Fernet(password_key(PASSWORD, SALT)).encrypt(array(timed(MESSAGES, STAMPS)))
    path.write_bytes(token)
    salt.write_bytes(SALT)
    before = snapshot(tmp_path)
    with pytest.raises(DecryptionError, match="wrong key or password"):
        migrate(path, encryption_key=KEY, password="wrong " + PASSWORD)
    assert snapshot(tmp_path) == before
    report = migrate(path, encryption_key=KEY, password=PASSWORD)
    assert (report.format, report.messages, report.converted) == (
        LegacyFormat.FERNET_JSON_ARRAY,
        5,
        True,
    )
    assert names(tmp_path) == {"history.enc", "history.enc.bak", "history.enc.idx", "history.salt"}
    assert (tmp_path / "history.enc.bak").read_bytes() == token
    assert salt.read_bytes() == SALT
    no_plaintext(tmp_path)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.load() == MESSAGES
    assert stamps_of(path, KEY, 5) == [us(t) for t in STAMPS]


def test_array_timestamps_in_file_order_gaps_filled_extra_keys_kept(tmp_path: Path) -> None:
    items = [
        {"role": "user", "content": "untimed first", "x": 1},
        {"role": "user", "content": "c", "timestamp": "2024-01-03T00:00:00Z", "meta": {"k": [1]}},
        {"role": "user", "content": "untimed after c"},
        {"role": "user", "content": "a", "timestamp": "2024-01-01T00:00:00Z"},
        {"role": "user", "content": "b", "timestamp": "2024-01-02T03:04:05.678901+03:00"},
        {"role": "user", "content": "odd", "timestamp": 1700000000},  # a number: kept as is
        {"role": "user", "content": "old", "timestamp": "1969-07-20T20:17:40Z"},
        {"role": "user", "content": "zero+1h", "timestamp": "1970-01-01T00:00:00+01:00"},
        {"role": "user", "content": "d", "timestamp": "2024-01-04T00:00:00Z"},
    ]
    path = tmp_path / "history.json"
    path.write_bytes(array(items))
    report = migrate(path, backup=False)
    assert names(tmp_path) == {"history.json", "history.json.idx"}
    with ConversationCodec(path) as codec:
        got = codec.load()
    assert got == [  # the file's order, never sorted by time
        {"role": "user", "content": "untimed first", "x": 1},
        {"role": "user", "content": "c", "meta": {"k": [1]}},
        {"role": "user", "content": "untimed after c"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "user", "content": "odd", "timestamp": 1700000000},
        {"role": "user", "content": "old", "timestamp": "1969-07-20T20:17:40Z"},
        {"role": "user", "content": "zero+1h", "timestamp": "1969-12-31T23:00:00Z"},
        {"role": "user", "content": "d"},
    ]
    c, d = us("2024-01-03T00:00:00+00:00"), us("2024-01-04T00:00:00+00:00")
    # A leading untimed message takes the first known time; a, b (earlier than c) and the
    # pre-1970 ones are stored as the time before them: times never decrease.
    assert stamps_of(path, None, 9) == [c] * 8 + [d]
    assert any("2 timestamp(s) before 1970" in n for n in report.notes), report.notes
    assert any("2 timestamp(s) earlier than the message before" in n for n in report.notes)
    assert any("3 message(s) without a timestamp" in n for n in report.notes), report.notes


def test_leading_pre_1970_times_are_stored_as_1970(tmp_path: Path) -> None:
    items = [
        {"role": "user", "content": "old", "timestamp": "1969-07-20T20:17:40Z"},
        {"role": "user", "content": "a", "timestamp": "2024-01-01T00:00:00Z"},
    ]
    path = tmp_path / "history.json"
    path.write_bytes(array(items))
    report = migrate(path, backup=False)
    assert stamps_of(path, None, 2) == [0, us("2024-01-01T00:00:00+00:00")]
    assert not any("earlier than the message before" in n for n in report.notes)


def test_many_messages_span_several_write_batches(tmp_path: Path) -> None:
    n = 9000  # > 2 * WRITE_BATCH
    base = us("2024-05-01T00:00:00+00:00")
    items = [
        {
            "role": "user",
            "i": i,
            "timestamp": (EPOCH + timedelta(microseconds=base + i * 7)).isoformat(),
        }
        for i in range(n)
    ]
    path = tmp_path / "big.jsonl"
    path.write_bytes(jsonl(items))
    assert migrate(path, encryption_key=KEY).messages == n
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.load() == [{"role": "user", "i": i} for i in range(n)]
        assert codec.timestamp(n - 1) == EPOCH + timedelta(microseconds=base + (n - 1) * 7)
        assert codec.timestamp(4096) == EPOCH + timedelta(microseconds=base + 4096 * 7)


# --- no-ops ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
def test_a_log_already_is_a_no_op(tmp_path: Path, key: str | None) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=key) as codec:
        codec.extend(MESSAGES)
    before = snapshot(tmp_path)
    # A sealed log: no key needed, none used. A plaintext log given a key is encrypted in
    # place (test_migrate_seal.py, sec.md defect 4): without one it is left as it is.
    report = migrate(path, encryption_key=OTHER_KEY if key else None)
    assert report.format is LegacyFormat.CODEC_LOG
    assert (report.converted, report.messages, report.backup) == (False, None, None)
    assert report.bytes_before == report.bytes_after == path.stat().st_size
    assert "already a conversation-codec log" in report.notes[0]
    assert snapshot(tmp_path) == before


def _unreadable_log(path: Path, case: str) -> None:
    """Write at ``path`` a file that starts like one of our logs but that no codec opens."""
    with ConversationCodec(path, encryption_key=None if "plain" in case else KEY) as codec:
        codec.extend(MESSAGES)
    data = bytearray(path.read_bytes())
    if case == "newer-sealed":
        data[8:10] = (3).to_bytes(2, "little")  # FORMAT.md §3: format_version
    elif case == "unknown-kdf":
        data[10] = 9
    elif case == "truncated-sealed":
        del data[40:]
    elif case == "newer-plain":
        data = data.replace(b'"conversation_codec":1', b'"conversation_codec":3', 1)
    elif case == "damaged-plain":
        data = data.replace(b'"conversation_codec":1', b'"conversation_codec":-1', 1)
    else:  # a look-alike header line: how no version of the library writes it
        data = bytearray(b'{ "conversation_codec" : 1 }\n') + jsonl(MESSAGES)
    path.write_bytes(bytes(data))
    Path(f"{path}.idx").unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("newer-sealed", UnsupportedVersionError, "format v3; this library reads up to v2"),
        ("unknown-kdf", UnsupportedVersionError, "names kdf 9"),
        ("truncated-sealed", FormatError, "sealed header is truncated"),
        ("newer-plain", UnsupportedVersionError, "format v3; this library reads up to v2"),
        ("damaged-plain", FormatError, "header line has invalid fields"),
        ("look-alike-plain", FormatError, "not as a log writes it"),
    ],
)
def test_a_log_this_library_cannot_read_is_refused_not_skipped(
    tmp_path: Path, case: str, error: type[Exception], match: str
) -> None:
    path = tmp_path / "chat.log"
    _unreadable_log(path, case)
    before = snapshot(tmp_path)
    for dst in (None, tmp_path / "out.log"):
        for dry_run in (True, False):
            with pytest.raises(error, match=match) as info:
                migrate(path, dst, encryption_key=KEY, dry_run=dry_run)
            assert "chat.log" in str(info.value)
    batch = migrate_many([tmp_path], encryption_key=KEY)
    assert [(i.path.name, i.status) for i in batch.items] == [("chat.log", "failed")]
    assert snapshot(tmp_path) == before and "out.log" not in names(tmp_path)


def test_a_readable_log_is_not_copied_to_another_destination_silently(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.extend(MESSAGES)
    before = snapshot(tmp_path)
    report = migrate(path, tmp_path / "out.log", encryption_key=KEY)
    assert (report.format, report.converted, report.destination) == (
        LegacyFormat.CODEC_LOG,
        False,
        path,
    )
    assert "already a conversation-codec log" in report.notes[0]
    assert f"not copied to {tmp_path / 'out.log'}" in report.notes[0]
    assert snapshot(tmp_path) == before and not (tmp_path / "out.log").exists()


def test_an_empty_history_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    path.write_bytes(b"[]\n")
    before = snapshot(tmp_path)
    report = migrate(path)
    assert (report.converted, report.messages, report.format) == (
        False,
        0,
        LegacyFormat.JSON_ARRAY,
    )
    assert snapshot(tmp_path) == before


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "history.enc"
    path.write_bytes(LAYOUTS["fernet-jsonl"][0])
    before = snapshot(tmp_path)
    report = migrate(path, encryption_key=KEY, legacy_key=LEGACY_KEY, dry_run=True)
    assert (report.converted, report.messages, report.bytes_after) == (False, 5, 0)
    assert snapshot(tmp_path) == before
    with pytest.raises(DecryptionError):  # a dry run still proves the key
        migrate(path, encryption_key=KEY, legacy_key=OTHER_KEY, dry_run=True)


# --- errors change nothing ----------------------------------------------------------------

FERNET_JSONL = LAYOUTS["fernet-jsonl"][0]
ERRORS: dict[str, tuple[bytes, dict[str, Any], type[Exception], str]] = {
    "wrong-key": (FERNET_JSONL, {"legacy_key": OTHER_KEY}, DecryptionError, "wrong key"),
    "no-key": (FERNET_JSONL, {}, KeyRequiredError, "legacy_key="),
    "encrypted-to-plaintext": (
        FERNET_JSONL,
        {"legacy_key": LEGACY_KEY, "encryption_key": None},
        KeyRequiredError,
        "in plaintext",
    ),
    "binary": (b"\x00\x01garbage\xff" * 10, {}, FormatError, "not UTF-8"),
    "unknown-text": (b"hello, this is not a history\n", {}, FormatError, "not a history layout"),
    "bad-jsonl-line": (jsonl(MESSAGES) + b"{oops\n", {}, FormatError, "line 6 is not valid JSON"),
    "jsonl-not-object": (jsonl(MESSAGES) + b"[1, 2]\n", {}, FormatError, "line 6 is an array"),
    "truncated-array": (array(MESSAGES)[:-5], {}, FormatError, "not a valid JSON array"),
    "array-of-strings": (b'["hi", "there"]', {}, FormatError, "element 0"),
    "truncated-fernet": (FERNET_JSONL[:-10], {"legacy_key": LEGACY_KEY}, FormatError, "truncated"),
    "tampered-fernet": (
        FERNET_JSONL[:80] + (b"A" if FERNET_JSONL[80:81] != b"A" else b"B") + FERNET_JSONL[81:],
        {"legacy_key": LEGACY_KEY},
        DecryptionError,
        "wrong key or password",
    ),
    "missing-salt": (FERNET_JSONL, {"password": PASSWORD}, FormatError, "salt file"),
    "blank-token": (b"   \n\x00\n", {}, FormatError, "not a history layout"),
    "nan": (b'{"role": "user", "content": NaN}\n', {}, ConversationCodecError, "line 1"),
    "bad-new-key": (jsonl(MESSAGES), {"encryption_key": "not-a-key"}, ValueError, "encryption_key"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_are_clear_and_change_nothing(tmp_path: Path, case: str) -> None:
    raw, kwargs, error, match = ERRORS[case]
    kwargs = {"encryption_key": KEY, **kwargs}
    path = tmp_path / "history.enc"
    path.write_bytes(raw)
    (tmp_path / "other.txt").write_text("unrelated")
    before = snapshot(tmp_path)
    with pytest.raises(error, match=match):
        migrate(path, **kwargs)
    assert snapshot(tmp_path) == before


def test_a_message_that_does_not_round_trip_changes_nothing(tmp_path: Path) -> None:
    """A huge int is valid JSON but not storable exactly: the codec refuses it."""
    path = tmp_path / "history.jsonl"
    path.write_bytes(jsonl(MESSAGES) + b'{"role": "user", "n": 1e400}\n')
    before = snapshot(tmp_path)
    with pytest.raises((NotSerializableError, FormatError)):
        migrate(path)
    assert snapshot(tmp_path) == before


def test_a_directory_or_missing_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="is a directory"):
        migrate(tmp_path)
    with pytest.raises(StorageError, match="does not exist"):
        migrate(tmp_path / "nope.jsonl")
    assert names(tmp_path) == set()


@pytest.mark.parametrize("kind", SPECIAL_FILES)
def test_a_fifo_socket_or_device_is_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    path = make_special(tmp_path / "history.jsonl", kind)
    for dst in (None, tmp_path / "out.log"):
        with unblocked(path), pytest.raises(StorageError, match="not a regular file"):
            migrate(path, dst, encryption_key=KEY)
    assert names(tmp_path) == {"history.jsonl"}


def test_a_fifo_at_the_destination_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_bytes(jsonl(MESSAGES))
    fifo = make_special(tmp_path / "out.log", "fifo")
    with unblocked(fifo), pytest.raises(StorageError, match=r"out\.log already exists"):
        migrate(path, fifo, encryption_key=KEY)
    assert names(tmp_path) == {"history.jsonl", "out.log"}


def test_a_fifo_at_the_salt_file_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "history.enc"
    path.write_bytes(Fernet(LEGACY_KEY).encrypt(array(MESSAGES)))  # never decrypted
    salt = make_special(tmp_path / "history.salt", "fifo")
    with unblocked(salt), pytest.raises(StorageError, match=r"history\.salt is a FIFO"):
        migrate(path, encryption_key=KEY, password=PASSWORD)
    assert names(tmp_path) == {"history.enc", "history.salt"}


def test_a_batch_reports_a_fifo_and_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.jsonl").write_bytes(jsonl(MESSAGES))
    (root / "b.jsonl").write_bytes(jsonl(MESSAGES[:2]))
    fifo = make_special(root / "ab.jsonl", "fifo")  # walked between the two
    with unblocked(fifo):
        batch = migrate_many([root], encryption_key=KEY)
    assert [(i.path.name, i.status) for i in batch.items] == [
        ("a.jsonl", "converted"),
        ("ab.jsonl", "failed"),
        ("b.jsonl", "converted"),
    ]
    assert "is a FIFO (named pipe), not a regular file" in batch.failed[0].reason


# --- destinations and backups ----------------------------------------------------------------


def test_to_a_destination_leaves_the_source_alone(tmp_path: Path) -> None:
    src = tmp_path / "in" / "history.json"
    src.parent.mkdir()
    src.write_bytes(LAYOUTS["json-array"][0])
    before = snapshot(src.parent)
    dst = tmp_path / "out" / "deeper" / "chat.log"
    report = migrate(src, dst, encryption_key=KEY)
    assert (report.destination, report.backup, report.converted) == (dst, None, True)
    assert snapshot(src.parent) == before
    assert names(dst.parent) == {"chat.log", "chat.log.idx"}
    with ConversationCodec(dst, encryption_key=KEY) as codec:
        assert codec.load() == MESSAGES
    # An existing destination is never replaced: a log, or any other file.
    other = tmp_path / "out" / "other.log"
    with ConversationCodec(other, encryption_key=KEY) as codec:
        codec.append(MESSAGES[0])
    for existing in (other, tmp_path / "out" / "notes.txt"):
        if not existing.exists():
            existing.write_text("my notes")
        keep = snapshot(tmp_path)
        with pytest.raises(StorageError, match="already exists"):
            migrate(src, existing, encryption_key=KEY)
        assert snapshot(tmp_path) == keep
    with pytest.raises(StorageError, match="a conversation-codec log"):
        migrate(src, other, encryption_key=KEY)
    # The same migration again: its destination holds these messages, left as it is.
    keep = snapshot(dst.parent)
    again = migrate(src, dst, encryption_key=KEY)
    assert not again.converted and again.notes[0].startswith("already migrated")
    lock = "chat.log.lock"  # a reader's lock file, made or not: no content
    assert {k: v for k, v in snapshot(dst.parent).items() if k != lock} == {
        k: v for k, v in keep.items() if k != lock
    }


def test_destination_equal_to_source_is_in_place(tmp_path: Path) -> None:
    src = tmp_path / "history.jsonl"
    src.write_bytes(jsonl(MESSAGES))
    report = migrate(src, tmp_path / "." / "history.jsonl")
    assert report.backup == tmp_path / "history.jsonl.bak"
    assert names(tmp_path) == {"history.jsonl", "history.jsonl.bak", "history.jsonl.idx"}


def test_no_backup(tmp_path: Path) -> None:
    src = tmp_path / "history.jsonl"
    src.write_bytes(jsonl(MESSAGES))
    report = migrate(src, backup=False)
    assert report.backup is None
    assert names(tmp_path) == {"history.jsonl", "history.jsonl.idx"}


def test_an_existing_backup_is_reused_only_when_identical(tmp_path: Path) -> None:
    src, bak = tmp_path / "history.jsonl", tmp_path / "history.jsonl.bak"
    src.write_bytes(jsonl(MESSAGES))
    bak.write_bytes(b"someone else's file")
    before = snapshot(tmp_path)
    with pytest.raises(StorageError, match="is not this file's original"):
        migrate(src)
    assert snapshot(tmp_path) == before
    bak.write_bytes(src.read_bytes())  # as left by a run that crashed before its commit
    assert migrate(src).backup == bak
    assert bak.read_bytes() == jsonl(MESSAGES)


def test_in_place_through_a_symlink_converts_the_target(tmp_path: Path) -> None:
    real = tmp_path / "data" / "history.jsonl"
    real.parent.mkdir()
    real.write_bytes(jsonl(MESSAGES))
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    report = migrate(link)
    assert link.is_symlink() and report.destination == real
    assert report.backup == real.with_name("history.jsonl.bak")
    with ConversationCodec(real) as codec:
        assert codec.load() == MESSAGES
    # The converted log is opened by its own name: never through a link (FORMAT.md §1).
    with pytest.raises(StorageError, match=r"link\.jsonl is a symbolic link"):
        ConversationCodec(link)


def test_a_source_modified_during_migration_is_not_replaced(tmp_path: Path) -> None:
    src = tmp_path / "history.jsonl"
    src.write_bytes(jsonl(MESSAGES))

    def writer_meanwhile(step: str) -> None:
        if step == "migrate:verified":
            with open(src, "ab") as f:
                f.write(jsonl([{"role": "user", "content": "late"}]))

    with pytest.raises(StorageError, match="modified while migrating"):
        migrate(src, io=Steps(writer_meanwhile))
    assert names(tmp_path) == {"history.jsonl"}, "temp files or the backup were left"
    assert src.read_bytes() == jsonl([*MESSAGES, {"role": "user", "content": "late"}])


# --- crashes ----------------------------------------------------------------------------------

IN_PLACE_STEPS = [
    "rewrite:temp-written",  # the temp log being created by the codec (its own steps)
    "rewrite:temp-synced",
    "rewrite:renamed",
    "rewrite:index-written",
    "rewrite:dir-synced",  # (the messages are the temp log's first records: in that rewrite)
    "migrate:temp-written",  # before the temp log's fsync
    "migrate:temp-synced",
    "migrate:verified",  # read back and compared
    "migrate:backup-written",  # backup temp written and synced, not yet linked
    "migrate:backup-synced",  # backup linked, directory synced
    "migrate:renamed",  # the commit point: the new log is at the source's path
    "migrate:index-moved",
    "migrate:dir-synced",
]
TO_DST_STEPS = [s for s in IN_PLACE_STEPS if "backup" not in s]
COMMIT = "migrate:renamed"

# (source bytes, migrate kwargs, destination name or None for in place)
CRASH_CASES: dict[str, tuple[bytes, dict[str, Any], str | None]] = {
    "jsonl-in-place": (jsonl(timed(MESSAGES, STAMPS)), {}, None),
    "fernet-in-place-sealed": (
        LAYOUTS["fernet-json-array"][0],
        {"legacy_key": LEGACY_KEY, "encryption_key": KEY},
        None,
    ),
    "array-to-dst-sealed": (LAYOUTS["json-array"][0], {"encryption_key": KEY}, "out.log"),
}

_CHILD = r"""
import json, os, sys
from conversation_codec import FileIO
from conversation_codec.maintenance.migrate import migrate
src, dst, step, kwargs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
dst = None if dst == "-" else dst
class Kill(FileIO):
    def step(self, name):
        if name == step:
            os._exit(17)  # no cleanup, no flush: as abrupt as a kill
migrate(src, dst, io=Kill(), **kwargs)
sys.exit(3)  # the step was never reached
"""


def test_the_steps_under_test_are_all_the_steps(tmp_path: Path) -> None:
    for case, steps in (("jsonl-in-place", IN_PLACE_STEPS), ("array-to-dst-sealed", TO_DST_STEPS)):
        raw, kwargs, dst = CRASH_CASES[case]
        folder = tmp_path / case
        folder.mkdir()
        (folder / "history").write_bytes(raw)
        seen: list[str] = []
        migrate(folder / "history", dst and folder / dst, io=Steps(seen.append), **kwargs)
        assert seen == steps


def _check_after_crash(folder: Path, raw: bytes, kwargs: dict[str, Any], dst: str | None) -> bool:
    """Check the source is intact, or the destination complete; return whether committed."""
    src = folder / "history"
    key = kwargs.get("encryption_key")
    target = src if dst is None else folder / dst
    committed = target.exists() and target.read_bytes() != raw  # renames are atomic
    if dst is not None:
        assert src.read_bytes() == raw, "the source was modified"
    if committed:
        with ConversationCodec(target, encryption_key=key) as codec:
            assert codec.load() == MESSAGES
        assert stamps_of(target, key, 5) == [us(t) for t in STAMPS]
    else:
        assert src.read_bytes() == raw
        assert dst is None or not target.exists()
    bak = folder / "history.bak"
    if bak.exists():
        assert bak.read_bytes() == raw
    if key is not None:
        for p in folder.iterdir():
            if p.name != "history" and p.name != "history.bak":
                assert SECRET.encode() not in p.read_bytes(), f"plaintext in {p.name}"
    return committed


@pytest.mark.parametrize(
    "case",
    [  # each step list (in place, to a new path) by default; sealed, as the secrets check is
        "fernet-in-place-sealed",
        "array-to-dst-sealed",
        pytest.param("jsonl-in-place", marks=pytest.mark.slow),
    ],
)
def test_killed_at_every_step_leaves_the_source_or_a_complete_log(
    tmp_path: Path, case: str
) -> None:
    """A process killed between any two steps (os._exit: no cleanup at all) leaves the
    source byte-identical, or the complete new log with the original in the backup; a
    second run then finishes (or finds the log and does nothing) and leaves no temp files.
    """
    raw, kwargs, dst = CRASH_CASES[case]
    steps = IN_PLACE_STEPS if dst is None else TO_DST_STEPS
    runs = {}
    for step in steps:  # one child per step, all at once
        folder = tmp_path / step.replace(":", "_")
        folder.mkdir()
        (folder / "history").write_bytes(raw)
        args = [
            sys.executable,
            "-c",
            _CHILD,
            str(folder / "history"),
            str(folder / dst) if dst else "-",
        ]
        args += [step, json.dumps(kwargs)]
        runs[step] = (folder, _children.Popen(args, env=CHILD_ENV, stderr=subprocess.PIPE))
    for step, (folder, proc) in runs.items():
        _, err = proc.communicate(timeout=TIMEOUT)
        try:
            assert proc.returncode == 17, f"child exited {proc.returncode}: {err.decode()}"
            committed = steps.index(step) >= steps.index(COMMIT)
            assert _check_after_crash(folder, raw, kwargs, dst) == committed
            if dst is not None and committed:
                continue  # done; a second run would refuse the existing destination
            again = migrate(folder / "history", dst and folder / dst, **kwargs)
            assert again.converted != committed
            assert _check_after_crash(folder, raw, kwargs, dst)
            ours = {"history", "history.bak", "history.idx", "history.lock"}
            if dst is not None:
                ours = {"history", dst, f"{dst}.idx", f"{dst}.lock"}
            assert not names(folder) - ours, f"left behind: {names(folder) - ours}"
        except Exception as exc:
            raise AssertionError(f"after a crash at {step} ({case})") from exc


@pytest.mark.parametrize("step", IN_PLACE_STEPS)
def test_fault_raised_at_every_step(tmp_path: Path, step: str) -> None:
    """An exception between steps: before the commit nothing at all changed (no temp file,
    no backup); from the commit on, the log is complete and the backup holds the original."""
    src = tmp_path / "history"
    raw = LAYOUTS["fernet-json-array"][0]
    src.write_bytes(raw)
    before = snapshot(tmp_path)

    def fault(name: str) -> None:
        no_plaintext(tmp_path)  # at every step: nothing decrypted reaches the disk
        if name == step:
            raise KeyboardInterrupt  # not an Exception: the cleanup must still run

    with pytest.raises(KeyboardInterrupt):
        migrate(src, encryption_key=KEY, legacy_key=LEGACY_KEY, io=Steps(fault))
    if IN_PLACE_STEPS.index(step) < IN_PLACE_STEPS.index(COMMIT):
        assert snapshot(tmp_path) == before
    else:
        with ConversationCodec(src, encryption_key=KEY) as codec:
            assert codec.load() == MESSAGES
        assert (tmp_path / "history.bak").read_bytes() == raw
    no_plaintext(tmp_path)


# --- batches --------------------------------------------------------------------------------


def _legacy_file(i: int) -> tuple[str, bytes]:
    """File ``i`` of the batch: a small history in one of five layouts (no passwords)."""
    msgs = [
        {"role": "user", "content": f"file {i} msg {j} {SECRET}", "i": i} for j in range(1 + i % 4)
    ]
    stamps = [f"2024-06-{1 + i % 28:02d}T10:{j:02d}:00Z" for j in range(len(msgs))]
    kind = i % 5
    if kind == 0:
        return f"h{i}.jsonl", jsonl(msgs)
    if kind == 1:
        return f"h{i}.json", array(timed(msgs, stamps))
    if kind == 2:
        return f"h{i}.json", langchain([("human", str(m["content"])) for m in msgs])
    if kind == 3:
        return f"h{i}.enc", Fernet(LEGACY_KEY).encrypt(jsonl(timed(msgs, stamps)))
    return f"h{i}.enc", Fernet(LEGACY_KEY).encrypt(array(msgs))


@pytest.mark.parametrize(
    "files", [200, pytest.param(1000, marks=pytest.mark.slow)], ids=["200", "1000"]
)
def test_batch_of_a_thousand_files_with_a_corrupt_one(tmp_path: Path, files: int) -> None:
    """Issue 11's batch: 1,000 files under -m slow, a 200-file sample in the default run."""
    root = tmp_path / "histories"
    expected: dict[Path, int] = {}
    for i in range(files):
        name, raw = _legacy_file(i)
        path = root / f"user{i % 13}" / ("archive" if i % 3 else "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        expected[path] = 1 + i % 4
    corrupt = root / "user5" / "broken.json"
    corrupt.write_bytes(b'[{"role": "user", "content": "cut off')
    log = root / "user7" / "already.log"
    with ConversationCodec(log, encryption_key=KEY) as codec:
        codec.append({"role": "user", "content": "hi"})
    (root / "user1" / "h1.salt").write_bytes(SALT)  # sidecars are not histories
    (root / "user2" / "old.jsonl.bak").write_bytes(b"not looked at")
    ticks: list[tuple[int, int, BatchItem]] = []
    batch = migrate_many(
        [root], encryption_key=KEY, legacy_key=LEGACY_KEY, progress=lambda *a: ticks.append(a)
    )
    assert (len(batch.converted), len(batch.skipped), len(batch.failed)) == (files, 1, 1)
    assert not batch.ok
    (failed,) = batch.failed
    assert failed.path == corrupt and "not a valid JSON array" in failed.reason
    assert batch.skipped[0].path == log and "already" in batch.skipped[0].reason
    assert [t[:2] for t in ticks] == [(k, files + 2) for k in range(1, files + 3)]
    assert corrupt.read_bytes() == b'[{"role": "user", "content": "cut off'
    for item in batch.converted:
        assert item.report is not None and item.report.messages == expected[item.path]
        with ConversationCodec(item.path, encryption_key=KEY) as codec:
            assert codec.message_count() == expected[item.path]
            assert (
                codec.get(-1)["content"]
                == f"file {item.path.stem[1:]} msg {expected[item.path] - 1} {SECRET}"
            )
        assert Path(f"{item.path}.bak").exists()
    summary = json.loads(json.dumps(batch.as_dict()))
    assert (summary["converted"], summary["skipped"], summary["failed"]) == (files, 1, 1)
    # A second run finds only logs (and the corrupt file): backups are not re-migrated.
    again = migrate_many([root], encryption_key=KEY, legacy_key=LEGACY_KEY)
    assert (len(again.converted), len(again.skipped), len(again.failed)) == (0, files + 1, 1)


def test_batch_to_an_out_dir_keeps_the_tree_and_the_sources(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for rel in ("a/h.jsonl", "a/b/h.json", "c.enc"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / "a" / "h.jsonl").write_bytes(jsonl(MESSAGES))
    (root / "a" / "b" / "h.json").write_bytes(langchain(LANGCHAIN))
    (root / "c.enc").write_bytes(FERNET_JSONL)
    single = tmp_path / "single.jsonl"
    single.write_bytes(jsonl(MESSAGES[:2]))
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    batch = migrate_many(
        [root, single, tmp_path / "missing.jsonl", root / "a" / "h.jsonl"],
        out_dir=out,
        encryption_key=KEY,
        legacy_key=LEGACY_KEY,
    )
    assert [(i.path.name, i.status) for i in batch.items] == [
        ("c.enc", "converted"),  # os.walk: a folder's files before its subfolders
        ("h.jsonl", "converted"),
        ("h.json", "converted"),
        ("single.jsonl", "converted"),
        ("missing.jsonl", "failed"),
    ]
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("out")} == before
    with ConversationCodec(out / "a" / "h.jsonl", encryption_key=KEY) as codec:
        assert codec.load() == MESSAGES
    with ConversationCodec(out / "a" / "b" / "h.json", encryption_key=KEY) as codec:
        assert codec.load() == LANGCHAIN_AS_MESSAGES
    with ConversationCodec(out / "single.jsonl", encryption_key=KEY) as codec:
        assert codec.load() == MESSAGES[:2]
    no_plaintext(out)
    # Run again: each destination holds its source's messages already, so it is skipped.
    again = migrate_many([root], out_dir=out, encryption_key=KEY, legacy_key=LEGACY_KEY)
    assert {i.status for i in again.items} == {"skipped"}
    assert all(i.reason.startswith("already migrated") for i in again.items)
    # With another key the destinations are not readable as this migration: each fails.
    other = migrate_many([root], out_dir=out, encryption_key=OTHER_KEY, legacy_key=LEGACY_KEY)
    assert {i.status for i in other.items} == {"failed"}
    assert all("already exists" in i.reason for i in other.items), other.items


def test_batch_dry_run_and_failures_write_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(jsonl(MESSAGES))
    (tmp_path / "b.enc").write_bytes(FERNET_JSONL)
    (tmp_path / "c.txt").write_bytes(b"nothing to see")
    before = snapshot(tmp_path)
    batch = migrate_many([tmp_path], encryption_key=KEY, legacy_key=LEGACY_KEY, dry_run=True)
    assert [(i.path.name, i.status) for i in batch.items] == [
        ("a.jsonl", "converted"),
        ("b.enc", "converted"),
        ("c.txt", "failed"),
    ]
    assert batch.dry_run and batch.items[0].reason.startswith("would convert 5 messages")
    wrong = migrate_many([tmp_path], encryption_key=KEY, legacy_key=OTHER_KEY)
    assert [i.status for i in wrong.items] == ["converted", "failed", "failed"]
    assert "wrong key" in wrong.items[1].reason
    after = snapshot(tmp_path)
    assert after["b.enc"] == before["b.enc"] and after["c.txt"] == before["c.txt"]


def test_batch_rejects_a_malformed_key_before_touching_files(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(jsonl(MESSAGES))
    before = snapshot(tmp_path)
    for kwargs in ({"encryption_key": "short"}, {"legacy_key": ["also-bad"]}):
        with pytest.raises(ValueError, match="_key"):
            migrate_many([tmp_path], **kwargs)
    assert snapshot(tmp_path) == before


def test_batch_skips_symlinks_inside_trees(tmp_path: Path) -> None:
    (tmp_path / "real.jsonl").write_bytes(jsonl(MESSAGES))
    (tmp_path / "alias.jsonl").symlink_to(tmp_path / "real.jsonl")
    seen: list[str] = []

    def report(done: int, total: int, item: BatchItem) -> None:
        seen.append(item.path.name)

    batch = migrate_many([tmp_path], progress=report)
    assert [(i.path.name, i.status) for i in batch.items] == [
        ("alias.jsonl", "skipped"),
        ("real.jsonl", "converted"),
    ]
    assert seen == ["alias.jsonl", "real.jsonl"]


def test_the_package_name_migrate_is_the_function_whatever_was_imported_first() -> None:
    """``conversation_codec.migrate`` is the documented function, even after the module that
    defines it was imported (the package loads its names lazily)."""
    code = (
        "import types, conversation_codec.maintenance.migrate\n"
        "from conversation_codec import migrate\n"
        "assert not isinstance(migrate, types.ModuleType), migrate\n"
        "assert migrate.__name__ == 'migrate' and callable(migrate)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # a fresh interpreter, not _children


def test_a_log_whose_header_the_key_does_not_open_is_said_so(tmp_path: Path) -> None:
    """Defect: a sealed header with a flipped MAC byte was reported "already a log; left as
    it is" (the file is fine) while opening it raises DecryptionError. A migration of a log
    uses no key (test_a_log_already_is_a_no_op: another key's log is no error), and a MAC
    cannot tell another key from damage, so the report says the key does not open it."""
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY, context="alice") as codec:
        codec.append({"role": "user", "content": "hi"})
    intact = migrate(path, encryption_key=KEY)  # bound to a context migrate was not given
    assert intact.notes == ("already a conversation-codec log; left as it is",)
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF  # inside the header's authenticated fields
    path.write_bytes(bytes(data))
    with pytest.raises(DecryptionError):
        ConversationCodec(path, encryption_key=KEY, context="alice").load()
    for report in (migrate(path, encryption_key=KEY), migrate(path, encryption_key=OTHER_KEY)):
        assert not report.converted and "the key given does not open it" in report.notes[0]
    assert path.read_bytes() == bytes(data)

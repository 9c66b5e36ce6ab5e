"""migrate() of a plaintext conversation-codec log with a key or password seals it in place.

The ``NotEncryptedError`` of a plaintext log opened with a key advises ``migrate``; it used
to leave the log as it was and report success (outside review, sec.md defect 4). Sealing is
a compaction (``ConversationCodec.compact``): the log, its index and its attachments.
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path
from typing import Any

import pytest

from conversation_codec import ConversationCodec, ConversationStore, migrate, migrate_many
from conversation_codec.cli import main
from conversation_codec.errors import BindingError, KeyRequiredError, NotEncryptedError
from conversation_codec.maintenance.legacy import LegacyFormat
from conversation_codec.storage.file.store import encode_id

from conftest import KEY, snapshot

SECRET = "okapi-lantern-5521"  # in every message: must not stay on disk in plaintext
MESSAGES = [
    {"role": "user", "content": f"my card {SECRET}"},
    {"role": "assistant", "content": f"noted {SECRET}"},
    {"role": "user", "content": "thanks"},
]
PICTURE = base64.b64encode(f"a picture of {SECRET} ".encode() * 40).decode()
WITH_PICTURE = {
    "role": "user",
    "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PICTURE}"}}],
}


def plain_log(path: Path, *, attachments: str = "keep") -> Path:
    with ConversationCodec(path, attachments=attachments) as codec:
        codec.extend(MESSAGES)
        if attachments == "external":
            codec.append(WITH_PICTURE)
    return path


def plaintext_left(folder: Path) -> list[str]:
    """Every file under ``folder`` that still holds the secret (or the picture) in clear."""
    needles = (SECRET.encode(), base64.b64decode(PICTURE)[:64])
    return [
        str(p.relative_to(folder))
        for p in sorted(folder.rglob("*"))
        if p.is_file() and any(n in p.read_bytes() for n in needles)
    ]


def test_advice_of_not_encrypted_error_works(tmp_path: Path) -> None:
    log = plain_log(tmp_path / "a.log")
    with pytest.raises(NotEncryptedError, match=r"migrate\(") as caught:
        ConversationCodec(log, KEY)
    assert "compact(encryption_key=" in str(caught.value)
    report = migrate(log, encryption_key=KEY)  # what the message advises
    assert report.converted and report.format is LegacyFormat.CODEC_LOG
    assert report.messages == 3 and report.backup is None and report.bytes_after > 0
    assert any("encrypted in place" in note for note in report.notes)
    with ConversationCodec(log, KEY) as codec:
        assert codec.load() == MESSAGES
    with pytest.raises(KeyRequiredError):
        ConversationCodec(log)
    assert plaintext_left(tmp_path) == []


def test_migrate_seals_a_plaintext_log_with_a_password(tmp_path: Path) -> None:
    log = plain_log(tmp_path / "a.log")
    with ConversationCodec(log) as codec:
        times = [codec.timestamp(i) for i in range(3)]
    report = migrate(log, log_password="pw")  # migrate's own steps: a .bak by default
    assert report.converted and report.messages == 3 and report.backup is not None
    assert any("holds the plaintext original" in note for note in report.notes)
    assert plaintext_left(tmp_path) == [report.backup.name]
    with ConversationCodec(log, password="pw") as codec:
        assert codec.load() == MESSAGES
        assert [codec.timestamp(i) for i in range(3)] == times
    plain_log(tmp_path / "b.log")
    batch = migrate_many([tmp_path / "b.log"], log_password="pw", backup=False)
    assert [(i.status, i.reason) for i in batch.items] == [
        ("converted", "encrypted the plaintext log in place (3 messages)")
    ]
    assert plaintext_left(tmp_path) == [report.backup.name]


@pytest.mark.parametrize("secret", ["key", "password"])
def test_sealing_removes_a_crashed_rewrites_plaintext_temp_copy(
    tmp_path: Path, secret: str
) -> None:
    # Review r2a defect 6: the password route left P.tmp-<hex> (a plaintext copy) beside it.
    log = plain_log(tmp_path / "a.log")
    (tmp_path / "a.log.tmp-0123456789abcdef").write_bytes(log.read_bytes())
    options: dict[str, Any] = (
        {"encryption_key": KEY} if secret == "key" else {"log_password": "pw", "backup": False}
    )
    before = snapshot(tmp_path)
    assert not migrate(log, dry_run=True, **options).converted
    assert snapshot(tmp_path) == before  # a dry run removes nothing either
    assert migrate(log, **options).converted
    assert plaintext_left(tmp_path) == []
    assert not (tmp_path / "a.log.tmp-0123456789abcdef").exists()


def test_migrate_seals_attachments_too(tmp_path: Path) -> None:
    log = plain_log(tmp_path / "a.log", attachments="external")
    assert plaintext_left(tmp_path)  # the picture is a plaintext blob
    assert migrate(log, encryption_key=KEY).converted
    with ConversationCodec(log, KEY) as codec:
        assert codec.load() == [*MESSAGES, WITH_PICTURE]
    assert plaintext_left(tmp_path) == []


def test_password_cannot_seal_external_attachments(tmp_path: Path) -> None:
    log = plain_log(tmp_path / "a.log", attachments="external")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="encryption_key"):
        migrate(log, log_password="pw")
    assert snapshot(tmp_path) == before


def test_an_empty_plaintext_log_is_sealed_too(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    with ConversationCodec(log) as codec:
        codec.append({"role": "user", "content": "x"})
        codec.pop()
    report = migrate(log, encryption_key=KEY)
    assert report.converted and report.messages == 0
    with ConversationCodec(log, KEY) as codec:
        assert codec.load() is None and codec.encrypted


def test_dry_run_seals_nothing(tmp_path: Path) -> None:
    log = plain_log(tmp_path / "a.log")
    before = snapshot(tmp_path)
    report = migrate(log, encryption_key=KEY, dry_run=True)
    assert not report.converted and report.messages == 3
    batch = migrate_many([tmp_path], encryption_key=KEY, dry_run=True)
    assert [(i.status, i.reason) for i in batch.items] == [
        ("converted", "would encrypt the plaintext log in place (3 messages)")
    ]
    assert snapshot(tmp_path) == before


def test_without_a_key_or_elsewhere_a_log_is_left_as_it_is(tmp_path: Path) -> None:
    log = plain_log(tmp_path / "a.log")
    sealed = tmp_path / "s.log"
    with ConversationCodec(sealed, KEY) as codec:
        codec.extend(MESSAGES)
    before = snapshot(tmp_path)
    assert not migrate(log).converted
    assert not migrate(log, tmp_path / "b.log", encryption_key=KEY).converted
    assert not migrate(sealed, encryption_key=KEY).converted
    assert snapshot(tmp_path) == before


def test_migrate_many_seals_plaintext_logs(tmp_path: Path) -> None:
    plain_log(tmp_path / "a.log")
    (tmp_path / "b.jsonl").write_text('{"role": "user", "content": "hi"}\n')
    batch = migrate_many([tmp_path], encryption_key=KEY, backup=False)
    assert [(i.path.name, i.status) for i in batch.items] == [
        ("a.log", "converted"),
        ("b.jsonl", "converted"),
    ]
    assert batch.items[0].reason == "encrypted the plaintext log in place (3 messages)"
    with ConversationCodec(tmp_path / "a.log", KEY) as codec:
        assert codec.load() == MESSAGES


def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.setenv("CONVERSATION_KEY", KEY)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_migrate_seals_and_compact_points_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = plain_log(tmp_path / "a.log")
    code, _, err = cli(monkeypatch, capsys, "compact", str(log))
    assert code == 1 and f"conversation-codec migrate {log}" in err, err
    code, out, err = cli(monkeypatch, capsys, "migrate", str(log))
    assert code == 0, err
    assert "converted" in out and "encrypted the plaintext log in place" in out
    with ConversationCodec(log, KEY) as codec:
        assert codec.load() == MESSAGES
    assert plaintext_left(tmp_path) == []


# --- review r2a defect 5: a plaintext store's conversations (bound to their ids) -------------

IDS = ["alice", "Bob/notes"]  # the second is stored encoded: %42ob%2fnotes.log
LONG_ID = "x" * 300  # stored under a hashed name, from which the id cannot be read back


def plain_store(root: Path, ids: list[str]) -> list[Path]:
    store = ConversationStore(root)
    for conversation_id in ids:
        with store.open(conversation_id) as codec:
            codec.extend(MESSAGES)
    return [root / f"{encode_id(i)}.log" for i in ids]


def store_loads(root: Path, ids: list[str], **secret: Any) -> list[Any]:
    store = ConversationStore(root, **secret)
    out = []
    for conversation_id in ids:
        with store.open(conversation_id) as codec:
            out.append(codec.load())
    return out


@pytest.mark.parametrize("secret", ["key", "password"])
def test_a_store_conversation_seals_by_the_advised_route(tmp_path: Path, secret: str) -> None:
    logs = plain_store(tmp_path, IDS)
    with pytest.raises(NotEncryptedError) as caught:
        store_loads(tmp_path, IDS[:1], encryption_key=KEY)
    assert "migrate(path, encryption_key=..., context='alice')" in str(caught.value)
    for log in logs:  # the store's own log path, its id not given: read from its name
        if secret == "key":
            assert migrate(log, encryption_key=KEY).converted
        else:
            assert migrate(log, log_password="pw", backup=False).converted
    opened = {"encryption_key": KEY} if secret == "key" else {"password": "pw"}
    assert store_loads(tmp_path, IDS, **opened) == [MESSAGES, MESSAGES]
    assert plaintext_left(tmp_path) == []


def test_the_advised_compaction_of_a_store_conversation_works(tmp_path: Path) -> None:
    (log,) = plain_store(tmp_path, IDS[1:])
    with pytest.raises(NotEncryptedError) as caught:
        store_loads(tmp_path, IDS[1:], encryption_key=KEY)
    assert "ConversationCodec(path, context='Bob/notes').compact(" in str(caught.value)
    with ConversationCodec(log, context="Bob/notes") as codec:
        codec.compact(encryption_key=KEY)
    assert store_loads(tmp_path, IDS[1:], encryption_key=KEY) == [MESSAGES]


def test_migrate_of_a_plaintext_store_root_seals_every_conversation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plain_store(tmp_path / "a", IDS)
    batch = migrate_many(tmp_path / "a", encryption_key=KEY)
    assert [i.status for i in batch.items] == ["converted", "converted"], batch.items
    assert store_loads(tmp_path / "a", IDS, encryption_key=KEY) == [MESSAGES, MESSAGES]
    plain_store(tmp_path / "b", IDS)
    code, out, err = cli(monkeypatch, capsys, "migrate", str(tmp_path / "b"))
    assert code == 0, out + err
    assert store_loads(tmp_path / "b", IDS, encryption_key=KEY) == [MESSAGES, MESSAGES]
    assert plaintext_left(tmp_path) == []


def test_a_hashed_store_name_is_refused_naming_the_call_that_works(tmp_path: Path) -> None:
    (log,) = plain_store(tmp_path, [LONG_ID])
    before = snapshot(tmp_path)
    for secret in ({"encryption_key": KEY}, {"log_password": "pw"}):
        with pytest.raises(BindingError, match=r"migrate\(path, .*context="):
            migrate(log, **secret)
        assert snapshot(tmp_path) == before
    assert migrate(log, encryption_key=KEY, context=LONG_ID).converted
    assert store_loads(tmp_path, [LONG_ID], encryption_key=KEY) == [MESSAGES]

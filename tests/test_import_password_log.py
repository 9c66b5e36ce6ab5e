"""import_ (and the CLI's import) of a password-protected conversation-codec log: the
``password=`` given opens it (outside review, mig.md defect 8: it asked for the very
option that was given)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec
from conversation_codec.cli import main
from conversation_codec.errors import DecryptionError, PasswordRequiredError

from conftest import KEY, snapshot

MESSAGES = [{"role": "user", "content": f"m{i}"} for i in range(3)]


def password_log(path: Path) -> Path:
    with ConversationCodec(path, password="pw") as codec:
        codec.extend(MESSAGES)
    return path


def test_import_reads_a_password_log(tmp_path: Path) -> None:
    src = password_log(tmp_path / "pw.log")
    with ConversationCodec(tmp_path / "t.log", KEY) as target:
        report = target.import_(src, password="pw")
        assert (report.read, report.added) == (3, 3)
        assert target.load() == MESSAGES
        assert target.import_(src, merge=True, password="pw").added == 0


def test_import_of_a_password_log_without_or_with_a_wrong_password(tmp_path: Path) -> None:
    src = password_log(tmp_path / "pw.log")
    with ConversationCodec(tmp_path / "t.log", KEY) as target:
        target.append({"role": "user", "content": "kept"})
        before = snapshot(tmp_path)
        with pytest.raises(PasswordRequiredError):
            target.import_(src)
        with pytest.raises(DecryptionError):
            target.import_(src, password="wrong")
        assert target.load() == [{"role": "user", "content": "kept"}]
    assert snapshot(tmp_path) == before


def test_cli_import_reads_a_password_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = password_log(tmp_path / "pw.log")
    target = tmp_path / "t.log"
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.setenv("CONVERSATION_KEY", KEY)
    monkeypatch.setenv("PW", "pw")
    code = main(["import", str(target), str(src), "--legacy-password-env", "PW"])
    _, err = capsys.readouterr()
    assert code == 0, err
    with ConversationCodec(target, KEY) as codec:
        assert codec.load() == MESSAGES

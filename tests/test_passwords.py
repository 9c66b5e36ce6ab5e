"""Password-protected logs (scrypt in the header), change_password, and key/password interplay."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conversation_codec import (
    ConversationCodec,
    DecryptionError,
    FormatError,
    KeyRequiredError,
)
from conversation_codec.format.header import decode_sealed_header

from conftest import KEY, messages, snapshot


def test_password_create_reopen_and_wrong_password(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, password="correct horse battery") as codec:
        codec.extend(messages(4))
        codec.load()  # a divergent save() rewrites only a history read in full (issue 11)
        codec.save(messages(2))  # a divergent save rewrites under the same password
    header, _, _ = decode_sealed_header(path.read_bytes())
    assert (header.kdf, header.kdf_log2_n, header.kdf_r, header.kdf_p) == (1, 15, 8, 1)
    assert b"correct horse" not in b"".join(p.read_bytes() for p in tmp_path.iterdir())
    with ConversationCodec(path, password="correct horse battery") as codec:
        assert codec.load() == messages(2)
    before = snapshot(tmp_path)
    with pytest.raises(DecryptionError, match="wrong key or password") as info:
        ConversationCodec(path, password="correct horse batterY")
    assert "batter" not in str(info.value)
    with pytest.raises(KeyRequiredError, match="password"):
        ConversationCodec(path)
    with pytest.raises(KeyRequiredError, match="password"):
        ConversationCodec(path, encryption_key=KEY)
    assert snapshot(tmp_path) == before


def test_password_given_for_a_key_log(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.append({"a": 1})
    with pytest.raises(KeyRequiredError, match="not password"):
        ConversationCodec(path, password="pw")


def test_bad_password_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        ConversationCodec(tmp_path / "x", encryption_key=KEY, password="pw")
    with pytest.raises(ValueError, match="non-empty"):
        ConversationCodec(tmp_path / "x", password="")


def test_hostile_scrypt_parameters_are_refused_before_deriving(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, password="pw") as codec:
        codec.append({"a": 1})
    data = bytearray(path.read_bytes())
    data[11] = 40  # kdf_log2_n: 2**40 * 1 KiB of memory
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="out of bounds"):
        ConversationCodec(path, password="pw")


def test_change_password(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, password="old pw") as codec:
        codec.extend(messages(3))
        stamps = [codec.timestamp(i) for i in range(3)]
        salt = decode_sealed_header(path.read_bytes())[0].kdf_salt
        with pytest.raises(DecryptionError, match="wrong password"):
            codec.change_password("not it", "new pw")
        codec.change_password("old pw", "new pw")
        assert decode_sealed_header(path.read_bytes())[0].kdf_salt != salt
        codec.append({"after": "change"})
    with pytest.raises(DecryptionError):
        ConversationCodec(path, password="old pw")
    with ConversationCodec(path, password="new pw") as codec:
        assert codec.load() == [*messages(3), {"after": "change"}]
        assert [codec.timestamp(i) for i in range(3)] == stamps


def test_rotate_from_password_to_key_and_back_is_not_mixed(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, password="pw") as codec:
        codec.extend(messages(2))
        codec.rotate_key(KEY)
        codec.append({"a": 1})
    with pytest.raises(KeyRequiredError):
        ConversationCodec(path, password="pw")
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.load() == [*messages(2), {"a": 1}]


@pytest.mark.parametrize(
    "step",
    ["rewrite:temp-written", "rewrite:temp-synced", "rewrite:renamed", "rewrite:index-written"],
)
def test_crash_during_change_password_leaves_one_of_the_two(tmp_path: Path, step: str) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, password="old") as codec:
        codec.extend(messages(3))
    script = textwrap.dedent(
        f"""
        import os
        from conversation_codec import ConversationCodec
        codec = ConversationCodec({str(path)!r}, password="old")
        def fault(name):
            if name == {step!r}:
                os._exit(9)
        codec._log.fault = fault
        codec.change_password("old", "new")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 9, proc.stderr
    opened = []
    for pw in ("old", "new"):
        try:
            with ConversationCodec(path, password=pw) as codec:
                assert codec.load() == messages(3)
                opened.append(pw)
        except DecryptionError:
            pass
    assert opened == (["old"] if step.startswith("rewrite:temp") else ["new"])

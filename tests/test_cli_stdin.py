"""One reader of stdin per command (README: "one command reads stdin for one thing only").

Review r1, defect 6: ``append LOG --key-file -`` read the key as the messages (FILE defaults
to ``-``) and failed with exit 1 "stdin is not valid JSON" instead of the usage error (exit
2). Other pairs drained stdin for the first reader or reused one secret for two options
(``rekey --key-file - --new-key-file -`` took the key as the new key; ``migrate --key-file -
--legacy-key-file -`` used one key for both). Every pair of ``-`` inputs in one command is
now refused as a usage error before anything reads stdin.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec
from conversation_codec.cli import main

from conftest import KEY, OTHER_KEY, snapshot

PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVERSATION_KEY", raising=False)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A key log, a password log, a key file and a messages file, in one folder."""
    with ConversationCodec(tmp_path / "key.log", encryption_key=KEY) as codec:
        codec.append({"role": "user", "content": "hi"})
    with ConversationCodec(tmp_path / "pw.log", password=PASSWORD) as codec:
        codec.append({"role": "user", "content": "hi"})
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    (tmp_path / "messages.jsonl").write_text('{"role": "user", "content": "from a file"}\n')
    return tmp_path


# (argv, what stdin holds): each names two parameters that would both read stdin.
# Paths are relative to the site folder: "{key}" is the key file.
PAIRS = {
    "append --key-file (FILE by default)": (["append", "key.log", "--key-file", "-"], KEY),
    "append --key-file -, FILE -": (["append", "key.log", "--key-file", "-", "-"], KEY),
    "append --password-file": (["append", "pw.log", "--password-file", "-"], PASSWORD),
    "import SRC -, --key-file -": (["import", "key.log", "-", "--key-file", "-"], KEY),
    "import SRC -, --password-file -": (
        ["import", "pw.log", "-", "--password-file", "-"],
        PASSWORD,
    ),
    "import SRC -, --legacy-key-file -": (
        ["import", "key.log", "-", "--key-file", "{key}", "--legacy-key-file", "-"],
        OTHER_KEY,
    ),
    "import SRC -, --legacy-password-file -": (
        ["import", "key.log", "-", "--key-file", "{key}", "--legacy-password-file", "-"],
        PASSWORD,
    ),
    "rekey --key-file -, --new-key-file -": (
        ["rekey", "key.log", "--key-file", "-", "--new-key-file", "-"],
        KEY,
    ),
    "passwd --password-file -, --new-password-file -": (
        ["passwd", "pw.log", "--password-file", "-", "--new-password-file", "-"],
        PASSWORD,
    ),
    "copy --key-file -, --to-key-file -": (
        ["copy", "key.log", "copy.log", "--key-file", "-", "--to-key-file", "-"],
        KEY,
    ),
    "migrate --key-file -, --legacy-key-file -": (
        ["migrate", "messages.jsonl", "--key-file", "-", "--legacy-key-file", "-"],
        KEY,
    ),
    "migrate --password-file -, --legacy-password-file -": (
        ["migrate", "messages.jsonl", "--password-file", "-", "--legacy-password-file", "-"],
        PASSWORD,
    ),
}


def _run(
    site: Path,
    argv: list[str],
    stdin: str,
    capsys: pytest.CaptureFixture[str],
    mp: pytest.MonkeyPatch,
) -> tuple[int, str, io.BytesIO]:
    raw = io.BytesIO(stdin.encode() + b"\n")
    mp.setattr(sys, "stdin", io.TextIOWrapper(raw, encoding="utf-8"))
    mp.chdir(site)
    code = main([a.replace("{key}", str(site / "key")) for a in argv])
    return code, capsys.readouterr().err, raw


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_two_stdin_readers_are_a_usage_error_before_stdin_is_read(
    site: Path, pair: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, stdin = PAIRS[pair]
    before = snapshot(site)
    code, err, raw = _run(site, argv, stdin, capsys, monkeypatch)
    assert code == 2, err
    assert "cannot both come from stdin (-)" in err
    assert raw.tell() == 0  # nothing read it: the secret was not taken for anything
    assert snapshot(site) == before
    assert stdin not in err and KEY not in err


def test_the_usage_error_names_both_readers(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, err, _ = _run(site, ["append", "key.log", "--key-file", "-"], KEY, capsys, monkeypatch)
    assert code == 2
    assert "--key-file and FILE (default -) cannot both come from stdin (-)" in err
    code, err, _ = _run(
        site,
        ["rekey", "key.log", "--key-file", "-", "--new-key-file", "-"],
        KEY,
        capsys,
        monkeypatch,
    )
    assert "--key-file and --new-key-file cannot both come from stdin (-)" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["append", "key.log", "--key-file", "-", "messages.jsonl"],  # messages from a file
        ["import", "key.log", "messages.jsonl", "--key-file", "-"],
        ["cat", "key.log", "--key-file", "-"],
    ],
    ids=["append", "import", "cat"],
)
def test_one_stdin_reader_still_reads_it(
    site: Path, argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, err, _ = _run(site, argv, KEY, capsys, monkeypatch)
    assert code == 0, err
    with ConversationCodec(site / "key.log", encryption_key=KEY) as codec:
        stored = codec.load()
    assert stored is not None and stored[0] == {"role": "user", "content": "hi"}
    assert len(stored) == (1 if argv[0] == "cat" else 2)

"""The command line: in-process through ``main(argv)``, plus real ``python -m`` subprocesses."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from conversation_codec import ConversationCodec, KeyFileError, KeyRequiredError
from conversation_codec.cli import main
from conversation_codec.keyfile import load_key, load_or_create_key
from conversation_codec.paths import index_path
from conversation_codec.store import ConversationStore

from conftest import KEY, OTHER_KEY, make_special, messages, unblocked

KEY_LIKE = re.compile(r"[A-Za-z0-9_-]{43}=")  # a Fernet key: 32 bytes in urlsafe base64
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVERSATION_KEY", raising=False)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run ``main(argv)`` with optional stdin text and key; return (code, stdout, stderr)."""

    def go(*argv: str, stdin: str = "", key: str | None = None) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        if key is None:
            monkeypatch.delenv("CONVERSATION_KEY", raising=False)
        else:
            monkeypatch.setenv("CONVERSATION_KEY", key)
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return go


def jsonl(text: str) -> list[object]:
    return [json.loads(line) for line in text.splitlines()]


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CONVERSATION_KEY"}
    return {**env, **extra}


def cli(
    *argv: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conversation_codec", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        timeout=60,
    )


# -- keygen ----------------------------------------------------------------------------------


def test_keygen_prints_a_fresh_fernet_key(run: Run) -> None:
    code, out, err = run("keygen")
    again = run("keygen")[1]
    assert code == 0 and err == ""
    key = out.strip()
    assert out == key + "\n" and KEY_LIKE.fullmatch(key)
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert again.strip() != key


def test_keygen_out_writes_a_0600_file_and_never_overwrites(run: Run, tmp_path: Path) -> None:
    target = tmp_path / "chat.key"
    code, out, err = run("keygen", "--out", str(target))
    assert code == 0
    key = target.read_text().strip()
    assert KEY_LIKE.fullmatch(key)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert key not in out + err and not KEY_LIKE.search(out + err)

    code, out, err = run("keygen", "--out", str(target))
    assert code == 1 and "already exists" in err and out == ""
    assert target.read_text().strip() == key  # untouched
    # The key works: it opens a log the CLI writes with --key-file.
    log = tmp_path / "chat.log"
    assert run("append", str(log), "--key-file", str(target), stdin='{"role": "user"}')[0] == 0
    with ConversationCodec(log, encryption_key=key) as codec:
        assert codec.load() == [{"role": "user"}]


# -- demo ------------------------------------------------------------------------------------


def test_demo_is_short_friendly_and_never_shows_the_key(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo names the folder it leaves: the log and a 0600 key file, and the commands to
    try next, which work as printed (issue 17: it used to delete the folder it named)."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code, out, err = run("demo")
    assert code == 0 and err == ""
    assert "10 messages" in out and "Last 4 messages" in out
    assert "DecryptionError" in out and "bytes on disk" in out
    assert len(out.splitlines()) < 40
    assert not KEY_LIKE.search(out + err)
    (folder,) = tmp_path.iterdir()
    key_file = folder / "demo.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(folder) in out
    tries = [line.split()[1:] for line in out.splitlines() if line.startswith("  conversation-")]
    assert [t[0] for t in tries] == ["tail", "search", "verify"]
    for argv in tries:
        code, shown, err = run(*argv)
        assert code == 0 and shown, (argv, err)
    with ConversationCodec(folder / "support-chat.log", encryption_key=load_key(key_file)) as c:
        assert len(c) == 10


def test_demo_dir_keeps_an_encrypted_log_and_refuses_to_reuse_it(run: Run, tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    code, out, _ = run("demo", "--dir", str(folder), "--durability", "flush")
    assert code == 0 and "Kept" in out
    log = folder / "support-chat.log"
    with pytest.raises(KeyRequiredError):
        ConversationCodec(log)
    with ConversationCodec(log, encryption_key=load_key(folder / "demo.key")) as codec:
        assert len(codec) == 10  # the key was kept beside it
    code, _, err = run("demo", "--dir", str(folder))
    assert code == 1 and "already exists" in err


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["encrypted", "plaintext"])
def test_append_cat_tail_info_round_trip(run: Run, tmp_path: Path, mode: str) -> None:
    key = KEY if mode == "encrypted" else None
    plain = [] if key else ["--plain"]  # writing a plaintext log is asked for explicitly
    log = str(tmp_path / "chat.log")
    history = messages(7)
    one, array, lines = history[0], history[1:4], history[4:]

    assert run("append", log, *plain, stdin=json.dumps(one), key=key)[:2] == (0, "0\n")
    assert run("append", log, *plain, stdin=json.dumps(array), key=key)[:2] == (0, "1\n2\n3\n")
    jsonl_text = "\n".join(json.dumps(m) for m in lines) + "\n\n"
    code, out, _ = run("append", log, *plain, "--durability", "flush", stdin=jsonl_text, key=key)
    assert (code, out) == (0, "4\n5\n6\n")

    code, out, err = run("cat", log, key=key)
    assert code == 0 and err == "" and jsonl(out) == history
    code, out, _ = run("cat", log, "--with-timestamps", key=key)
    records = jsonl(out)
    assert [r["seq"] for r in records] == list(range(7))  # type: ignore[index]
    assert [r["message"] for r in records] == history  # type: ignore[index]
    assert all(TS.match(r["ts"]) for r in records)  # type: ignore[index]
    assert run("tail", log, "-n", "2", key=key)[1] == out_lines(history[-2:])
    assert run("tail", log, "-n", "2", "--json", key=key)[1] == out_lines(history[-2:])
    assert run("tail", log, key=key)[1] == out_lines(history)  # default 10 > 7
    assert run("tail", log, "-n", "0", key=key)[:2] == (0, "")

    code, out, _ = run("info", log, "--json", key=key)
    info = json.loads(out)
    assert code == 0 and info["message_count"] == 7 and info["encrypted"] is (key is not None)
    assert info["log_bytes"] == os.path.getsize(log) and info["format_version"] == 1
    assert TS.match(info["first_timestamp"]) and info["path"] == log
    code, out, _ = run("info", log, key=key)
    assert "message count:    7" in out and f"encrypted:        {'yes' if key else 'no'}" in out

    with ConversationCodec(log, encryption_key=key) as codec:  # the library agrees
        assert codec.load() == history and codec.encrypted is (key is not None)


def out_lines(items: list[dict[str, object]]) -> str:
    return "".join(json.dumps(m, ensure_ascii=False, separators=(",", ":")) + "\n" for m in items)


def test_key_file_is_stripped_and_key_env_names_the_variable(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"  {KEY}\n\n")
    key_file.chmod(0o600)
    log = str(tmp_path / "chat.log")
    assert run("append", log, "--key-file", str(key_file), stdin='{"n": 1}')[0] == 0
    monkeypatch.setenv("MY_KEY", KEY)
    code, out, err = run("cat", log, "--key-env", "MY_KEY")
    assert (code, out) == (0, '{"n":1}\n')
    assert KEY not in out + err


def test_dash_is_stdin_for_key_and_password_files(run: Run, tmp_path: Path) -> None:
    """Defect: ``--key-file -`` read a file named ``-``; now stdin (never a terminal)."""
    log, pw_log = str(tmp_path / "chat.log"), str(tmp_path / "pw.log")
    with ConversationCodec(log, encryption_key=KEY) as codec:
        codec.append({"n": 1})
    with ConversationCodec(pw_log, password="horse") as codec:
        codec.append({"n": 2})
    assert run("cat", log, "--key-file", "-", stdin=f"{KEY}\n")[:2] == (0, '{"n":1}\n')
    assert run("cat", pw_log, "--password-file", "-", stdin="horse\n")[:2] == (0, '{"n":2}\n')
    code, _, err = run("cat", log, "--key-file", "-", stdin=f"{OTHER_KEY}")
    assert code == 1 and "wrong key" in err and OTHER_KEY not in err
    code, _, err = run("cat", log, "--key-file", "-", stdin="not a key\n")
    assert code == 1 and "does not hold a Fernet key" in err and "not a key" not in err
    assert run("cat", log, "--key-file", "-")[0] == 1  # empty stdin
    # One reader of stdin per command: the messages and the key cannot both come from it.
    code, _, err = run("append", log, "--key-file", "-", stdin='{"n": 3}')
    assert code == 2 and "cannot both come from stdin" in err
    with ConversationCodec(log, encryption_key=KEY) as codec:
        assert codec.load() == [{"n": 1}]
    assert not (tmp_path / "-").exists() and not Path("-").exists()


def test_keygen_out_dash_prints_the_key_and_writes_no_file(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: ``keygen --out -`` wrote the key to a file named ``-`` in the working dir."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run("keygen", "--out", "-")
    assert (code, err) == (0, "") and KEY_LIKE.fullmatch(out.strip())
    code, out, _ = run("keygen", "--out", "-", "--json")
    assert code == 0 and KEY_LIKE.fullmatch(json.loads(out)["key"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["salvage", "src.log", "-", "--plain"],
        ["salvage", "-", "dst.log", "--plain"],
        ["tail", "-"],
        ["append", "-", "--plain"],
        ["verify", "-"],
        ["search", "-", "hi"],
        ["passwd", "-", "--password-env", "A", "--new-password-env", "B"],
        ["migrate", "-", "--plain"],
        ["migrate", "src.jsonl", "--out", "-", "--plain"],
        ["ls", "-"],
        ["copy", "-", "dst"],
        ["copy", "src", "-"],
        ["prune", "-", "--older-than", "1d"],
        ["delete", "-", "x"],
        ["pack", "-"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_dash_is_no_log_path(
    run: Run, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: ``salvage SRC -`` wrote a log named ``-``: a log is no stream, so a usage error."""
    monkeypatch.chdir(tmp_path)
    with ConversationCodec(tmp_path / "src.log") as codec:
        codec.append({"n": 1})
    before = sorted(tmp_path.iterdir())
    code, out, err = run(*argv, stdin='{"n": 2}')
    assert (code, out) == (2, "") and "cannot be a log or store" in err
    assert sorted(tmp_path.iterdir()) == before


# -- errors ----------------------------------------------------------------------------------


@pytest.fixture
def encrypted_log(tmp_path: Path) -> str:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY, durability="flush") as codec:
        codec.extend(messages(3))
    return str(path)


@pytest.mark.parametrize("command", ["cat", "tail", "info"])
def test_wrong_key_exits_1_with_a_clear_message(run: Run, encrypted_log: str, command: str) -> None:
    code, out, err = run(command, encrypted_log, key=OTHER_KEY)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "wrong key" in err and "Traceback" not in err
    assert OTHER_KEY not in err and KEY not in err


def test_missing_key_for_an_encrypted_log_hints_at_key_env(run: Run, encrypted_log: str) -> None:
    code, _, err = run("cat", encrypted_log)
    assert code == 1 and "encrypted" in err and "--key-env" in err and "--key-file" in err


def test_bad_key_inputs_exit_1(run: Run, encrypted_log: str, tmp_path: Path) -> None:
    code, _, err = run("cat", encrypted_log, key="   ")
    assert code == 1 and "set but empty" in err
    code, _, err = run("cat", encrypted_log, key="not-a-key")
    assert code == 1 and "not a Fernet key" in err and "not-a-key" not in err
    code, _, err = run("cat", encrypted_log, "--key-file", str(tmp_path / "absent"))
    assert code == 1 and "cannot read key file" in err


def test_key_for_a_plaintext_log_reads_it_with_a_warning_but_never_writes(
    run: Run, tmp_path: Path
) -> None:
    """Issue 17: a plaintext log read while the key variable is set is read, with a warning
    on stderr (it used to be refused); writing to it with the key set is still refused, and
    so is a key named on purpose (--key-file)."""
    log = str(tmp_path / "plain.log")
    assert run("append", log, "--plain", stdin='{"n": 1}')[0] == 0
    code, out, err = run("tail", log, key=KEY)
    assert (code, out) == (0, '{"n":1}\n') and err.startswith("warning: ") and "plaintext" in err
    assert KEY not in err
    code, _, err = run("append", log, stdin='{"n": 2}', key=KEY)
    assert code == 1 and "plaintext" in err and KEY not in err
    (tmp_path / "k").write_text(KEY)
    (tmp_path / "k").chmod(0o600)
    code, _, err = run("tail", log, "--key-file", str(tmp_path / "k"))
    assert code == 1 and "plaintext" in err


@pytest.mark.parametrize("mode", ["encrypted", "plaintext"])
@pytest.mark.parametrize("command", ["cat", "tail"])
def test_corrupted_log_exits_3(run: Run, tmp_path: Path, mode: str, command: str) -> None:
    key = KEY if mode == "encrypted" else None
    log = tmp_path / "chat.log"
    with ConversationCodec(log, encryption_key=key, durability="flush") as codec:
        codec.extend([{"role": "user", "content": f"message {i} " * 10} for i in range(3)])
    if key:
        flip_middle_byte(log)  # lands inside sealed record 1 of 3 equal records
    else:  # plaintext JSONL carries no checksum: break record 1's syntax, same length
        log.write_bytes(log.read_bytes().replace(b'{"seq":1,', b'{"seq":1;'))
    argv = [command, str(log)] + (["-n", "3"] if command == "tail" else [])
    code, _, err = run(*argv, key=key)
    assert code == 3 and err.startswith("error: log is damaged") and "record 1" in err


def test_a_foreign_file_exits_4_not_3(run: Run, tmp_path: Path) -> None:
    """Exit 3 means damage only; a file of the wrong kind gets its own code (issue 17)."""
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello\n")
    code, _, err = run("info", str(foreign))
    assert code == 4 and "not a conversation-codec log" in err


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        ('{"role": ', "stdin is not valid JSON"),
        ('{"role": "user"}\n{"role": \n', "stdin line 2 is not valid JSON"),
        ("[1, 2]", "must hold messages"),
        ('"hello"', "must hold messages"),
        ("  \n", "no message on stdin"),
        ('{"x": NaN}', "JSON"),
    ],
)
def test_bad_stdin_exits_1_and_writes_nothing(
    run: Run, tmp_path: Path, stdin: str, expected: str
) -> None:
    log = tmp_path / "chat.log"
    code, out, err = run("append", str(log), "--plain", stdin=stdin)
    assert code == 1 and out == "" and expected in err and "Traceback" not in err
    assert not log.exists() or ConversationCodec(log).message_count() == 0


def test_reading_a_missing_log_exits_1_and_creates_nothing(run: Run, tmp_path: Path) -> None:
    code, _, err = run("cat", str(tmp_path / "absent.log"))
    assert code == 1 and "no such log" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["bogus"],
        [],
        ["tail", "x.log", "-n", "-1"],
        ["cat"],
        ["cat", "x.log", "--key", KEY],  # keys never come from argv
        ["cat", "x.log", "--key-env", "A", "--key-file", "B"],
        ["append", "x.log", "--durability", "sometimes"],
        ["cat", "x.log", "--key-env", "A", "--password-env", "B"],
        ["cat", "x.log", "--password", "pw"],  # passwords never come from argv either
        ["search"],
        ["search", "x.log", "--last", "7x"],
        ["search", "x.log", "--since", "yesterday"],
        ["search", "x.log", "--since", "2026-10-01", "--last", "7d"],
        ["search", "x.log", "--limit", "-1"],
        ["verify"],
        ["salvage", "x.log"],
        ["rekey", "x.log"],  # a new key source is required
        ["rekey", "x.log", "--new-key", KEY],
        ["passwd", "x.log", "--password-env", "A"],
        ["migrate"],
        ["ls"],
        ["export", "x.log"],  # --out is required
        ["export", "x.log", "--out", "y", "--format", "csv"],
        ["import", "x.log"],
    ],
)
def test_usage_errors_exit_2(run: Run, argv: list[str]) -> None:
    code, out, err = run(*argv)
    assert code == 2 and out == "" and "usage:" in err


ALL_COMMANDS = ["keygen", "demo", "info", "cat", "tail", "append", "search", "verify"]
ALL_COMMANDS += ["salvage", "compact", "rekey", "passwd", "migrate", "ls", "export", "import"]
ALL_COMMANDS += ["copy", "pop", "prune", "delete"]  # issue 17
ALL_COMMANDS += ["pack"]  # issue 15: packs


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_every_help_has_an_example(run: Run, command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0 and "Example:" in out and "conversation-codec " + command in out


def test_top_level_help_and_version(run: Run) -> None:
    code, out, _ = run("--help")
    assert code == 0 and "Example:" in out and "keygen" in out
    code, out, _ = run("--version")
    assert code == 0 and out.startswith("conversation-codec ")


# -- search ----------------------------------------------------------------------------------

DAY = timedelta(days=1)
OCT1 = datetime(2026, 10, 1, 10, tzinfo=timezone.utc)
CHAT = [
    {"role": "user", "content": "Where is my refund for order A1042?"},
    {"role": "assistant", "content": "Your REFUND was issued yesterday."},
    {"role": "user", "content": "Thanks! Also, order B77 is late."},
    {"role": "tool", "content": '{"status": "shipped"}'},
]


def write_log(path: Path, key: str | None, start: datetime = OCT1) -> str:
    with ConversationCodec(path, encryption_key=key, durability="flush") as codec:
        codec.extend(CHAT, timestamps=[start + i * DAY for i in range(len(CHAT))])
    return str(path)


def objects(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def seqs(out: str, field: str = "seq") -> list[object]:
    return [hit[field] for hit in objects(out)]


@pytest.mark.parametrize("mode", ["encrypted", "plaintext"])
def test_search_a_log_with_each_filter(run: Run, tmp_path: Path, mode: str) -> None:
    key = KEY if mode == "encrypted" else None
    log = write_log(tmp_path / "chat.log", key)
    code, out, err = run("search", log, "refund", "--json", key=key)
    assert (code, err) == (0, "") and seqs(out) == [0, 1]
    hit = objects(out)[0]
    assert set(hit) == {"seq", "timestamp", "message"}
    assert hit["message"] == CHAT[0] and hit["timestamp"] == "2026-10-01T10:00:00.000000Z"
    cases = {
        ("REFUND", "--case-sensitive"): [1],
        (r"order [AB]\d+", "--regex"): [0, 2],
        ("order", "--role", "user"): [0, 2],
        ("--role", "user", "--role", "tool"): [0, 2, 3],
        ("--since", "2026-10-02", "--until", "2026-10-04T10:00Z"): [1, 2],
        ("--limit", "1", "--newest-first"): [3],
        ('"is late"',): [2],
        ("late refund",): [],
    }
    for argv, expected in cases.items():
        code, out, _ = run("search", log, *argv, "--json", key=key)
        assert (code, seqs(out)) == (0 if expected else 1, expected), argv  # 1: none, as grep


def test_search_human_output_is_bold_only_on_a_terminal(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = write_log(tmp_path / "chat.log", KEY)
    with ConversationCodec(log, encryption_key=KEY) as codec:
        codec.append({"role": "user", "content": "x " * 100 + "the refund again " + "y " * 100})
    code, out, _ = run("search", log, "refund", key=KEY)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3 and "\x1b[" not in out
    assert lines[0].startswith("2026-10-01 10:00:00  #0  user ") and "my refund for" in lines[0]
    assert "  #1  assistant  Your REFUND was issued" in lines[1]
    assert "...x x" in lines[2] and "the refund again" in lines[2] and lines[2].endswith("...")
    assert len(lines[2]) < 160  # a snippet around the match, not the whole message
    with ConversationCodec(log, encryption_key=KEY) as codec:  # stored text drives no terminal
        codec.append({"role": "user\x1b[2J", "content": "refund \x1b]0;pwned\x07 \x9b31m"})
    out = run("search", log, "refund", "--limit", "1", "--newest-first", key=KEY)[1]
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "user\\x1b[2J" in out and "\\x1b]0;pwned\\x07 \\x9b31m" in out
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    out = run("search", log, "refund", key=KEY)[1]
    assert "my \x1b[1mrefund\x1b[0m for" in out and "Your \x1b[1mREFUND\x1b[0m" in out
    assert "\x1b[1mrefund\x1b[0m \\x1b]0;pwned" in out


def test_search_last_counts_back_from_now(run: Run, tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    start = now - 10 * DAY - timedelta(hours=12)
    log = write_log(tmp_path / "chat.log", None, start=start)  # 10.5, 9.5, 8.5, 7.5 days ago
    assert seqs(run("search", log, "--last", "2w", "--json")[1]) == [0, 1, 2, 3]
    assert seqs(run("search", log, "--last", "9d", "--json")[1]) == [2, 3]
    assert seqs(run("search", log, "--last", "12h", "--json")[1]) == []
    assert seqs(run("search", log, "--last", "30m", "--json")[1]) == []


@pytest.mark.parametrize(
    ("argv", "code", "expected"),
    [
        (["--last", "7x"], 2, "expected an age such as"),
        (["--since", "yesterday"], 2, "expected an ISO-8601 time"),
        (["--since", "2026-10-01", "--last", "7d"], 2, "not allowed with"),
        (["--since", "2026-10-05", "--until", "2026-10-01"], 1, "is after until"),
        (["(", "--regex"], 1, "invalid regular expression"),
    ],
)
def test_search_bad_input(
    run: Run, tmp_path: Path, argv: list[str], code: int, expected: str
) -> None:
    log = write_log(tmp_path / "chat.log", None)
    got, out, err = run("search", log, *argv)
    assert (got, out) == (code, "") and expected in err and "Traceback" not in err


@pytest.mark.parametrize("mode", ["encrypted", "plaintext"])
def test_search_and_ls_a_store_root(run: Run, tmp_path: Path, mode: str) -> None:
    key = KEY if mode == "encrypted" else None
    root = tmp_path / "store"
    store = ConversationStore(root, encryption_key=key, durability="flush")
    for n, conversation_id in enumerate(["alice", "bob/2"]):
        with store.open(conversation_id) as codec:
            codec.extend(CHAT[n : n + 2], timestamps=[OCT1 + (n + i) * DAY for i in range(2)])
    code, out, _ = run("search", str(root), "refund", "--json", key=key)
    assert code == 0 and seqs(out, "conversation_id") == ["alice", "alice", "bob/2"]
    assert seqs(out) == [0, 1, 0]  # merged in time order; ties by id
    assert set(objects(out)[0]) == {"conversation_id", "seq", "timestamp", "message"}
    code, out, _ = run("search", str(root), "refund", key=key)
    assert "  alice #0  user " in out and "  bob/2 #0  assistant  Your REFUND" in out

    code, out, err = run("ls", str(root), key=key)
    assert code == 0 and err == ""
    head, alice, bob = out.splitlines()
    assert head.split() == ["ID", "MESSAGES", "FIRST", "LAST", "BYTES"]
    assert alice.split()[:4] == ["alice", "2", "2026-10-01", "10:00:00"]
    assert bob.split()[:2] == ["bob/2", "2"]
    code, out, _ = run("ls", str(root), "--json", key=key)
    listed = objects(out)
    assert code == 0 and [c["conversation_id"] for c in listed] == ["alice", "bob/2"]
    assert listed[0] == {
        "conversation_id": "alice",
        "message_count": 2,
        "first_timestamp": "2026-10-01T10:00:00.000000Z",
        "last_timestamp": "2026-10-02T10:00:00.000000Z",
        "encrypted": key is not None,
        "disk_bytes": listed[0]["disk_bytes"],
        "status": "ok",
        "error": None,
    }


def test_store_root_errors(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    with ConversationStore(root, encryption_key=KEY).open("alice") as codec:
        codec.append({"role": "user", "content": "hi"})
    assert run("ls", str(root), key=OTHER_KEY)[0] == 1
    code, _, err = run("ls", str(tmp_path / "absent"))
    assert code == 1 and "no such directory" in err
    monkeypatch.setenv("PW", "secret")
    code, _, err = run("search", str(root), "hi", "--password-env", "PW")
    assert code == 2 and "store root" in err


def test_store_root_with_an_unreadable_log_shows_its_row(run: Run, tmp_path: Path) -> None:
    root = tmp_path / "store"
    with ConversationStore(root, encryption_key=KEY).open("alice") as codec:
        codec.append({"role": "user", "content": "refund"})
    with ConversationCodec(root / "bob.log", encryption_key=OTHER_KEY) as codec:
        codec.append({"role": "user", "content": "refund"})
    (root / "notes.log").write_text("not a log\n")
    code, out, err = run("ls", str(root), key=KEY)
    assert code == 1 and err == ""
    head, alice, bob, notes = out.splitlines()
    assert head.split() == ["ID", "MESSAGES", "FIRST", "LAST", "BYTES", "STATUS"]
    assert alice.split()[:2] == ["alice", "1"] and alice.split()[-1] == "ok"
    assert bob.split()[0] == "bob" and bob.split()[-1] == "DecryptionError"
    assert notes.split()[-1] == "FormatError"
    code, out, _ = run("ls", str(root), "--json", key=KEY)
    assert [(c["conversation_id"], c["status"]) for c in objects(out)] == [
        ("alice", "ok"), ("bob", "DecryptionError"), ("notes", "FormatError")
    ]  # fmt: skip
    code, out, err = run("search", str(root), "refund", key=KEY)
    assert code == 1 and "alice #0" in out and len(out.splitlines()) == 1
    assert "error: bob:" in err and "error: notes:" in err and KEY not in err + out


# -- verify and salvage ----------------------------------------------------------------------


def damaged_log(path: Path, key: str | None) -> Path:
    """Three equal records, record 1 broken (sealed: a flipped bit; plain: bad JSON)."""
    with ConversationCodec(path, encryption_key=key, durability="flush") as codec:
        codec.extend([{"role": "user", "content": f"message {i} " * 10} for i in range(3)])
    if key:
        flip_middle_byte(path)
    else:
        path.write_bytes(path.read_bytes().replace(b'{"seq":1,', b'{"seq":1;'))
    return path


@pytest.mark.parametrize("mode", ["encrypted", "plaintext"])
def test_verify_exits_3_on_damage_with_offsets(run: Run, tmp_path: Path, mode: str) -> None:
    key = KEY if mode == "encrypted" else None
    good = write_log(tmp_path / "good.log", key)
    bad = str(damaged_log(tmp_path / "bad.log", key))
    code, out, err = run("verify", good, key=key)
    assert (code, out, err) == (0, f"{good}: ok, 4 intact records\n", "")

    code, out, err = run("verify", good, bad, key=key)
    assert code == 3 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{good}: ok, 4 intact records"
    assert lines[1].startswith(f"{bad}: DAMAGED, 2 intact records, ")
    assert re.search(r"^  byte \d+: (damaged|unauthenticated): ", out, re.MULTILINE)

    code, out, _ = run("verify", good, bad, "--json", key=key)
    reports = objects(out)
    assert code == 3 and [r["ok"] for r in reports] == [True, False]
    assert set(reports[1]) == {"path", "ok", "records", "keyword_index", "problems"}
    problem = reports[1]["problems"][0]
    assert set(problem) == {"kind", "offset", "detail"} and problem["offset"] > 0


def test_verify_reports_a_log_it_cannot_open_and_goes_on(run: Run, tmp_path: Path) -> None:
    good = write_log(tmp_path / "good.log", KEY)
    code, out, err = run("verify", str(tmp_path / "absent.log"), good, key=KEY)
    assert code == 1 and "no such log" in err and f"{good}: ok" in out
    code, out, err = run("verify", good, key=OTHER_KEY)
    assert code == 1 and out == "" and "wrong key" in err


def test_verify_of_a_store_root_goes_on_past_a_conversation_it_cannot_open(
    run: Run, tmp_path: Path
) -> None:
    """One conversation under another key (or otherwise unopenable) is reported; the root's
    other conversations are verified all the same (from review)."""
    root = tmp_path / "store"
    for cid in ("a", "b"):
        with ConversationStore(root, encryption_key=KEY).open(cid) as codec:
            codec.append({"role": "user", "content": cid})
    with ConversationStore(root, encryption_key=OTHER_KEY).open("other") as codec:
        codec.append({"role": "user", "content": "under another key"})
    code, out, err = run("verify", str(root), key=KEY)
    assert code == 1 and "wrong key" in err and "other" in err
    assert out.count(": ok,") == 2


def test_a_directory_names_its_logs_that_are_no_store_ids(run: Run, tmp_path: Path) -> None:
    """A ``*.log`` in a directory whose name encodes no conversation id is no conversation
    of the store: ``verify DIR`` verifies it as a log all the same (a damaged one: exit 3),
    and ``ls``/``search`` name it on stderr and exit 1, never skipping it silently."""
    root = tmp_path / "vd"
    with ConversationStore(root, encryption_key=KEY).open("good") as codec:
        codec.append({"role": "user", "content": "hello"})
    bad = damaged_log(root / "my chat.log", KEY)
    intact = write_log(root / "Notes.log", KEY)  # uppercase: no id's encoding either
    code, out, err = run("verify", str(bad), key=KEY)
    assert code == 3
    code, out, err = run("verify", str(root), key=KEY)
    assert code == 3 and err == "", err
    lines = out.splitlines()
    assert lines[0].startswith(f"{root / 'good.log'}: ok")
    assert f"{bad}: DAMAGED" in out and f"{intact}: ok, 4 intact records" in out
    code, out, _ = run("verify", str(root), "--json", key=KEY)
    assert code == 3 and {r["path"]: r["ok"] for r in objects(out)}[str(bad)] is False
    code, out, err = run("ls", str(root), key=KEY)
    assert code == 1 and out.splitlines()[1].split()[:2] == ["good", "1"]
    assert f"{bad}" in err and f"{intact}" in err and "not a conversation" in err
    code, out, err = run("search", str(root), "hello", key=KEY)
    assert code == 1 and "good #0" in out and f"{bad}" in err and f"{intact}" in err


@pytest.mark.parametrize("mode", ["encrypted", "plaintext"])
def test_salvage_copies_intact_records_and_never_touches_src(
    run: Run, tmp_path: Path, mode: str
) -> None:
    key = KEY if mode == "encrypted" else None
    plain = [] if key else ["--plain"]
    src = damaged_log(tmp_path / "bad.log", key)
    before = src.read_bytes()
    dst = tmp_path / "rescued.log"
    code, out, err = run("salvage", str(src), str(dst), *plain, key=key)
    assert code == 0 and err == ""
    assert f"recovered 2 messages into {dst}" in out and "lost seqs: 1\n" in out
    assert src.read_bytes() == before
    with ConversationCodec(dst, encryption_key=key) as codec:
        assert [m["content"][:9] for m in codec.load() or []] == ["message 0", "message 2"]
    code, _, err = run("salvage", str(src), str(dst), *plain, key=key)
    assert code == 1 and "already exists" in err
    code, out, _ = run("salvage", str(src), str(tmp_path / "again.log"), "--json", *plain, key=key)
    report = json.loads(out)
    assert code == 0 and report["recovered"] == 2 and report["lost_seqs"] == [1]
    assert {"source", "destination", "problems"} <= set(report)
    assert run("salvage", str(tmp_path / "absent.log"), str(tmp_path / "x.log"))[0] == 1


def test_salvage_names_a_lost_last_record_or_says_it_cannot_count(run: Run, tmp_path: Path) -> None:
    """The last record of five damaged: seq 4 is lost (the index counts it), never "none";
    without the index nothing can count what the damage held, and the output says so."""
    src = tmp_path / "bad.log"
    with ConversationCodec(src, encryption_key=KEY, durability="flush") as codec:
        codec.extend(messages(5))
    data = bytearray(src.read_bytes())
    data[-5] ^= 0x01
    src.write_bytes(bytes(data))
    code, out, err = run("salvage", str(src), str(tmp_path / "a.log"), "--json", key=KEY)
    report = json.loads(out)
    assert (code, err, report["recovered"], report["lost_seqs"], report["more_lost"]) == (
        0,
        "",
        4,
        [4],
        False,
    )
    code, out, err = run("salvage", str(src), str(tmp_path / "b.log"), key=KEY)
    assert (code, err) == (0, "") and "lost seqs: 4\n" in out, out
    Path(index_path(src)).unlink()
    code, out, err = run("salvage", str(src), str(tmp_path / "c.log"), key=KEY)
    assert (code, err) == (0, "") and "lost: an unknown number of records after seq 3\n" in out


# -- compact, rekey, passwd, password-env ----------------------------------------------------


@pytest.mark.parametrize("mode", ["encrypted", "plaintext"])
def test_compact(run: Run, tmp_path: Path, mode: str) -> None:
    key = KEY if mode == "encrypted" else None
    plain = [] if key else ["--plain"]
    log = write_log(tmp_path / "chat.log", key)
    code, out, err = run("compact", log, *plain, key=key)
    assert code == 0 and err == ""
    assert re.fullmatch(
        rf"compacted {re.escape(log)}: 4 messages kept, [\d,]+ -> [\d,]+ bytes\n", out
    )
    code, out, _ = run("compact", log, "--json", *plain, key=key)
    assert code == 0 and set(json.loads(out)) == {"path", "messages", "bytes_before", "bytes_after"}
    with ConversationCodec(log, encryption_key=key) as codec:
        assert codec.load() == CHAT


@pytest.mark.parametrize("source", ["env", "file"])
def test_rekey_old_key_fails_after_and_new_key_works(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    log = write_log(tmp_path / "chat.log", KEY)
    if source == "env":
        monkeypatch.setenv("NEW_KEY", OTHER_KEY)
        new = ["--new-key-env", "NEW_KEY"]
    else:
        (tmp_path / "new.key").write_text(OTHER_KEY + "\n")
        (tmp_path / "new.key").chmod(0o600)
        new = ["--new-key-file", str(tmp_path / "new.key")]
    code, out, err = run("rekey", log, *new, key=KEY)
    assert code == 0 and "re-encrypted" in out and "4 messages kept" in out
    assert KEY not in out + err and OTHER_KEY not in out + err
    code, _, err = run("cat", log, key=KEY)
    assert code == 1 and "wrong key" in err
    code, out, _ = run("cat", log, key=OTHER_KEY)
    assert code == 0 and objects(out) == CHAT


PICTURE = {
    "role": "user",
    "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "QUJD" * 800}}
    ],
}


def test_rekey_export_cat_and_verify_of_a_log_with_attachment_blobs(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside review (bad inputs) 1, 3, 9: the CLI opens logs without attachments="external";
    rekey left the blobs under the old key, export and cat wrote the internal reference,
    verify said ok with a blob damaged."""
    log = tmp_path / "chat.log"
    with ConversationCodec(log, encryption_key=KEY, attachments="external") as codec:
        codec.extend([CHAT[0], PICTURE])
    code, out, _ = run("export", str(log), "--out", str(tmp_path / "out.jsonl"), key=KEY)
    exported = objects((tmp_path / "out.jsonl").read_text())[1]
    assert code == 0 and exported.pop("timestamp") and exported == PICTURE
    code, out, _ = run("cat", str(log), key=KEY)
    assert code == 0 and objects(out)[1] == PICTURE and "cc-blob:" not in out
    monkeypatch.setenv("NEW_KEY", OTHER_KEY)
    code, out, err = run("rekey", str(log), "--new-key-env", "NEW_KEY", key=KEY)
    assert code == 0, err
    code, out, _ = run("cat", str(log), key=OTHER_KEY)  # the new key alone opens everything
    assert code == 0 and objects(out)[1] == PICTURE
    code, out, _ = run("verify", str(log), key=OTHER_KEY)
    assert code == 0 and out == f"{log}: ok, 2 intact records\n"
    [blob] = Path(str(log) + ".blobs").iterdir()
    blob.unlink()
    code, out, _ = run("verify", str(log), key=OTHER_KEY)
    assert code == 3 and f"{log}: DAMAGED, 2 intact records, " in out
    assert f"blob-missing: blob {blob.name}" in out


def test_rekey_errors(run: Run, tmp_path: Path) -> None:
    log = write_log(tmp_path / "chat.log", KEY)
    code, _, err = run("rekey", log, "--new-key-env", "UNSET_NEW_KEY", key=KEY)
    assert code == 1 and "$UNSET_NEW_KEY is not set" in err
    code, _, err = run("rekey", log, "--new-key-env", OTHER_KEY, key=KEY)
    assert code == 2 and OTHER_KEY not in err  # a key where a variable name belongs
    code, _, err = run("rekey", log, "--new-key-env", "X", key=OTHER_KEY)
    assert code == 1


def test_rekey_to_the_same_key_is_refused_and_changes_nothing(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = write_log(tmp_path / "chat.log", KEY)
    before = Path(log).read_bytes()
    monkeypatch.setenv("NEW_KEY", KEY)
    code, out, err = run("rekey", log, "--new-key-env", "NEW_KEY", key=KEY)
    assert (code, out) == (2, "") and "already encrypted with" in err and KEY not in err
    assert "only the new key" not in out + err and Path(log).read_bytes() == before


def test_copy_failures_are_said_without_class_names(run: Run, tmp_path: Path) -> None:
    with ConversationStore(tmp_path / "st", encryption_key=KEY).open("a") as codec:
        codec.append(CHAT[0])
    code, _, err = run("copy", str(tmp_path / "st"), str(tmp_path / "dst"), "zz", key=KEY)
    assert code == 1 and err.startswith("error: zz: ") and "Error" not in err, err
    with ConversationStore(tmp_path / "other", encryption_key=OTHER_KEY).open("a") as codec:
        codec.append(CHAT[1])
    code, _, err = run("copy", str(tmp_path / "other"), str(tmp_path / "dst"), key=KEY)
    assert code == 1 and "error: a: wrong key" in err and "Error" not in err, err


def test_password_env_opens_password_logs_and_passwd_changes_it(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PW", "old horse")
    monkeypatch.setenv("NEW_PW", "new battery")
    monkeypatch.setenv("CONVERSATION_KEY", KEY)  # ignored when --password-env is given
    log = str(tmp_path / "chat.log")
    code, out, _ = run("append", log, "--password-env", "PW", stdin='{"n": 1}', key=KEY)
    assert (code, out) == (0, "0\n")
    code, _, err = run("cat", log, key=KEY)
    assert code == 1 and "--password-env" in err
    code, out, err = run("passwd", log, "--password-env", "PW", "--new-password-env", "NEW_PW")
    assert code == 0 and "changed the password" in out and "1 messages kept" in out
    assert "horse" not in out + err and "battery" not in out + err
    code, _, err = run("cat", log, "--password-env", "PW")
    assert code == 1 and "wrong password (--password-env PW)" in err and "horse" not in err
    assert run("cat", log, "--password-env", "NEW_PW")[:2] == (0, '{"n":1}\n')
    code, _, err = run("passwd", log, "--password-env", "PW", "--new-password-env", "NEW_PW")
    assert code == 1 and "wrong password" in err


def test_password_env_errors(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keyed = write_log(tmp_path / "keyed.log", KEY)
    plain = write_log(tmp_path / "plain.log", None)
    monkeypatch.setenv("PW", "pw")
    code, _, err = run("cat", keyed, "--password-env", "PW")
    assert code == 1 and "encrypted with a key, not a password" in err
    code, _, err = run("cat", plain, "--password-env", "PW")
    assert code == 1 and "plaintext log but a password was given" in err
    code, _, err = run("cat", keyed, "--password-env", "UNSET_PW")
    assert code == 1 and "$UNSET_PW is not set" in err
    code, _, err = run("cat", keyed, "--password-env", "not a name")
    assert code == 2 and "not a name" not in err
    code, _, err = run("cat", keyed, "--password", "hunter2")  # no abbreviation of -env
    assert code == 2 and "hunter2" not in err


# -- migrate ---------------------------------------------------------------------------------

LEGACY_KEY = "qsaLzMvJjEw-zJjkxF2ovDTZySvHckf4NDTI-P8sBdE="


def histories(folder: Path) -> Path:
    """Two good histories, one Fernet-encrypted history and one corrupt file."""
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jsonl").write_text('{"role": "user", "content": "hi"}\n')
    (folder / "sub" / "b.json").write_text('[{"role": "user", "content": "yo"}]')
    (folder / "sub" / "c.enc").write_bytes(Fernet(LEGACY_KEY).encrypt(b'{"role": "user"}\n'))
    (folder / "sub" / "broken.json").write_text('[{"role": "user", "content": ')
    return folder


def test_migrate_a_directory_with_one_corrupt_file(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = histories(tmp_path / "hist")
    broken = (folder / "sub" / "broken.json").read_bytes()
    monkeypatch.setenv("LEGACY", LEGACY_KEY)
    code, out, err = run("migrate", str(folder), "--legacy-key-env", "LEGACY", key=KEY)
    assert code == 1 and err == ""  # no progress bar: stderr is not a terminal
    assert out.splitlines()[0].split() == ["STATUS", "FILE", "DETAILS"]
    assert re.search(r"^failed +\S+broken\.json +\S", out, re.MULTILINE)
    assert "3 converted, 0 skipped, 1 failed" in out
    assert "encrypted with the key from $CONVERSATION_KEY" in out
    for name, expected in [("a.jsonl", "hi"), ("sub/b.json", "yo"), ("sub/c.enc", None)]:
        with ConversationCodec(folder / name, encryption_key=KEY) as codec:
            assert (codec.load() or [])[0].get("content") == expected
    assert (folder / "sub" / "broken.json").read_bytes() == broken  # left as it was
    assert (folder / "a.jsonl.bak").exists()

    code, out, _ = run("migrate", str(folder), "--json", key=KEY)  # again: logs are skipped
    report = json.loads(out)
    assert code == 1 and (report["converted"], report["skipped"], report["failed"]) == (0, 3, 1)
    assert report["encrypted"] is True and report["dry_run"] is False
    assert {"path", "status", "reason"} <= set(report["files"][0])


def test_migrate_plaintext_out_dir_dry_run_and_progress(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "hist"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jsonl").write_text('{"role": "user", "content": "hi"}\n')
    (folder / "sub" / "b.json").write_text('[{"role": "user", "content": "yo"}]')
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    code, out, _ = run("migrate", str(folder), "--dry-run", "--no-backup")
    assert code == 0 and "2 converted, 0 skipped, 0 failed (dry run" in out
    assert "new logs are PLAINTEXT" in out
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    out_dir = tmp_path / "logs"
    code, out, err = run("migrate", str(folder), "--out", str(out_dir), "--tree", "--plain")
    assert code == 0 and "PLAINTEXT" in out and "2/2" in err
    assert re.search(r"\r(\x1b\[\?25l)?migrating +\[#+\]  2/2", err)  # click.progressbar
    assert ConversationCodec(out_dir / "sub" / "b.json").load() == [
        {"role": "user", "content": "yo"}
    ]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    code, out, _ = run("migrate", str(tmp_path / "absent"), "--plain")
    assert code == 1 and "does not exist" in out


def test_migrate_out_makes_a_store_that_ls_and_the_library_read(
    tmp_path: Path, entry: Entry
) -> None:
    """Issue 17: ``migrate DIR --out ROOT`` names each conversation as the store encodes
    its id (the path under DIR, without .jsonl/.json/.enc), bound to it."""
    folder = tmp_path / "hist"
    (folder / "Ana").mkdir(parents=True)
    (folder / "Ana" / "chat.jsonl").write_text('{"role": "user", "content": "hi"}\n')
    (folder / "bob.json").write_text('[{"role": "user", "content": "yo"}]')
    key = KEY
    env = subprocess_env(CONVERSATION_KEY=key)
    done = entry("migrate", str(folder), "--out", str(tmp_path / "store"), env=env)
    assert done.returncode == 0 and "2 converted" in done.stdout, done.stdout + done.stderr
    store = ConversationStore(tmp_path / "store", encryption_key=key)
    assert store.ids() == ["Ana/chat", "bob"]
    with store.open("Ana/chat") as codec:
        assert codec.load() == [{"role": "user", "content": "hi"}]
    listed = entry("ls", str(tmp_path / "store"), "--json", env=env)
    assert listed.returncode == 0 and '"Ana/chat"' in listed.stdout
    tree = entry("migrate", str(folder), "--tree", env=env)
    assert tree.returncode == 2  # --tree goes with --out
    assert sorted(p.name for p in folder.rglob("*")) == ["Ana", "bob.json", "chat.jsonl"]


# -- export and import -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["encrypted", "plaintext"])
def test_export_warns_that_the_output_is_unencrypted(
    run: Run, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = KEY if mode == "encrypted" else None
    log = write_log(tmp_path / "chat.log", key)
    out_file = tmp_path / "chat.jsonl"
    code, out, err = run("export", log, "--out", str(out_file), key=key)
    assert code == 0 and out == f"exported 4 messages to {out_file} (jsonl)\n"
    assert err.startswith("warning: ") and "UNENCRYPTED" in err
    rows = objects(out_file.read_text())
    assert [{k: v for k, v in r.items() if k != "timestamp"} for r in rows] == CHAT
    assert rows[0]["timestamp"] == "2026-10-01T10:00:00.000000Z"
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    exported = out_file.read_bytes()
    code, _, err = run("export", log, "--out", str(out_file), "--format", "json", key=key)
    assert code == 1 and "already exists" in err and "--force" in err  # never overwritten
    assert out_file.read_bytes() == exported
    code, _, err = run(
        "export", log, "--out", str(out_file), "--format", "json", "--no-timestamps", "--force",
        key=key,
    )  # fmt: skip
    assert code == 0 and "UNENCRYPTED" in err and json.loads(out_file.read_text()) == CHAT
    assert "UNENCRYPTED" in run("export", "--help")[1]
    monkeypatch.setenv("PW", "pw")  # a plaintext log opened with a password: refused
    wrong = ["--password-env", "PW"] if key is None else []
    code, _, err = run("export", log, "--out", str(out_file), "--force", *wrong, key=OTHER_KEY)
    assert code == 1 and "warning" not in err


@pytest.mark.parametrize("mode", ["encrypted", "plaintext"])
def test_import_replaces_or_merges_and_prints_counts(run: Run, tmp_path: Path, mode: str) -> None:
    key = KEY if mode == "encrypted" else None
    plain = [] if key else ["--plain"]
    src = tmp_path / "old.jsonl"
    src.write_text("".join(json.dumps(m) + "\n" for m in CHAT[:2]))
    log = str(tmp_path / "chat.log")
    code, out, err = run("import", log, str(src), *plain, key=key)
    assert code == 0 and err == ""
    assert "read 2 messages (jsonl)" in out and "added to" in out
    assert "2 added, 0 duplicates skipped, 0 rejected" in out
    code, out, _ = run("import", log, str(src), "--merge", "--json", *plain, key=key)
    assert code == 0 and json.loads(out) == {
        "read": 2, "added": 0, "skipped_duplicate": 2, "rejected": 0, "format": "jsonl",
        "notes": [],
    }  # fmt: skip
    with ConversationCodec(log, encryption_key=key) as codec:
        assert codec.load() == CHAT[:2]


def test_import_keeps_the_history_unless_replace(run: Run, tmp_path: Path) -> None:
    src = tmp_path / "old.jsonl"
    src.write_text("".join(json.dumps(m) + "\n" for m in CHAT[:2]))
    log = str(tmp_path / "chat.log")
    with ConversationCodec(log, encryption_key=KEY) as codec:
        codec.extend(CHAT[2:])
    code, out, _ = run("import", log, str(src), key=KEY)
    assert code == 0 and "2 added" in out and "added to" in out
    with ConversationCodec(log, encryption_key=KEY) as codec:
        assert sorted(map(str, codec.load() or [])) == sorted(map(str, CHAT))
    code, out, _ = run("import", log, str(src), "--replace", key=KEY)
    assert code == 0 and "replaced the history of" in out
    with ConversationCodec(log, encryption_key=KEY) as codec:
        assert codec.load() == CHAT[:2]
    code, _, err = run("import", log, str(src), "--replace", "--merge", key=KEY)
    assert code == 2 and "not allowed with" in err
    assert "--replace" in run("import", "--help")[1]


def test_import_replace_of_a_file_with_rejected_messages_changes_nothing(
    run: Run, tmp_path: Path
) -> None:
    src = tmp_path / "old.jsonl"
    deep = {"role": "user", "content": json.loads("[" * 70 + "]" * 70)}
    src.write_text(json.dumps(CHAT[0]) + "\n" + json.dumps(deep) + "\n")
    log = tmp_path / "chat.log"
    with ConversationCodec(log, encryption_key=KEY) as codec:
        codec.extend(CHAT[1:])
    before = log.read_bytes()
    code, out, err = run("import", str(log), str(src), "--replace", key=KEY)
    assert (code, out) == (4, "") and "1 of 2 messages cannot be stored" in err
    assert "nothing was changed" in err and log.read_bytes() == before
    code, out, _ = run("import", str(log), str(src), key=KEY)  # adding: left out, counted
    assert code == 0 and "1 added" in out and "1 rejected" in out


@pytest.mark.parametrize("name", ["chat.log.lock", "chat.log.kwi", "chat.log.tmp-0123456789abcdef"])
def test_export_force_refuses_a_file_of_the_log(run: Run, tmp_path: Path, name: str) -> None:
    log = write_log(tmp_path / "chat.log", KEY)
    (tmp_path / name).touch()
    before = snapshot_tree(tmp_path)
    code, out, err = run("export", log, "--out", str(tmp_path / name), "--force", key=KEY)
    assert (code, out) == (1, "") and "is a file of the log" in err
    assert snapshot_tree(tmp_path) == before


def test_migrate_and_import_refuse_a_fifo(run: Run, tmp_path: Path) -> None:
    folder = tmp_path / "hist"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps(CHAT[0]) + "\n")
    fifo = make_special(folder / "b.jsonl", "fifo")
    with unblocked(fifo):
        code, out, _ = run("migrate", str(folder), key=KEY)
        assert code == 1 and "1 converted, 0 skipped, 1 failed" in out
        assert re.search(r"^failed +\S+b\.jsonl +.*b\.jsonl is a FIFO", out, re.MULTILINE)
        code, out, err = run("import", str(tmp_path / "x.log"), str(fifo), key=KEY)
        assert (code, out) == (1, "") and "is a FIFO (named pipe), not a regular file" in err


def test_import_a_legacy_fernet_file(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "old.enc"
    src.write_bytes(Fernet(LEGACY_KEY).encrypt(b'{"role": "user", "content": "hi"}\n'))
    log = str(tmp_path / "chat.log")
    code, _, err = run("import", log, str(src), key=KEY)
    assert code == 1 and "--legacy-key-env" in err and str(src) in err
    monkeypatch.setenv("LEGACY", LEGACY_KEY)
    code, out, _ = run("import", log, str(src), "--legacy-key-env", "LEGACY", key=KEY)
    assert code == 0 and "1 added" in out and LEGACY_KEY not in out
    with ConversationCodec(log, encryption_key=KEY) as codec:
        assert codec.load() == [{"role": "user", "content": "hi"}]


# -- plaintext only on purpose, no echoed secrets, private key files ------------------------


def snapshot_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "command",
    ["append-new", "append-existing", "import", "compact", "salvage", "migrate-out", "migrate"],
)
@pytest.mark.parametrize("key_env", [None, "CONVERSATION_KEI"])  # unset, or a misspelt name
def test_writing_plaintext_needs_plain_and_writes_nothing(
    run: Run, tmp_path: Path, command: str, key_env: str | None
) -> None:
    plain_log = write_log(tmp_path / "plain.log", None)
    src = tmp_path / "old.jsonl"
    src.write_text(json.dumps(CHAT[0]) + "\n")
    (tmp_path / "hist").mkdir()
    (tmp_path / "hist" / "a.jsonl").write_text(json.dumps(CHAT[0]) + "\n")
    argv = {
        "append-new": ["append", str(tmp_path / "new.log")],
        "append-existing": ["append", plain_log],
        "import": ["import", str(tmp_path / "new.log"), str(src)],
        "compact": ["compact", plain_log],
        "salvage": ["salvage", plain_log, str(tmp_path / "rescued.log")],
        "migrate-out": ["migrate", str(tmp_path / "hist"), "--out", str(tmp_path / "logs")],
        "migrate": ["migrate", str(tmp_path / "hist")],
    }[command]
    named = [] if key_env is None else ["--key-env", key_env]
    before, names = snapshot_tree(tmp_path), sorted(tmp_path.rglob("*"))
    code, out, err = run(*argv, *named, stdin='{"role": "user", "content": "hi"}')
    assert (code, out) == (2, "") and "Traceback" not in err
    assert "UNENCRYPTED" in err and "--plain" in err and "--key-file" in err
    assert snapshot_tree(tmp_path) == before  # nothing changed
    assert sorted(tmp_path.rglob("*")) == names  # nothing created, not even a lock file

    code, _, err = run(*argv, "--plain", stdin='{"role": "user", "content": "hi"}')
    assert code == 0, err  # asked for: written in plaintext


def test_plain_is_not_needed_to_read_and_excludes_key_sources(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = write_log(tmp_path / "plain.log", None)
    for argv in (["cat", log], ["tail", log], ["info", log], ["search", log, "refund"]):
        assert run(*argv)[0] == 0, argv
    assert run("verify", log)[0] == 0
    (tmp_path / "k").write_text(KEY)
    (tmp_path / "k").chmod(0o600)
    monkeypatch.setenv("PW", "pw")
    for source in (["--key-file", str(tmp_path / "k")], ["--password-env", "PW"]):
        code, _, err = run("append", log, "--plain", *source, stdin="{}")
        assert code == 2 and "not allowed with" in err
    # --plain means no key at all, even with the key variable set: the log stays plaintext.
    code, out, _ = run("append", str(tmp_path / "new.log"), "--plain", stdin="{}", key=KEY)
    assert (code, out) == (0, "0\n")
    assert (tmp_path / "new.log").read_bytes().startswith(b'{"conversation_codec":')


def test_subprocess_append_without_a_key_creates_no_plaintext_log(tmp_path: Path) -> None:
    log = tmp_path / "new.log"
    done = cli("append", str(log), stdin='{"role": "user", "content": "card 4111"}')
    assert done.returncode == 2 and "--plain" in done.stderr and done.stdout == ""
    assert list(tmp_path.iterdir()) == []


SECRET = OTHER_KEY  # a real-looking key typed where another value belongs


@pytest.mark.parametrize(
    "argv",
    [
        [SECRET],  # invalid choice of command
        ["append", "x.log", "--durability", SECRET],  # invalid choice
        ["export", "x.log", "--out", "y", "--format", SECRET],
        ["tail", "x.log", "-n", SECRET],  # type errors
        ["tail", "x.log", f"-n{SECRET}"],
        ["search", "x.log", "--since", SECRET],
        ["search", "x.log", "--until", SECRET],
        ["search", "x.log", "--last", SECRET],
        ["search", "x.log", "--limit", SECRET],
        ["info", "x.log", f"--json={SECRET}"],  # ignored explicit argument
        ["cat", "x.log", SECRET],  # unrecognized argument
        ["cat", "x.log", f"--key-env={SECRET}"],
        ["rekey", "x.log", "--new-key-env", SECRET],
        ["cat", SECRET],  # a key where the path belongs: a library error, not usage
        ["tail", "-n", "1", str(Path("dir") / SECRET)],
    ],
)
def test_no_error_echoes_an_argument_value(run: Run, argv: list[str]) -> None:
    code, out, err = run(*argv)
    assert code in (1, 2) and err.startswith(("usage:", "error:")), err
    assert SECRET not in out + err and SECRET[:12] not in out + err
    assert SECRET[12:-1] not in out + err


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o610, 0o700], ids=oct)
@pytest.mark.parametrize("option", ["--key-file", "--new-key-file"])
def test_key_files_readable_by_others_are_refused_as_the_library_does(
    run: Run, tmp_path: Path, mode: int, option: str
) -> None:
    log = write_log(tmp_path / "chat.log", KEY)
    key_file = tmp_path / "chat.key"
    key_file.write_text((KEY if option == "--key-file" else OTHER_KEY) + "\n")  # rekey: a new key
    key_file.chmod(mode)
    if option == "--key-file":
        argv = ["tail", log, "--key-file", str(key_file)]
    else:
        argv = ["rekey", log, "--new-key-file", str(key_file)]
    before = snapshot_tree(tmp_path)
    code, out, err = run(*argv, key=KEY)
    if mode & 0o077 == 0:
        assert code == 0, err
        return
    with pytest.raises(KeyFileError) as info:
        load_or_create_key(key_file)  # the library's rule and message, word for word
    assert (code, out) == (1, "") and err == f"error: {info.value}\n"
    assert "chmod 600" in err and KEY not in err
    assert snapshot_tree(tmp_path) == before


def test_a_key_file_that_is_not_a_regular_file_is_refused(run: Run, tmp_path: Path) -> None:
    log = write_log(tmp_path / "chat.log", KEY)
    code, _, err = run("tail", log, "--key-file", str(tmp_path))
    assert code == 1 and "not a regular file" in err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    code, _, err = run("tail", log, "--key-file", str(fifo))  # must not block on the FIFO
    assert code == 1 and "not a regular file" in err
    bad = tmp_path / "bad.key"
    bad.write_text("not a key at all\n")
    bad.chmod(0o600)
    code, _, err = run("tail", log, "--key-file", str(bad))
    assert code == 1 and "does not hold a Fernet key" in err and "not a key at all" not in err


def test_regex_help_names_the_engine(run: Run) -> None:
    out = " ".join(run("search", "--help")[1].split())
    assert "RE2" in out and "linear time" in out and "conversation-codec[regex]" in out


def test_subprocess_a_catastrophic_regex_cannot_hang_the_cli(tmp_path: Path) -> None:
    log = tmp_path / "chat.log"
    with ConversationCodec(log, durability="flush") as codec:
        codec.extend([{"role": "user", "content": "a" * 41 + "b"}] * 3)
    # A backtracking engine takes ~2^41 steps at the first position before the "b" branch
    # matches; the human output's highlighting then runs the pattern a second time.
    done = subprocess.run(
        [sys.executable, "-m", "conversation_codec", "search", str(log), "(a+)+c|b", "--regex"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3 and done.stdout.count("ab") == 3


# -- the real entry point --------------------------------------------------------------------


def test_subprocess_demo_runs_and_hides_the_key() -> None:
    done = cli("demo")
    assert done.returncode == 0, done.stderr
    assert "10 messages" in done.stdout and "DecryptionError" in done.stdout
    assert len(done.stdout.splitlines()) < 40
    assert not KEY_LIKE.search(done.stdout + done.stderr)


def test_subprocess_keygen_append_cat_and_exit_codes(tmp_path: Path) -> None:
    key = cli("keygen").stdout.strip()
    assert KEY_LIKE.fullmatch(key)
    env = subprocess_env(CONVERSATION_KEY=key)
    log = str(tmp_path / "chat.log")
    history = messages(4)
    done = cli("append", log, stdin="\n".join(json.dumps(m) for m in history), env=env)
    assert (done.returncode, done.stdout) == (0, "0\n1\n2\n3\n"), done.stderr
    done = cli("cat", log, env=env)
    assert done.returncode == 0 and jsonl(done.stdout) == history

    assert cli("cat", log).returncode == 1  # no key
    assert cli("bogus").returncode == 2
    flip_middle_byte(Path(log))
    done = cli("cat", log, env=env)
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: log is damaged")


def test_subprocess_closed_pipe_is_quiet(tmp_path: Path) -> None:
    log = tmp_path / "chat.log"
    with ConversationCodec(log, durability="flush") as codec:
        codec.extend(messages(4000))
    with subprocess.Popen(
        [sys.executable, "-m", "conversation_codec", "cat", str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline()  # read one line, then hang up like `| head -1`
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 1
    assert err == b""  # no traceback, no "Exception ignored", no "error: Broken pipe"


def test_subprocess_verify_a_damaged_log_exits_3(tmp_path: Path) -> None:
    log = damaged_log(tmp_path / "bad.log", KEY)
    done = cli("verify", str(log), env=subprocess_env(CONVERSATION_KEY=KEY))
    assert done.returncode == 3 and "DAMAGED" in done.stdout and done.stderr == ""


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["tail", "--help"]])
def test_help_and_version_import_no_engine(argv: list[str]) -> None:
    """Startup stays cheap (issue 17: under 0.15 s): ``--help`` and ``--version`` load neither
    cryptography nor the engine (checked by module, not by a timing)."""
    code = (
        "import sys\n"
        "from conversation_codec.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ['cryptography', 'zstandard', 'msgspec', 'portalocker', "
        "'conversation_codec.codec', 'conversation_codec.store']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]", out


# -- the installed entry point (issue 17: click, exit codes by class, progress) -------------

ENTRY = str(Path(sys.executable).with_name("conversation-codec"))  # the console script


def entry_point(
    *argv: str, stdin: str = "", env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``conversation-codec`` script, as a user does."""
    return subprocess.run(
        [ENTRY, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        cwd=cwd,
        timeout=60,
    )


class Entry:
    """``entry(*argv, stdin=, env=, cwd=)`` runs the command line with its output piped;
    ``entry.terminal(*argv, stream=, env=)`` with ``stream`` on a terminal (as
    :func:`on_a_terminal`)."""

    def __init__(
        self, piped: Callable[..., subprocess.CompletedProcess[str]], terminal: Callable[..., Any]
    ) -> None:
        self.piped, self.terminal = piped, terminal

    def __call__(
        self,
        *argv: str,
        stdin: str = "",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return self.piped(*argv, stdin=stdin, env=env, cwd=cwd)


@pytest.fixture(params=["in-process", pytest.param("entry-point", marks=pytest.mark.slow)])
def entry(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Entry:
    """Run the command line as :func:`entry_point` (or :func:`on_a_terminal`) does, and
    return what it printed and its exit code.

    The default run calls ``main(argv)`` in this process under that environment, directory
    and stdin (a pipe's, not a terminal's), its output captured, and for a terminal the
    stream's ``isatty()`` true: the code the console script runs, without an interpreter
    start and its imports per call (~0.3 s each; they were most of this file's time).
    ``-m slow`` runs the same tests through the installed script, a process per call (on a
    pseudo-terminal for a terminal). What only a process of its own shows (exit status, a
    closed stdin or pipe, a real terminal, prompts, signals) keeps real-process tests in the
    default run: the ``test_subprocess_*`` tests, the highlighting, prompt and ``tail -f``
    tests below."""
    if request.param == "entry-point":
        return Entry(entry_point, on_a_terminal)

    def in_process(
        *argv: str,
        stdin: str = "",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        terminal: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        wanted = env or subprocess_env()
        with monkeypatch.context() as m:
            for name in set(os.environ) - set(wanted):
                m.delenv(name)
            for name, value in wanted.items():
                if os.environ.get(name) != value:
                    m.setenv(name, value)
            if cwd is not None:
                m.chdir(cwd)
            piped = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8")
            m.setattr(sys, "stdin", piped)  # a pipe's: text over bytes, not a terminal
            before = capsys.readouterr()  # what the test printed itself stays its own
            if terminal is not None:
                m.setattr(getattr(sys, terminal), "isatty", lambda: True)
            code = main(list(argv))
            out, err = capsys.readouterr()
        sys.stdout.write(before.out)
        sys.stderr.write(before.err)
        return subprocess.CompletedProcess([ENTRY, *argv], code, out, err)

    def on_a_fake_terminal(
        *argv: str, stream: str = "stderr", env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        done = in_process(*argv, env=env, terminal=stream)
        if stream == "stderr":
            return done.returncode, done.stderr, done.stdout
        return done.returncode, done.stdout, done.stderr

    return Entry(in_process, on_a_fake_terminal)


def on_a_terminal(
    *argv: str, stream: str = "stderr", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the entry point with ``stream`` on a pseudo-terminal; return (exit code, what the
    terminal showed, the other stream)."""
    master, slave = os.openpty()
    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    pipes[stream] = slave
    with subprocess.Popen(
        [ENTRY, *argv], stdin=subprocess.DEVNULL, env=env or subprocess_env(), **pipes
    ) as proc:
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        other = proc.stderr if stream == "stdout" else proc.stdout
        assert other is not None
        rest = other.read()
        code = proc.wait(timeout=60)
    os.close(master)
    return code, shown.decode(errors="replace"), rest.decode()


def test_entry_point_usage_errors_never_echo_a_value(entry: Entry) -> None:
    """click's "Got unexpected extra argument (...)" and "No such command '...'" repeat
    what was typed: a secret typed in the wrong place must not come back."""
    for argv in (["cat", "x.log", "hunter2"], ["hunter2"], ["cat", "x.log", "a", "hunter2"]):
        done = entry(*argv)
        assert done.returncode == 2 and done.stdout == "", argv
        assert done.stderr.startswith("usage: conversation-codec") and "hunter2" not in done.stderr
        assert "error: " in done.stderr and "(value" in done.stderr, done.stderr
    done = entry("cat", "x.log", "--key-file", "a", "--plain")
    assert done.returncode == 2 and "--plain not allowed with --key-file" in done.stderr


def test_entry_point_exit_codes_by_exception_class(tmp_path: Path, entry: Entry) -> None:
    """0 ok, 1 error, 2 usage, 3 damage only, 4 a file of the wrong kind."""
    foreign = tmp_path / "notes.log"
    foreign.write_text("hello\n")
    done = entry("info", str(foreign))
    assert done.returncode == 4 and "not a conversation-codec log" in done.stderr
    damaged = damaged_log(tmp_path / "bad.log", KEY)
    done = entry("cat", str(damaged), env=subprocess_env(CONVERSATION_KEY=KEY))
    assert done.returncode == 3 and done.stderr.startswith("error: log is damaged")
    # A password log opened with nothing: PasswordRequiredError (by class, not by wording).
    with ConversationCodec(tmp_path / "pw.log", password="pw", durability="flush") as codec:
        codec.append({"role": "user"})
    done = entry("cat", str(tmp_path / "pw.log"))
    assert done.returncode == 1 and "protected by a password" in done.stderr
    assert "--password-env" in done.stderr and "password=" not in done.stderr
    assert entry("cat").returncode == 2 and entry("--version").returncode == 0


def test_entry_point_progress_bars_only_on_a_terminal(tmp_path: Path, entry: Entry) -> None:
    env = subprocess_env(CONVERSATION_KEY=KEY)
    store = ConversationStore(tmp_path / "a", encryption_key=KEY, durability="flush")
    for name in ("alice", "bob"):
        with store.open(name) as codec:
            codec.append({"role": "user", "content": name})
    code, shown, out = entry.terminal("copy", str(tmp_path / "a"), str(tmp_path / "b"), env=env)
    assert code == 0 and "copied 2 conversations" in out
    assert re.search(r"copying +\[#+\]  2/2", shown), shown
    logs = [str(store.path(name)) for name in ("alice", "bob")]
    code, shown, out = entry.terminal("verify", *logs, "--context", "x", env=env)
    assert "verifying" in shown and "2/2" in shown
    done = entry("copy", str(tmp_path / "a"), str(tmp_path / "c"), env=env)  # not a terminal
    assert done.returncode == 0 and done.stderr == ""
    log = write_log(tmp_path / "chat.log", KEY)
    code, shown, out = entry.terminal("compact", log, env=env)
    assert code == 0 and re.search(r"compacting +\[#+\]  4/4", shown) and "compacted" in out
    out_file = str(tmp_path / "chat.jsonl")
    code, shown, out = entry.terminal("export", log, "--out", out_file, env=env)
    assert code == 0 and re.search(r"exporting +\[#+\]  4/4", shown), shown
    code, shown, out = entry.terminal("reindex", log, env=env)
    assert code == 0 and re.search(r"indexing +\[#+\]  4/4", shown), shown
    done = entry("compact", log, env=env)
    assert done.returncode == 0 and done.stderr == ""  # piped: quiet


def test_entry_point_highlights_with_the_librarys_matcher(tmp_path: Path) -> None:
    log = write_log(tmp_path / "chat.log", None)
    code, shown, _ = on_a_terminal("search", log, '"is LATE"', stream="stdout")
    assert code == 0 and "order B77 \x1b[1mis late\x1b[0m." in shown
    code, shown, _ = on_a_terminal("search", log, r"B\d+", "--regex", stream="stdout")
    assert code == 0 and "order \x1b[1mB77\x1b[0m is late" in shown


# -- conventions (issue 17): -, --force, --json, grep's exit 1, CLI words ---------------------

PYTHONISM = re.compile(r"\b(legacy_key|encryption_key|password|context)=|conversation_codec\.")


def test_entry_point_dash_means_stdin_and_stdout(tmp_path: Path, entry: Entry) -> None:
    env = subprocess_env(CONVERSATION_KEY=KEY)
    lines = "".join(json.dumps(m) + "\n" for m in CHAT[:2])
    done = entry("append", "chat.log", "-", stdin=lines, env=env, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "0\n1\n"), done.stderr
    (tmp_path / "more.jsonl").write_text(json.dumps(CHAT[2]) + "\n")
    done = entry("append", "chat.log", "more.jsonl", env=env, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "2\n"), done.stderr
    done = entry("import", "chat.log", "-", stdin=json.dumps(CHAT[3]) + "\n", env=env, cwd=tmp_path)
    assert done.returncode == 0 and "1 added" in done.stdout, done.stderr
    done = entry("export", "chat.log", "--out", "-", "--no-timestamps", env=env, cwd=tmp_path)
    assert done.returncode == 0 and objects(done.stdout) == CHAT  # the export itself
    assert "exported 4 messages to stdout" in done.stderr  # the summary stays off stdout
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("chat.log")) == [
        "more.jsonl"
    ]  # no file named "-"


def test_entry_point_exports_a_message_with_its_own_timestamp_key(
    tmp_path: Path, entry: Entry
) -> None:
    """What append takes, export writes and import reads back, with or without record
    times; a refused export writes nothing to stdout, and its error names CLI flags."""
    env = subprocess_env(CONVERSATION_KEY=KEY)
    own = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "hi", "timestamp": "2025-01-01T00:00:00Z"},
    ]
    lines = "".join(json.dumps(m) + "\n" for m in own)
    assert entry("append", "chat.log", "-", stdin=lines, env=env, cwd=tmp_path).returncode == 0
    for flags in ([], ["--no-timestamps"]):
        done = entry("export", "chat.log", "--out", "-", *flags, env=env, cwd=tmp_path)
        assert done.returncode == 0 and "exported 2 messages" in done.stderr, done.stderr
        name = f"copy{len(flags)}.log"
        back = entry("import", name, "-", stdin=done.stdout, env=env, cwd=tmp_path)
        assert back.returncode == 0, back.stderr
        with ConversationCodec(tmp_path / name, encryption_key=KEY) as copy:
            assert copy.load() == own
    shaped = json.dumps({"type": "human", "data": {"content": "hi"}}) + "\n"
    assert entry("append", "lc.log", "-", stdin=shaped, env=env, cwd=tmp_path).returncode == 0
    for fmt in ("jsonl", "json"):
        done = entry(
            "export",
            "lc.log",
            "--out",
            "-",
            "--no-timestamps",
            "--format",
            fmt,
            env=env,
            cwd=tmp_path,
        )
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        assert "--no-timestamps" in done.stderr and "with_timestamps" not in done.stderr
        assert not PYTHONISM.search(done.stderr), done.stderr


def test_entry_point_export_never_overwrites_without_force(tmp_path: Path, entry: Entry) -> None:
    log = write_log(tmp_path / "chat.log", None)
    target = tmp_path / "out.jsonl"
    target.write_text("precious\n")
    done = entry("export", log, "--out", str(target))
    assert done.returncode == 1 and "--force" in done.stderr
    assert target.read_text() == "precious\n"
    done = entry("export", log, "--out", str(target), "--force")
    assert done.returncode == 0 and len(target.read_text().splitlines()) == 4


def test_entry_point_json_on_every_command_that_prints_data(tmp_path: Path, entry: Entry) -> None:
    done = entry("keygen", "--json")
    assert done.returncode == 0 and KEY_LIKE.fullmatch(json.loads(done.stdout)["key"])
    done = entry("keygen", "--out", str(tmp_path / "k"), "--json")
    assert json.loads(done.stdout) == {"path": str(tmp_path / "k"), "mode": "0600"}
    env = subprocess_env(CONVERSATION_KEY=KEY)
    log = str(tmp_path / "chat.log")
    done = entry("append", log, "--json", stdin=json.dumps(CHAT[:3]), env=env)
    assert json.loads(done.stdout) == {"path": log, "seqs": [0, 1, 2]}
    done = entry("export", log, "--out", str(tmp_path / "x.jsonl"), "--json", env=env)
    summary = {"path": str(tmp_path / "x.jsonl"), "messages": 3, "format": "jsonl"}
    assert json.loads(done.stdout) == summary
    # tail: readable lines on a terminal, JSON lines with --json (and whenever piped).
    code, shown, _ = entry.terminal("tail", log, "-n", "2", stream="stdout", env=env)
    assert code == 0 and re.search(r"#1  assistant  Your REFUND", shown) and "{" not in shown
    code, shown, _ = entry.terminal("tail", log, "-n", "2", "--json", stream="stdout", env=env)
    assert code == 0 and objects(shown.replace("\r\n", "\n")) == CHAT[1:3]
    assert objects(entry("tail", log, "-n", "2", env=env).stdout) == CHAT[1:3]


def test_entry_point_search_exits_1_when_nothing_matches(tmp_path: Path, entry: Entry) -> None:
    log = write_log(tmp_path / "chat.log", None)
    assert entry("search", log, "refund").returncode == 0
    done = entry("search", log, "no-such-word")
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "")
    root = tmp_path / "store"
    with ConversationStore(root).open("alice") as codec:
        codec.append({"role": "user", "content": "refund"})
    assert entry("search", str(root), "refund").returncode == 0
    assert entry("search", str(root), "no-such-word").returncode == 1


def test_entry_point_messages_speak_cli_not_python(tmp_path: Path, entry: Entry) -> None:
    foreign = tmp_path / "notes.log"
    foreign.write_text("hello\n")
    legacy = tmp_path / "old.enc"
    legacy.write_bytes(Fernet(LEGACY_KEY).encrypt(b'{"role": "user"}\n'))
    env = subprocess_env(CONVERSATION_KEY=KEY)
    runs = [
        entry("info", str(foreign)),
        entry("migrate", str(legacy), "--out", str(tmp_path / "o"), env=env),
        entry("migrate", str(legacy), "--out", str(tmp_path / "o"), "--json", env=env),
        entry("import", str(tmp_path / "chat.log"), str(legacy), env=env),
    ]
    for done in runs:
        assert done.returncode != 0 and not PYTHONISM.search(done.stdout + done.stderr), done
    assert "conversation-codec migrate" in runs[0].stderr
    assert "--legacy-key-env" in runs[1].stdout and "--legacy-key-env" in runs[3].stderr


# -- secrets: files, prompts, the legacy source's own options (issue 17) ---------------------


def typing_at_a_terminal(argv: list[str], typed: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the entry point on a pseudo-terminal (its controlling one, as getpass wants) and
    type each of ``typed`` after the next prompt; return (exit code, what it showed)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.execve(ENTRY, [ENTRY, *argv], env)
    shown, start = b"", 0
    try:
        for text in typed:
            while not shown[start:].rstrip().endswith(b":"):  # the next prompt
                assert select.select([fd], [], [], 30)[0], shown  # never hang the suite
                shown += os.read(fd, 1024)
            start = len(shown)
            os.write(fd, text.encode() + b"\n")
        while select.select([fd], [], [], 30)[0]:  # a child waiting for more input: stop
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child is gone
                break
            if not chunk:
                break
            shown += chunk
    finally:
        deadline = time.monotonic() + 10
        done, status = os.waitpid(pid, os.WNOHANG)
        while done == 0 and time.monotonic() < deadline:  # closed the pty, exiting
            time.sleep(0.01)
            done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:  # still asking for input: the test fails below, not hangs
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_entry_point_password_prompt_asks_twice_to_create(tmp_path: Path) -> None:
    env = subprocess_env()
    log, messages_file = tmp_path / "chat.log", tmp_path / "m.json"
    messages_file.write_text(json.dumps(CHAT[:2]))
    argv = ["append", str(log), str(messages_file), "--password-prompt"]
    code, shown = typing_at_a_terminal(argv, ["horse battery", "horse batterz"], env)
    assert code == 1 and "differ" in shown and not log.exists()
    code, shown = typing_at_a_terminal(argv, ["horse battery", "horse battery"], env)
    assert code == 0 and "Password (again):" in shown and "horse" not in shown, shown
    with ConversationCodec(log, password="horse battery") as codec:
        assert codec.load() == CHAT[:2]
    # An existing log: asked once.
    code, shown = typing_at_a_terminal(
        ["tail", str(log), "--password-prompt"], ["horse battery"], env
    )
    assert code == 0 and "again" not in shown and "REFUND" in shown
    other = tmp_path / "other.log"
    with ConversationCodec(other, password="horse battery", durability="flush") as codec:
        codec.append(CHAT[0])
    argv = ["verify", str(log), str(other), "--password-prompt"]
    code, shown = typing_at_a_terminal(argv, ["horse battery"], env)  # asked once for both
    assert code == 0 and shown.count("Password") == 1 and shown.count(": ok") == 2, shown


def test_entry_point_password_files(tmp_path: Path, entry: Entry) -> None:
    pw, new_pw = tmp_path / "pw", tmp_path / "new-pw"
    pw.write_text("horse battery\n")
    new_pw.write_text("correct staple\n")
    for file in (pw, new_pw):
        file.chmod(0o600)
    log = str(tmp_path / "chat.log")
    done = entry("append", log, "--password-file", str(pw), stdin=json.dumps(CHAT[0]))
    assert done.returncode == 0, done.stderr
    assert objects(entry("cat", log, "--password-file", str(pw)).stdout) == [CHAT[0]]
    done = entry("passwd", log, "--password-file", str(pw), "--new-password-file", str(new_pw))
    assert done.returncode == 0 and "changed the password" in done.stdout
    with ConversationCodec(log, password="correct staple") as codec:
        assert codec.load() == [CHAT[0]]
    pw.chmod(0o644)  # readable by others: refused, as key files are
    done = entry("cat", log, "--password-file", str(pw))
    assert done.returncode == 1 and "chmod 600" in done.stderr and "horse" not in done.stderr
    done = entry("cat", log, "--password-file", str(pw), "--password-env", "X")
    assert done.returncode == 2 and "not allowed with" in done.stderr
    done = entry("passwd", log, "--password-file", str(new_pw))
    assert done.returncode == 2 and "--new-password-env" in done.stderr


def test_entry_point_migrate_legacy_secrets_into_a_password_log(
    tmp_path: Path, entry: Entry
) -> None:
    """The legacy source's secret has its own options; --password-* means the new log's."""
    legacy = tmp_path / "hist" / "old.enc"
    legacy.parent.mkdir()
    legacy.write_bytes(Fernet(LEGACY_KEY).encrypt(b'{"role": "user", "content": "hi"}\n'))
    legacy_key = tmp_path / "legacy.key"
    legacy_key.write_text(LEGACY_KEY + "\n")
    legacy_key.chmod(0o600)
    env = subprocess_env(NEW_PW="horse battery")
    out = tmp_path / "logs"
    argv = ["migrate", str(legacy.parent), "--out", str(out), "--password-env", "NEW_PW"]
    done = entry(*argv, env=env)  # no legacy key: refused, nothing written
    assert (
        done.returncode == 1
        and "--legacy-key-env" in done.stdout
        and not PYTHONISM.search(done.stdout)
    )
    done = entry(*argv, "--legacy-key-file", str(legacy_key), env=env)
    assert done.returncode == 0 and "1 converted" in done.stdout, done.stdout + done.stderr
    assert "protected by the password from --password-env NEW_PW" in done.stdout
    with ConversationStore(out, password="horse battery").open("old") as codec:  # a store
        assert codec.load() == [{"role": "user", "content": "hi"}]
    done = entry("import", str(tmp_path / "x.log"), str(legacy), "--legacy-key-file",
                 str(legacy_key), "--password-env", "NEW_PW", env=env)  # fmt: skip
    assert done.returncode == 0 and "1 added" in done.stdout, done.stderr


# -- pop, prune, delete, tail -f (issue 17) --------------------------------------------------


def test_entry_point_pop_removes_and_prints_the_last_message(tmp_path: Path, entry: Entry) -> None:
    log = write_log(tmp_path / "chat.log", None)
    done = entry("pop", log)
    assert done.returncode == 0 and objects(done.stdout) == [CHAT[-1]]
    with ConversationCodec(log) as codec:
        assert codec.load() == CHAT[:-1]
    for _ in range(3):
        assert entry("pop", log).returncode == 0
    done = entry("pop", log)
    assert done.returncode == 1 and "holds no message" in done.stderr and done.stdout == ""


def test_entry_point_prune_a_log_and_a_store_root(tmp_path: Path, entry: Entry) -> None:
    env = subprocess_env(CONVERSATION_KEY=KEY)
    log = write_log(tmp_path / "chat.log", KEY)  # Oct 1, 2, 3, 4 (2026)
    done = entry("prune", log, "--before", "2026-10-03", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "path": log, "removed": 2, "before": "2026-10-03T00:00:00.000000Z"
    }  # fmt: skip
    with ConversationCodec(log, encryption_key=KEY) as codec:
        assert codec.load() == CHAT[2:]
    assert entry("prune", log, env=env).returncode == 2  # --before or --older-than
    root = tmp_path / "store"
    store = ConversationStore(root, encryption_key=KEY, durability="flush")
    with store.open("old") as codec:
        codec.append(CHAT[0], timestamp=datetime.now(timezone.utc) - 40 * DAY)
    with store.open("new") as codec:
        codec.append(CHAT[1])
    done = entry("prune", str(root), "--older-than", "30d", env=env)
    assert (
        done.returncode == 0 and "deleted 1 conversations" in done.stdout and "old" in done.stdout
    )
    assert store.ids() == ["new"]


def test_entry_point_delete_one_conversation_of_a_store(tmp_path: Path, entry: Entry) -> None:
    env = subprocess_env(CONVERSATION_KEY=KEY)
    root = tmp_path / "store"
    store = ConversationStore(root, encryption_key=KEY, durability="flush")
    for name in ("alice", "bob"):
        with store.open(name) as codec:
            codec.append({"role": "user", "content": name})
    done = entry("delete", str(root), "alice", env=env)
    assert done.returncode == 0 and "deleted alice" in done.stdout
    assert store.ids() == ["bob"]
    done = entry("delete", str(root), "alice", env=env)
    assert done.returncode == 1 and "no such conversation" in done.stderr


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@contextlib.contextmanager
def _follow(log: str) -> Iterator[subprocess.Popen[str]]:
    """``conversation-codec tail LOG -n 1 -f`` as a real process, its output piped; killed
    on the way out if a failed assertion left it running.

    The child gets Ctrl-C's default action back: a process started in the background by a
    non-interactive shell (``pytest &``) ignores SIGINT, and its children inherit that, so
    the follow would never see the Ctrl-C the tests send."""
    proc = subprocess.Popen(
        [ENTRY, "tail", log, "-n", "1", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(CONVERSATION_KEY=KEY),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    with proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc for CPU time")
def test_entry_point_tail_follow_sees_other_writers_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    log = write_log(tmp_path / "chat.log", KEY)
    with _follow(log) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline()) == CHAT[-1]  # the last one, then waits
        idle_from = _cpu_seconds(proc.pid)
        time.sleep(1.0)
        assert _cpu_seconds(proc.pid) - idle_from < 0.3  # polls with back-off: no busy loop
        with ConversationCodec(log, encryption_key=KEY) as codec:  # another writer
            codec.extend([{"role": "user", "content": f"new {i}"} for i in range(3)])
        got = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert got == [{"role": "user", "content": f"new {i}"} for i in range(3)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0  # Ctrl-C ends a follow: not an error
        assert proc.stderr.read() == ""


def _line_reader(stream: Any) -> Callable[[float], str]:
    """Read lines of ``stream`` in a thread: ``next_line(timeout)`` ("" when none came)."""
    import queue
    import threading

    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()

    def next_line(timeout: float) -> str:
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            return ""

    return next_line


def test_entry_point_tail_follow_resumes_after_another_process_rewrites_the_log(
    tmp_path: Path,
) -> None:
    """A pop then an append leave the count as it was; a clear, a prune or a replace move
    or drop what was printed: the follow prints each message new after the change, once,
    and says on stderr that the history was rewritten (from review)."""
    log = write_log(tmp_path / "chat.log", KEY)
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    with _follow(log) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        next_line, errors = _line_reader(proc.stdout), _line_reader(proc.stderr)
        try:
            assert json.loads(next_line(30)) == CHAT[-1]
            with ConversationCodec(log, encryption_key=KEY) as codec:  # another writer
                codec.append(user("n1"))
                assert json.loads(next_line(30)) == user("n1")
                codec.pop()
                codec.append(user("after-pop"))  # count as before: no append to wake on
                assert json.loads(next_line(30)) == user("after-pop")
                assert "rewritten" in errors(30)
                codec.prune(OCT1 + 2 * DAY)  # the last printed moves from #4 to #2
                codec.append(user("after-prune"))
                assert json.loads(next_line(30)) == user("after-prune")
                assert "history before #4 changed (now #2)" in errors(30)
                codec.replace([user("other history")])  # stamped now: after what was printed
                assert json.loads(next_line(30)) == user("other history")
                assert "rewritten" in errors(30)
                codec.append(user("after-replace"))
                assert json.loads(next_line(30)) == user("after-replace")
                codec.clear()
                codec.append(user("after-clear"))
                assert json.loads(next_line(30)) == user("after-clear")
                assert "#1, printed last, is no longer in the log" in errors(30)
            assert next_line(1.2) == ""  # nothing printed twice
            assert errors(0.1) == ""  # one warning a rewrite
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0


# -- stores without keys, plaintext logs under a key variable (issue 17) ---------------------


def test_entry_point_ls_works_without_any_key(tmp_path: Path, entry: Entry) -> None:
    """A store with per-user keys can only be listed keyless: ids, counts, times and sizes
    come from headers and indexes, marked unverified (the index is an unauthenticated
    cache), and a log whose index lags says so."""
    root = tmp_path / "store"
    keys = {"alice": KEY, "bob": OTHER_KEY}
    store = ConversationStore(root, key_fn=keys.__getitem__, durability="flush")
    for n, name in enumerate(keys):
        with store.open(name) as codec:
            codec.extend(CHAT[: n + 2], timestamps=[OCT1 + i * DAY for i in range(n + 2)])
    with ConversationStore(root, durability="flush").open("carol") as codec:  # plaintext
        codec.append(CHAT[0], timestamp=OCT1)
    done = entry("ls", str(root))
    assert done.returncode == 0, done.stderr
    head, alice, bob, carol = done.stdout.splitlines()
    assert head.split() == ["ID", "MESSAGES", "FIRST", "LAST", "BYTES", "STATUS"]
    assert alice.split()[:4] == ["alice", "2", "2026-10-01", "10:00:00"]
    assert alice.endswith("unverified (no key)") and bob.split()[:2] == ["bob", "3"]
    assert carol.split()[:2] == ["carol", "1"] and carol.endswith(" ok")
    assert "unverified" in done.stderr and "index" in done.stderr
    listed = objects(entry("ls", str(root), "--json").stdout)
    assert [(c["message_count"], c["status"]) for c in listed] == [
        (2, "unverified"), (3, "unverified"), (1, "ok")
    ]  # fmt: skip
    idx = Path(index_path(store.path("bob")))
    idx.write_bytes(idx.read_bytes()[: 48 + 16])  # the index lags (as after a crash)
    bob = entry("ls", str(root)).stdout.splitlines()[2]
    assert bob.split()[:2] == ["bob", "1+"]  # at least 1, maybe more: not a false count
    # With a key, rows are verified; the other user's log is then a DecryptionError.
    done = entry("ls", str(root), "--json", env=subprocess_env(CONVERSATION_KEY=KEY))
    assert [c["status"] for c in objects(done.stdout)] == [
        "ok",
        "DecryptionError",
        "NotEncryptedError",
    ]
    assert done.returncode == 1


def test_entry_point_plaintext_log_under_a_key_variable_is_read_with_a_warning(
    tmp_path: Path, entry: Entry
) -> None:
    log = write_log(tmp_path / "plain.log", None)
    env = subprocess_env(CONVERSATION_KEY=KEY)
    for argv in (["cat", log], ["tail", log], ["info", log], ["search", log, "refund"]):
        done = entry(*argv, env=env)
        assert done.returncode == 0 and done.stdout, (argv, done.stderr)
        assert done.stderr.startswith(f"warning: {log} is a plaintext log"), done.stderr
        assert "$CONVERSATION_KEY" in done.stderr and KEY not in done.stderr
    done = entry("append", log, stdin='{"role": "user"}', env=env)  # writing: still refused
    assert done.returncode == 1 and "plaintext" in done.stderr


def test_entry_point_reindex_turns_the_keyword_index_on(tmp_path: Path, entry: Entry) -> None:
    log = tmp_path / "chat.log"
    with ConversationCodec(log, encryption_key=KEY) as codec:
        codec.extend([{"role": "user", "content": f"parcel {i}"} for i in range(40)])
    env = subprocess_env(CONVERSATION_KEY=KEY)
    done = entry("reindex", str(log), "--json", env=env)
    assert done.returncode == 0 and '"messages": 40' in done.stdout.replace('":', '": '), (
        done.stderr
    )
    assert (tmp_path / "chat.log.kwi").is_file()
    found = entry("search", str(log), "parcel 39", "--json", env=env)
    assert found.returncode == 0 and '"seq": 39' in found.stdout.replace('":', '": ')
    plain = tmp_path / "plain.log"
    with ConversationCodec(plain) as codec:
        codec.append({"role": "user", "content": "hi"})
    refused = entry("reindex", str(plain), env=subprocess_env())
    assert refused.returncode == 1 and "encrypted" in refused.stderr + refused.stdout


def test_verify_of_a_store_root_takes_its_password(
    tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conversation_codec import ConversationStore

    store = ConversationStore(tmp_path / "s", password="hunter2 but longer")
    for cid in ("a", "b"):
        with store.open(cid) as codec:
            codec.append({"role": "user", "content": cid})
    monkeypatch.setenv("CC_TEST_PW", "hunter2 but longer")
    code, out, err = run("verify", str(tmp_path / "s"), "--password-env", "CC_TEST_PW")
    assert code == 0, err
    assert out.count(": ok, 1 intact record") == 2


@pytest.mark.parametrize("command", ["append", "import"])
def test_a_closed_stdin_is_an_error_line_not_a_traceback(tmp_path: Path, command: str) -> None:
    """``append LOG`` / ``import LOG -`` started with no stdin at all (a service, ``<&-``)."""
    log = str(tmp_path / "c.log")
    argv = [sys.executable, "-m", "conversation_codec", command, log, "--plain"]
    argv += ["-"] if command == "import" else []
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        env=subprocess_env(), preexec_fn=lambda: os.close(0),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "stdin is closed" in done.stderr and "Traceback" not in done.stderr
    assert not os.path.exists(log)


def test_append_and_cat_on_a_packed_conversations_path(run: Run, tmp_path: Path) -> None:
    """Reads of a packed conversation's path stay as they were, and an append keeps its
    history (it was hidden for good: the CLI opened the path alone; from review)."""
    root = tmp_path / "st"
    store = ConversationStore(root, encryption_key=KEY)
    with store.open("a") as codec:
        codec.append({"role": "user", "content": "hello a"})
    assert store.pack().packed == ["a"]
    log = str(root / "a.log")
    code, out, err = run("cat", log, "--context", "a", key=KEY)
    assert (code, err) == (0, "") and "hello a" in out
    assert (
        run("append", log, "--context", "a", stdin='{"role":"user","content":"second"}', key=KEY)[0]
        == 0
    )
    with ConversationStore(root, encryption_key=KEY).open("a") as codec:
        assert [m["content"] for m in codec.load() or []] == ["hello a", "second"]


@pytest.mark.parametrize("json_out", [False, True], ids=["table", "json"])
def test_migrate_never_shows_a_key_given_where_a_path_belongs(
    run: Run, tmp_path: Path, json_out: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``migrate $KEY`` (a key pasted as the file): its table and --json name the file as
    "(a key-shaped value, not shown)", as every other command's errors do (from review)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run("migrate", KEY, *(["--json"] if json_out else []), key=KEY)
    assert code == 1
    assert KEY not in out + err and "key-shaped value, not shown" in out + err

"""The command line: in-process through ``main(argv)``, plus real ``python -m`` subprocesses."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import KEY, OTHER_KEY, messages
from conversation_codec import ConversationCodec, KeyRequiredError
from conversation_codec.cli import main

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
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code, out, err = run("demo")
    assert code == 0 and err == ""
    assert "10 messages" in out and "Last 4 messages" in out
    assert "DecryptionError" in out and "bytes on disk" in out
    assert len(out.splitlines()) < 40
    assert not KEY_LIKE.search(out + err)
    assert list(tmp_path.iterdir()) == []  # the temp dir is gone


def test_demo_dir_keeps_an_encrypted_log_and_refuses_to_reuse_it(run: Run, tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    code, out, _ = run("demo", "--dir", str(folder), "--durability", "flush")
    assert code == 0 and "Kept" in out
    log = folder / "support-chat.log"
    with pytest.raises(KeyRequiredError):
        ConversationCodec(log)
    code, _, err = run("demo", "--dir", str(folder))
    assert code == 1 and "already exists" in err


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["encrypted", "plaintext"])
def test_append_cat_tail_info_round_trip(run: Run, tmp_path: Path, mode: str) -> None:
    key = KEY if mode == "encrypted" else None
    log = str(tmp_path / "chat.log")
    history = messages(7)
    one, array, lines = history[0], history[1:4], history[4:]

    assert run("append", log, stdin=json.dumps(one), key=key)[:2] == (0, "0\n")
    assert run("append", log, stdin=json.dumps(array), key=key)[:2] == (0, "1\n2\n3\n")
    jsonl_text = "\n".join(json.dumps(m) for m in lines) + "\n\n"
    code, out, _ = run("append", log, "--durability", "flush", stdin=jsonl_text, key=key)
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
    log = str(tmp_path / "chat.log")
    assert run("append", log, "--key-file", str(key_file), stdin='{"n": 1}')[0] == 0
    monkeypatch.setenv("MY_KEY", KEY)
    code, out, err = run("cat", log, "--key-env", "MY_KEY")
    assert (code, out) == (0, '{"n":1}\n')
    assert KEY not in out + err


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


def test_key_for_a_plaintext_log_exits_1(run: Run, tmp_path: Path) -> None:
    log = str(tmp_path / "plain.log")
    assert run("append", log, stdin='{"n": 1}')[0] == 0
    code, _, err = run("tail", log, key=KEY)
    assert code == 1 and "plaintext" in err and KEY not in err


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


def test_a_foreign_file_exits_3(run: Run, tmp_path: Path) -> None:
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello\n")
    code, _, err = run("info", str(foreign))
    assert code == 3 and "not a conversation-codec log" in err


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
    code, out, err = run("append", str(log), stdin=stdin)
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
    ],
)
def test_usage_errors_exit_2(run: Run, argv: list[str]) -> None:
    code, out, err = run(*argv)
    assert code == 2 and out == "" and "usage:" in err


@pytest.mark.parametrize("command", ["keygen", "demo", "info", "cat", "tail", "append"])
def test_every_help_has_an_example(run: Run, command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0 and "Example:" in out and "conversation-codec " + command in out


def test_top_level_help_and_version(run: Run) -> None:
    code, out, _ = run("--help")
    assert code == 0 and "Example:" in out and "keygen" in out
    code, out, _ = run("--version")
    assert code == 0 and out.startswith("conversation-codec ")


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

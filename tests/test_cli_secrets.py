"""No CLI error repeats a secret typed in the wrong place (from the security review).

README: "Usage errors never repeat the value given (it may be a secret typed in the wrong
place), and no error prints a key-shaped value". The rule, applied to everything the CLI
prints on stderr and to the failure objects of ``--json``:

- a key-shaped value is never shown: 43 urlsafe-base64 characters (the whole 32-byte key,
  with or without its ``=``), also inside a longer word (``--KEY``);
- a variable name is shown only when it has the usual shape (``[A-Z_][A-Z0-9_]*``), else
  "the variable given": a password given to ``--password-env`` passes the NAME check;
- a path that cannot be opened is shown only when it looks like a path (it holds ``/`` or
  ``.``, or exists), else "(the value given)": a password given as a file.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec
from conversation_codec.cli import main
from conversation_codec.store import ConversationStore

from conftest import KEY

# A key with no "-" or "_" and a letter first: its 43 characters are a valid variable NAME
# (about 1 key in 5 is), so --key-env takes it. Fixed, not generated (test ids stay stable).
ALNUM_KEY = "Voa2ZhKJEeI365YWndh74kTipZVVXueivVOk90EkG3w="
K43 = ALNUM_KEY[:-1]  # pasted without its "=": still the whole key
PW = "Passphrase777secret"  # a password shaped like a variable name
PHRASE = "correct horse battery"  # the README's example password
LOG_PW = "pw-of-the-log"
ENTRY = str(Path(sys.executable).with_name("conversation-codec"))  # the console script

Run = Callable[..., tuple[int, str, str]]


def leaked(secret: str, text: str) -> bool:
    """Whether ``text`` shows ``secret`` or any 16 characters of it in a row."""
    return any(secret[i : i + 16] in text for i in range(max(1, len(secret) - 15)))


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encrypted log, a password log and a store root holding one conversation (built
    once: no case below writes to them)."""
    folder = tmp_path_factory.mktemp("site")
    with ConversationCodec(folder / "chat.log", encryption_key=KEY, durability="flush") as c:
        c.append({"role": "user", "content": "hi"})
    with ConversationCodec(folder / "pw.log", password=LOG_PW, durability="flush") as c:
        c.append({"role": "user", "content": "hi"})
    store = ConversationStore(folder / "root", encryption_key=KEY, durability="flush")
    with store.open("alice") as c:
        c.append({"role": "user", "content": "hi"})
    return folder


@pytest.fixture
def site(logs: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``logs`` as the working directory, the key in $CONVERSATION_KEY, the log's password
    in $PW_VAR."""
    monkeypatch.chdir(logs)
    monkeypatch.setenv("CONVERSATION_KEY", KEY)
    monkeypatch.setenv("PW_VAR", LOG_PW)
    return logs


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run ``main(argv)`` in-process (stdin empty); return (code, stdout, stderr)."""

    def go(*argv: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return go


MISPLACED = {
    # A password where a variable NAME belongs (it passes the NAME check).
    "pw-as-password-env": (["cat", "pw.log", "--password-env", PW], PW),
    "pw-as-new-password-env": (
        ["passwd", "pw.log", "--password-env", "PW_VAR", "--new-password-env", PW],
        PW,
    ),
    "pw-as-legacy-password-env": (["migrate", "chat.log", "--legacy-password-env", PW], PW),
    "pw-as-to-key-env": (["copy", "root", "dst", "--to-key-env", PW], PW),
    "pw-as-new-key-env": (["rekey", "chat.log", "--new-key-env", PW], PW),
    # A password where a file belongs.
    "pw-as-password-file": (["cat", "pw.log", "--password-file", PHRASE], PHRASE),
    "pw-as-password-file-word": (["cat", "pw.log", "--password-file", PW], PW),
    "pw-as-new-password-file": (
        ["passwd", "pw.log", "--password-env", "PW_VAR", "--new-password-file", PHRASE],
        PHRASE,
    ),
    "pw-as-legacy-password-file": (
        ["migrate", "chat.log", "--legacy-password-file", PHRASE],
        PHRASE,
    ),
    "pw-as-key-file": (["cat", "chat.log", "--key-file", PHRASE], PHRASE),
    "pw-as-append-file": (["append", "pw.log", PHRASE, "--password-env", "PW_VAR"], PHRASE),
    "pw-as-import-source": (["import", "chat.log", PHRASE], PHRASE),
    "pw-as-log": (["cat", PW], PW),
    # A key without its "=" (43 characters: still the whole key).
    "k43-as-key-env": (["cat", "chat.log", "--key-env", K43], K43),
    "k43-as-key-file": (["cat", "chat.log", "--key-file", K43], K43),
    "k43-as-new-key-file": (["rekey", "chat.log", "--new-key-file", K43], K43),
    "k43-as-legacy-key-file": (["migrate", "chat.log", "--legacy-key-file", K43], K43),
    "k43-as-append-file": (["append", "chat.log", K43], K43),
    "k43-as-import-source": (["import", "chat.log", K43], K43),
    "k43-as-log": (["cat", K43], K43),
    "k43-as-verify-path": (["verify", K43], K43),
    "k43-as-search-root": (["search", K43, "x"], K43),
    "k43-as-delete-id": (["delete", "root", K43], K43),
    "k43-as-copy-id": (["copy", "root", "dst", K43], K43),
    "k43-as-copy-id-json": (["copy", "root", "dst", K43, "--json"], K43),
    "k43-in-export-out": (["export", "chat.log", "--out", "nodir/" + K43], K43),
    "k43-in-keygen-out": (["keygen", "--out", "nodir/" + K43], K43),
    "k43-as-option": (["cat", "chat.log", "--" + K43], K43),
    # The whole key.
    "key-as-copy-id": (["copy", "root", "dst", ALNUM_KEY], ALNUM_KEY),
    "key-as-copy-id-json": (["copy", "root", "dst", ALNUM_KEY, "--json"], ALNUM_KEY),
    "key-as-option": (["cat", "chat.log", "--" + ALNUM_KEY], ALNUM_KEY),
    "key-as-delete-id": (["delete", "root", ALNUM_KEY], ALNUM_KEY),
}


@pytest.mark.parametrize("case", list(MISPLACED))
def test_no_error_shows_a_secret_typed_in_the_wrong_place(run: Run, site: Path, case: str) -> None:
    argv, secret = MISPLACED[case]
    code, out, err = run(*argv)
    assert code != 0 and "Traceback" not in out + err, (out, err)
    assert "error" in (out + err).lower()  # the case fails for the reason the test means
    assert not leaked(secret, out + err), (out, err)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_random_keys_typed_in_the_wrong_place_are_never_shown(
    run: Run, site: Path, seed: int
) -> None:
    """The key cases above with random keys (any of "-", "_", a digit first), whole and
    without their "=", in every place of the matrix."""
    rng = random.Random(seed)
    for _ in range(4):
        key = base64.urlsafe_b64encode(rng.randbytes(32)).decode()
        for argv, secret in MISPLACED.values():
            if secret not in (ALNUM_KEY, K43):
                continue
            for given in (key, key[:-1]):
                code, out, err = run(*(a.replace(secret, given) for a in argv))
                assert code != 0 and "Traceback" not in out + err, (out, err)
                assert not leaked(given[:43], out + err), (argv[0], out, err)


def test_a_copy_id_shaped_as_a_key_is_hidden_in_the_json_failure_object(
    run: Run, site: Path
) -> None:
    code, out, err = run("copy", "root", "dst", ALNUM_KEY, "--json")
    report = json.loads(out)
    assert code == 1 and err == ""
    assert len(report["failed"]) == 1 and not leaked(K43, json.dumps(report))
    (shown, why), *_ = report["failed"].items()
    assert "key-shaped value, not shown" in shown and "has no log in the source store" in why
    assert report["copied"] == [] and not (site / "dst" / f"{ALNUM_KEY}.log").exists()


def test_names_and_paths_of_the_usual_shape_are_still_shown(
    run: Run, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule hides only what does not look like a name or a path: the usual messages
    keep naming what to fix."""
    code, _, err = run("cat", "chat.log", "--key-env", "NO_SUCH_VAR")  # the README's example
    assert code == 1 and "put the key in $NO_SUCH_VAR" in err
    code, _, err = run("cat", "pw.log", "--password-env", "NO_SUCH_PW")
    assert code == 1 and err == "error: $NO_SUCH_PW is not set; it should hold the password\n"
    code, _, err = run("cat", "pw.log", "--password-file", "./missing.pw")
    assert code == 1 and "cannot read password file ./missing.pw: " in err
    code, _, err = run("append", "chat.log", "missing.jsonl")
    assert code == 1 and err == "error: missing.jsonl: No such file or directory\n"
    (site / "pwfile").write_text("not the password\n")
    (site / "pwfile").chmod(0o644)
    code, _, err = run("cat", "pw.log", "--password-file", "pwfile")  # exists: a path
    assert code == 1 and "chmod 600 pwfile" in err


def test_long_names_that_are_no_key_are_still_shown(run: Run, site: Path) -> None:
    """A key has upper and lower case letters: a long lower-case file name or a hex digest
    (43 characters or more) is shown."""
    name = "conversation-export-from-the-first-year-of-the-project-2026.jsonl"
    code, _, err = run("append", "chat.log", name)
    assert code == 1 and err == f"error: {name}: No such file or directory\n"
    digest = "0123456789abcdef" * 4
    code, _, err = run("append", "chat.log", f"{digest}.jsonl")
    assert code == 1 and err == f"error: {digest}.jsonl: No such file or directory\n"


def test_stored_messages_are_printed_as_stored(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redaction is for what the CLI says about a failure, never for data: a stored message
    with an "error" field holding a key-shaped text comes back as it was."""
    stored = {"role": "tool", "content": f"token {ALNUM_KEY}", "error": f"{ALNUM_KEY} refused"}
    with ConversationCodec(tmp_path / "t.log", durability="flush") as codec:
        codec.append(stored)
    for argv in (["cat", "t.log"], ["tail", "t.log", "--json"], ["pop", "t.log", "--plain"]):
        monkeypatch.chdir(tmp_path)
        code, out, err = run(*argv)
        assert (code, err) == (0, "") and json.loads(out) == stored, argv
    with ConversationCodec(tmp_path / "t.log", durability="flush") as codec:
        codec.append(stored)
    code, out, _ = run("search", "t.log", "token", "--json")
    assert code == 0 and json.loads(out)["message"] == stored


def test_other_names_and_paths_are_said_without_their_value(
    run: Run, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run("cat", "pw.log", "--password-env", "lower_case_var")
    assert code == 1 and "lower_case_var" not in err
    assert err == "error: the variable given is not set; it should hold the password\n"
    code, _, err = run("cat", "pw.log", "--password-file", "hunter2")
    assert code == 1 and "hunter2" not in err
    assert err == "error: cannot read password file (the value given): No such file or directory\n"
    monkeypatch.setenv("set_but_wrong", "hunter2")  # a variable that is set: not shown either
    code, _, err = run("cat", "pw.log", "--password-env", "set_but_wrong")
    assert code == 1 and "set_but_wrong" not in err and "wrong password" in err


def entry(*argv: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the installed ``conversation-codec`` script, as a user does."""
    return subprocess.run(
        [ENTRY, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


@pytest.mark.slow  # its five cases run in-process by default (MISPLACED above), and
# test_cli.py runs the real entry point: here five more interpreters (~1.5 s)
def test_entry_point_never_echoes_a_misplaced_password_or_key(site: Path) -> None:
    """Through the real entry point: a password as a NAME and as a FILE, a key as a copy id
    (printed twice before), with --json, and a key as an unknown option."""
    env = {**os.environ, "CONVERSATION_KEY": KEY, "PW_VAR": LOG_PW}
    for argv, secret in (
        (["cat", "pw.log", "--password-env", PW], PW),
        (["cat", "pw.log", "--password-file", PHRASE], PHRASE),
        (["copy", "root", "dst", ALNUM_KEY], ALNUM_KEY),
        (["copy", "root", "dst", K43, "--json"], K43),
        (["cat", "chat.log", "--" + ALNUM_KEY], ALNUM_KEY),
    ):
        done = entry(*argv, cwd=site, env=env)
        shown = done.stdout + done.stderr
        assert done.returncode in (1, 2) and "Traceback" not in shown, shown
        assert not leaked(secret, shown), (argv[0], shown)
        assert "not shown" in shown or "given" in shown, shown

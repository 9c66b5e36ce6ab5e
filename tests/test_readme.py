"""Every Python block in the README runs as written, in order, in one process, in an empty
directory (top-level ``await`` allowed, as in an asyncio REPL)."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks() -> None:
    assert len(python_blocks()) >= 4


def test_every_python_block_runs_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    codes = [
        compile(src, f"README.md python block {n}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        for n, src in enumerate(python_blocks(), 1)
    ]
    namespace: dict[str, Any] = {"__name__": "__readme__"}

    async def run_all() -> None:
        for code in codes:
            result = eval(code, namespace)
            if inspect.iscoroutine(result):
                await result

    asyncio.run(run_all())
    assert (tmp_path / "histories" / "user-42.log").exists()
    assert (tmp_path / "history.key").stat().st_mode & 0o077 == 0
    assert "skipped" not in capsys.readouterr().out


# The README's CLI session is output copied from a run (issue 17): replayed here, it must
# print the same, up to the run's times.
_TIMES = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d{6}Z)?")


def console_session() -> list[tuple[str, str]]:
    """The ``$ command`` lines of the README's console block, each with its output."""
    (block,) = re.findall(r"^```console\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
    steps: list[tuple[str, str]] = []
    for line in block.splitlines(keepends=True):
        if line.startswith("$ "):
            steps.append((line[2:].rstrip("\n"), ""))
        else:
            steps[-1] = (steps[-1][0], steps[-1][1] + line)
    return steps


def _replay_with_bash(steps: list[tuple[str, str]], tmp_path: Path) -> list[str]:
    """Each step's output (stdout and stderr as a terminal interleaves them), run by bash
    with the installed ``conversation-codec`` script on PATH."""
    import os
    import subprocess
    import sys

    marker = "=== next ==="
    script = "".join(f"{{ {cmd}; }} 2>&1\necho '{marker}'\n" for cmd, _ in steps)
    bin_dir = str(Path(sys.executable).parent)  # the installed conversation-codec script
    env = {k: v for k, v in os.environ.items() if k != "CONVERSATION_KEY"}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    outputs = done.stdout.split(marker + "\n")[:-1]
    assert len(outputs) == len(steps), done.stderr
    return outputs


def _replay_in_process(
    steps: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """The same, each ``conversation-codec`` run as ``main(argv)`` in this process (its
    stdout and stderr one stream, as ``2>&1`` makes them), and the few shell forms the
    session uses done here: ``;``, ``|`` from ``echo``/``printf '%s\\n'``, ``echo "exit $?"``,
    ``export VAR="$(cat FILE)"`` and ``env -u VAR``. Any other form fails the test (replay
    it with bash: ``-m slow`` does)."""
    import io
    import shlex
    import sys

    from conversation_codec.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVERSATION_KEY", raising=False)
    status = 0

    def simple(words: list[str], stdin: str) -> tuple[int, str]:
        if words[0] == "echo":
            return 0, " ".join(words[1:]).replace("$?", str(status)) + "\n"
        if words[0] == "printf" and words[1] == "%s\\n":
            return 0, "".join(word + "\n" for word in words[2:])
        if words[0] == "export" and len(words) == 2:
            name, _, value = words[1].partition("=")
            substituted = re.fullmatch(r"\$\(cat (\S+)\)", value)
            assert substituted, f"the replay knows no export of {value!r}"
            monkeypatch.setenv(name, Path(substituted[1]).read_text().rstrip("\n"))
            return 0, ""
        if words[:2] == ["env", "-u"]:
            with monkeypatch.context() as m:
                m.delenv(words[2], raising=False)
                return simple(words[3:], stdin)
        assert words[0] == "conversation-codec", f"the replay knows no command {words[0]!r}"
        shown = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
        with monkeypatch.context() as m:
            m.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()), "utf-8"))
            m.setattr(sys, "stdout", shown)
            m.setattr(sys, "stderr", shown)  # 2>&1: one stream, in the order written
            code = main(words[1:])
        return code, shown.buffer.getvalue().decode()  # type: ignore[attr-defined]

    outputs = []
    for cmd, _ in steps:
        lexer = shlex.shlex(cmd, posix=True, punctuation_chars=";|")
        lexer.whitespace_split = True
        tokens, printed = list(lexer), ""
        while tokens:
            end = tokens.index(";") if ";" in tokens else len(tokens)
            pipeline, tokens = tokens[:end], tokens[end + 1 :]
            stdin = ""
            while "|" in pipeline:
                cut = pipeline.index("|")
                status, stdin = simple(pipeline[:cut], stdin)
                pipeline = pipeline[cut + 1 :]
            status, text = simple(pipeline, stdin)
            printed += text
        outputs.append(printed)
    return outputs


@pytest.mark.parametrize("shell", ["in-process", pytest.param("bash", marks=pytest.mark.slow)])
def test_the_cli_session_in_the_readme_is_real_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shell: str
) -> None:
    """By default each command runs in this process (an interpreter per command cost ~0.3 s
    each); ``-m slow`` replays the session in bash through the installed script, and
    test_cli.py's real-process tests run that script in the default run."""
    steps = console_session()
    assert len(steps) >= 10
    if shell == "bash":
        outputs = _replay_with_bash(steps, tmp_path)
    else:
        outputs = _replay_in_process(steps, tmp_path, monkeypatch)
    for (cmd, shown), got in zip(steps, outputs, strict=True):
        assert _TIMES.sub("T", got) == _TIMES.sub("T", shown), cmd

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


def test_the_cli_session_in_the_readme_is_real_output(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    steps = console_session()
    assert len(steps) >= 10
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
    for (cmd, shown), got in zip(steps, outputs, strict=True):
        assert _TIMES.sub("T", got) == _TIMES.sub("T", shown), cmd

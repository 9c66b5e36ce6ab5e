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

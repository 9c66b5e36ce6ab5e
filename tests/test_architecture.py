"""The filesystem seam holds: outside ``_fsio.py`` no module calls the os functions that
change a file or make it durable (issue 13). Every such call goes through ``FileIO``, so
the power-loss and I/O-fault suites see it."""

from __future__ import annotations

import ast
from pathlib import Path

import conversation_codec

SRC = Path(conversation_codec.__file__).parent
SEAM = SRC / "_fsio.py"
WRITES = {
    "fdatasync", "fsync", "ftruncate", "link", "pwrite", "remove", "rename", "replace",
    "rmdir", "truncate", "unlink", "write",
}  # fmt: skip
EXEMPT_FUNCTIONS: set[str] = set()  # none: keygen --out calls keyfile.create_key_file()


def _os_write_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[str] = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "os"
            and node.func.attr in WRITES
            and function not in EXEMPT_FUNCTIONS
        ):
            found.append(f"{path.relative_to(SRC)}:{node.lineno} os.{node.func.attr}")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "")
    return found


def test_only_the_seam_writes_files() -> None:
    modules = [p for p in sorted(SRC.rglob("*.py")) if p != SEAM]
    assert len(modules) > 10
    calls = [call for path in modules for call in _os_write_calls(path)]
    assert calls == [], "write through conversation_codec._fsio (FileIO, atomic_write)"


def test_the_check_sees_a_call() -> None:
    assert _os_write_calls(SEAM), "the seam itself calls them: the check must find those"

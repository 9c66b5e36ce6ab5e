"""The architecture holds (issue 13), checked by parsing the source:

* the filesystem seam: outside ``_fsio.py`` no module calls the os functions that change a
  file or make it durable; every such call goes through ``FileIO``, so the power-loss and
  I/O-fault suites see it;
* tests use public seams only: no test touches a private attribute of a library object;
* no import cycle between the package's modules, function-level imports included;
* no module reads another module's private names (a shared name is public, in ``__all__``);
* no module over the size limit (the few that still are may not grow).
"""

from __future__ import annotations

import ast
import contextlib
import textwrap
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


# --- tests use public seams only (issue 13) ------------------------------------------------
#
# The rule, kept simple: in tests/, an attribute access ``X._name`` (one leading underscore,
# not a dunder) is a private access unless X is ``self``/``cls``, or ``_name`` is defined in
# tests/ itself — by the same module, or by a helper module (conftest.py, tests/_*.py) — as a
# function, class, assigned name or ``self._name`` and nowhere in the library: the tests' own
# helpers may keep private parts, but a name the library also uses is taken for the library's.
# ``getattr``/``setattr``/``delattr`` with a literal ``"_name"`` count too, and so does the
# code of child-process scripts held in string literals (f-strings too). The few private names of
# the standard library that tests need are listed below.

TESTS = Path(__file__).parent
STDLIB_PRIVATE = {"os._exit", "sys._getframe"}
_REFLECTION = {"getattr", "setattr", "delattr", "hasattr"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_names(tree: ast.AST | list[ast.AST]) -> set[str]:
    """The private names a test module defines: its own helpers' parts (``tree``: a tree,
    or the list of its nodes)."""
    names: set[str] = set()
    for node in tree if isinstance(tree, list) else ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if _is_private(n)}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "<expr>"


def _text(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with each ``{...}`` read as a name."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = [v.value if isinstance(v, ast.Constant) else "_f" for v in node.values]
        return "".join(str(p) for p in parts)
    return None


def _scripts(nodes: list[ast.AST]) -> list[ast.Module]:
    """Child-process scripts held in string literals (``python -c`` sources)."""
    found = []
    for node in nodes:
        text = _text(node)
        if text is not None and "import" in text and "conversation_codec" in text:
            with contextlib.suppress(SyntaxError):  # prose, not a script
                found.append(ast.parse(textwrap.dedent(text)))
    return found


def _library_names() -> frozenset[str]:
    trees = (ast.parse(p.read_text(encoding="utf-8")) for p in SRC.rglob("*.py"))
    return frozenset().union(*(_defined_names(tree) for tree in trees))


LIBRARY_PRIVATE = _library_names()


def private_accesses(source: str, name: str, allowed: frozenset[str] = frozenset()) -> list[str]:
    """Every access to a private attribute in the test module ``source`` (see the rule)."""
    nodes = list(ast.walk(ast.parse(source, name)))  # walked once, read three times
    own = (allowed | _defined_names(nodes)) - LIBRARY_PRIVATE
    found: list[str] = []
    for module in [nodes, *(list(ast.walk(s)) for s in _scripts(nodes))]:
        for node in module:
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                base = node.value.id if isinstance(node.value, ast.Name) else None
                dotted = _dotted(node)
                if base in ("self", "cls") or node.attr in own or dotted in STDLIB_PRIVATE:
                    continue
                found.append(f"{name}:{node.lineno} {dotted}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in _REFLECTION
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and _is_private(node.args[1].value)
                and node.args[1].value not in own
            ):
                found.append(f"{name}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    return found


def _helper_names() -> frozenset[str]:
    helpers = [TESTS / "conftest.py", *TESTS.glob("_*.py")]
    return frozenset().union(*(_defined_names(ast.parse(p.read_text())) for p in helpers))


def test_tests_touch_no_private_attribute() -> None:
    allowed = _helper_names()
    files = sorted(TESTS.rglob("*.py"))
    assert len(files) > 30
    found = [
        hit
        for path in files
        for hit in private_accesses(path.read_text(), str(path.relative_to(TESTS)), allowed)
    ]
    assert found == [], "tests use public seams only (io=, clock=, codec.storage)"


def test_the_private_access_check_can_fail() -> None:
    planted = "def test_x(codec):\n    codec._log.fault = print\n"
    assert private_accesses(planted, "planted.py") == ["planted.py:2 codec._log"]
    assert private_accesses("getattr(codec, '_log')\n", "p.py") == ["p.py:1 getattr(..., '_log')"]
    script = 'S = """\nfrom conversation_codec import ConversationCodec\nc._blobs.clear()\n"""\n'
    assert private_accesses(script, "s.py") == ["s.py:3 c._blobs"]
    fscript = 'S = f"""\nfrom conversation_codec import X\nc = X({p!r})\nc._log.fault = 1\n"""\n'
    assert private_accesses(fscript, "f.py") == ["f.py:4 c._log"]
    own = "class _H:\n    def __init__(self):\n        self._n9 = 1\nh = _H()\nh._n9\nos._exit(0)\n"
    assert private_accesses(own, "own.py") == []
    assert "_log" in LIBRARY_PRIVATE  # a helper's own _log does not hide codec._log
    shadow = "class _H:\n    def _log(self):\n        pass\ncodec._log\n"
    assert private_accesses(shadow, "shadow.py") == ["shadow.py:4 codec._log"]


# -- import cycles and module size ----------------------------------------------------------

PACKAGE = "conversation_codec"
MAX_LINES = 500  # per module (issue 13); the house style aims at ~400
# Modules still over MAX_LINES, with their line count when this list was written: each is a
# debt to pay, and the test fails when one grows (or a new one joins).
LONG_MODULES: dict[str, int] = {}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path) -> set[str]:
    """Every module of the package that ``path`` imports, at any depth: in functions, in
    ``if TYPE_CHECKING:`` blocks, relative or absolute (``from . import x`` counts ``x``
    when it is a module)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def _graph(root: Path) -> dict[str, set[str]]:
    modules = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    return {
        name: {m for m in _imports(path, root) if m in modules and m != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return one cycle per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    graph = _graph(SRC)
    assert len(graph) > 30
    assert _cycles(graph) == []


def test_the_cycle_check_sees_a_cycle(tmp_path: Path) -> None:
    root = tmp_path / PACKAGE
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "low.py").write_text("def f():\n    from .sub import high\n")  # in a function
    (root / "sub" / "high.py").write_text("from ..low import f\n")
    (root / "alone.py").write_text("import conversation_codec.low\n")
    graph = _graph(root)
    assert graph[f"{PACKAGE}.alone"] == {f"{PACKAGE}.low"}
    assert _cycles(graph) == [[f"{PACKAGE}.low", f"{PACKAGE}.sub.high"]]


# A module's ``_name`` is its own: another module that needs it gets it public, in the
# defining module's ``__all__``. Importing a private *module* (``_fsio``, ``cli._args``) is
# fine; the names inside it are what count. Both ways of reading one are found:
# ``from .x import _name`` and ``x._name`` on a module bound by an import.


def private_imports(root: Path) -> list[str]:
    """Every read of another module's private name in the package at ``root``."""
    modules = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    found: list[str] = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = path.relative_to(root)
        bound: dict[str, str] = {}  # local name -> the package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    bound[alias.asname or alias.name.partition(".")[0]] = (
                        alias.name if alias.asname else alias.name.partition(".")[0]
                    )
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    if full in modules:
                        bound[alias.asname or alias.name] = full
                    elif _is_private(alias.name) and target in modules:
                        found.append(f"{where}:{node.lineno} {full}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and _is_private(node.attr)
                and isinstance(node.value, ast.Name)
                and bound.get(node.value.id) in modules
            ):
                found.append(f"{where}:{node.lineno} {bound[node.value.id]}.{node.attr}")
    return found


def test_no_module_reads_another_modules_private_names() -> None:
    assert private_imports(SRC) == [], "make the shared name public (in its module's __all__)"


def test_the_private_name_check_can_fail(tmp_path: Path) -> None:
    root = tmp_path / PACKAGE
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "_low.py").write_text("def _helper():\n    pass\ndef shared():\n    _helper()\n")
    (root / "sub" / "__init__.py").write_text("_T = 1\n")
    (root / "sub" / "a.py").write_text(
        "from .. import _low\n"  # a private module: fine
        "from .._low import _helper, shared\n"
        "from . import _T\n"
        "def f():\n"
        f"    import {PACKAGE}._low as low\n"
        "    return _low.shared(), _low._helper(), low._helper()\n"
    )
    (root / "ok.py").write_text("import os\nfrom ._low import shared\nos._exit\n")
    assert sorted(private_imports(root)) == [
        f"sub/a.py:2 {PACKAGE}._low._helper",
        f"sub/a.py:3 {PACKAGE}.sub._T",
        f"sub/a.py:6 {PACKAGE}._low._helper",
        f"sub/a.py:6 {PACKAGE}._low._helper",
    ]


def _line_counts(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines())
        for p in sorted(root.rglob("*.py"))
    }


def _too_long(counts: dict[str, int], allowed: dict[str, int]) -> dict[str, int]:
    return {
        name: lines
        for name, lines in counts.items()
        if lines > MAX_LINES and lines > allowed.get(name, 0)
    }


def test_no_module_over_the_limit() -> None:
    counts = _line_counts(SRC)
    assert _too_long(counts, LONG_MODULES) == {}


def test_the_size_check_sees_a_long_module(tmp_path: Path) -> None:
    (tmp_path / "short.py").write_text("x = 1\n" * MAX_LINES)
    (tmp_path / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / "grown.py").write_text("x = 1\n" * (MAX_LINES + 3))
    counts = _line_counts(tmp_path)
    allowed = {"grown.py": MAX_LINES + 2}
    assert _too_long(counts, allowed) == {"long.py": MAX_LINES + 1, "grown.py": MAX_LINES + 3}


CODEC_MAX_LINES = 400  # issue 13: the everyday API only; the rest lives in its layers


def test_the_codec_module_stays_small() -> None:
    assert _line_counts(SRC)["codec.py"] <= CODEC_MAX_LINES

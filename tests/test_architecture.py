"""The package's shape, read with `ast` (nothing is imported): no import circles, only the command
line talks to the user, only retriever/store/ holds SQL, no module over 600 lines, and no module
changes the process's environment when it is imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "retriever"
MAX_LINES = 600
# The only modules that print or exit: the command line, and the two process entries (the
# console script, which answers through a warm daemon before click is imported, and the daemon's
# own process).
TALKERS = ("retriever.cli", "retriever.__main__", "retriever.daemon.entry", "retriever.daemon.__main__",
           "retriever.onnx.__main__")  # the command line and the process entries
STORE = "retriever.store"
SQL = re.compile(
    r"^\s*(SELECT\s.+\sFROM\s|INSERT\s+(OR\s+\w+\s+)?INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|CREATE\s+"
    r"(UNIQUE\s+|VIRTUAL\s+)?(TABLE|INDEX|TRIGGER|VIEW)\s|DROP\s+(TABLE|INDEX|TRIGGER)\s|ALTER\s+TABLE\s|PRAGMA\s|"
    r"WITH\s+\w+\s+AS\s*\()",
    re.IGNORECASE | re.DOTALL,
)
SQL_MODULES = ("sqlite3", "sqlalchemy")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """The retriever modules `module` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("retriever"):
                    name = alias.name
                    while name not in MODULES and "." in name:
                        name = name.rsplit(".", 1)[0]
                    found.add(name)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if not target.startswith("retriever"):
                continue
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(target)
    found.discard(module)
    return {m for m in found if m in MODULES}


def import_circles() -> list[list[str]]:
    graph = {m: imports_of(m) for m in MODULES}
    # Tarjan's strongly connected components: every circle lies inside one of more than a module.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_no_import_circles():
    assert import_circles() == []


def test_the_checker_sees_a_circle_through_a_function_level_import():
    a = ast.parse("def f():\n    from . import b\n")
    b = ast.parse("from .a import g\n")
    saved = dict(MODULES), dict(TREES)
    try:
        MODULES.update({"retriever.zz_a": PACKAGE / "zz_a.py", "retriever.zz_b": PACKAGE / "zz_b.py"})
        TREES.update({"retriever.zz_a": ast.parse(ast.unparse(a).replace(". import b", ". import zz_b")),
                      "retriever.zz_b": ast.parse(ast.unparse(b).replace(".a ", ".zz_a "))})
        assert ["retriever.zz_a", "retriever.zz_b"] in import_circles()
    finally:
        MODULES.clear(), TREES.clear()
        MODULES.update(saved[0]), TREES.update(saved[1])


def _talks(node: ast.AST) -> str | None:
    """What a call does that only the command line may: print, click.echo, sys.exit, writing to
    sys.stdout or sys.stderr."""
    if not isinstance(node, ast.Call):
        return None
    f = node.func
    if isinstance(f, ast.Name) and f.id in ("print", "exit", "quit"):
        return f.id
    text = ast.unparse(f)
    if text in ("click.echo", "click.secho", "click.echo_via_pager", "sys.exit", "os._exit"):
        return text
    if re.match(r"^sys\.(stdout|stderr|__stdout__|__stderr__)(\.buffer)?\.write", text):
        return text
    return None


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_only_the_command_line_prints_or_exits():
    found = [f"{m}:{node.lineno} {what}" for m, tree in TREES.items() if not _in(m, TALKERS)
             for node in ast.walk(tree) if (what := _talks(node))]
    assert found == []


def _sql_in(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
            found.append(f"{node.lineno} {node.value.strip()[:40]!r}")
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
            if SQL.match(text):
                found.append(f"{node.lineno} {text.strip()[:40]!r}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{node.lineno} import {n}" for n in names if n.split(".")[0] in SQL_MODULES]
    return found


def test_only_the_store_holds_sql():
    found = [f"{m}:{where}" for m, tree in TREES.items() if not _in(m, (STORE,)) for where in _sql_in(tree)]
    assert found == []


def test_the_sql_check_sees_sql():
    assert _sql_in(ast.parse('q = "SELECT id FROM images WHERE x = ?"'))
    assert _sql_in(ast.parse('q = f"DELETE FROM {table} WHERE id = 1"'))
    assert _sql_in(ast.parse("import sqlite3"))
    assert not _sql_in(ast.parse('q = "select the best photos from the run"'.replace("from", "of")))


def test_no_module_is_longer_than_600_lines():
    lengths = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in lengths.items() if n > MAX_LINES} == {}


def test_no_environment_change_at_import():
    """Module-level code (outside functions and classes) never sets os.environ."""
    found = []
    for m, tree in TREES.items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for sub in ast.walk(node):
                text = ast.unparse(sub) if isinstance(sub, (ast.Call, ast.Assign, ast.AugAssign)) else ""
                if re.search(r"os\.environ(\[[^\]]+\]\s*=|\.(setdefault|update|pop)\()|os\.(putenv|unsetenv)\(", text):
                    found.append(f"{m}:{sub.lineno}")
    assert found == []

"""The import contracts of `service/` and `models/`, read from the source with `ast`.

Every import counts: at module top, inside functions (lazy imports) and under
`if TYPE_CHECKING:`. Each .py file is one node: `from . import x` and `from service.x import y`
resolve to the submodule `y` when there is one, else to the module or package that holds the name.

The written contract (a pattern names a module and everything inside it; `=name` names that
one module alone):

| importer (and inside it) | except      | may not import                                          |
|--------------------------|-------------|---------------------------------------------------------|
| service.runtime          |             | service.api, service.settings, service.metrics,         |
|                          |             | service.cli, service.main                               |
| service.api              |             | service.cli                                             |
| models                   |             | service, but for service.runtime                        |
| service                  | service.cli | models                                                  |

Why: the runtime is plain constructors (no HTTP, no Settings, no Prometheus, no commands) that
the server and the CLI build on; the HTTP layer is served without the command line; the offline
pipeline reuses the runtime's transforms; only the command line builds bundles, so the server
runs without torch and transformers.

Besides: no import cycle between two files, and no source file over 500 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "models")
MAX_LINES = 500


@dataclass(frozen=True)
class Rule:
    """One row of the table above."""

    importer: str
    forbids: tuple[str, ...]
    why: str
    exempt: tuple[str, ...] = ()
    scope: str = ""
    """When set, `forbids` is ignored: every import inside `scope` not matching `allows` is
    forbidden."""
    allows: tuple[str, ...] = ()


RULES = {
    "runtime-is-plain": Rule(
        importer="service.runtime",
        forbids=(
            "service.api",
            "service.settings",
            "service.metrics",
            "service.cli",
            "service.main",
        ),
        why="the runtime is plain constructors: no HTTP, no Settings, no Prometheus, no commands",
    ),
    "api-without-cli": Rule(
        importer="service.api",
        forbids=("service.cli",),
        why="the HTTP layer is served without the command line",
    ),
    "models-on-runtime-only": Rule(
        importer="models",
        forbids=(),
        scope="service",
        allows=("service.runtime",),
        why="the offline pipeline imports from service only the runtime",
    ),
    "only-cli-imports-models": Rule(
        importer="service",
        exempt=("service.cli",),
        forbids=("models",),
        why="only the command line builds bundles; the server runs without torch/transformers",
    ),
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def matches(module: str, pattern: str) -> bool:
    """`pattern` names `module` or a package holding it; `=name` names that module alone."""
    if pattern.startswith("="):
        return module == pattern[1:]
    return module == pattern or module.startswith(pattern + ".")


def project_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted name -> file, for every .py file under the packages (a package is its
    __init__.py)."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` lands on: itself, else the nearest package or module above."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(name: str, path: Path, modules: dict[str, Path], root: Path) -> Iterator[Import]:
    """Every project import in one file, wherever it sits in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        resolved = {_resolve(target, modules) for target in targets} - {None, name}
        for module in sorted(m for m in resolved if m is not None):
            yield Import(name, module, path.relative_to(root), node.lineno)


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    modules = project_modules(root, packages)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules, root)]


def cycles(edges: list[Import]) -> list[list[Import]]:
    """The strongly connected components of more than one file, each as its inner imports."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
        graph.setdefault(e.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph is a few hundred nodes deep
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(
        (
            sorted(
                (e for e in edges if e.importer in c and e.imported in c),
                key=lambda e: (str(e.path), e.line),
            )
            for c in components
        ),
        key=lambda c: c[0].importer,
    )


def violations(rule: Rule, edges: list[Import]) -> list[Import]:
    out = []
    for e in edges:
        if not matches(e.importer, rule.importer):
            continue
        if any(matches(e.importer, x) for x in rule.exempt):
            continue
        if rule.scope:
            bad = matches(e.imported, rule.scope) and not any(
                matches(e.imported, a) for a in rule.allows
            )
        else:
            bad = any(matches(e.imported, f) for f in rule.forbids)
        if bad:
            out.append(e)
    return sorted(out, key=lambda e: (str(e.path), e.line))


def long_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    out = []
    for path in project_modules(root, packages).values():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            out.append(f"{path.relative_to(root)}: {lines} lines (at most {MAX_LINES})")
    return sorted(out)


# -- the checker proves it can fail, on a tree written here ------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_checker_resolves_lazy_relative_and_type_checking_imports(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def f():\n    from . import b\n",
            "pkg/b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import c\n"
            ),
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "from ..a import f\nimport json\n",
            "pkg/d.py": "from pkg.sub import c, name_in_init\nimport pkg.sub.c as cc\n",
        },
    )
    edges = import_graph(tmp_path, ("pkg",))
    pairs = {(e.importer, e.imported) for e in edges}
    assert pairs == {
        ("pkg.a", "pkg.b"),
        ("pkg.b", "pkg.sub.c"),
        ("pkg.sub.c", "pkg.a"),
        ("pkg.d", "pkg.sub.c"),
        ("pkg.d", "pkg.sub"),
    }
    (circle,) = cycles(edges)
    assert {e.importer for e in circle} == {"pkg.a", "pkg.b", "pkg.sub.c"}
    assert str(circle[0]) == "pkg/a.py:2: pkg.a imports pkg.b"
    rule = Rule("pkg.sub", forbids=("pkg.a",), why="test")
    assert [str(v) for v in violations(rule, edges)] == ["pkg/sub/c.py:1: pkg.sub.c imports pkg.a"]
    only = Rule("pkg.d", forbids=(), scope="pkg", allows=("=pkg.sub",), why="test")
    assert [(v.imported, v.line) for v in violations(only, edges)] == [
        ("pkg.sub.c", 1),
        ("pkg.sub.c", 2),
    ]


def test_the_project_graph_is_read() -> None:
    """A guard against a checker that sees nothing (and so passes everything)."""
    pairs = {(e.importer, e.imported) for e in import_graph(ROOT)}
    assert any(matches(a, "models") and matches(b, "service.runtime") for a, b in pairs)
    assert any(matches(a, "service.api") and matches(b, "service.runtime") for a, b in pairs)
    assert len(pairs) > 100


# -- the contracts on the project ---------------------------------------------------------------


def test_no_import_cycle_between_files() -> None:
    found = cycles(import_graph(ROOT))
    report = "\n\n".join(
        "import cycle among "
        + ", ".join(sorted({e.importer for e in c}))
        + ":\n"
        + "\n".join(f"  {e}" for e in c)
        for c in found
    )
    assert not found, f"{len(found)} import cycle(s):\n\n{report}"


@pytest.mark.parametrize("name", list(RULES))
def test_import_contract(name: str) -> None:
    rule = RULES[name]
    found = violations(rule, import_graph(ROOT))
    report = "\n".join(f"  {v}" for v in found)
    assert not found, f"contract {name!r} ({rule.why}) broken by:\n{report}"


def test_no_source_file_over_500_lines() -> None:
    found = long_files(ROOT)
    assert not found, "files to split along their seams:\n" + "\n".join(f"  {f}" for f in found)

"""The package's shape: every module imports on its own, imports form no cycle, and no module
reaches into another's private names.

Imports are read from the source (``ast``), including those inside functions: a lazy import that
closes a cycle still ties two modules together. Imports under ``if TYPE_CHECKING:`` are type
hints only and are left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clip_embeddings"
OPTIONAL = {"clip_embeddings.distributed.ray": "ray"}  # imports fine without Ray, but is exercised with it


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in module ``name``, resolved."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
               for child in node.body for n in ast.walk(child)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            # `from . import x` imports the submodule x
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            found += [(s, []) for s in subs] or [(target, names)]
    return [(m, n) for m, n in found if m == "clip_embeddings" or m.startswith("clip_embeddings.")]


def test_no_module_imports_a_private_name_from_another():
    offenders = [f"{name}: from {target} import {n}"
                 for name in MODULES for target, names in imports_of(name) for n in names
                 if n.startswith("_") and not n.startswith("__")]
    assert offenders == []


def test_imports_form_no_cycle():
    # The package's __init__ re-exports the public API and is imported by everyone who writes
    # `import clip_embeddings`; edges into it are how Python starts any submodule, not a design
    # choice, so the graph is over the submodules.
    graph = {name: sorted({t for t, _ in imports_of(name) if t in MODULES and t != "clip_embeddings" and t != name})
             for name in MODULES if name != "clip_embeddings"}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in graph.get(node, []):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    # A subpackage's __init__ importing its own submodules is the package's API, not a cycle.
    real = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert real == [], " ; ".join(" -> ".join(c) for c in real)


def test_the_library_never_imports_the_command_line():
    users = sorted(name for name in MODULES if name not in ("clip_embeddings.cli",)
                   and any(t == "clip_embeddings.cli" for t, _ in imports_of(name)))
    assert users == [], f"library modules importing cli.py: {users}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_imports_on_its_own(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    run = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert run.returncode == 0, f"import {name} failed on its own:\n{run.stderr[-2000:]}"

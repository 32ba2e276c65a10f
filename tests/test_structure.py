"""The package's shape: every module imports on its own, imports form no cycle, no module imports
upward (or sideways) across the layers written in ARCHITECTURE.md, and no module reaches into
another's private names.

Imports are read from the source (``ast``), all of them: those inside functions and those under
``if TYPE_CHECKING:`` too. A lazy import or a type hint that points up still ties a lower layer to
a higher one, and it is how cycles come back.

The layer table is written once, in ARCHITECTURE.md (between its ``layers`` markers); this test
parses it from there, so the document and the check cannot drift apart.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clip_embeddings"
OPTIONAL = {"clip_embeddings.apps.distributed.ray": "ray"}  # imports fine without Ray, but is exercised with it


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def read_layers() -> list[tuple[int, str, list[str]]]:
    """(rank, layer, dotted prefixes) for each row of ARCHITECTURE.md's layer table, in order."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    table = text.split("<!-- layers:begin -->")[1].split("<!-- layers:end -->")[0]
    rows = []
    for line in table.strip().splitlines()[2:]:  # past the header and its rule
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((int(cells[0]), cells[1], re.findall(r"`([a-z_.]+)`", cells[2])))
    return rows


LAYERS = read_layers()


def layer_of(module: str) -> tuple[int, str]:
    """The (rank, layer) of a module: the most specific prefix in the table that matches it."""
    best = None
    for rank, layer, prefixes in LAYERS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank, layer)
    assert best is not None, f"{module} is in no layer of ARCHITECTURE.md: add it to the table"
    return best[1], best[2]


def imports_of(name: str) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in module ``name``, resolved."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):  # every import: module level, in functions, under TYPE_CHECKING
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


def test_the_layer_table_covers_every_module_and_reads_as_written():
    assert [layer for _, layer, _ in LAYERS] == ["facade", "apps", "integrations", "adapters", "collection",
                                                 "tasks", "embedding", "inputs", "runtime", "core", "leaves"]
    for name in MODULES:
        layer_of(name)  # fails naming a module that no row claims


def test_no_module_imports_upward_or_sideways_across_the_layers():
    offenders = []
    for name in MODULES:
        if name == "clip_embeddings":
            continue  # the facade sits on top and re-exports from every layer
        rank, layer = layer_of(name)
        for target, _ in imports_of(name):
            if target == name or not (target in MODULES or any(target.startswith(m + ".") for m in MODULES)):
                continue
            to_rank, to_layer = layer_of(target)
            if to_layer == layer:
                continue
            if to_rank >= rank:
                offenders.append(f"{name} ({layer}) imports {target} ({to_layer})")
    assert offenders == [], "\n".join(offenders)


def test_the_library_never_imports_the_command_line():
    cli = ("clip_embeddings.apps.cli", "clip_embeddings.cli")
    users = sorted(name for name in MODULES if not name.startswith(cli)
                   and any(t.startswith(cli) for t, _ in imports_of(name)))
    assert users == [], f"library modules importing the command line: {users}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_imports_on_its_own(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    run = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert run.returncode == 0, f"import {name} failed on its own:\n{run.stderr[-2000:]}"


def make_recipe(target: str) -> list[str]:
    """The command lines of one Makefile target, in order, and its prerequisites' first."""
    text = (ROOT / "Makefile").read_text()
    head = re.search(rf"^{target}:([^\n]*)\n((?:\t[^\n]*\n)*)", text, re.M)
    assert head, f"the Makefile has no {target} target"
    lines = []
    for prerequisite in head.group(1).split():
        if re.search(rf"^{re.escape(prerequisite)}:", text, re.M) and not prerequisite.startswith("$"):
            lines += make_recipe(prerequisite)
    return lines + [line.strip() for line in head.group(2).splitlines()]


def test_make_test_lints_the_library_before_pytest():
    recipe = make_recipe("test")
    lint = [i for i, line in enumerate(recipe) if "ruff check clip_embeddings" in line]
    tests = [i for i, line in enumerate(recipe) if "-m pytest" in line]
    assert lint and tests and lint[0] < tests[0], recipe


MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
# Known offenders, to be split (issue 21 phase 2b); the test fails when one is fixed, so the list shrinks.
LONG_FUNCTIONS_TO_SPLIT: set[tuple[str, str]] = set()


def long_functions() -> dict[tuple[str, str], int]:
    """(module, function) -> lines, for every function or method in the library longer than the limit."""
    found = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found[(name, node.name)] = lines
    return found


def test_no_library_module_is_over_the_size_limit():
    big = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {n: c for n, c in big.items() if c > MAX_MODULE_LINES} == {}


def test_no_new_function_is_over_the_size_limit():
    found = long_functions()
    assert {k: v for k, v in found.items() if k not in LONG_FUNCTIONS_TO_SPLIT} == {}, "split these into named helpers"
    assert LONG_FUNCTIONS_TO_SPLIT <= set(found), "fixed: remove them from LONG_FUNCTIONS_TO_SPLIT"

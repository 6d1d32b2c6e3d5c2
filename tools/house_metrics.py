"""Measure the shape of the source tree: modules, private imports, import circles, long functions.

``python tools/house_metrics.py [src/veil]`` prints the counts and the offenders;
``tests/test_house.py`` holds the tree to the rules of docs/architecture.md:

* no module imports an underscore name (``from veil.x import _helper``) from another module;
* no module imports an underscore module or folder (``veil.mpc._runtime``, ``veil.stats._data``)
  from outside the folder that holds it;
* every function (nested ones counted inside their parent too) is shorter than 80 lines and every
  module shorter than 500 lines.

Import edges include imports inside functions (lazy imports are still dependencies).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

FUNCTION_LIMIT = 80
MODULE_LIMIT = 500


@dataclass
class Shape:
    modules: dict[str, int] = field(default_factory=dict)  # module -> lines
    private_names: list[tuple[str, str]] = field(default_factory=list)  # (importer, target:name)
    private_modules: list[tuple[str, str]] = field(default_factory=list)  # (importer, module)
    cycles: list[list[str]] = field(default_factory=list)
    functions: list[tuple[int, str]] = field(default_factory=list)  # (lines, module.qualname)


def _module_name(root: Path, path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts.pop()
    return ".".join(parts), is_pkg


def _imports(mod: str, is_pkg: bool, tree: ast.Module) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import of a ``veil`` module in ``tree``."""
    package = mod if is_pkg else mod.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found += [(source, alias.name) for alias in node.names]
    return [(m, n) for m, n in found if m == "veil" or m.startswith("veil.")]


def _holder(module: str) -> str | None:
    """The folder that holds the first underscore part of ``module`` (None: nothing private)."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def _functions(mod: str, tree: ast.Module) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                out.append((length, f"{mod}.{prefix}{child.name}"))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def scan(root: Path) -> Shape:
    shape = Shape()
    trees: dict[str, tuple[ast.Module, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        mod, is_pkg = _module_name(root, path)
        text = path.read_text()
        shape.modules[mod] = text.count("\n")
        trees[mod] = (ast.parse(text, str(path)), is_pkg)
    graph: dict[str, set[str]] = {m: set() for m in trees}
    for mod, (tree, is_pkg) in trees.items():
        shape.functions += _functions(mod, tree)
        here = mod if is_pkg else mod.rpartition(".")[0]
        for source, name in _imports(mod, is_pkg, tree):
            target = f"{source}.{name}" if name and f"{source}.{name}" in trees else source
            if target in trees and target != mod:
                graph[mod].add(target)
            if name and target == source and name.startswith("_") and not name.startswith("__"):
                if source != mod:
                    shape.private_names.append((mod, f"{source}:{name}"))
            holder = _holder(target)
            if holder is not None and not (here == holder or here.startswith(holder + ".")):
                shape.private_modules.append((mod, target))
    shape.cycles = _cycles(graph)
    shape.functions.sort(reverse=True)
    return shape


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return groups


def report(shape: Shape) -> str:
    lines = [f"modules: {len(shape.modules)}"]
    lines.append(f"underscore names imported from another module: {len(shape.private_names)}")
    lines += [f"    {mod} <- {what}" for mod, what in shape.private_names]
    lines.append(f"underscore modules imported from outside their folder: "
                 f"{len(shape.private_modules)}")
    lines += [f"    {mod} <- {what}" for mod, what in shape.private_modules]
    lines.append(f"import circles (groups of modules that import each other): {len(shape.cycles)}")
    lines += [f"    {' <-> '.join(group)}" for group in shape.cycles]
    long = [f for f in shape.functions if f[0] >= FUNCTION_LIMIT]
    lines.append(f"functions of {FUNCTION_LIMIT}+ lines: {len(long)}; the five longest:")
    lines += [f"    {n:4d}  {name}" for n, name in shape.functions[:5]]
    big = sorted(((n, m) for m, n in shape.modules.items() if n >= MODULE_LIMIT), reverse=True)
    lines.append(f"modules of {MODULE_LIMIT}+ lines: {len(big)}")
    lines += [f"    {n:4d}  {m}" for n, m in big]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    print(report(scan(Path(argv[1] if len(argv) > 1 else "src/veil").resolve())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

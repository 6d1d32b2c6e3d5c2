"""Measure the shape of the source tree: modules, private cross-imports, import cycles,
longest functions.  ``python tools/house_metrics.py [src/veil]``.

A *private cross-import* is ``from veil.a.b import _name`` (or ``import`` of an underscore
module) where the importing module lives outside the folder that holds the name.  The test
suite (tests/test_house.py) holds the tree to: none across folders, every function < 80 lines.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 80


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(mod: str, is_pkg: bool) -> str:
    return mod if is_pkg else mod.rpartition(".")[0]


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = package_of(mod, is_pkg).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def scan(root: Path) -> dict:
    modules: dict[str, tuple[Path, ast.Module, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        mod = module_name(root, path)
        modules[mod] = (path, ast.parse(path.read_text(), str(path)), path.name == "__init__.py")
    private_all: list[tuple[str, str, str]] = []
    private_cross: list[tuple[str, str, str]] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    functions: list[tuple[int, str]] = []
    for mod, (path, tree, is_pkg) in modules.items():
        here = package_of(mod, is_pkg)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                functions.append((length, f"{mod}.{node.name}"))
            targets: list[tuple[str, str]] = []
            if isinstance(node, ast.ImportFrom):
                src = _resolve(mod, is_pkg, node)
                for alias in node.names:
                    full = f"{src}.{alias.name}"
                    if full in modules:  # a submodule
                        targets.append((full, alias.name))
                    else:
                        targets.append((src, alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    targets.append((alias.name, alias.name.rpartition(".")[2]))
            for target, name in targets:
                if not target.startswith("veil"):
                    continue
                if target in modules and target != mod:
                    graph[mod].add(target)
                hidden = [p for p in target.split(".")[1:] if p.startswith("_") and p != "__init__"]
                if name.startswith("_") and not name.startswith("__"):
                    hidden.append(name)
                if not hidden or target == mod:
                    continue
                owner = target if target in modules and modules[target][2] else target.rpartition(".")[0]
                # the folder that holds the private thing: the package of the first private part
                parts = target.split(".")
                for i, p in enumerate(parts):
                    if p.startswith("_"):
                        owner = ".".join(parts[:i])
                        break
                entry = (mod, target, name)
                if target.rpartition(".")[0] != here or name.startswith("_"):
                    private_all.append(entry)
                if not (here == owner or here.startswith(owner + ".")):
                    private_cross.append(entry)
    cycles = _cycles(graph)
    functions.sort(reverse=True)
    return {
        "modules": len(modules),
        "private_imports": private_all,
        "private_cross": private_cross,
        "cycles": cycles,
        "functions": functions,
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "src/veil").resolve()
    m = scan(root)
    print(f"modules: {m['modules']}")
    print(f"imports of underscore names/modules from another module: {len(m['private_imports'])}")
    print(f"  of which cross a folder: {len(m['private_cross'])}")
    for mod, target, name in m["private_cross"]:
        print(f"    {mod} <- {target}:{name}")
    print(f"import circles (strongly connected groups): {len(m['cycles'])}")
    for comp in m["cycles"]:
        print(f"    {' <-> '.join(comp)}")
    long = [f for f in m["functions"] if f[0] >= LIMIT]
    print(f"functions of {LIMIT}+ lines: {len(long)}; longest:")
    for length, name in m["functions"][:5]:
        print(f"    {length:4d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

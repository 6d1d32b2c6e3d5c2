"""The source tree keeps the shape docs/architecture.md describes (tools/house_metrics.py).

Each rule is checked on the real tree and, so that a broken checker cannot pass silently, on a
small synthetic tree that breaks it.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "veil"


def _metrics():
    path = ROOT / "tools" / "house_metrics.py"
    spec = importlib.util.spec_from_file_location("house_metrics", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("house_metrics", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def shape():
    return _metrics().scan(SRC)


def test_no_underscore_name_crosses_a_module(shape) -> None:
    assert shape.private_names == [], (
        "these modules import another module's underscore name; make it a plain name of an "
        f"internal module of the folder: {shape.private_names}")


def test_no_underscore_module_is_imported_from_outside_its_folder(shape) -> None:
    assert shape.private_modules == [], (
        "these imports reach into another folder's private module; go through its public face: "
        f"{shape.private_modules}")


def test_no_import_circles(shape) -> None:
    assert shape.cycles == [], (
        "these modules import each other (lazy imports count): move what they share into one "
        f"module both import: {shape.cycles}")


def test_functions_and_modules_stay_small(shape) -> None:
    m = _metrics()
    long = [f for f in shape.functions if f[0] >= m.FUNCTION_LIMIT]
    big = {mod: n for mod, n in shape.modules.items() if n >= m.MODULE_LIMIT}
    assert long == [], f"functions of {m.FUNCTION_LIMIT}+ lines (split them): {long}"
    assert big == {}, f"modules of {m.MODULE_LIMIT}+ lines (split them): {big}"


def test_every_folder_has_a_face() -> None:
    faceless = [str(d.relative_to(SRC)) for d in SRC.rglob("*")
                if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
                and not (d / "__init__.py").exists()]
    assert faceless == []
    undocumented = [str(p.relative_to(SRC)) for p in SRC.rglob("__init__.py")
                    if not p.read_text().lstrip().startswith(('"""', "'''"))]
    assert undocumented == [], f"folders whose __init__.py has no docstring: {undocumented}"


def test_the_checker_sees_each_kind_of_offence(tmp_path: pathlib.Path) -> None:
    m = _metrics()
    pkg = tmp_path / "veil"
    (pkg / "a" / "_inner").mkdir(parents=True)
    (pkg / "b").mkdir()
    for d in (pkg, pkg / "a", pkg / "a" / "_inner", pkg / "b"):
        (d / "__init__.py").write_text('"""face."""\n')
    (pkg / "a" / "_inner" / "x.py").write_text("def _helper():\n    return 1\n")
    (pkg / "a" / "one.py").write_text("from veil.a._inner.x import _helper\nimport veil.b.two\n")
    body = "\n".join(f"    y = {i}" for i in range(m.FUNCTION_LIMIT))
    (pkg / "b" / "two.py").write_text(
        "import veil.a.one\n\n"
        f"def long():\n{body}\n\n"
        "def inner():\n    from veil.a._inner import x\n    return x\n")
    got = m.scan(pkg)
    assert got.private_names == [("veil.a.one", "veil.a._inner.x:_helper")]
    assert got.private_modules == [("veil.b.two", "veil.a._inner.x")]
    assert got.cycles == [["veil.a.one", "veil.b.two"]]
    assert got.functions[0] == (m.FUNCTION_LIMIT + 1, "veil.b.two.long")

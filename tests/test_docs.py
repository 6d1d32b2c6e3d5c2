"""The API reference in docs/api is generated from the docstrings and kept current."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _apidoc():
    spec = importlib.util.spec_from_file_location("apidoc", ROOT / "tools" / "apidoc.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_api_reference_is_current(tmp_path: pathlib.Path) -> None:
    apidoc = _apidoc()
    apidoc.main(str(tmp_path))
    stale = [p.name for p in sorted(tmp_path.glob("*.md"))
             if not (ROOT / "docs" / "api" / p.name).exists()
             or (ROOT / "docs" / "api" / p.name).read_text() != p.read_text()]
    assert stale == [], f"docs/api is out of date for {stale}: run `make docs` and commit"


def test_every_public_name_has_a_docstring() -> None:
    apidoc = _apidoc()
    missing = []
    for name in apidoc.MODULES:
        page = apidoc.render(name)
        if "*(no docstring)*" in page:
            missing.append(name)
    assert missing == [], f"public names without docstrings in {missing}"

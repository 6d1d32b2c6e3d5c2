"""The API reference in docs/api is generated from the docstrings and kept current."""

from __future__ import annotations

import importlib.util
import pathlib
import re

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


DOCS = ["README.md", "SECURITY.md", "docs/*.md", "docs/security/*.md"]
SRC = ROOT / "src"


def _resolves(dotted: str) -> bool:
    """``veil.a.b`` is a module, or ``veil.a.b.name`` a name written in module ``veil.a.b``."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = SRC.joinpath(*parts[:i])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if source.exists():
            rest = parts[i:]
            text = source.read_text()
            return not rest or re.search(rf"\b{re.escape(rest[0])}\b", text) is not None
    return False


def test_docs_name_only_modules_and_files_that_exist() -> None:
    files = sorted({p for pattern in DOCS for p in ROOT.glob(pattern)})
    sources = {p.name for d in ("src", "tests", "benchmarks", "tools")
               for p in (ROOT / d).rglob("*.py")}
    stale = []
    for doc in files:
        text = doc.read_text()
        for ref in sorted(set(re.findall(r"\bveil(?:\.[A-Za-z_]\w*)+", text))):
            if not ref.endswith((".md", ".py")) and not _resolves(ref):
                stale.append(f"{doc.name}: {ref}")
        for ref in sorted(set(re.findall(r"(?<![\w.-])([\w/]*\w\.py)\b", text))):
            if "/" in ref:
                rel = ref.removeprefix("src/").removeprefix("veil/")
                roots = [ROOT / ref, SRC / "veil" / rel, ROOT / "benchmarks" / ref,
                         ROOT / "tests" / ref]
                if not any(p.exists() for p in roots):
                    stale.append(f"{doc.name}: {ref}")
            elif ref not in sources:
                stale.append(f"{doc.name}: {ref}")
    assert stale == [], f"docs name modules or files that do not exist: {stale}"

"""The tutorial notebooks: stored with current outputs and plots, and they still execute.

``make notebooks`` (tools/run_notebooks.py) executes them and stores the outputs with the
SHA-256 of their code cells. Here every notebook must (1) carry outputs for its code, at least
one plot, and no error; (2) have been executed from its current code (the stored hash matches);
(3) execute top to bottom again, producing the same kinds of outputs in the same cells.
"""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
nbformat = pytest.importorskip("nbformat")


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "tools/run_notebooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _tool()


def _outputs(nb: object) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 5, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_with_fresh_outputs_and_a_plot(path: pathlib.Path) -> None:
    nb = nbformat.read(path, as_version=4)
    stored = nb.metadata.get("veil", {}).get("source_sha256")
    assert stored == TOOL.source_hash(nb), (
        f"{path.name}: its code changed since its outputs were stored; run `make notebooks` "
        "and commit the result")
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 1, "no plot"
    code = [c for c in nb.cells if c.cell_type == "code"]
    silent = [c.source.splitlines()[0] for c in code if not c.get("outputs")]
    assert len(silent) <= len(code) // 3, f"cells without output: {silent}"
    assert path.stat().st_size < 400_000  # outputs stay small enough to read on the web


def test_the_freshness_check_can_fail() -> None:
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    before = TOOL.source_hash(nb)
    nb.cells[0].source += "\nprose changes do not make outputs stale"
    assert TOOL.source_hash(nb) == before
    next(c for c in nb.cells if c.cell_type == "code").source += "\nx = 1"
    assert TOOL.source_hash(nb) != before


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_like_its_stored_outputs(path: pathlib.Path,
                                                   tmp_path: pathlib.Path) -> None:
    pytest.importorskip("nbclient")
    stored = nbformat.read(path, as_version=4)
    fresh = TOOL.execute(nbformat.read(path, as_version=4), tmp_path)
    assert not [o for o in _outputs(fresh) if o.get("output_type") == "error"]
    assert TOOL.signature(fresh) == TOOL.signature(stored)

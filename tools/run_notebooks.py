"""Execute the tutorial notebooks in place and store their outputs (``make notebooks``).

    python tools/run_notebooks.py [notebooks/NN_name.ipynb ...]     # default: every notebook

Each notebook runs top to bottom with nbclient in a fresh temporary directory (as
tests/test_notebooks.py runs it), so nothing it writes lands in the repository. Its outputs are
stored and ``metadata["veil"]`` records the SHA-256 of its code cells and the Veil version it
ran with; the test compares that hash with the current code cells to tell a stale notebook.
Volatile metadata (execution timestamps, the kernel's Python version) is not stored, so
re-running on unchanged code changes only what the computation itself varies (timings, noise).

The test loads this file for :func:`execute`, :func:`source_hash` and :func:`signature`, so the
stored and the freshly executed notebook are produced and compared the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
TIMEOUT_S = 240
# Cell metadata that records when or how long a cell ran (nbclient, JupyterLab, nbextensions).
VOLATILE_CELL_KEYS = ("execution", "ExecuteTime")


def notebooks() -> list[pathlib.Path]:
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def code_sources(nb: Any) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def source_hash(nb: Any) -> str:
    """SHA-256 of the code cells' sources, in order (markdown edits do not make it stale)."""
    blob = json.dumps(code_sources(nb), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def execute(nb: Any, cwd: str | pathlib.Path, timeout: int = TIMEOUT_S) -> Any:
    """Run ``nb`` (in place) with its working directory ``cwd`` and strip volatile metadata."""
    import nbclient

    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     record_timing=False, coalesce_streams=True,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return clean(nb)


def clean(nb: Any) -> Any:
    """Drop what differs between two runs of the same code without being a result."""
    for cell in nb.cells:
        for key in VOLATILE_CELL_KEYS:
            cell.metadata.pop(key, None)
    nb.metadata.pop("widgets", None)
    nb.metadata["language_info"] = {"name": "python"}   # no interpreter version, lexer...
    return nb


def stamp(nb: Any) -> Any:
    import veil

    nb.metadata["veil"] = {"source_sha256": source_hash(nb),
                           "executed_with": f"veil {veil.__version__}"}
    return nb


def output_kind(output: Any) -> tuple[str, ...]:
    """An output's type and, for rich outputs, its mime types (what a reader would see)."""
    kind = output.get("output_type")
    if kind == "stream":
        return (kind, output.get("name", ""))
    if kind == "error":
        return (kind, output.get("ename", ""))
    return (kind, *sorted(output.get("data", {})))


def signature(nb: Any) -> list[list[tuple[str, ...]]]:
    """Per code cell, the kinds of its outputs. stderr is left out: warnings depend on the
    machine (library versions, devices), not on whether the stored outputs are current."""
    return [[output_kind(o) for o in cell.get("outputs", [])
             if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
            for cell in nb.cells if cell.cell_type == "code"]


def run(path: pathlib.Path, timeout: int = TIMEOUT_S) -> float:
    """Execute the notebook at ``path`` and write it back with its outputs; returns seconds."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="veil-nb-") as cwd:
        execute(nb, cwd, timeout)
    seconds = time.perf_counter() - start
    errors = [o for cell in nb.cells for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    if errors:
        raise RuntimeError(f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}")
    nbformat.validate(nb)
    nbformat.write(stamp(nb), path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=pathlib.Path,
                        help="notebooks to execute (default: every notebooks/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT_S,
                        help="seconds allowed per cell (default %(default)s)")
    args = parser.parse_args(argv)
    paths = args.paths or notebooks()
    total = 0.0
    for path in paths:
        try:
            seconds = run(path, args.timeout)
        except Exception as exc:  # the kernel's traceback is in exc; keep the notebook as it was
            print(f"FAILED {path.name}: {exc}", file=sys.stderr)
            return 1
        total += seconds
        print(f"{path.name:<32} {seconds:6.1f} s  {path.stat().st_size / 1024:7.1f} kB")
    print(f"{len(paths)} notebooks executed in {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How a party process finds the job of a local session: by module and name, not by pickle.

``veil.mpc.run`` checks up front (:func:`job_ref`) that the job can be imported by name in
another process, and each party imports it (:func:`resolve_job`); a job defined under the
script's ``if __name__ == "__main__":`` guard is refused with what to do instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from veil.errors import ConfigurationError

__all__ = ["JobRef", "job_ref", "resolve_job"]


@dataclass(frozen=True)
class JobRef:
    """How a party process finds the job: module, qualified name and source file."""

    module: str
    qualname: str
    path: str | None


def job_ref(job: Callable[..., Any]) -> JobRef:
    """Check that ``job`` can be found by name in another process; ConfigurationError if not."""
    if not callable(job):
        raise ConfigurationError(f"job must be a function job(party, ...), got {job!r}")
    qualname = getattr(job, "__qualname__", None)
    module = getattr(job, "__module__", None)
    if not qualname or not module or "<lambda>" in qualname or "<locals>" in qualname:
        raise ConfigurationError(
            f"job {qualname or job!r} cannot be sent to the party processes: jobs must be "
            "module-level functions (def job(party, ...): at the top level of a module), not "
            "lambdas, closures or nested functions; pass data through args=/per_party_args=")
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None) or getattr(job, "__globals__", {}).get("__file__")
    if mod is None and path:  # loaded from a file without registering the module
        return JobRef(module=module, qualname=qualname, path=str(path))
    if module == "__main__" and not path:
        raise ConfigurationError(
            "the job is defined in an interactive session (no source file), so the party "
            "processes cannot import it; put it in a .py module and import it from there")
    target: Any = mod
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if target is not job:
        raise ConfigurationError(
            f"job {module}.{qualname} is not reachable by that name (decorated or replaced?); "
            "pass a plain module-level function")
    ref = JobRef(module=module, qualname=qualname, path=path)
    if module == "__main__" and path and not _defined_at_top_level(path, qualname.split(".")[0]):
        raise ConfigurationError(_unreachable_job_hint(ref))
    return ref


def resolve_job(ref: JobRef) -> Callable[..., Any]:
    """Import the job named by ``ref`` in this (party) process."""
    mod: Any = None
    if ref.module == "__main__":
        mod = sys.modules.get("__mp_main__")
        if getattr(mod, "__file__", None) != ref.path:
            mod = None
        name = "__veil_job_main__"
    else:
        name = ref.module
        try:
            mod = importlib.import_module(ref.module)
        except ImportError:
            mod = None
    if mod is None:
        if ref.path is None:
            raise ConfigurationError(f"cannot import job module {ref.module!r}")
        mod = sys.modules.get(name)
        if mod is None or getattr(mod, "__file__", None) != ref.path:
            spec = importlib.util.spec_from_file_location(name, ref.path)
            if spec is None or spec.loader is None:
                raise ConfigurationError(f"cannot load job module from {ref.path!r}")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
    target: Any = mod
    for part in ref.qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(_unreachable_job_hint(ref)) from None
    return target


def _unreachable_job_hint(ref: JobRef) -> str:
    if ref.module == "__main__":
        return (f"the job {ref.qualname!r} is not defined at the top level of {ref.path}: each "
                "party imports that script without running its `if __name__ == \"__main__\":` "
                "block, so a job defined inside that block (or in any code that only runs "
                f"there) cannot be found. Move `def {ref.qualname.split('.')[0]}(party, ...):` "
                "to the top level of the script and keep only the mpc.run(...) call under the "
                "guard")
    return (f"module {ref.module!r} has no {ref.qualname!r} when a party imports it; define the "
            "job at the top level of the module")


def _defined_at_top_level(path: str, name: str) -> bool:
    """Whether the script at ``path`` binds ``name`` outside any ``if``/function (best effort:
    True when the script cannot be read or parsed)."""
    import ast

    try:
        if os.path.getsize(path) > 4 * 2**20:
            return True
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return True
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                return True
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any((a.asname or a.name.split(".")[0]) == name for a in node.names):
                return True
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.Try | ast.With):
            if any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node)):
                return True
    return False

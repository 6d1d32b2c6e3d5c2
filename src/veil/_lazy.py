"""Lazy package faces: a package's ``__getattr__`` and ``__dir__`` built from an export table.

A face lists its public names and the modules that define them; a name's module is imported the
first time the name is used, then the value is kept in the package's namespace. This module
imports nothing but :mod:`importlib`, so a face that uses it stays as cheap to import as before.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_face"]


def lazy_face(
    package: str,
    namespace: dict[str, Any],
    exports: Mapping[str, Iterable[str]],
    *,
    submodules: Iterable[str] = (),
    listed: Iterable[str],
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose globals are ``namespace``.

    ``exports`` maps a module to the public names it defines: a module of the package
    (``"lattice.ckks"`` is ``<package>.lattice.ckks``) or, spelled out, any ``veil.*`` module.
    ``submodules`` are the package's modules reachable as attributes (checked first); ``listed``
    is what ``dir()`` shows.
    """
    table = {name: module for module, names in exports.items() for name in names}
    subs = frozenset(submodules)
    shown = list(listed)

    def module_of(name: str) -> str:
        return name if name.startswith("veil.") else f"{package}.{name}"

    def __getattr__(name: str) -> Any:
        if name in subs:
            value = importlib.import_module(f"{package}.{name}")
        elif name in table:
            value = getattr(importlib.import_module(module_of(table[name])), name)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return list(shown)

    return __getattr__, __dir__

"""Veil: secure multi-party computation and homomorphic encryption for privacy-preserving ML.

``import veil`` is cheap and has no side effects: subpackages (and with them torch, crypten,
tenseal and phe) are imported on first attribute access, e.g. ``veil.he`` or ``veil.mpc``.
"""

from __future__ import annotations

import importlib
from typing import Any

from veil import errors
from veil.errors import VeilError

__version__ = "0.1.0"

_SUBPACKAGES = ("he", "mpc", "privacy", "protocols", "stats", "models", "fl", "serve", "bench")

__all__ = ["__version__", "errors", "VeilError", *_SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"veil.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'veil' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

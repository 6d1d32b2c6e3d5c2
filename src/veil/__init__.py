"""Veil: secure multi-party computation and homomorphic encryption for privacy-preserving ML.

``import veil`` is cheap and has no side effects: subpackages (and with them torch, crypten,
tenseal and phe) are imported on first attribute access, e.g. ``veil.he`` or ``veil.mpc``.
"""

from __future__ import annotations

from veil import errors
from veil._lazy import lazy_face
from veil.errors import VeilError

__version__ = "0.1.0"

_SUBPACKAGES = ("he", "mpc", "privacy", "protocols", "stats", "models", "fl", "serve", "bench")

__all__ = ["__version__", "errors", "VeilError", *_SUBPACKAGES]


__getattr__, __dir__ = lazy_face(__name__, globals(), {}, submodules=_SUBPACKAGES,
                                   listed=sorted(__all__))

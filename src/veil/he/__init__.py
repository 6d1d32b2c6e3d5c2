"""Homomorphic encryption: CKKS and BFV (TenSEAL) and Paillier (phe plus Veil's fast paths).

Names are imported lazily, so ``import veil.he`` does not load tenseal or phe until a name that
needs them is used. This package is the only part of Veil that imports tenseal and phe.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "CKKSParams": "params",
    "BFVParams": "params",
    "CKKSContext": "lattice.ckks",
    "CKKSTensor": "lattice.ckks",
    "linear_combination": "lattice.ckks",
    "BFVContext": "lattice.bfv",
    "BFVTensor": "lattice.bfv",
    "PaillierKeyPair": "paillier",
    "PaillierPublicKey": "paillier",
    "PaillierPrivateKey": "paillier",
    "PaillierVector": "paillier",
    "PackedPaillierVector": "paillier",
    "FixedPointEncoding": "encoding",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'veil.he' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"veil.he.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

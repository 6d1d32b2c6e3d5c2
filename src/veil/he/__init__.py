"""Homomorphic encryption: CKKS and BFV (TenSEAL) and Paillier (phe plus Veil's fast paths).

Names are imported lazily, so ``import veil.he`` does not load tenseal or phe until a name that
needs them is used. This package is the only part of Veil that imports tenseal and phe.
"""

from __future__ import annotations

from veil._lazy import lazy_face

# module -> the public names it defines
_EXPORTS: dict[str, tuple[str, ...]] = {
    "params": ("CKKSParams", "BFVParams"),
    "lattice.ckks": ("CKKSContext", "CKKSTensor", "linear_combination"),
    "lattice.bfv": ("BFVContext", "BFVTensor"),
    "lattice.slots": ("SlotContext", "SlotVector"),
    "lattice.slotparams": ("SlotParams",),
    "paillier": ("PaillierKeyPair", "PaillierPublicKey", "PaillierPrivateKey", "PaillierVector",
                 "PackedPaillierVector"),
    "encoding": ("FixedPointEncoding",),
}

__all__ = sorted(name for names in _EXPORTS.values() for name in names)


__getattr__, __dir__ = lazy_face(__name__, globals(), _EXPORTS, listed=__all__)

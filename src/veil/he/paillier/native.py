"""Conversions between Veil's PaillierVector and phe's EncryptedNumber lists.

phe encodes ``value = mantissa · 16^exponent``; Veil uses ``integer / 2^scale``. Converting aligns
phe's (usually negative) exponents to the smallest one by homomorphic multiplication with powers of
16, so ``scale = −4·min(exponent, 0)``; the other way, a scale that is not a multiple of 4 is raised
to one first. :meth:`PaillierVector.to_phe` and :meth:`PaillierVector.from_phe` call these
functions with the vector's parts (key, ciphertexts, scale), so this module needs no vector class.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz

from veil.errors import ConfigurationError, KeyMismatchError
from veil.he.encoding import MAX_PRECISION_BITS, FixedPointEncoding
from veil.he.paillier import wire
from veil.he.paillier.core import MAX_SCALE_BITS, PublicKeyBase, import_phe

__all__ = ["ciphertexts_from_phe", "ciphertexts_to_phe", "read_phe"]


def ciphertexts_to_phe(pk: PublicKeyBase, c: np.ndarray, scale: int, *,
                       fresh: bool) -> list[Any]:
    """Flat list (C order) of ``phe.EncryptedNumber`` for the ciphertexts ``c`` at ``scale``
    fractional bits (a multiple of 4); ``fresh`` ones are marked as already obfuscated."""
    phe = import_phe()
    pub = pk.to_phe()
    exponent = -scale // 4
    out = []
    for ci in c.ravel().tolist():
        e = phe.EncryptedNumber(pub, int(ci), exponent)
        if fresh:
            e._EncryptedNumber__is_obfuscated = True  # already fresh DJN randomness
        out.append(e)
    return out


def read_phe(numbers: Any) -> tuple[list[Any], int, list[int]]:
    """The ``phe.EncryptedNumber`` s of ``numbers`` (flattened), their one modulus ``n`` and
    their exponents."""
    nums = list(np.asarray(numbers, dtype=object).ravel())
    if not nums:
        raise ConfigurationError("from_phe needs at least one phe.EncryptedNumber")
    try:
        pubs = {int(e.public_key.n) for e in nums}
        exps = [int(e.exponent) for e in nums]
    except AttributeError as exc:
        raise ConfigurationError("from_phe expects phe.EncryptedNumber objects") from exc
    if len(pubs) != 1:
        raise KeyMismatchError("phe numbers come from different public keys")
    return nums, pubs.pop(), exps


def ciphertexts_from_phe(
    pk: PublicKeyBase,
    nums: list[Any],
    exps: list[int],
    shape: tuple[int, ...] | None,
    max_abs: float | None,
) -> tuple[list[mpz], tuple[int, ...], dict[str, Any]]:
    """Checked ciphertexts of ``nums`` under ``pk``, aligned to the smallest exponent; their
    shape; and the vector's ``scale``, ``bound``, ``integer`` and ``encoding``."""
    target = min(min(exps), 0)
    if -4 * target > MAX_SCALE_BITS or 4 * (max(exps) - target) > MAX_SCALE_BITS:
        raise ConfigurationError(
            f"phe exponents {min(exps)}..{max(exps)} need more than {MAX_SCALE_BITS} bits of "
            "scale; decrease_exponent_to() / re-encode them in a narrower range first"
        )
    scale = -4 * target
    n, n2 = pk._n, pk._n2
    cs = []
    for i, (e, x) in enumerate(zip(nums, exps)):
        c = mpz(e.ciphertext(be_secure=False))
        wire.check_ciphertext(c, n, n2, index=i, error=ConfigurationError)
        if x != target:
            c = gmpy2.powmod(c, mpz(16) ** (x - target), n2)
        cs.append(c)
    shape = (len(cs),) if shape is None else tuple(shape)
    if math.prod(shape) != len(cs):
        raise ConfigurationError(f"shape {shape} does not hold {len(cs)} numbers")
    if max_abs is None:
        bound = int(n) // 3
        enc = FixedPointEncoding(min(scale, MAX_PRECISION_BITS))
    else:
        enc = FixedPointEncoding(min(scale, MAX_PRECISION_BITS), max_abs)
        bound = math.ceil(Fraction(enc.max_abs) * (1 << scale))
    return cs, shape, {"scale": scale, "bound": bound, "integer": scale == 0, "encoding": enc}

"""Conversions between Veil's PaillierVector and phe's EncryptedNumber lists.

phe encodes ``value = mantissa · 16^exponent``; Veil uses ``integer / 2^scale``. Converting aligns
phe's (usually negative) exponents to the smallest one by homomorphic multiplication with powers of
16, so ``scale = −4·min(exponent, 0)``; the other way, a scale that is not a multiple of 4 is raised
to one first.
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
from veil.he.paillier.vector import MAX_SCALE_BITS, PaillierVector, object_array


def vector_to_phe(v: PaillierVector) -> list[Any]:
    """Flat list (C order) of ``phe.EncryptedNumber`` for ``v``."""
    from veil.he.paillier.keys import import_phe

    phe = import_phe()
    pub = v._pk.to_phe()
    extra = (-v._scale) % 4
    c = v._aligned(v._scale + extra)[0] if extra else v._c
    exponent = -(v._scale + extra) // 4
    out = []
    for ci in c.ravel().tolist():
        e = phe.EncryptedNumber(pub, int(ci), exponent)
        if v._fresh:
            e._EncryptedNumber__is_obfuscated = True  # already fresh DJN randomness
        out.append(e)
    return out


def vector_from_phe(
    numbers: Any,
    *,
    shape: tuple[int, ...] | None,
    max_abs: float | None,
    allow_insecure: bool,
) -> PaillierVector:
    """A PaillierVector from ``phe.EncryptedNumber`` s under one key (see ``from_phe``)."""
    from veil.he.paillier.keys import PaillierPublicKey

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
    pk = PaillierPublicKey(pubs.pop(), allow_insecure=allow_insecure)
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
    return PaillierVector._make(
        pk, object_array(cs, shape), scale=scale, bound=bound, integer=scale == 0,
        encoding=enc, fresh=False,
    )

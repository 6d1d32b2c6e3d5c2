"""Parameters of slot-level CKKS contexts (:class:`veil.he.lattice.slots.SlotContext`).

Like :class:`~veil.he.CKKSParams` (ring degree, RNS prime sizes ``(q0, p1..pd, special)``,
working scale ``2**scale_bits``; every middle prime has ``scale_bits`` bits; 128-bit security
by the HE standard table unless ``allow_insecure=True`` is passed by name), with two freedoms
TenSEAL's layer cannot use, because Veil's slot layer tracks scales exactly and rotates only
ciphertexts whose scale is about ``2**(2 * scale_bits)``:

* ``output_scale_bits``: the last product lands on ``2**output_scale_bits`` instead of the
  working scale, so ``q0`` needs only ``output_scale_bits + integer_bits + 1`` bits;
* the special (key-switching) prime may be smaller than the data primes (at least 30 bits):
  key-switching noise grows by ``q_max / P`` but is divided by the high pre-rescale scale.

The bits saved go to a finer working scale at the same ring size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from veil.errors import ConfigurationError, InsecureParametersError
from veil.he.params import MAX_LOG_Q, security_level

__all__ = ["SlotParams", "MIN_SPECIAL_BITS"]

MIN_SPECIAL_BITS = 30


@dataclass(frozen=True)
class SlotParams:
    """Parameters of a :class:`~veil.he.lattice.slots.SlotContext`."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    output_scale_bits: int
    allow_insecure: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if isinstance(n, bool) or not isinstance(n, int) or n not in MAX_LOG_Q[128]:
            raise ConfigurationError(
                f"poly_modulus_degree must be one of {sorted(MAX_LOG_Q[128])}, got {n!r}")
        try:
            bits = tuple(int(b) for b in self.coeff_mod_bit_sizes)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"coeff_mod_bit_sizes must be prime sizes, got {self.coeff_mod_bit_sizes!r}"
            ) from None
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        low = int(math.log2(2 * n)) + 2
        s, so = self.scale_bits, self.output_scale_bits
        if len(bits) < 3 or any(not low <= b <= 60 for b in bits):
            raise ConfigurationError(
                f"coeff_mod_bit_sizes {bits} needs q0, at least one middle prime and the special "
                f"prime, each of {low}..60 bits")
        if any(b != s for b in bits[1:-1]) or not 20 <= so <= s < 60 or bits[0] <= so:
            raise ConfigurationError(
                f"middle primes must have scale_bits={s} bits and q0 ({bits[0]}) more than "
                f"output_scale_bits={so} (20 <= output_scale_bits <= scale_bits); got {bits}")
        if bits[-1] < MIN_SPECIAL_BITS:
            raise ConfigurationError(
                f"the special prime needs at least {MIN_SPECIAL_BITS} bits, got {bits[-1]}")
        if not isinstance(self.allow_insecure, bool):
            raise ConfigurationError(f"allow_insecure must be a bool, got {self.allow_insecure!r}")
        if sum(bits) > MAX_LOG_Q[128][n] and not self.allow_insecure:
            raise InsecureParametersError(
                f"SlotParams: {sum(bits)} bits of coefficient modulus exceed "
                f"{MAX_LOG_Q[128][n]}, the 128-bit maximum at N={n} (HE standard); use fewer "
                "or smaller primes, a larger ring, or allow_insecure=True by name")

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def integer_bits(self) -> int:
        """Bits for the integer part of a result at the last level (one more for the sign)."""
        return self.coeff_mod_bit_sizes[0] - self.output_scale_bits - 1

    @property
    def max_abs_value(self) -> float:
        """Inputs (encrypted at the working scale, top level) must be below this."""
        return float(2 ** min(self.integer_bits, 60 - self.scale_bits))

    @property
    def security_bits(self) -> int:
        """256, 192 or 128 by the HE standard table; 0 means below 128 bits (insecure)."""
        return security_level(self.poly_modulus_degree, sum(self.coeff_mod_bit_sizes))

    def describe(self) -> dict[str, Any]:
        return {"scheme": "ckks-slots", "poly_modulus_degree": self.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
                "scale_bits": self.scale_bits, "output_scale_bits": self.output_scale_bits}

    @classmethod
    def from_description(cls, desc: dict[str, Any], *, allow_insecure: bool = False,
                         ) -> SlotParams:
        if desc.get("scheme") != "ckks-slots":
            raise ConfigurationError(f"not a ckks-slots parameter description: {desc!r}")
        return cls(int(desc["poly_modulus_degree"]), tuple(desc["coeff_mod_bit_sizes"]),
                   int(desc["scale_bits"]), int(desc["output_scale_bits"]),
                   allow_insecure=allow_insecure)

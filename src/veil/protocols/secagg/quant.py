"""Fixed-point quantization of float updates into the ring Z_{2**k} used by secure aggregation.

A value ``x`` is clipped to ``[-clip, clip]`` (every clipped value is counted, never silently
dropped), shifted to ``[0, 2 * clip]`` and rounded to one of ``levels + 1`` grid points
``0 .. levels``. ``levels`` is chosen as ``(2**k - 1) // max_addends`` so the sum of
``max_addends`` quantized values is at most ``2**k - 1``: the ring sum never wraps, hence the
integer sum recovered by the server *is* the sum of the quantized values. Per value the rounding
error is at most ``step / 2`` with ``step = 2 * clip / levels``; a sum of ``m`` values is off by at
most ``m * step / 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from veil.errors import ConfigurationError
from veil.protocols.prg import ring_dtype

__all__ = ["Quantizer"]

_MAX_EXACT_LEVELS = 1 << 53  # float64 represents every grid index exactly below this


@dataclass(frozen=True)
class Quantizer:
    """Maps float vectors to ring elements and sums of ring elements back to floats.

    ``clip``: values outside ``[-clip, clip]`` are clipped (and counted).
    ``max_addends``: the most vectors that will ever be summed (the number of clients).
    ``ring_bits``: ``k`` in Z_{2**k}.
    """

    clip: float
    max_addends: int
    ring_bits: int = 32
    levels: int = field(init=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.clip, (int, float)) and math.isfinite(self.clip) and self.clip > 0):
            raise ConfigurationError(
                f"clip must be a finite positive number, got {self.clip!r}; pick the largest "
                "magnitude an update coordinate may legitimately have"
            )
        if not isinstance(self.max_addends, int) or self.max_addends < 1:
            raise ConfigurationError(f"max_addends must be a positive integer, got "
                                     f"{self.max_addends!r}")
        ring_dtype(self.ring_bits)  # validates ring_bits
        levels = min(((1 << self.ring_bits) - 1) // self.max_addends, _MAX_EXACT_LEVELS)
        if levels < 2:
            raise ConfigurationError(
                f"a {self.ring_bits}-bit ring leaves fewer than 2 quantization levels for "
                f"{self.max_addends} addends; raise ring_bits"
            )
        object.__setattr__(self, "levels", levels)

    @property
    def step(self) -> float:
        """Distance between adjacent grid points (the quantization resolution)."""
        return 2.0 * self.clip / self.levels

    @property
    def dtype(self) -> Any:
        return ring_dtype(self.ring_bits)

    def quantize(self, values: Any) -> tuple[Any, int]:
        """Return ``(q, clipped)``: grid indices in ``[0, levels]`` and how many were clipped.

        Rejects NaN and infinities (:class:`~veil.errors.ConfigurationError`).
        """
        import numpy as np

        x = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(x)):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise ConfigurationError(
                f"update contains {bad} NaN/infinite values; secure aggregation sums finite "
                "numbers only (check the local training step)"
            )
        clipped = int(np.count_nonzero(np.abs(x) > self.clip))
        xc = np.clip(x, -self.clip, self.clip)
        idx = np.rint((xc + self.clip) * (self.levels / (2.0 * self.clip)))
        idx = np.clip(idx, 0, self.levels)
        return idx.astype(self.dtype), clipped

    def dequantize(self, q: Any) -> Any:
        """Grid indices of a single vector back to floats."""
        return self.dequantize_sum(q, 1)

    def dequantize_sum(self, total: Any, count: int) -> Any:
        """Float sum from the integer sum of ``count`` quantized vectors."""
        import numpy as np

        if not 0 <= count <= self.max_addends:
            raise ConfigurationError(
                f"count {count} is outside [0, max_addends={self.max_addends}]"
            )
        t = np.asarray(total).astype(np.float64)
        return t * self.step - count * self.clip

    def describe(self) -> dict[str, Any]:
        return {"clip": float(self.clip), "max_addends": self.max_addends,
                "ring_bits": self.ring_bits, "levels": self.levels}

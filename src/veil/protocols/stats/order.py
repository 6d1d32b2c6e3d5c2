"""Order statistics: which order-statistic positions a release needs, and putting them back.

Shared by the MPC kernels (:mod:`veil.protocols.stats.secret`, :mod:`veil.protocols.stats.rows`,
:mod:`veil.protocols.stats.dp_order`); the plaintext oracle uses :mod:`statistics` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from veil.errors import ConfigurationError
from veil.protocols.stats.spec import ORDER, Spec

__all__ = ["Target", "order_targets", "assemble_order"]


@dataclass(frozen=True)
class Target:
    """value = (x[a] * (den - num) + x[a + 1] * num) / den over the sorted column ``col``."""

    key: str
    col: int
    a: int
    num: int
    den: int

    @property
    def exact(self) -> bool:
        return self.num == 0 or self.num == self.den

    @property
    def index(self) -> int:
        return self.a + 1 if self.num == self.den else self.a


def order_targets(spec: Spec, n: int) -> list[Target]:
    """The order-statistic positions each requested statistic needs, given ``n`` rows."""
    if n < 1:
        raise ConfigurationError("order statistics need at least one row")
    out: list[Target] = []
    for col in range(spec.d):
        for key in ORDER:
            if key not in spec.stats:
                continue
            if key == "min":
                out.append(Target(key, col, 0, 0, 1))
            elif key == "max":
                out.append(Target(key, col, n - 1, 0, 1))
            elif key == "median_low":
                out.append(Target(key, col, (n - 1) // 2, 0, 1))
            elif key == "median_high":
                out.append(Target(key, col, n // 2, 0, 1))
            elif key == "median":
                if n % 2:
                    out.append(Target(key, col, n // 2, 0, 1))
                else:
                    out.append(Target(key, col, n // 2 - 1, 1, 2))
            else:
                out.extend(_quantile_targets(spec, col, n))
    return out


def _quantile_targets(spec: Spec, col: int, n: int) -> list[Target]:
    q = spec.quantiles_n
    if n < 2:
        raise ConfigurationError("quantiles need at least two rows")
    res = []
    for i in range(1, q):
        if spec.method == "inclusive":
            j, delta = divmod(i * (n - 1), q)
            if j >= n - 1:  # only reachable for i == q; keep the index valid
                j, delta = n - 2, q
            res.append(Target("quantiles", col, j, delta, q))
        else:
            m = n + 1
            j = i * m // q
            j = 1 if j < 1 else n - 1 if j > n - 1 else j
            delta = i * m - j * q
            res.append(Target("quantiles", col, j - 1, delta, q))
    return res


def assemble_order(spec: Spec, targets: Sequence[Target], values: Sequence[float]) -> dict:
    """Group per-target values back into per-statistic, per-column arrays."""
    out: dict[str, Any] = {}
    for key in ORDER:
        if key not in spec.stats:
            continue
        if key == "quantiles":
            out[key] = np.array([[v for t, v in zip(targets, values)
                                  if t.key == key and t.col == c] for c in range(spec.d)])
        else:
            arr = np.zeros(spec.d)
            for t, v in zip(targets, values):
                if t.key == key:
                    arr[t.col] = v
            out[key] = arr
    return out


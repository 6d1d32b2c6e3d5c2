"""Differentially private order statistics: a noisy public binary search.

Used by the MPC backend (:func:`mpc_search`, all parties together) and by a curator holding all
rows in plaintext (:func:`plain_search`, the oracle); both run the *same* mechanism.

Every DP order statistic is a plain rank search, no interpolation between order statistics:
the target is a fraction ``q = num/den`` in lowest terms (median, median_low: 1/2; quantile i
of n: i/n; max: 1/1) and the answer is (up to the noise) the order statistic of rank
``ceil(q·N)``; ``min`` asks for rank 1 and ``median_high`` for rank ``floor(N/2) + 1`` (both
via a public ``offset`` of -1 below). The quantile ``method`` is ignored under DP.

Per target, the declared bounds ``[lo, hi]`` of its column are searched by bisection over
:data:`ROUNDS` rounds on the grid ``lo + i·w``, ``w = (hi - lo) / 2**ROUNDS``. Per round and
target, with the public threshold ``t``, every party p computes the integer
``s_p = den·count_p(values <= t) - num·n_p`` over its own rows (values clipped to the bounds,
``n_p`` its own row count; the offset is added by party 0), adds its own full-scale integer
noise ``eta_p`` (one fresh draw per query, from the CSPRNG samplers in
``veil.privacy.mechanisms``), secret-shares ``s_p + eta_p``, and the parties open ONLY the bit
``[sum_p (s_p + eta_p) >= 0]``, to every party; the interval moves accordingly. The answer is
the upper end of the final cell (the smallest grid point above ``lo`` where the noisy predicate
held). Neither N, nor any count, nor any per-party value is opened.

Privacy (add/remove one row): one query changes by at most ``Δ = max(num, den - num)``; a
release with T targets makes ``ROUNDS·T`` adaptively chosen queries. The caller calibrates the
per-query noise by composition (``veil.stats._release``): discrete Laplace with scale
``Δ·ROUNDS·T / ε_order`` (pure ε-DP) or discrete Gaussian with ``σ² = Δ²·ROUNDS·T / (2ρ_order)``
(zCDP). Every party's noise alone suffices, so the bits are DP even against a coalition of all
parties but one. Accuracy: a query is answered correctly whenever the noise sum is below its
distance ``|s|`` from zero, so the rank error is about (noise std of the sum) / den, plus the
grid resolution ``w`` in value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from veil.errors import ConfigurationError
from veil.protocols import statistics as st
from veil.protocols.stats_mpc_core import UNIT, _open, _range, _sum_from_all

__all__ = ["ROUNDS", "DPTarget", "dp_targets", "grid_step", "plain_search", "mpc_search"]

ROUNDS = 16  # bisection rounds per target: resolution (hi - lo) / 2**ROUNDS
_LIMIT = 2**50  # |s_p + eta_p| is clamped here so that the ring sum cannot overflow

Draw = Callable[[], Sequence[int]]


@dataclass(frozen=True)
class DPTarget:
    """One rank search: predicate ``den·count(<= t) - num·N + offset >= 0`` on column ``col``."""

    key: str
    col: int
    num: int
    den: int
    offset: int = 0

    @property
    def sensitivity(self) -> int:
        """Largest change of one query when one row is added or removed."""
        return max(self.num, self.den - self.num)


def dp_targets(spec: st.Spec) -> list[DPTarget]:
    """The rank searches a DP release of ``spec`` runs (empty without order statistics)."""
    out: list[DPTarget] = []
    for col in range(spec.d):
        for key in st.ORDER:
            if key not in spec.stats:
                continue
            if key == "min":
                out.append(DPTarget(key, col, 0, 1, -1))
            elif key == "max":
                out.append(DPTarget(key, col, 1, 1))
            elif key in ("median", "median_low"):
                out.append(DPTarget(key, col, 1, 2))
            elif key == "median_high":
                out.append(DPTarget(key, col, 1, 2, -1))
            else:
                for i in range(1, spec.quantile_n):
                    q = Fraction(i, spec.quantile_n)
                    out.append(DPTarget(key, col, q.numerator, q.denominator))
    return out


def grid_step(spec: st.Spec, col: int) -> tuple[float, float]:
    """(lo, w): the search grid of column ``col`` is ``lo + i·w`` for i = 1 .. 2**ROUNDS."""
    lo, hi = _range(spec, col)
    return lo, (hi - lo) / 2**ROUNDS


def _search(x: np.ndarray, spec: st.Spec, targets: Sequence[DPTarget], with_offset: bool,
            decide: Callable[[list[int]], np.ndarray]) -> dict[str, Any]:
    """Bisection shared by both callers; ``decide`` maps this party's scores to the T bits."""
    if spec.bounds is None:
        raise ConfigurationError("DP order statistics need declared bounds")
    xc = st.clip(np.asarray(x, dtype=np.float64).reshape(-1, spec.d), spec)
    n_local = xc.shape[0]
    cols = {t.col: np.sort(xc[:, t.col]) for t in targets}
    grids = [grid_step(spec, t.col) for t in targets]
    lo_i = [0] * len(targets)  # invariant: the answer's index lies in (lo_i, hi_i]
    hi_i = [2**ROUNDS] * len(targets)
    for _ in range(ROUNDS):
        mid = [(a + b) // 2 for a, b in zip(lo_i, hi_i)]
        scores = []
        for t, (lo, w), m in zip(targets, grids, mid):
            count = int(np.searchsorted(cols[t.col], lo + m * w, side="right"))
            scores.append(t.den * count - t.num * n_local + (t.offset if with_offset else 0))
        bits = np.asarray(decide(scores), dtype=bool)
        for j, m in enumerate(mid):
            if bits[j]:
                hi_i[j] = m
            else:
                lo_i[j] = m
    values = [lo + h * w for (lo, w), h in zip(grids, hi_i)]
    plain = [st.Target(t.key, t.col, 0, t.num, t.den) for t in targets]
    return st.assemble_order(spec, plain, values)


def _noisy(scores: Sequence[int], draw: Draw) -> list[int]:
    noise = list(draw())
    if len(noise) != len(scores):
        raise ConfigurationError(f"noise has {len(noise)} entries, the round has {len(scores)}")
    return [max(-_LIMIT, min(_LIMIT, int(s) + int(e))) for s, e in zip(scores, noise)]


def plain_search(x: np.ndarray, spec: st.Spec, targets: Sequence[DPTarget],
                 draw: Draw) -> dict[str, Any]:
    """The mechanism run by one curator holding every row (``draw``: one noise entry per target,
    fresh on every call). Returns ``{statistic: per-column values}``."""
    return _search(x, spec, targets, True,
                   lambda s: np.array([v >= 0 for v in _noisy(s, draw)]))


def mpc_search(party: Any, x: np.ndarray, spec: st.Spec, targets: Sequence[DPTarget],
               draw: Draw | None) -> dict[str, Any]:
    """All parties together (SPMD), each with its own rows and its own noise ``draw``; opens one
    bit per target and round to every party. Returns ``{statistic: per-column values}``."""
    if draw is None:
        raise ConfigurationError("DP order statistics need per-query noise (a draw function)")

    def decide(scores: list[int]) -> np.ndarray:
        # integers travel as k·2^-16, i.e. exactly k on CrypTen's ring; only the sign matters
        local = np.array([v * UNIT for v in _noisy(scores, draw)], dtype=np.float64)
        negative = _sum_from_all(party, local) < 0
        return np.rint(_open(party, negative)) == 0

    with party.phase("stats dp order statistics (noisy public search)"):
        return _search(x, spec, targets, party.rank == 0, decide)

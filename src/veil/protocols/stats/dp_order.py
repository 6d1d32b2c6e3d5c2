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
``veil.privacy.mechanisms``; every round's draws are made *before* the protocol starts, so the
samplers' running time, which grows with ``|eta|``, is not visible round by round),
secret-shares ``s_p + eta_p``, and the parties open ONLY the bit
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
from veil.protocols.stats import spec as st
from veil.protocols.stats.order import Target, assemble_order
from veil.protocols.stats.shares import UNIT, open_to_all, sum_from_all, value_range

__all__ = ["ROUNDS", "DPTarget", "dp_targets", "grid_step", "plain_search", "mpc_search",
           "predraw"]

ROUNDS = 16  # bisection rounds per target: resolution (hi - lo) / 2**ROUNDS
_LIMIT = 2**50  # |s_p + eta_p| is clamped here so that the ring sum cannot overflow

Draw = Callable[[], Sequence[int]]
Noise = Sequence[Sequence[int]]  # ROUNDS rows of one integer per target, drawn in advance


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
                for i in range(1, spec.quantiles_n):
                    q = Fraction(i, spec.quantiles_n)
                    out.append(DPTarget(key, col, q.numerator, q.denominator))
    return out


def grid_step(spec: st.Spec, col: int) -> tuple[float, float]:
    """(lo, w): the search grid of column ``col`` is ``lo + i·w`` for i = 1 .. 2**ROUNDS."""
    lo, hi = value_range(spec, col)
    return lo, (hi - lo) / 2**ROUNDS


def _search(x: np.ndarray, spec: st.Spec, targets: Sequence[DPTarget], with_offset: bool,
            decide: Callable[[int, list[int]], np.ndarray]) -> dict[str, Any]:
    """Bisection shared by both callers; ``decide(round, scores)`` gives the T bits."""
    if spec.bounds is None:
        raise ConfigurationError("DP order statistics need declared bounds")
    xc = st.clip(np.asarray(x, dtype=np.float64).reshape(-1, spec.d), spec)
    n_local = xc.shape[0]
    cols = {t.col: np.sort(xc[:, t.col]) for t in targets}
    grids = [grid_step(spec, t.col) for t in targets]
    lo_i = [0] * len(targets)  # invariant: the answer's index lies in (lo_i, hi_i]
    hi_i = [2**ROUNDS] * len(targets)
    for rnd in range(ROUNDS):
        mid = [(a + b) // 2 for a, b in zip(lo_i, hi_i)]
        scores = []
        for t, (lo, w), m in zip(targets, grids, mid):
            count = int(np.searchsorted(cols[t.col], lo + m * w, side="right"))
            scores.append(t.den * count - t.num * n_local + (t.offset if with_offset else 0))
        bits = np.asarray(decide(rnd, scores), dtype=bool)
        for j, m in enumerate(mid):
            if bits[j]:
                hi_i[j] = m
            else:
                lo_i[j] = m
    values = [lo + h * w for (lo, w), h in zip(grids, hi_i)]
    plain = [Target(t.key, t.col, 0, t.num, t.den) for t in targets]
    return assemble_order(spec, plain, values)


def predraw(draw: Draw | Noise, targets: Sequence[DPTarget]) -> list[list[int]]:
    """All ``ROUNDS`` rounds of noise, before any query: ``draw`` is called ``ROUNDS`` times
    now (or the given rows are checked): ROUNDS lists of one integer per target."""
    rows = ([list(draw()) for _ in range(ROUNDS)] if callable(draw)
            else [list(r) for r in draw])
    if len(rows) != ROUNDS or any(len(r) != len(targets) for r in rows):
        raise ConfigurationError(
            f"DP order noise must hold {ROUNDS} rounds of {len(targets)} integers, got "
            f"{len(rows)} rounds of {sorted({len(r) for r in rows})} entries")
    return rows


def _noisy(scores: Sequence[int], noise: Sequence[int]) -> list[int]:
    return [max(-_LIMIT, min(_LIMIT, int(s) + int(e))) for s, e in zip(scores, noise)]


def plain_search(x: np.ndarray, spec: st.Spec, targets: Sequence[DPTarget],
                 draw: Draw | Noise) -> dict[str, Any]:
    """The mechanism run by one curator holding every row (``draw``: one noise entry per target
    per call, or the ``ROUNDS`` pre-drawn rows; every round is drawn before the search).
    Returns ``{statistic: per-column values}``."""
    noise = predraw(draw, targets)
    return _search(x, spec, targets, True,
                   lambda rnd, s: np.array([v >= 0 for v in _noisy(s, noise[rnd])]))


def mpc_search(party: Any, x: np.ndarray, spec: st.Spec, targets: Sequence[DPTarget],
               noise: Noise | None) -> dict[str, Any]:
    """All parties together (SPMD), each with its own rows and its own pre-drawn ``noise``
    (``ROUNDS`` rows of one integer per target, see :func:`predraw`); opens one bit per target
    and round to every party. Returns ``{statistic: per-column values}``."""
    if noise is None or callable(noise):
        raise ConfigurationError(
            "DP order statistics need this party's pre-drawn noise: ROUNDS rows of one integer "
            "per target (see stats_mpc_dp_order.predraw), drawn before the protocol starts")
    rows = predraw(noise, targets)

    def decide(rnd: int, scores: list[int]) -> np.ndarray:
        # integers travel as k·2^-16, i.e. exactly k on CrypTen's ring; only the sign matters
        local = np.array([v * UNIT for v in _noisy(scores, rows[rnd])], dtype=np.float64)
        negative = sum_from_all(party, local) < 0
        return np.rint(open_to_all(party, negative)) == 0

    with party.phase("stats dp order statistics (noisy public search)"):
        return _search(x, spec, targets, party.rank == 0, decide)

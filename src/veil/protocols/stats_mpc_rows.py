"""MPC kernels that need the rows themselves: order statistics and logistic regression.

See :mod:`veil.protocols.stats_mpc` for what each step reveals and to whom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from veil.errors import ConfigurationError
from veil.protocols import statistics as st
from veil.protocols.stats_mpc_core import (
    OBLIVIOUS_FANOUT,
    PUBLIC_FANOUT,
    UNIT,
    _fixed,
    _moments,
    _open,
    _range,
    _sum_from_all,
    _torch,
    inv_sqrt,
)

__all__ = ["public_bisection", "oblivious_bisection", "logistic"]


def public_bisection(party: Any, x: np.ndarray, spec: st.Spec,
                     targets: Sequence[st.Target]) -> list[float]:
    """Exact order statistics by a public (m+1)-ary search on the 2^-16 grid.

    Each round, per target, every party shares its local counts of values <= m public thresholds
    and the parties open the m bits ``joint count >= k``. The bits only say which of the m+1
    sub-intervals holds the answer, so the whole transcript is a function of the output.
    """
    torch = _torch()
    m = PUBLIC_FANOUT
    xc = st.clip(x, spec)
    cols = [np.sort(xc[:, t.col]) for t in targets]
    base = np.array([_range(spec, t.col)[0] for t in targets])
    grid = [math.ceil((_range(spec, t.col)[1] - b) / UNIT) for t, b in zip(targets, base)]
    lo = [-1] * len(targets)  # invariant: count(lo) < k <= count(hi); answer = hi
    hi = list(grid)
    k = torch.tensor([[t.index + 1 - 0.5] for t in targets], dtype=torch.float64)
    with party.phase("stats order statistics (public search)"):
        while any(h - lo_ > 1 for lo_, h in zip(lo, hi)):
            points = [[lo_ + (h - lo_) * (i + 1) // (m + 1) for i in range(m)]
                      for lo_, h in zip(lo, hi)]
            counts = np.array([np.searchsorted(c, base[j] + np.array(p) * UNIT, side="right")
                               for j, (c, p) in enumerate(zip(cols, points))], dtype=np.float64)
            bits = np.rint(_open(party, _sum_from_all(party, counts) >= k)).astype(bool)
            for j, p in enumerate(points):
                if hi[j] - lo[j] <= 1:
                    continue
                below = [q for q, b in zip(p, bits[j]) if not b]
                above = [q for q, b in zip(p, bits[j]) if b]
                lo[j] = max([lo[j], *below])
                hi[j] = min([hi[j], *above])
    return [float(b + h * UNIT) for b, h in zip(base, hi)]


def _padded_columns(party: Any, x: np.ndarray, spec: st.Spec, cols: Sequence[int],
                    n: float) -> Any:
    """Shared (len(cols), P·N) matrix: each party's column padded to N with a sentinel."""
    xc = st.clip(x, spec)
    mat = np.zeros((len(cols), int(n)))
    for i, c in enumerate(cols):
        sentinel = _range(spec, c)[1] + 1.0
        mat[i, :] = sentinel
        mat[i, :xc.shape[0]] = xc[:, c]
    parts = [party.share(_torch().as_tensor(mat) if r == party.rank else None, src=r,
                         shape=mat.shape) for r in range(party.world_size)]
    from veil import mpc

    return mpc.cat(parts, dim=1)


def oblivious_bisection(party: Any, x: np.ndarray, spec: st.Spec, targets: Sequence[st.Target],
                        n: float) -> Any:
    """Interpolated order statistics by an (m+1)-ary search with secret thresholds.

    Only the interval width is public (it shrinks by m+1 each round whatever the data); the
    lower end, the comparisons and the counts stay shared. Returns the shared values.
    """
    torch = _torch()
    from veil import mpc

    m = OBLIVIOUS_FANOUT
    ranks: list[tuple[int, int]] = []  # (col, k) searches
    for t in targets:
        ranks.append((t.col, t.a + 1))
        ranks.append((t.col, t.a + 2))
    cols = sorted({c for c, _ in ranks})
    data = _padded_columns(party, x, spec, cols, n)  # (C, P·N)
    rows = data[torch.tensor([cols.index(c) for c, _ in ranks])]  # (Q, P·N)
    lo0 = torch.tensor([_range(spec, c)[0] - UNIT for c, _ in ranks], dtype=torch.float64)
    width = torch.tensor([_range(spec, c)[1] - _range(spec, c)[0] + UNIT for c, _ in ranks],
                         dtype=torch.float64)
    k = torch.tensor([[float(kk)] for _, kk in ranks], dtype=torch.float64)  # integer counts
    steps = int(math.ceil(math.log(float(width.max()) / UNIT, m + 1)))
    lo = rows[:, 0] * 0.0 + lo0  # invariant: count(lo) < k <= count(lo + width)
    frac = torch.arange(1, m + 1, dtype=torch.float64) / (m + 1)
    with party.phase("stats order statistics (oblivious search)"):
        for _ in range(steps):
            points = lo.unsqueeze(1) + width.unsqueeze(1) * frac.unsqueeze(0)  # (Q, m)
            below = (rows.unsqueeze(1) <= points.unsqueeze(2)).sum(dim=2)  # (Q, m) counts
            under = m - (below >= k).sum(dim=1)  # thresholds still below the answer
            width = width / (m + 1)
            lo = lo + _fixed(under, lo) * width
    hi = lo + width
    vals = []
    for i, t in enumerate(targets):
        a, b = hi[2 * i], hi[2 * i + 1]
        vals.append(a * ((t.den - t.num) / t.den) + b * (t.num / t.den))
    return mpc.stack(vals)


# --- logistic regression ----------------------------------------------------------------------
def logistic(party: Any, x: np.ndarray, spec: st.Spec, n: float) -> Any:
    """Joint full-batch gradient descent on shares; returns shared [coef..., intercept]."""
    torch = _torch()
    from veil import mpc

    t = spec.target_index
    f = [j for j in range(spec.d) if j != t]
    xc = st.clip(x, spec)
    y = xc[:, t]
    if not np.all((y == 0) | (y == 1)):
        raise ConfigurationError(
            f"party {party.rank}: logistic regression needs a 0/1 target; column "
            f"{spec.columns[t]!r} has other values")
    feats = xc[:, f]
    m1, m2 = _moments(party, feats, st.Spec(("mean",), tuple(spec.columns[j] for j in f)), n,
                      False)
    r = inv_sqrt(m2[torch.arange(len(f)), torch.arange(len(f))] - m1 * m1)
    block = np.zeros((int(n), len(f) + 2))  # features, label, mask; padded to N rows
    block[:feats.shape[0], :len(f)] = feats
    block[:feats.shape[0], len(f)] = y
    block[:feats.shape[0], len(f) + 1] = 1.0
    parts = [party.share(torch.as_tensor(block) if rr == party.rank else None, src=rr,
                         shape=block.shape) for rr in range(party.world_size)]
    data = mpc.cat(parts, dim=0)
    mask = data[:, len(f) + 1]
    z = (data[:, :len(f)] - m1.unsqueeze(0)) * r.unsqueeze(0) * mask.unsqueeze(1)
    label = data[:, len(f)]
    w = r * 0.0
    b = m1[0] * 0.0
    rows = int(n)  # divide by the integer N (exact truncation), not by a tiny fixed-point 1/N
    lr = spec.learning_rate
    with party.phase("stats logistic regression"):
        for _ in range(spec.iterations):
            p = (z.matmul(w.unsqueeze(1)).squeeze(1) + b).sigmoid()
            g = (p - label) * mask
            w = w - z.t().matmul(g.unsqueeze(1)).squeeze(1).div(rows) * lr
            b = b - g.sum().div(rows) * lr
    coef = w * r
    return mpc.cat([coef, (b - (coef * m1).sum()).unsqueeze(0)])


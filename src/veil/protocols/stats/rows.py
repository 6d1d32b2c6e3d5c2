"""MPC kernels that need the rows themselves: order statistics and logistic regression.

See :mod:`veil.protocols.stats.secret` for what each step reveals and to whom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from veil.errors import ConfigurationError
from veil.protocols.stats import spec as st
from veil.protocols.stats.order import Target
from veil.protocols.stats.shares import (
    FRAC_BITS,
    OBLIVIOUS_FANOUT,
    PUBLIC_FANOUT,
    UNIT,
    as_fixed,
    inv_sqrt,
    load_torch,
    moments,
    open_to_all,
    value_range,
)

__all__ = ["public_bisection", "public_search_supports", "oblivious_bisection", "logistic"]


FINE = UNIT / 2  # search grid of interpolating targets (2^-17)
GAP_BITS = 20  # interpolating targets: values rounded to the 2^-20 grid before anything is shared
GAP_SCALE = 2.0 ** (GAP_BITS - FRAC_BITS)  # gaps * 16 are exact on CrypTen's 2^-16 grid
GAP_CAP = 4.0 * st.VALUE_LIMIT  # shared gaps are capped here; every gap that matters is smaller
_GRAD_SCALE = 256.0  # the convergence test squares 256·gradient (resolution of tol^2)
MAX_PUBLIC_DEN = 2**16  # keeps den * gap * GAP_SCALE (<= 2^37) far inside the 64-bit ring


def public_search_supports(t: Target) -> bool:
    """Whether :func:`public_bisection` handles ``t``: exact order statistics, and interpolation
    *between* two order statistics (0 < num < den <= 2^16). Extrapolated cut points (the
    ``"exclusive"`` quantile method below the first or above the last order statistic) are not."""
    return t.exact or 0 < t.num < t.den <= MAX_PUBLIC_DEN


def _round_fine(v: np.ndarray) -> np.ndarray:
    """Round to the 2^-20 grid (exact in float64 for |v| < 2^32; monotone, so order-preserving)."""
    return np.round(v * 2.0**GAP_BITS) * 2.0**-GAP_BITS


def _local_view(col: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This party's count of values <= each threshold and its gaps to the nearest value at or
    below (``t - max{x <= t}``) and above (``min{x > t} - t``); GAP_CAP where there is none."""
    idx = np.searchsorted(col, thr, side="right")
    if col.size == 0:
        cap = np.full(thr.shape, GAP_CAP)
        return idx.astype(np.float64), cap, cap.copy()
    below = col[np.maximum(idx - 1, 0)]
    above = col[np.minimum(idx, col.size - 1)]
    gap_a = np.where(idx > 0, np.minimum(thr - below, GAP_CAP), GAP_CAP)
    gap_b = np.where(idx < col.size, np.minimum(above - thr, GAP_CAP), GAP_CAP)
    return idx.astype(np.float64), gap_a, gap_b


def _times(x: Any, k: Any) -> Any:
    """``x * k`` for a public integer tensor ``k``, exact (on the shares, no truncation)."""
    out = x.clone()
    out._tensor.share = out._tensor.share * k
    return out


def _prod0(x: Any) -> Any:
    """Product over dim 0 of a shared 0/1 tensor, in ceil(log2 k) rounds of multiplications."""
    from veil import mpc

    while x.shape[0] > 1:
        half = x.shape[0] // 2
        y = x[:half] * x[half:2 * half]
        x = y if x.shape[0] % 2 == 0 else mpc.cat([y, x[2 * half:]])
    return x[0]


def _round_bits(party: Any, exact: list[tuple[np.ndarray, np.ndarray]],
                interp: list[tuple[np.ndarray, np.ndarray]], k_exact: Any, k_interp: Any,
                weights: tuple[Any, Any]) -> np.ndarray:
    """Open the predicate bits of one round: ``[x_(k) <= t]`` for exact targets and
    ``[v <= t]`` for interpolating ones, for every (target, threshold); shape (T, m).

    ``exact``/``interp``: (sorted local column, thresholds (m,)) per target; ``k_exact`` (Te, 1)
    holds k - 1/2, ``k_interp`` (Ti, 1) holds a + 1/2 (0-based a); ``weights`` are the public
    integers (den - num, num) per interpolating target, (Ti, 1) each.

    With A = max{x <= t} and B = min{x > t} over all parties, ``num·(B - t) <= (den - num)·(t -
    A)`` holds iff some party r's own gap above witnesses it against every party s's gap below:
    the P² comparisons go into the same single batched comparison as the counts (one comparison
    per round instead of P - 1 sequential minima), followed by AND/OR trees of multiplications.
    """
    torch = load_torch()
    from veil import mpc

    m = PUBLIC_FANOUT
    ws = party.world_size
    te, ti = len(exact), len(interp)
    n = ti * m
    counts_e = [np.searchsorted(c, p, side="right") for c, p in exact]
    views = [_local_view(c, p) for c, p in interp]
    local = np.concatenate([np.ravel(counts_e), np.ravel([v[0] for v in views]),
                            np.ravel([v[1] for v in views]) * GAP_SCALE,
                            np.ravel([v[2] for v in views]) * GAP_SCALE]).astype(np.float64)
    parts = [party.share(torch.as_tensor(local) if r == party.rank else None, src=r,
                         shape=local.shape) for r in range(ws)]
    nc = te * m + n
    counts = parts[0][:nc]
    for p in parts[1:]:
        counts = counts + p[:nc]
    z = []
    if te:
        z.append((-counts[:te * m].reshape(te, m) + k_exact).reshape(-1))
    if ti:
        c = counts[te * m:].reshape(ti, m)
        z.append((-c + (k_interp + 1.0)).reshape(-1))  # c >= a + 2: both A and B <= t
        z.append((-c + k_interp).reshape(-1))  # c >= a + 1: A <= t
        below = [_times(p[nc:nc + n].reshape(ti, m), weights[0]) for p in parts]
        above = [_times(p[nc + n:].reshape(ti, m), weights[1]) for p in parts]
        # [s, r]: (den - num)·(t - A_s) - num·(B_r - t) < 0, party r's B_r fails against A_s
        z.extend((b - a).reshape(-1) for b in below for a in above)
    lt = mpc.cat(z) < 0  # ONE batched comparison; shared 0/1 (integer-encoded)
    out = []
    if te:
        out.append(lt[:te * m].reshape(te, m))
    if ti:
        at = te * m
        both, one = lt[at:at + n], lt[at + n:at + 2 * n]
        holds = _prod0((-lt[at + 2 * n:] + 1).reshape(ws, ws, n))  # (r, n): AND over s
        witness = -_prod0(-holds + 1) + 1  # OR over r: [v <= t] when A <= t < B
        out.append((both + (one - both) * witness).reshape(ti, m))
    return open_to_all(party, mpc.cat(out) if len(out) > 1 else out[0])


def public_bisection(party: Any, x: np.ndarray, spec: st.Spec,
                     targets: Sequence[Target]) -> list[float]:
    """Order statistics, interpolated or not, by a public (m+1)-ary search.

    Each round, per target, every party evaluates m public thresholds ``t`` on its own rows and
    secret-shares its count of values <= t; for an interpolating target (value
    v = (1 - f)·A + f·B with A = x_(a), B = x_(a+1), f = num/den) also its gaps
    ``t - max{x <= t}`` and ``min{x > t} - t``. On the shares: counts are summed and the
    predicate ``[v <= t]`` is computed (joint count c >= a + 2: true; c <= a: false; c == a + 1,
    i.e. A <= t < B: ``num·(B - t) <= (den - num)·(t - A)`` with the joint nearest values A, B,
    decided by comparing every party's gaps pairwise, see :func:`_round_bits`). Only that bit is
    opened, to every party. The bits are ``[v <= t]`` at public thresholds that
    depend only on earlier bits, so the whole transcript is a function of the output alone.

    Precision: exact targets (f = 0 or 1) return the smallest point of the 2^-16 grid (from the
    range's low end) >= x_(k) (error < 2^-16, the same result as a plain count search).
    Interpolating targets round every value to the 2^-20 grid first (so gaps are exact on the
    shares) and return the smallest multiple of 2^-17 >= v computed from the rounded values:
    0 <= result - v_rounded < 2^-17 and |v_rounded - v| <= 2^-21, so |result - v| < 2^-16.
    Needs |values| < VALUE_LIMIT (checked by the preflight) and
    :func:`public_search_supports` for every target.
    """
    torch = load_torch()
    m = PUBLIC_FANOUT
    if not all(public_search_supports(t) for t in targets):
        raise ConfigurationError("public_bisection got a target it cannot search; use "
                                 "oblivious_bisection for extrapolated quantiles")
    order = [t for t in targets if t.exact] + [t for t in targets if not t.exact]
    te = sum(t.exact for t in targets)
    xc = st.clip(x, spec)
    cols = [np.sort(xc[:, t.col]) if t.exact else _round_fine(np.sort(xc[:, t.col]))
            for t in order]
    step = [UNIT if t.exact else FINE for t in order]
    base = [value_range(spec, t.col)[0] if t.exact
            else math.floor(value_range(spec, t.col)[0] / FINE) * FINE for t in order]
    lo = [-1] * len(order)  # invariant: predicate(lo) false, predicate(hi) true; answer = hi
    hi = [math.ceil((value_range(spec, t.col)[1] - b) / s) for t, b, s in zip(order, base, step)]
    k_exact = torch.tensor([[t.index + 1 - 0.5] for t in order[:te]], dtype=torch.float64)
    k_interp = torch.tensor([[t.a + 0.5] for t in order[te:]], dtype=torch.float64)
    weights = (torch.tensor([[t.den - t.num] for t in order[te:]], dtype=torch.long),
               torch.tensor([[t.num] for t in order[te:]], dtype=torch.long))
    with party.phase("stats order statistics (public search)"):
        while any(h - lo_ > 1 for lo_, h in zip(lo, hi)):
            points = [[lo_ + (h - lo_) * (i + 1) // (m + 1) for i in range(m)]
                      for lo_, h in zip(lo, hi)]
            thr = [b + np.array(p) * s for b, p, s in zip(base, points, step)]
            bits = np.rint(_round_bits(party, list(zip(cols[:te], thr[:te])),
                                       list(zip(cols[te:], thr[te:])), k_exact, k_interp,
                                       weights)).astype(bool)
            for j, p in enumerate(points):
                if hi[j] - lo[j] <= 1:
                    continue
                lo[j] = max([lo[j], *(q for q, b in zip(p, bits[j]) if not b)])
                hi[j] = min([hi[j], *(q for q, b in zip(p, bits[j]) if b)])
    found = {id(t): float(b + h * s) for t, b, h, s in zip(order, base, hi, step)}
    return [found[id(t)] for t in targets]


def _padded_columns(party: Any, x: np.ndarray, spec: st.Spec, cols: Sequence[int],
                    n: float) -> Any:
    """Shared (len(cols), P·N) matrix: each party's column padded to N with a sentinel."""
    xc = st.clip(x, spec)
    mat = np.zeros((len(cols), int(n)))
    for i, c in enumerate(cols):
        sentinel = value_range(spec, c)[1] + 1.0
        mat[i, :] = sentinel
        mat[i, :xc.shape[0]] = xc[:, c]
    parts = [party.share(load_torch().as_tensor(mat) if r == party.rank else None, src=r,
                         shape=mat.shape) for r in range(party.world_size)]
    from veil import mpc

    return mpc.cat(parts, dim=1)


def oblivious_bisection(party: Any, x: np.ndarray, spec: st.Spec, targets: Sequence[Target],
                        n: float) -> Any:
    """Interpolated order statistics by an (m+1)-ary search with secret thresholds.

    Only the interval width is public (it shrinks by m+1 each round whatever the data); the
    lower end, the comparisons and the counts stay shared. Returns the shared values.
    """
    torch = load_torch()
    from veil import mpc

    m = OBLIVIOUS_FANOUT
    ranks: list[tuple[int, int]] = []  # (col, k) searches
    for t in targets:
        ranks.append((t.col, t.a + 1))
        ranks.append((t.col, t.a + 2))
    cols = sorted({c for c, _ in ranks})
    data = _padded_columns(party, x, spec, cols, n)  # (C, P·N)
    rows = data[torch.tensor([cols.index(c) for c, _ in ranks])]  # (Q, P·N)
    lo0 = torch.tensor([value_range(spec, c)[0] - UNIT for c, _ in ranks], dtype=torch.float64)
    width = torch.tensor([value_range(spec, c)[1] - value_range(spec, c)[0] + UNIT
                          for c, _ in ranks], dtype=torch.float64)
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
            lo = lo + as_fixed(under, lo) * width
    hi = lo + width
    vals = []
    for i, t in enumerate(targets):
        a, b = hi[2 * i], hi[2 * i + 1]
        vals.append(a * ((t.den - t.num) / t.den) + b * (t.num / t.den))
    return mpc.stack(vals)


# --- logistic regression ----------------------------------------------------------------------
def logistic(party: Any, x: np.ndarray, spec: st.Spec, n: float) -> Any:
    """Joint full-batch gradient descent with Nesterov momentum on shares; returns shared
    ``[coef..., intercept, converged]``: ``converged`` is the bit
    ``[|gradient|^2 <= LOGIT_TOLERANCE^2]`` after the last step, computed on shares and opened
    with the coefficients (to the same recipients; nothing else about the fit is opened)."""
    torch = load_torch()
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
    m1, m2 = moments(party, feats, st.Spec(("mean",), tuple(spec.columns[j] for j in f)), n,
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
    vw, vb = w, b
    rows = int(n)  # divide by the integer N (exact truncation), not by a tiny fixed-point 1/N
    lr, mom = st.logit_step(spec), st.LOGIT_MOMENTUM

    def gradient(w: Any, b: Any) -> tuple[Any, Any]:
        g = ((z.matmul(w.unsqueeze(1)).squeeze(1) + b).sigmoid() - label) * mask
        return z.t().matmul(g.unsqueeze(1)).squeeze(1).div(rows), g.sum().div(rows)

    with party.phase("stats logistic regression"):
        for _ in range(spec.iterations):  # Nesterov, as statistics.logistic_plain
            gw, gb = gradient(w + vw * mom, b + vb * mom)
            vw, vb = vw * mom - gw * lr, vb * mom - gb * lr
            w, b = w + vw, b + vb
        gw, gb = gradient(w, b)  # the gradient at the final point: convergence only
        # |g|^2 <= tol^2, on g * 256 so that tol^2 spans thousands of fixed-point units
        sw, sb = gw * _GRAD_SCALE, gb * _GRAD_SCALE
        norm2 = (sw * sw).sum() + sb * sb
        converged = as_fixed(norm2 <= (st.LOGIT_TOLERANCE * _GRAD_SCALE) ** 2, norm2)
    coef = w * r
    return mpc.cat([coef, (b - (coef * m1).sum()).unsqueeze(0), converged.reshape(1)])


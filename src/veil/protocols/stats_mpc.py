"""MPC kernels for joint statistics (CrypTen through ``veil.mpc``), run inside each party.

Every function here is called by *all* parties together (SPMD), each with its own rows. What
each step reveals, and to whom:

* preflight: every party's status code (0 = ready), a 60-bit digest of its column names and,
  without DP, the total row count ``N`` — to all parties. Nothing about the values.
* linear statistics: each party secret-shares its own sufficient statistics divided by ``N``;
  means, variances, covariances, correlations and OLS coefficients are computed on the shares
  (divisions by secret values via a normalised Newton inverse square root) and only the requested
  outputs are opened, to ``to`` (all parties by default). ``stdev`` opens the variance and takes
  the square root in the clear (the same information).
* order statistics, public bisection (``exact`` targets such as min, max, median_low/high, odd-N
  median): per step each party shares its *local* count of values <= a public threshold; the
  parties open only the bit ``joint count >= k``. The bits are the binary expansion of the output
  on the 2^-16 grid, so the transcript is a function of the output alone; all parties learn it.
* order statistics, oblivious bisection (interpolating quantiles, even-N median, or any order
  statistic when ``to`` is restricted): every party shares its column padded with sentinels to
  ``N`` rows (so per-party row counts stay hidden); thresholds, comparisons and the interpolation
  stay secret-shared; only the final value is opened to ``to``.
* logistic regression: rows shared padded to ``N`` each; gradient descent on shares; only the
  coefficients are opened.
* DP release: each party adds its own discrete noise to its integer-encoded sufficient statistics
  before sharing; only the noisy sum is opened. Every party's noise is full scale, so the output
  is DP even against a coalition of all parties but one (the noise variance is ``P`` times that of
  a trusted curator).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from veil.errors import ConfigurationError
from veil.protocols import statistics as st

__all__ = ["PREFLIGHT_CODES", "schema_digest", "run_release", "FRAC_BITS"]

FRAC_BITS = 16
UNIT = 2.0**-FRAC_BITS
MAX_ROWS = 2**24
PREFLIGHT_CODES = {
    1: "non-finite values (NaN or inf) in its data",
    2: f"values beyond ±{st.VALUE_LIMIT:g} (the MPC fixed-point range); rescale the column",
    3: "its privacy budget or release policy refused the release",
    4: "an invalid input",
}
_INV_SQRT_EXP = range(-8, 16)
PUBLIC_FANOUT = 15  # thresholds per round of the public search (4 bits of the output per round)
OBLIVIOUS_FANOUT = 3  # thresholds per round of the oblivious search  # v in [4^-8, 4^16)


def schema_digest(columns: Sequence[str]) -> list[float]:
    """Three 20-bit integers from SHA-256 of the column names (fit exactly in fixed point)."""
    h = int.from_bytes(hashlib.sha256("\x1f".join(columns).encode()).digest()[:8], "big")
    return [float((h >> (20 * i)) & 0xFFFFF) for i in range(3)]


def _torch() -> Any:
    import torch

    return torch


def _sum_from_all(party: Any, local: np.ndarray) -> Any:
    """Shared sum over parties of each party's vector (all vectors have the same shape)."""
    torch = _torch()
    t = torch.as_tensor(np.asarray(local, dtype=np.float64))
    total = None
    for r in range(party.world_size):
        s = party.share(t if r == party.rank else None, src=r, shape=tuple(t.shape))
        total = s if total is None else total + s
    return total


def _decode(ring: Any, scale: int) -> np.ndarray:
    """Exact float64 decoding of fixed-point ring elements (CrypTen's decode stops at float32)."""
    r = ring.cpu().numpy().astype(np.int64)
    whole = np.floor_divide(r, scale)
    return whole.astype(np.float64) + (r - whole * scale).astype(np.float64) / scale


def _reveal(party: Any, x: Any, to: Sequence[int] | None) -> np.ndarray | None:
    """Open the shared ``x`` to the parties in ``to`` (all when None), in float64."""
    if to is None:
        return _open(party, x)
    recipients = sorted(set(to))
    if not recipients or any(not isinstance(r, int) or not 0 <= r < party.world_size
                             for r in recipients):
        raise ConfigurationError(
            f"to must be None or party ranks in 0..{party.world_size - 1}, got {list(to)}")
    out = None
    inner = x._tensor
    for r in recipients:
        ring = inner.reveal(dst=r)
        if party.rank == r:
            out = _decode(ring, inner.encoder.scale)
    _record(party, out)
    return out


def _open(party: Any, x: Any) -> np.ndarray:
    """Open ``x`` to every party, in float64 (recorded in ``party``'s transcript, if any)."""
    inner = x._tensor
    out = _decode(inner.reveal(), inner.encoder.scale)
    _record(party, out)
    return out


_TRANSCRIPTS: dict[int, list[np.ndarray]] = {}


def _record(party: Any, value: np.ndarray | None) -> None:
    log = _TRANSCRIPTS.get(id(party))
    if log is not None and value is not None:
        log.append(np.array(value, copy=True))


def _fixed(bits: Any, like: Any) -> Any:
    """Comparison results are integer-encoded; re-encode them on ``like``'s fixed-point scale."""
    out = bits.clone()
    out._tensor.encode_(like.encoder)
    return out


def preflight(party: Any, *, code: int, columns: Sequence[str], rows: int | None) -> float | None:
    """Agree that every party is ready and has the same columns; returns ``N`` (None under DP)."""
    ws = party.world_size
    vec = np.zeros(4 * ws + 1)
    vec[party.rank] = code
    vec[ws + 3 * party.rank: ws + 3 * party.rank + 3] = schema_digest(columns)
    if rows is not None:
        vec[-1] = rows
    with party.phase("stats preflight"):
        opened = _open(party, _sum_from_all(party, vec))
    codes = np.rint(opened[:ws]).astype(int)
    for r, c in enumerate(codes):
        if c:
            raise ConfigurationError(
                f"party {r} cannot take part: {PREFLIGHT_CODES.get(int(c), 'error')}")
    digests = np.rint(opened[ws:4 * ws]).reshape(ws, 3)
    mine = np.array(schema_digest(columns))
    for r in range(ws):
        if not np.array_equal(digests[r], mine):
            raise ConfigurationError(
                f"party {r} has different columns than party {party.rank} "
                f"({list(columns)}); every party must pass the same column names in the same order")
    return None if rows is None else float(np.rint(opened[-1]))


# --- DP path ----------------------------------------------------------------------------------
def block_frac_bits(spec: st.Spec) -> list[int]:
    """Fixed-point bits per sufficient-statistics block so that MAX_ROWS rows cannot overflow."""
    if spec.bounds is None:
        raise ConfigurationError("a DP release needs bounds")
    big = max(max(abs(lo), abs(hi)) for lo, hi in spec.bounds)
    out = []
    for name, _ in st.layout(spec):
        peak = {"count": 1.0, "sums": big, "products": big * big}.get(name, 1.0) * MAX_ROWS
        out.append(int(max(-30, min(FRAC_BITS, 45 - math.ceil(math.log2(max(peak, 1.0)))))))
    return out


def encode_with_noise(spec: st.Spec, local: np.ndarray, noise: Sequence[int] | None,
                      frac_bits: Sequence[int]) -> tuple[list[int], list[int]]:
    """Integer-encode ``local`` per block (round to the block grid) and add integer noise."""
    ints: list[int] = []
    per_entry_bits: list[int] = []
    pos = 0
    for (_name, size), f in zip(st.layout(spec), frac_bits):
        for v in local[pos:pos + size]:
            ints.append(round(float(v) * 2.0**f))
            per_entry_bits.append(f)
        pos += size
    if noise is not None:
        if len(noise) != len(ints):
            raise ConfigurationError(f"noise has {len(noise)} entries, query has {len(ints)}")
        ints = [a + b for a, b in zip(ints, noise)]
    return ints, per_entry_bits


def dp_release(party: Any, x: np.ndarray, spec: st.Spec, noise: Sequence[int],
               frac_bits: Sequence[int], *, to: Sequence[int] | None,
               check_rows: Callable[[float], None]) -> dict | None:
    local = st.local_aggregates(x, spec)
    ints, bits = encode_with_noise(spec, local, noise, frac_bits)
    # entries are k * 2^-f with |k| < 2^45: exact in float64 and on CrypTen's 2^-16 grid
    # whenever f <= 16; for f < 0 we share k * 2^-16 and rescale after opening.
    scaled = np.array([k * 2.0 ** -max(f, 0) if f >= 0 else k * UNIT for k, f in zip(ints, bits)])
    with party.phase("stats dp release"):
        opened = _reveal(party, _sum_from_all(party, scaled), to)
    if opened is None:
        return None
    total = np.array([v * 2.0 ** (FRAC_BITS - f) if f < 0 else v for v, f in zip(opened, bits)])
    check_rows(float(total[0]))
    return st.finalize_linear(spec, total)


# --- secure nonlinear helpers ---------------------------------------------------------------
def inv_sqrt(v: Any) -> Any:
    """1/sqrt(v) on shares for 4^-8 <= v < 4^16: oblivious power-of-4 normalisation + Newton."""
    torch = _torch()
    exps = list(_INV_SQRT_EXP)
    thresholds = torch.tensor([4.0**k for k in exps], dtype=torch.float64)
    c = _fixed(v.unsqueeze(-1) >= thresholds, v)  # (m, K) shared bits: v >= 4^k
    ones = c[..., :-1] - c[..., 1:]
    onehot = [ones[..., i] for i in range(len(exps) - 1)] + [c[..., -1]]
    scale = None
    for k, oh in zip(exps, onehot):
        term = oh * (2.0**-k)
        scale = term if scale is None else scale + term
    scale = scale + (1 - c[..., 0]) * (2.0 ** -exps[0])  # below range: treat as 4^-8
    u = (v * scale) * scale  # in [1, 4)
    y = 1.1 - 0.15 * u
    for _ in range(5):
        y = y * (3.0 - u * y * y) * 0.5
    return y * scale


def _moments(party: Any, x: np.ndarray, spec: st.Spec, n: float, full: bool) -> tuple[Any, Any]:
    """Shared E[x] (d) and E[x xᵀ] (d × d) over all rows; each party divides its sums by N."""
    d = spec.d
    x = st.clip(x, spec)
    second = (x.T @ x) if full else np.diag((x * x).sum(axis=0))
    local = np.concatenate([x.sum(axis=0), second.reshape(-1)]) / n
    v = _sum_from_all(party, local)
    return v[:d], v[d:].reshape(d, d)


def linear_release(party: Any, x: np.ndarray, spec: st.Spec, n: float) -> tuple[list, list]:
    """Shared outputs for the linear statistics: list of (key, shared tensor | public array)."""
    torch = _torch()
    outs: list[tuple[str, Any]] = []
    d = spec.d
    need_second = spec.needs("variance", "pvariance", "stdev", "pstdev", "covariance",
                             "correlation", "linear_regression")
    full = spec.needs("covariance", "correlation", "linear_regression")
    if spec.needs("mean") or need_second:
        m1, m2 = _moments(party, x, spec, n, full)
        if spec.needs("mean"):
            outs.append(("mean", m1))
        if need_second:
            pcov = m2 - m1.unsqueeze(1) * m1.unsqueeze(0)
            bessel = n / max(n - 1.0, 1.0)
            diag = torch.arange(d)
            pvar = pcov[diag, diag]
            for key in ("pvariance", "pstdev"):
                if key in spec.stats:
                    outs.append((key, pvar))
            for key in ("variance", "stdev"):
                if key in spec.stats:
                    outs.append((key, pvar * bessel))
            if full:
                cov = pcov * bessel
                if "covariance" in spec.stats:
                    outs.append(("covariance", cov))
                if spec.needs("correlation", "linear_regression"):
                    r = inv_sqrt(pvar * bessel)
                    corr = cov * (r.unsqueeze(1) * r.unsqueeze(0))
                    if "correlation" in spec.stats:
                        outs.append(("correlation", corr))
                    if "linear_regression" in spec.stats:
                        outs.append(("linear_regression", _ols(spec, m1, cov, corr, r)))
    if spec.needs("sum"):
        outs.append(("sum", _sum_from_all(party, st.clip(x, spec).sum(axis=0))))
    if spec.needs("histogram"):
        edges = np.asarray(spec.bins)
        xc = st.clip(x, spec)
        h = np.stack([np.histogram(xc[:, j], bins=edges)[0] for j in range(d)]).astype(float)
        outs.append(("histogram", _sum_from_all(party, h)))
    return outs


def _ols(spec: st.Spec, m1: Any, cov: Any, corr: Any, r: Any) -> Any:
    """Shared [coef..., intercept] from standardised normal equations (Newton–Schulz inverse)."""
    torch = _torch()
    t = spec.target_index
    f = torch.tensor([j for j in range(spec.d) if j != t])
    a = corr[f][:, f]
    b = corr[f, t]
    k = len(f)
    eye = torch.eye(k, dtype=torch.float64)
    inv = a * 0.0 + eye / k  # shared start X0 = I / k (eigenvalues of a lie in (0, k])
    for _ in range(24):
        inv = inv.matmul(a.matmul(inv).neg() + 2.0 * eye)
    beta_std = inv.matmul(b.unsqueeze(1)).squeeze(1)
    sd_t = cov[t, t] * r[t]
    coef = beta_std * r[f] * sd_t
    intercept = m1[t] - (coef * m1[f]).sum()
    return (coef, intercept)


# --- order statistics -------------------------------------------------------------------------
def _range(spec: st.Spec, col: int) -> tuple[float, float]:
    if spec.bounds is not None:
        return spec.bounds[col]
    return (-st.VALUE_LIMIT, st.VALUE_LIMIT)


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
    step = spec.learning_rate / n
    with party.phase("stats logistic regression"):
        for _ in range(spec.iterations):
            p = (z.matmul(w.unsqueeze(1)).squeeze(1) + b).sigmoid()
            g = (p - label) * mask
            w = w - z.t().matmul(g.unsqueeze(1)).squeeze(1) * step
            b = b - g.sum() * step
    coef = w * r
    return mpc.cat([coef, (b - (coef * m1).sum()).unsqueeze(0)])


# --- one release --------------------------------------------------------------------------------
def run_release(party: Any, x: np.ndarray, spec: st.Spec, *, code: int = 0,
                to: Sequence[int] | None = None, noise: Sequence[int] | None = None,
                dp_frac_bits: Sequence[int] | None = None,
                check_rows: Callable[[float], None] = lambda n: None,
                before_release: Callable[[], None] = lambda: None,
                transcript: list[np.ndarray] | None = None) -> dict | None:
    """Everything ``spec`` asks for, in one protocol run. Returns the results on the parties in
    ``to`` (all when None) and ``None`` on the others. ``before_release`` runs once the preflight
    succeeded, before anything about the values is computed (e.g. charging a privacy budget).
    ``transcript``, if given, receives a copy of every value opened to this party (for audits and
    the leakage tests)."""
    if transcript is not None:
        _TRANSCRIPTS[id(party)] = transcript
    try:
        return _run_release(party, x, spec, code=code, to=to, noise=noise,
                            dp_frac_bits=dp_frac_bits, check_rows=check_rows,
                            before_release=before_release)
    finally:
        _TRANSCRIPTS.pop(id(party), None)


def _run_release(party: Any, x: np.ndarray, spec: st.Spec, *, code: int,
                 to: Sequence[int] | None, noise: Sequence[int] | None,
                 dp_frac_bits: Sequence[int] | None, check_rows: Callable[[float], None],
                 before_release: Callable[[], None]) -> dict | None:
    dp = dp_frac_bits is not None
    n = preflight(party, code=code, columns=spec.columns, rows=None if dp else x.shape[0])
    before_release()
    if dp:
        return dp_release(party, x, spec, noise or [], dp_frac_bits, to=to,
                          check_rows=check_rows)
    check_rows(float(n or 0.0))
    n = float(n or 0.0)
    results: dict[str, Any] = {}
    if "count" in spec.stats:
        results["count"] = int(n)
    shared: list[tuple[str, Any]] = []
    with party.phase("stats linear"):
        shared.extend(linear_release(party, x, spec, n))
    order = st.order_targets(spec, int(n)) if any(s in spec.stats for s in st.ORDER) else []
    fast = [t for t in order if t.exact and to is None]
    slow = [t for t in order if t not in fast]
    fast_vals = public_bisection(party, x, spec, fast) if fast else []
    if slow:
        shared.append(("_order", oblivious_bisection(party, x, spec, slow, n)))
    if "logistic_regression" in spec.stats:
        shared.append(("logistic_regression", logistic(party, x, spec, n)))
    opened = _open_all(party, shared, to)
    if opened is None:
        return None
    slow_vals = list(opened.pop("_order", []))
    values = {t: v for t, v in zip(fast, fast_vals)}
    values.update({t: v for t, v in zip(slow, slow_vals)})
    results.update(st.assemble_order(spec, order, [values[t] for t in order]))
    for key, val in opened.items():
        if key in ("stdev", "pstdev"):
            val = np.sqrt(np.maximum(val, 0.0))
        elif key == "correlation":
            val = np.clip(val, -1.0, 1.0)
        elif key in ("linear_regression", "logistic_regression"):
            t = spec.target_index
            feats = tuple(spec.columns[j] for j in range(spec.d) if j != t)
            val = st.Regression(np.asarray(val[:-1]), float(val[-1]), feats)
        results[key] = val
    return results


def _open_all(party: Any, shared: list[tuple[str, Any]], to: Sequence[int] | None) -> dict | None:
    """Open every shared output in one round; returns key -> numpy value (None off ``to``)."""
    from veil import mpc

    flat, shapes = [], []
    for key, val in shared:
        items = list(val) if isinstance(val, tuple) else [val]
        shapes.append((key, [tuple(v.shape) for v in items], isinstance(val, tuple)))
        flat.extend(v.reshape(-1) for v in items)
    if not flat:
        return {}
    with party.phase("stats reveal"):
        opened = _reveal(party, mpc.cat(flat), to)
    if opened is None:
        return None
    out: dict[str, Any] = {}
    pos = 0
    for key, shps, is_tuple in shapes:
        parts = []
        for shp in shps:
            size = int(np.prod(shp)) if shp else 1
            parts.append(opened[pos:pos + size].reshape(shp))
            pos += size
        out[key] = np.concatenate([p.reshape(-1) for p in parts]) if is_tuple else parts[0]
    return out

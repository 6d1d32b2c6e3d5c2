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
* order statistics, public search (every min, max, median, median_low/high and quantile when
  the outputs go to all parties, ``to=None``): per round and per target, each party evaluates m
  public thresholds ``t`` on its own rows and secret-shares its *local* count of values <= t;
  for an interpolating target (even-N median, quantiles between two order statistics:
  v = (1 - f)·x_(a) + f·x_(a+1)) it also shares its own gaps ``t - max{x <= t}`` and
  ``min{x > t} - t`` (values rounded to 2^-20, gaps capped at 4·VALUE_LIMIT; every party's share
  vector has the same public length). On the shares the counts are summed, the gaps of all
  parties are compared pairwise (this decides the predicate with the joint nearest values below
  and above ``t``) and the predicate ``[output <= t]`` is evaluated with secure comparisons and
  multiplications; only that bit per threshold is opened, to all parties. The next thresholds
  depend only on earlier bits, so the transcript is a function of the output alone (exact
  targets: the output on the 2^-16 grid; interpolating ones: on the 2^-17 grid, within 2^-16 of
  the exact value). All parties learn every output; nothing else about the values (no count,
  gap, per-party value or the two order statistics around an interpolated output) is opened.
* order statistics, oblivious bisection (any order statistic when ``to`` is restricted, since
  public thresholds would show the answer to everyone; also the rare cut points the public
  search does not take: ``"exclusive"`` quantiles extrapolated beyond the first or last order
  statistic, or ``n > 65536`` quantiles): every party shares its column padded with sentinels to
  ``N`` rows (so per-party row counts stay hidden); thresholds, comparisons and the
  interpolation stay secret-shared; only the final value is opened to ``to``. Cost: O(P·N)
  secure comparisons per round.
* logistic regression: rows shared padded to ``N`` each; gradient descent on shares; only the
  coefficients are opened.
* DP release: each party adds its own discrete noise to its integer-encoded sufficient statistics
  before sharing; only the noisy sum is opened. Every party's noise is full scale, so the output
  is DP even against a coalition of all parties but one (the noise variance is ``P`` times that of
  a trusted curator).
* DP order statistics (median, quantiles, min, max with ``epsilon``; outputs to all parties only):
  a noisy public binary search, 16 rounds per target over the declared bounds; per round each
  party shares its own ``den·count(<= t) - num·n_p`` plus its own full-scale integer noise and
  only the bit ``[noisy sum >= 0]`` is opened, to all parties. See
  :mod:`veil.protocols.stats.dp_order`. The noisy sufficient statistics (at least the noisy
  count, used for the minimum-cohort check) are opened first, as for every DP release.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from veil.errors import ConfigurationError, PolicyViolation
from veil.protocols.stats import dp_order
from veil.protocols.stats import spec as st
from veil.protocols.stats.order import assemble_order, order_targets
from veil.protocols.stats.rows import (
    logistic,
    oblivious_bisection,
    public_bisection,
    public_search_supports,
)
from veil.protocols.stats.shares import (
    FRAC_BITS,
    MAX_ROWS,
    UNIT,
    inv_sqrt_parts,
    load_torch,
    moments,
    open_to_all,
    recording,
    reveal,
    sum_from_all,
)

__all__ = ["PREFLIGHT_CODES", "schema_digest", "run_release", "FRAC_BITS"]

PREFLIGHT_CODES = {
    1: "non-finite values (NaN or inf) in its data",
    2: f"values beyond ±{st.VALUE_LIMIT:g} (the MPC fixed-point range); rescale the column",
    3: "its privacy budget or release policy refused the release",
    4: "an invalid input",
}


def schema_digest(columns: Sequence[str]) -> list[float]:
    """Three 20-bit integers from SHA-256 of the column names (fit exactly in fixed point)."""
    h = int.from_bytes(hashlib.sha256("\x1f".join(columns).encode()).digest()[:8], "big")
    return [float((h >> (20 * i)) & 0xFFFFF) for i in range(3)]


def preflight(party: Any, *, code: int, columns: Sequence[str], rows: int | None) -> float | None:
    """Agree that every party is ready and has the same columns; returns ``N`` (None under DP)."""
    ws = party.world_size
    vec = np.zeros(4 * ws + 1)
    vec[party.rank] = code
    vec[ws + 3 * party.rank: ws + 3 * party.rank + 3] = schema_digest(columns)
    if rows is not None:
        vec[-1] = rows
    with party.phase("stats preflight"):
        opened = open_to_all(party, sum_from_all(party, vec))
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
        opened = reveal(party, sum_from_all(party, scaled), to)
    if opened is None:
        return None
    total = np.array([v * 2.0 ** (FRAC_BITS - f) if f < 0 else v for v, f in zip(opened, bits)])
    check_rows(float(total[0]))
    return st.finalize_linear(spec, total)


def linear_release(party: Any, x: np.ndarray, spec: st.Spec, n: float,
                   to: Sequence[int] | None = None) -> list[tuple[str, Any]]:
    """Shared outputs for the linear statistics: list of (key, shared tensor or tuple).

    When the correlation matrix is itself an output going to every party (``to`` is None), OLS
    opens it first and solves the standardised normal equations in the clear (a function of an
    output everyone receives anyway), leaving only the unstandardisation on shares: a few
    multiplications instead of an 18-step Newton–Schulz inverse.
    """
    torch = load_torch()
    outs: list[tuple[str, Any]] = []
    d = spec.d
    need_second = spec.needs("variance", "pvariance", "stdev", "pstdev", "covariance",
                             "correlation", "linear_regression")
    full = spec.needs("covariance", "correlation", "linear_regression")
    if spec.needs("mean") or need_second:
        m1, m2 = moments(party, x, spec, n, full)
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
                    y, sc = inv_sqrt_parts(pvar * bessel)
                    # powers of two first, the (1/2, 1] factors last: relative precision kept
                    normed = (cov * sc.unsqueeze(1)) * sc.unsqueeze(0)
                    corr = normed * (y.unsqueeze(1) * y.unsqueeze(0))
                    if "correlation" in spec.stats:
                        outs.append(("correlation", corr))
                    if "linear_regression" in spec.stats:
                        public = "correlation" in spec.stats and to is None
                        solve = _ols_public if public else _ols
                        outs.append(("linear_regression",
                                     solve(party, spec, m1, cov, corr, y * sc)))
    if spec.needs("sum"):
        outs.append(("sum", sum_from_all(party, st.clip(x, spec).sum(axis=0))))
    if spec.needs("histogram"):
        edges = np.asarray(spec.bins)
        xc = st.clip(x, spec)
        h = np.stack([np.histogram(xc[:, j], bins=edges)[0] for j in range(d)]).astype(float)
        outs.append(("histogram", sum_from_all(party, h)))
    return outs


def _unstandardise(spec: st.Spec, m1: Any, cov: Any, r: Any, beta_std: Any) -> Any:
    """[coef..., intercept] on shares from standardised coefficients (shared or public)."""
    torch = load_torch()
    t = spec.target_index
    f = torch.tensor([j for j in range(spec.d) if j != t])
    sd_t = cov[t, t] * r[t]
    coef = (r[f] * sd_t) * beta_std
    intercept = m1[t] - (coef * m1[f]).sum()
    return (coef, intercept)


def _ols_public(party: Any, spec: st.Spec, m1: Any, cov: Any, corr: Any, r: Any) -> Any:
    """OLS when the correlation matrix is an output for everyone: solve it in the clear."""
    torch = load_torch()
    c = np.clip(open_to_all(party, corr), -1.0, 1.0)
    t = spec.target_index
    f = [j for j in range(spec.d) if j != t]
    beta, *_ = np.linalg.lstsq(c[np.ix_(f, f)], c[f, t], rcond=None)
    return _unstandardise(spec, m1, cov, r, torch.as_tensor(beta, dtype=torch.float64))


def _ols(party: Any, spec: st.Spec, m1: Any, cov: Any, corr: Any, r: Any) -> Any:
    """Shared [coef..., intercept] from standardised normal equations (Newton–Schulz inverse)."""
    torch = load_torch()
    t = spec.target_index
    f = torch.tensor([j for j in range(spec.d) if j != t])
    a = corr[f][:, f]
    b = corr[f, t]
    k = len(f)
    eye = torch.eye(k, dtype=torch.float64)
    inv = a * 0.0 + eye / k  # shared start X0 = I / k (eigenvalues of a lie in (0, k])
    for _ in range(18):  # error (1 - λmin/k)^(2^18): enough for λmin/k >= 1e-4
        inv = inv.matmul(a.matmul(inv).neg() + 2.0 * eye)
    beta_std = inv.matmul(b.unsqueeze(1)).squeeze(1)
    return _unstandardise(spec, m1, cov, r, beta_std)


# --- one release --------------------------------------------------------------------------------
OrderNoise = Sequence[Sequence[int]] | Callable[[], Sequence[int]]


def cohort_check(party: Any, rows: int, min_cohort: int,
                 recipients: Sequence[int] | None) -> None:
    """Minimum cohort on shares: for every recipient ``r`` (every party when ``None``), the rows
    of the *other* parties ``N - n_r`` must be at least ``min_cohort``.

    Each party secret-shares its own row count; the comparisons ``[N - n_r >= k]`` are computed
    on the shares and only their conjunction (one pass/fail bit) is opened, to every party, so
    that all of them stop together. No count, and not which recipient failed, is revealed.
    Raises :class:`~veil.errors.PolicyViolation` on every party when the bit is 0.
    """
    if isinstance(min_cohort, bool) or not isinstance(min_cohort, int) or min_cohort < 1:
        raise ConfigurationError(f"min_cohort must be an integer >= 1, got {min_cohort!r}")
    if min_cohort == 1:  # N - n_r >= 1 would only refuse a recipient alone with its own rows
        return
    ws = party.world_size
    who = list(range(ws)) if recipients is None else sorted(set(recipients))
    mine = np.zeros(ws)
    mine[party.rank] = float(rows)
    with party.phase("stats minimum cohort"):
        counts = sum_from_all(party, mine)  # shared n_0 .. n_(P-1)
        total = counts.sum()
        others = total - counts[who]  # shared N - n_r per recipient
        ok = others >= float(min_cohort)  # shared 0/1 (integer encoding)
        passed = ok.sum() >= float(len(who))  # conjunction, still shared
        bit = open_to_all(party, passed)
    if int(np.rint(np.asarray(bit).reshape(-1)[0])) != 1:
        raise PolicyViolation(
            f"release refused by the minimum-cohort rule: some recipient ({who}) would learn an "
            f"aggregate over fewer than min_cohort={min_cohort} rows of the other parties; add "
            "data or lower min_cohort")


def _predraw(dp_order_noise: OrderNoise | None, targets: Sequence[Any]) -> list[list[int]] | None:
    """Every round's order-search noise, drawn before the first message (timing of the samplers
    is then not visible per round)."""
    if dp_order_noise is None or not targets:
        return None
    return dp_order.predraw(dp_order_noise, targets)


def run_release(party: Any, x: np.ndarray, spec: st.Spec, *, code: int = 0,
                noise: Sequence[int] | None = None,
                dp_frac_bits: Sequence[int] | None = None,
                check_rows: Callable[[float], None] = lambda n: None,
                before_release: Callable[[], None] = lambda: None,
                transcript: list[np.ndarray] | None = None,
                dp_order_noise: OrderNoise | None = None) -> dict | None:
    """Everything ``spec`` asks for, in one protocol run, under ``spec.options``. Returns the
    results on the parties in ``spec.options.to`` (all when None) and ``None`` on the others.
    ``before_release`` runs once the preflight and the minimum-cohort check succeeded, before
    anything about the values is computed (e.g. charging a privacy budget). ``transcript``, if
    given, receives a copy of every value opened to this party (for audits and the leakage
    tests).

    ``spec.options.min_cohort``: for every recipient, the rows of the other parties must be at
    least this many, checked on shares right after the preflight (:func:`cohort_check`; 1 =
    off), for exact releases. ``check_rows`` is called with the total count, which is noisy
    under DP: a DP release checks that noisy count instead (an exact bit would not be DP).

    ``dp_order_noise`` (DP order statistics only): this party's integer noise for the whole
    search, ``ROUNDS`` rows of one entry per order target, drawn *before* the protocol starts
    (a callable returning one round is accepted and called ``ROUNDS`` times before the first
    message)."""
    dp = dp_frac_bits is not None
    order_noise = _predraw(dp_order_noise, dp_order.dp_targets(spec) if dp else [])
    with recording(party, transcript):
        return _run_release(party, x, spec, code=code, noise=noise,
                            dp_frac_bits=dp_frac_bits, check_rows=check_rows,
                            before_release=before_release, order_noise=order_noise)


def _run_release(party: Any, x: np.ndarray, spec: st.Spec, *, code: int,
                 noise: Sequence[int] | None, dp_frac_bits: Sequence[int] | None,
                 check_rows: Callable[[float], None], before_release: Callable[[], None],
                 order_noise: list[list[int]] | None) -> dict | None:
    to = spec.options.to
    dp = dp_frac_bits is not None
    dp_targets = dp_order.dp_targets(spec) if dp else []
    if dp_targets and to is not None:
        raise ConfigurationError(
            "DP order statistics (median, quantiles, min, max) open their search bits to every "
            "party, so they cannot go only to `to`; use to=None or drop the order statistics")
    n = preflight(party, code=code, columns=spec.columns, rows=None if dp else x.shape[0])
    if not dp:  # a DP release checks its noisy count instead: an exact bit is not DP
        cohort_check(party, int(x.shape[0]), spec.options.min_cohort, to)
    before_release()
    if dp:
        out = dp_release(party, x, spec, noise or [], dp_frac_bits, to=to,
                         check_rows=check_rows)
        if dp_targets and out is not None:
            out.update(dp_order.mpc_search(party, x, spec, dp_targets, order_noise))
        return out
    check_rows(float(n or 0.0))
    n = float(n or 0.0)
    results: dict[str, Any] = {}
    if "count" in spec.stats:
        results["count"] = int(n)
    shared: list[tuple[str, Any]] = []
    with party.phase("stats linear"):
        shared.extend(linear_release(party, x, spec, n, to))
    order = order_targets(spec, int(n)) if any(s in spec.stats for s in st.ORDER) else []
    # public search whenever everyone gets the outputs (its bits show them to all parties)
    fast = [t for t in order if to is None and public_search_supports(t)]
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
    results.update(assemble_order(spec, order, [values[t] for t in order]))
    for key, val in opened.items():
        if key in ("stdev", "pstdev"):
            val = np.sqrt(np.maximum(val, 0.0))
        elif key == "correlation":  # symmetrise (averages the two roundings), clip
            val = np.clip((val + val.T) / 2.0, -1.0, 1.0)
            np.fill_diagonal(val, 1.0)  # exactly 1 by definition (not 1 - fixed-point error)
        elif key == "linear_regression":
            val = st.Regression(np.asarray(val[:-1]), float(val[-1]), _features(spec))
        elif key == "logistic_regression":  # [coef..., intercept, converged bit]
            val = st.Regression(np.asarray(val[:-2]), float(val[-2]), _features(spec),
                                spec.iterations, bool(val[-1] > 0.5))
        results[key] = val
    return results


def _features(spec: st.Spec) -> tuple[str, ...]:
    return tuple(spec.columns[j] for j in range(spec.d) if j != spec.target_index)


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
        opened = reveal(party, mpc.cat(flat), to)
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

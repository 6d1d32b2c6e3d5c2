"""Interpolated order statistics (even-N median, quantiles) by the *public* search.

Real multi-process MPC runs through ``veil.stats.joint`` / ``party_release``. The public search
opens only the bits ``[output <= t]`` at public thresholds ``t``; these tests check the values
against :mod:`statistics` / numpy, that exact order statistics are unchanged (the 2^-16 grid
point the plain count search returns), and that the opened transcript is nothing but those bits.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from veil import mpc, stats
from veil.protocols.stats import spec as st
from veil.protocols.stats.options import Options
from veil.protocols.stats.order import Target
from veil.protocols.stats.rows import (
    FINE,
    MAX_PUBLIC_DEN,
    _local_view,
    _round_fine,
    public_search_supports,
)
from veil.protocols.stats.shares import PUBLIC_FANOUT, UNIT
from veil.stats._party import party_release
from veil.stats._release import Release

BOUND = 2.0**-16  # documented error bound of interpolated outputs
EXACT = ["median_low", "median_high", "min", "max"]


def _exact_grid(v: float, low: float) -> float:
    """What the count search returns for an exact order statistic: the smallest point
    ``low + h * 2^-16`` >= v (computed the same way, in float64)."""
    h = math.ceil((v - low) / UNIT)
    while low + (h - 1) * UNIT >= v:
        h -= 1
    while low + h * UNIT < v:
        h += 1
    return float(low + h * UNIT)


def _joint(data: list[list[float]], names: list[str], **kw: object):
    return stats.joint([np.asarray(d, dtype=np.float64) for d in data], names, min_cohort=1,
                       timeout=240, **kw)


# --- even-N median --------------------------------------------------------------------------
_rng = np.random.default_rng(7)
MEDIAN_CASES = {
    "2p_random": ([_rng.normal(0, 5, 7).tolist(), _rng.normal(1, 3, 5).tolist()], None),
    "3p_random": ([_rng.normal(0, 2, 4).tolist(), _rng.normal(2, 2, 5).tolist(),
                   _rng.normal(-1, 4, 3).tolist()], None),
    "ties_A_equals_B": ([[1.0, 2.0, 2.0, 5.0], [2.0, 2.0, 7.0, 0.0]], None),
    "ties_split_over_parties": ([[1.0, 1.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]], None),
    "far_party": ([[-1000.0, -999.0, 1000.0, 1001.0], [0.1, 0.3, 0.2],
                   [0.25, 0.15, 0.35]], None),
    "single_row_party": ([[1.3], [1.9, -3.2, 4.4, 2.5, 8.0, -0.4, 1.0]], None),
    "negative_off_grid": ([[-7.123456789, -3.333333333], [-1e-6, -2.5, -12.75, -0.0625]],
                          None),
    "range_ends": ([[-3.0, 0.0, 20.0], [11.0, -1.0, 10.0]], (0.0, 10.0)),
}


@pytest.mark.parametrize("case", list(MEDIAN_CASES))
def test_even_median_and_exact_order_statistics(case: str) -> None:
    data, bounds = MEDIAN_CASES[case]
    rows = np.concatenate([np.asarray(d, dtype=np.float64) for d in data])
    assert rows.size % 2 == 0
    res = _joint(data, ["median", *EXACT], bounds=bounds)
    clipped = rows if bounds is None else np.clip(rows, *bounds)
    want = statistics.median(clipped.tolist())
    assert want == pytest.approx(float(np.median(clipped)), abs=1e-12)
    got = res["median"]
    assert abs(got - want) < BOUND, (case, got, want)
    assert got >= want - 2.0**-21  # rounded up to the 2^-17 grid (values rounded to 2^-20)
    # exact targets: bit for bit what the plain count search returns
    low = -st.VALUE_LIMIT if bounds is None else bounds[0]
    for name, fn in (("median_low", statistics.median_low), ("median_high",
                                                             statistics.median_high),
                     ("min", min), ("max", max)):
        assert res[name] == _exact_grid(float(fn(clipped.tolist())), low), (case, name)


def test_even_median_on_the_grid_is_exact() -> None:
    res = _joint([[1.0, -5.0, 8.0], [3.0, 12.0, -1.0]], ["median"])
    assert res["median"] == 2.0  # (1 + 3) / 2, a grid point: no rounding at all


# --- quantiles ------------------------------------------------------------------------------
QDATA = [_rng.normal(0, 3, 5).tolist(), _rng.normal(1, 1, 4).tolist(),
         _rng.normal(-2, 2, 4).tolist()]  # N = 13


def test_inclusive_quantiles_match_numpy_default() -> None:
    res = _joint(QDATA, ["quantiles"], quantiles_n=10, method="inclusive")
    rows = np.concatenate(QDATA)
    want = np.quantile(rows, np.arange(1, 10) / 10)  # numpy's default ("linear")
    assert np.max(np.abs(res["quantiles"] - want)) < BOUND


def test_exclusive_quantiles_match_statistics() -> None:
    """The default method (the plaintext oracle's): :func:`statistics.quantiles`."""
    res = _joint(QDATA, ["quantiles", "median"], quantiles_n=4)
    rows = np.concatenate(QDATA).tolist()
    want = statistics.quantiles(rows, n=4)
    assert np.max(np.abs(res["quantiles"] - np.array(want))) < BOUND
    assert abs(res["median"] - statistics.median(rows)) < BOUND


def test_extrapolated_exclusive_quantiles_still_match() -> None:
    """With N = 6 and n = 10 the first/last cut points lie outside [x_(1), x_(N)]; those go to
    the oblivious search, the others to the public one, in the same release."""
    data = [[0.5, 2.25, -1.0], [4.0, 3.5, 1.125]]
    res = _joint(data, ["quantiles"], quantiles_n=10)
    want = statistics.quantiles(sum(data, []), n=10)
    assert np.max(np.abs(res["quantiles"] - np.array(want))) < 1e-3


# --- what is opened ---------------------------------------------------------------------------
def _release(names: list[str]):
    return Release(st.make_spec(names, ("x",), Options(
        backend="mpc", bins=None, quantiles_n=4, method="exclusive", target=None, iterations=5,
        learning_rate=1.0, bounds=None, epsilon=None, delta=0.0, mechanism="laplace",
        min_cohort=1, ledger=None, dataset="d", audit=None)))  # no cohort bit in the log


def _transcript_job(party, x, names):
    log: list[np.ndarray] = []
    out = party_release(party, np.asarray(x).reshape(-1, 1), _release(names), transcript=log)
    return out, [v.tolist() for v in log]


def _run(datasets: list[list[float]], names: list[str]):
    return mpc.run(_transcript_job, parties=len(datasets),
                   per_party_args=[(d, names) for d in datasets], timeout=240)


def _expected_bits(v: float) -> list[list[list[float]]]:
    """The opened rounds of a public search for one interpolating target with output ``v``:
    ``[v <= t]`` at the thresholds the search itself picks from the earlier bits."""
    m = PUBLIC_FANOUT
    base = math.floor(-st.VALUE_LIMIT / FINE) * FINE
    lo, hi = -1, math.ceil((st.VALUE_LIMIT - base) / FINE)
    rounds = []
    while hi - lo > 1:
        pts = [lo + (hi - lo) * (i + 1) // (m + 1) for i in range(m)]
        bits = [float(v <= base + p * FINE) for p in pts]
        rounds.append([bits])
        lo = max([lo, *(p for p, b in zip(pts, bits) if not b)])
        hi = min([hi, *(p for p, b in zip(pts, bits) if b)])
    return rounds


# same N = 6, same median 2 = (1 + 3) / 2 = (0 + 4) / 2; different middle pairs, different
# other values, split differently over the parties
MID_13 = [[-5.5, 1.0, 7.25], [3.0, 10.0, -2.0]]
MID_04 = [[0.0, 4.0, 8.5], [-4.0, 9.0, -1.75]]


MID_13_3P = [[-5.5, 1.0], [7.25, 3.0], [10.0, -2.0]]
MID_04_3P = [[0.0, 4.0], [8.5, -4.0], [9.0, -1.75]]


@pytest.mark.parametrize(
    ("a", "b"), [(MID_13, MID_04), pytest.param(MID_13_3P, MID_04_3P, marks=pytest.mark.slow)],
    ids=["2p", "3p"])
def test_public_search_opens_only_predicate_bits_identical_for_the_same_median(a, b) -> None:
    for data in (a, b):
        assert statistics.median(sum(data, [])) == 2.0
    ra, rb = _run(a, ["median"]), _run(b, ["median"])
    want = _expected_bits(2.0)
    for rank in range(len(a)):
        (out_a, log_a), (out_b, log_b) = ra[rank], rb[rank]
        assert out_a["median"][0] == 2.0 and out_b["median"][0] == 2.0
        assert log_a == log_b  # identical views: A/B and everything else stay hidden
        assert log_a[0][-1] == 6  # preflight (status codes, column digests, N)
        # then one opening per round, each exactly the bits [median <= t]; nothing else
        assert log_a[1:] == want


def test_transcript_changes_when_the_median_changes() -> None:
    """Negative control: a different median gives a different view."""
    other = [row[:] for row in MID_13]
    other[1][0] = 3.5  # median 2.25
    log = _run(other, ["median"])[0][1]
    assert log[1:] == _expected_bits(2.25)
    assert log != _run(MID_13, ["median"])[0][1]


# --- plaintext helpers --------------------------------------------------------------------------
def test_which_targets_the_public_search_takes() -> None:
    assert public_search_supports(Target("median", 0, 3, 1, 2))
    assert public_search_supports(Target("min", 0, 0, 0, 1))
    assert public_search_supports(Target("quantiles", 0, 2, 4, 4))  # exact (num == den)
    assert not public_search_supports(Target("quantiles", 0, 0, -3, 10))  # extrapolated
    assert not public_search_supports(Target("quantiles", 0, 4, 11, 10))
    assert not public_search_supports(Target("quantiles", 0, 4, 1, MAX_PUBLIC_DEN + 1))


def test_local_view_counts_and_gaps() -> None:
    col = _round_fine(np.sort(np.array([0.1, 2.0, 2.0, 5.0])))
    thr = np.array([-1.0, 0.5, 2.0, 4.0, 6.0])
    count, below, above = _local_view(col, thr)
    cap = 4 * st.VALUE_LIMIT
    assert count.tolist() == [0, 1, 3, 3, 4]
    assert below.tolist() == [cap, 0.5 - col[0], 0.0, 2.0, 1.0]
    assert above.tolist() == [col[0] + 1.0, 1.5, 3.0, 1.0, cap]
    empty = _local_view(np.zeros(0), thr)
    assert empty[0].tolist() == [0] * 5 and set(empty[1]) == {cap} and set(empty[2]) == {cap}
    assert np.all(_round_fine(np.array([0.1, -0.1])) * 2**20 % 1 == 0)

"""Differentially private order statistics: the noisy public binary search.

Plain data (one curator, the oracle) and the MPC backend run the same mechanism
(``veil.protocols.stats.dp_order``). Accuracy bounds are derived from the calibrated noise:
a query is answered correctly whenever the summed noise is below its distance from zero, so
the rank of the answer lies within ``K·σ / den`` (+ one grid cell) of the target rank, with σ
the standard deviation of the summed noise of one query and K = 8 (per-query failure
probability below 1e-5 even for a single Laplace draw).
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest

from veil import mpc, stats
from veil.errors import ConfigurationError, UnsupportedOperationError
from veil.privacy import BudgetLedger
from veil.privacy import mechanisms as mech
from veil.protocols.stats import dp_order as dpo
from veil.protocols.stats.options import Options
from veil.protocols.stats.spec import make_spec
from veil.stats._party import party_release
from veil.stats._release import Release

K = 8.0
LO, HI = 0.0, 100.0
W = (HI - LO) / 2**dpo.ROUNDS
ORDER_STATS = ["median", "quantiles", "min", "max"]


def _release(names, epsilon=2.0, mechanism="laplace", delta=0.0, columns=("x",), **kw):
    opts = dict(backend="mpc", bins=None, quantiles_n=4, method="exclusive", target=None,
                iterations=5, learning_rate=1.0, bounds=(LO, HI), epsilon=epsilon, delta=delta,
                mechanism=mechanism, min_cohort=10, ledger=None, audit=None)
    opts.update(kw)
    return Release(make_spec(names, columns, Options(**opts)))


def _uniform(sizes, seed=5):
    rng = np.random.default_rng(seed)
    return [rng.uniform(LO + 1.0, HI - 1.0, size=(n, 1)) for n in sizes]


def _targets():
    """(statistic, index in its array, q as a Fraction, offset): min asks for rank 1."""
    return [("median", None, Fraction(1, 2), 0), ("min", None, Fraction(0), -1),
            ("max", None, Fraction(1), 0)] + [
        ("quantiles", i, Fraction(i + 1, 4), 0) for i in range(3)]


def _pick(res, key, idx):
    v = np.asarray(res[key], dtype=np.float64).reshape(-1)
    return float(v[0] if idx is None else v[idx])


def _count_le(xs, t):
    return int(np.searchsorted(xs, t, side="right"))


def _check_accuracy(res, x, release, parties):
    """Rank of every answer within K noise std devs (in rank units) of its target rank."""
    xs = np.sort(x)
    n = xs.size
    groups = {g.name: g for g in release.order_groups()}
    for key, idx, q, offset in _targets():
        den = q.denominator
        sigma = math.sqrt(parties) * groups[key].std()
        tol = K * sigma / den + 1
        got = _pick(res, key, idx)
        want = max(1, math.ceil(q * n - offset / den)) if key != "min" else 1
        assert LO < got <= HI
        # the predicate held at `got` and failed one grid cell below (up to the noise)
        assert _count_le(xs, got) >= want - tol, (key, idx, got)
        assert _count_le(xs, got - W) < want + tol, (key, idx, got)
        # the same in value units on this uniform data (density n / 98 per unit)
        exact = xs[want - 1]
        assert abs(got - exact) <= 1.5 * tol * (HI - LO) / n + 2 * W, (key, idx, got, exact)


def _exact_on_grid(x, key, idx):
    """The order statistic a noiseless search returns: the first grid point >= x_(rank)."""
    xs = np.sort(x)
    n = xs.size
    rank = {"median": math.ceil(n / 2), "min": 1, "max": n,
            "median_high": n // 2 + 1}.get(key) or math.ceil((idx + 1) * n / 4)
    grid = LO + np.arange(1, 2**dpo.ROUNDS + 1) * W
    return float(grid[np.searchsorted(grid, xs[rank - 1], side="left")])


# --- plain data (the oracle) ------------------------------------------------------------------
@pytest.mark.parametrize(("mechanism", "delta"), [("laplace", 0.0), ("gaussian", 1e-6)])
def test_plain_dp_order_statistics_are_within_the_noise_tolerance(mechanism, delta) -> None:
    x = np.concatenate(_uniform([20_000]))[:, 0]
    ledger = BudgetLedger(epsilon=5.0, delta=1e-5)
    res = stats.describe(x, ["mean", *ORDER_STATS], epsilon=2.0, bounds=(LO, HI),
                         mechanism=mechanism, delta=delta, ledger=ledger, dataset="clinic")
    _check_accuracy(res, x, _release(["mean", *ORDER_STATS], mechanism=mechanism, delta=delta),
                    1)
    assert np.asarray(res["quantiles"]).shape == (3,)
    assert abs(res["mean"] - x.mean()) < 1.0
    assert ledger.spent("clinic") == pytest.approx((2.0, delta))  # one charge per release


def test_plain_dp_with_huge_epsilon_is_the_exact_order_statistic_on_the_grid() -> None:
    x = np.concatenate(_uniform([3001]))[:, 0]
    res = stats.describe(x, [*ORDER_STATS, "median_low", "median_high"], epsilon=1e6,
                         bounds=(LO, HI))
    for key, idx, _q, _o in _targets():
        assert _pick(res, key, idx) == _exact_on_grid(x, key, idx), key
    assert res["median_low"] == res["median"] == _exact_on_grid(x, "median", None)
    assert res["median_high"] == _exact_on_grid(x, "median_high", None)


def test_the_budget_split_counts_the_searches_as_one_more_block() -> None:
    rel = _release(["mean", "median", "max"], epsilon=1.0)
    assert rel.blocks() == 3  # count, sums, order statistics
    by_key = {g.name: g for g in rel.order_groups()}
    queries = dpo.ROUNDS * 2
    # Laplace: scale = Δ · R · T / (ε / k), Δ = 1 for the median and the max
    assert by_key["median"].scale == by_key["max"].scale == Fraction(queries * 3)
    q = _release(["quantiles"], epsilon=1.0, quantiles_n=4)
    # quartiles 1/4, 1/2, 3/4: Δ = 3, 1, 3; k = 2 (count + order)
    assert [g.scale for g in q.order_groups()] == [Fraction(3 * 16 * 3 * 2), Fraction(16 * 3 * 2),
                                                   Fraction(3 * 16 * 3 * 2)]
    g = _release(["median"], epsilon=1.0, mechanism="gaussian", delta=1e-6)
    rho = mech.rho_for(1.0, 1e-6)
    sigma2 = g.order_groups()[0].scale
    # zCDP: R queries of sensitivity 1 with σ² each cost R / (2σ²) <= ρ / k, k = 2
    assert dpo.ROUNDS / (2 * float(sigma2)) <= rho / 2
    assert dpo.ROUNDS / (2 * float(sigma2)) == pytest.approx(rho / 2, rel=1e-4)
    # the linear groups shrink their share accordingly (two blocks instead of one)
    alone = _release(["count"], epsilon=1.0).groups(32)[0].scale
    assert g.groups(32)[0].mechanism == "gaussian"
    assert _release(["count", "median"], epsilon=1.0).groups(32)[0].scale == 2 * alone


def test_every_search_query_draws_fresh_noise_from_the_csprng(monkeypatch) -> None:
    draws: list = []
    real = mech.sample_discrete_laplace
    calls = {"n": 0}
    real_randbelow = mech.secrets.randbelow

    def counting(n: int) -> int:
        calls["n"] += 1
        return real_randbelow(n)

    def laplace(scale):
        draws.append(scale)
        return real(scale)

    def trap(*_a, **_k):
        raise AssertionError("DP noise must not come from random / numpy.random")

    monkeypatch.setattr(mech, "sample_discrete_laplace", laplace)
    monkeypatch.setattr(mech.secrets, "randbelow", counting)
    for name in ("random", "randint", "randrange", "gauss", "uniform", "getrandbits"):
        monkeypatch.setattr(random, name, trap)
    for name in ("random", "randint", "normal", "laplace", "uniform", "default_rng"):
        monkeypatch.setattr(np.random, name, trap)
    x = np.linspace(1, 99, 500)
    stats.describe(x, ["median", "max"], epsilon=1.0, bounds=(LO, HI))
    # one draw for the noisy count, then one per (round, target)
    assert len(draws) == 1 + dpo.ROUNDS * 2
    assert calls["n"] >= len(draws)
    assert set(draws[1:]) == {Fraction(dpo.ROUNDS * 2 * 2)}


def test_refusals() -> None:
    x = np.linspace(1, 99, 200)
    with pytest.raises(ConfigurationError, match="bounds"):
        stats.describe(x, ["median"], epsilon=1.0)
    for backend in ("paillier", "ckks"):
        with pytest.raises(UnsupportedOperationError, match="backend='mpc'"):
            stats.joint([x, x], ["median"], backend=backend, epsilon=1.0, bounds=(LO, HI))
    with pytest.raises(UnsupportedOperationError, match="differentially private"):
        stats.describe(np.column_stack([x, x > 50]), ["logistic_regression"], epsilon=1.0,
                       bounds=(0, 100))


class _NoNetworkParty:
    """A party that must not be used: the refusal happens before any message."""

    rank, world_size = 0, 2

    def __getattr__(self, name):
        raise AssertionError(f"party.{name} used before the refusal")


def test_restricted_recipients_are_refused_before_anything_is_shared() -> None:
    x = np.linspace(1, 99, 200)
    with pytest.raises(ConfigurationError, match="to=None"):
        stats.describe(x, ["mean", "median"], party=_NoNetworkParty(), to=[0], epsilon=1.0,
                       bounds=(LO, HI))


# --- MPC backend ------------------------------------------------------------------------------
def test_mpc_dp_release_of_linear_and_order_statistics_is_accurate_and_charged_once() -> None:
    data = _uniform([7000, 6500, 6500])
    ledger = BudgetLedger(epsilon=3.0)
    names = ["a", "b", "c"]
    wanted = ["count", "mean", *ORDER_STATS]
    res = stats.joint(data, wanted, backend="mpc", epsilon=2.0, bounds=(LO, HI), ledger=ledger,
                      dataset_names=names, timeout=240)
    x = np.concatenate(data)[:, 0]
    _check_accuracy(res, x, _release(wanted), parties=3)
    for name in names:
        assert ledger.spent(name) == pytest.approx((2.0, 0.0))
    assert abs(res["count"] - x.size) < 300
    assert abs(res["mean"] - x.mean()) < 1.0


def _transcript_job(party, x, names, epsilon):
    log: list[np.ndarray] = []
    out = party_release(party, np.asarray(x).reshape(-1, 1),
                        _release(names, epsilon=epsilon, min_cohort=5, dataset="d"),
                        transcript=log)
    return out, [v.tolist() for v in log]


def test_mpc_opens_only_bits_after_the_preflight_and_is_exact_with_huge_epsilon() -> None:
    data = [d[:, 0].tolist() for d in _uniform([40, 35, 26], seed=9)]
    names = ["median", "min", "max", "quantiles"]
    res = mpc.run(_transcript_job, parties=3, per_party_args=[(d, names, 1e6) for d in data],
                  timeout=240)
    x = np.array(sum(data, []))
    t = len(dpo.dp_targets(_release(names).spec))
    assert t == 6
    for out, log in res:
        for key, idx, _q, _o in _targets():
            assert _pick(out, key, idx) == _exact_on_grid(x, key, idx), key
        # preflight (codes, column digests; no N), the minimum-cohort pass bit when the
        # caller passes min_cohort > 1 to the kernel, the noisy count (for check_rows), then
        # ROUNDS openings of one bit per target, nothing else
        assert len(log) in (2 + dpo.ROUNDS, 3 + dpo.ROUNDS)
        assert len(log[0]) == 4 * 3 + 1 and log[0][-1] == 0
        if len(log) == 3 + dpo.ROUNDS:
            assert log[1] == 1.0 or log[1] == [1.0]
        assert np.asarray(log[-dpo.ROUNDS - 1]).size == 1
        for bits in log[-dpo.ROUNDS:]:
            assert len(bits) == t and set(bits) <= {0.0, 1.0}
    assert all(r[1] == res[0][1] for r in res)  # every party sees the same bits


def _predraw_job(party, x, interface):
    from veil.mpc import accounting
    from veil.protocols.stats import secret as stats_mpc
    from veil.protocols.stats import spec as st

    spec = st.make_spec(["median", "max"], ["x"], Options(epsilon=1.0, bounds=(LO, HI)))
    size = sum(n for _, n in st.layout(spec))
    seen: list[int] = []

    def draw():
        seen.append(accounting.stats()["rounds"])  # messages exchanged so far
        return [0, 0]

    start = accounting.stats()["rounds"]
    noise = draw if interface == "callable" else [draw() for _ in range(dpo.ROUNDS)]
    if interface != "callable":
        start = accounting.stats()["rounds"]
    out = stats_mpc.run_release(party, np.asarray(x).reshape(-1, 1), spec, noise=[0] * size,
                                dp_frac_bits=stats_mpc.block_frac_bits(spec),
                                dp_order_noise=noise)
    return out, start, seen, accounting.stats()["rounds"]


@pytest.mark.parametrize("interface", ["callable", "rows"])
def test_every_round_of_search_noise_is_drawn_before_the_first_message(interface) -> None:
    data = [[10.0, 20.0, 30.0], [40.0, 50.0, 60.0, 70.0]]
    res = mpc.run(_predraw_job, parties=2, per_party_args=[(d, interface) for d in data],
                  timeout=240)
    for out, start, seen, end in res:
        assert len(seen) == dpo.ROUNDS
        assert set(seen) == {start}  # nothing sent or received before the last draw
        assert end > start
        assert out["max"] == pytest.approx(70.0, abs=2 * W)

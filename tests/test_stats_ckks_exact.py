"""The CKKS statistics backend releases exact-rounded integers (veil.protocols.stats.homomorphic).

Statistics travel as 72-bit fixed-point integers (24 fractional bits) split into 18 limbs of 4
bits; the aggregator adds a random zero-sum limb mask and the key holder rounds the decrypted
limbs, so the release is a deterministic function of the exact integer aggregate and the key
holder's view of the limbs hides everything else (statistical distance < 2^-21.9). Stated
bound: at most ``2**-25`` rounding error per statistic per owner, plus the float64 rounding of
the decoded sum.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from veil import stats
from veil.errors import ConfigurationError
from veil.protocols.stats import homomorphic as sh
from veil.protocols.stats import spec as st
from veil.protocols.stats.options import Options

F = sh.CKKS_FRAC_BITS
LIMB = 1 << sh.CKKS_LIMB_BITS
INT_LIMIT = 1 << (sh.CKKS_LIMB_BITS * sh.CKKS_LIMBS)
BINS = [-50.0, -1.0, 0.0, 0.5, 3.0, 80.0]
LINEAR = ["count", "sum", "mean", "variance", "pvariance", "stdev", "pstdev", "covariance",
          "correlation", "histogram", "linear_regression"]
BIGGEST = float(np.nextafter(sh.CKKS_MAX_ABS, 0.0))  # 2^48 - 2^-5: the largest value accepted


# -- the encoding, in plaintext --------------------------------------------------------------

@given(hst.lists(hst.integers(-INT_LIMIT, INT_LIMIT - 1), min_size=1, max_size=20))
def test_limbs_round_trip_and_stay_in_range(ints: list[int]) -> None:
    limbs = sh.to_limbs(ints)
    assert limbs.dtype == np.int64 and limbs.shape == (sh.CKKS_LIMBS, len(ints))
    assert np.all((limbs[:-1] >= 0) & (limbs[:-1] < LIMB))
    assert np.all((limbs[-1] >= -LIMB) & (limbs[-1] < LIMB))
    assert sh.from_limbs(limbs) == ints


finite = hst.floats(-BIGGEST, BIGGEST, allow_nan=False, allow_infinity=False)


@given(hst.lists(hst.lists(finite, min_size=3, max_size=3), min_size=1,
                 max_size=sh.CKKS_MAX_TERMS))
@settings(max_examples=60, deadline=None)
def test_encode_add_limbs_decode_is_exact(owners: list[list[float]]) -> None:
    """Law: encode -> limb-wise integer sum -> recombine == the sum of the rounded integers."""
    encoded = [sh.encode_fixed(v) for v in owners]
    for vals, ints in zip(owners, encoded):
        for v, i in zip(vals, ints):  # round-to-nearest on the grid, exactly
            assert abs(Fraction(v) * 2**F - i) <= Fraction(1, 2)
    limb_sum = sum(sh.to_limbs(ints) for ints in encoded)
    assert np.abs(limb_sum).max() < 2**10  # plus the mask (< 2^35.1): below 2^36 per slot
    total = [sum(col) for col in zip(*encoded)]
    assert sh.from_limbs(limb_sum) == total
    decoded = sh.decode_fixed(total)
    assert decoded.tolist() == [float(Fraction(t, 2**F)) for t in total]  # correctly rounded
    for j, want in enumerate(zip(*owners)):  # the stated bound: P * 2^-25 (+ float rounding)
        exact = sum(Fraction(v) for v in want)
        err = abs(Fraction(decoded[j]) - exact)
        ulp = Fraction(math.ulp(float(decoded[j])))  # float64 rounding of the decoded sum
        assert err <= Fraction(len(owners), 2 ** (F + 1)) + ulp / 2


def test_encoding_edges_and_typed_errors() -> None:
    assert sh.encode_fixed([2.0**-25, 3 * 2.0**-25, -(2.0**-25)]) == [0, 2, 0]  # ties to even
    assert sh.from_limbs(sh.to_limbs(sh.encode_fixed([BIGGEST, -BIGGEST]))) == \
        [INT_LIMIT - 2**19, -(INT_LIMIT - 2**19)]
    with pytest.raises(ConfigurationError,
                       match=r"magnitude 2\.81475e\+14.*2\^48.*rescale.*backend='paillier'"):
        sh.encode_fixed([1.0, -(2.0**48)])
    with pytest.raises(ConfigurationError, match=r"1 is missing \(NaN\).*range"):
        sh.encode_fixed([1.0, float("nan")])
    with pytest.raises(ConfigurationError, match=r"0 is beyond float64.*range \|value\| < 2\^48"):
        sh.encode_fixed([float("inf")])
    with pytest.raises(ConfigurationError, match=r"not on the 2\^-24 grid"):
        sh.encode_fixed([0.5, 0.1], on_grid=True)
    assert sh.encode_fixed([0.5, -3 * 2.0**-24], on_grid=True) == [2**23, -3]
    with pytest.raises(ConfigurationError, match="does not fit 18 limbs"):
        sh.to_limbs([INT_LIMIT])


def test_rounding_limbs_refuses_values_far_from_an_integer() -> None:
    assert sh.round_limbs([3.2, -7.24, 2.0**35 + 0.1]).tolist() == [3, -7, 2**35]
    with pytest.raises(ConfigurationError, match=r"slot 1 .*0\.3 from the nearest integer.*"
                                                 r"lack the precision"):
        sh.round_limbs([1.0, 2.3])


def test_parameters_keep_every_limb_sum_exact() -> None:
    """The stated bound: CKKS_MAX_TERMS vectors of limbs <= 2^4 plus the mask fit and round."""
    from veil.he.lattice.ckks import error_constants

    params = sh._ckks_params()
    assert params.poly_modulus_degree == 8192 and params.scale_bits == 23
    mask_max = (LIMB + 1) * 2 ** (sh.CKKS_MASK_BITS - 1)
    assert sh.CKKS_MAX_TERMS * LIMB + mask_max < params.max_abs_value == 2.0**36
    fresh, _ = error_constants(params)
    # worst-case error of the sum (data vectors plus the mask), vs 0.25 allowed
    assert (sh.CKKS_MAX_TERMS + 1) * fresh <= 0.125
    assert sh.CKKS_MAX_TERMS == 63
    assert sh.CKKS_HIDING_BOUND == (sh.CKKS_LIMBS - 1) * 63 / 2**32 < 2**-21.9


# -- the protocol ------------------------------------------------------------------------------

def _run(owner_vectors: list[np.ndarray], noise: np.ndarray | None = None) -> np.ndarray:
    holder = sh.KeyHolder("ckks")
    public = holder.public_message()
    agg = sh.SumAggregator("ckks", public)
    for v in owner_vectors:
        agg.add(sh.owner_message("ckks", public, v))
    if noise is not None:
        agg.add_noise(noise)
    return holder.open(agg.result_message())


def _model(owner_vectors: list[np.ndarray]) -> np.ndarray:
    """What the release must be, bit for bit: decode(sum of the owners' rounded integers)."""
    ints = [sh.encode_fixed(v) for v in owner_vectors]
    return sh.decode_fixed([sum(col) for col in zip(*ints)])


def test_many_owners_with_extreme_limbs_decode_exactly() -> None:
    """40 owners whose limbs sit at the top of their range (sums beyond the old 2^29 slots)."""
    owners = [np.array([1 - 2.0**-24, -(2.0**-24), BIGGEST, -BIGGEST, 0.1 * i, -1e9 / (i + 3)])
              for i in range(40)]
    got = _run(owners)
    assert got.tobytes() == _model(owners).tobytes()
    assert got[0] == 40 * (1 - 2.0**-24) and got[1] == -40 * 2.0**-24


def test_the_largest_aggregate_still_rounds_exactly() -> None:
    """CKKS_MAX_TERMS copies of one ciphertext: errors add up linearly (the worst case)."""
    v = np.array([-BIGGEST, BIGGEST, 1 - 2.0**-24, -(2.0**-24), math.pi])
    holder = sh.KeyHolder("ckks")
    public = holder.public_message()
    agg = sh.SumAggregator("ckks", public)
    msg = sh.owner_message("ckks", public, v)
    for _ in range(sh.CKKS_MAX_TERMS):
        agg.add(msg)
    with pytest.raises(ConfigurationError, match=r"vector 64 .* at most 63.*paillier"):
        agg.add(msg)
    got = holder.open(agg.result_message())
    assert got.tobytes() == _model([v] * sh.CKKS_MAX_TERMS).tobytes()


def test_dp_noise_goes_through_the_same_exact_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    owners = [np.array([10.0, -3.3, 1e6 / 7]), np.array([2.0, 5.1, -2.5])]
    units = np.array([-(2**30) - 5, 17, 2**40 + 1])
    got = _run(owners, noise=units * 2.0**-F)
    ints = [sh.encode_fixed(v) for v in owners]
    want = sh.decode_fixed([sum(c) + int(u) for c, u in zip(zip(*ints), units)])
    assert got.tobytes() == want.tobytes()
    with pytest.raises(ConfigurationError, match=r"DP noise value 0 = 0.1 is not on the 2\^-24"):
        _run(owners, noise=np.array([0.1, 0.0, 0.0]))
    monkeypatch.setattr(sh, "CKKS_MAX_TERMS", 2)
    with pytest.raises(ConfigurationError, match="at most 2 .owners plus DP noise"):
        _run(owners, noise=np.zeros(3))


# -- end to end, against numpy ---------------------------------------------------------------

def _datasets(kind: str) -> list[np.ndarray]:
    rng = np.random.default_rng({"mixed": 5, "large": 6}[kind])
    if kind == "mixed":  # negative values, off any dyadic grid, three owners
        out = []
        for n in (17, 23, 14):
            x = rng.normal([-4.0, 2.5, 0.3], [3.0, 1.7, 9.0], size=(n, 3)) * (math.pi / 7)
            x[:, 2] += 0.8 * x[:, 0]
            out.append(x)
        return out
    # near the range limit: each owner's sums of squares reach ~93% of 2^48
    out = []
    for _ in range(2):
        mag = 2.3e6 * (1 - 0.01 * rng.random((50, 2))) / 1.0000001
        sign = rng.choice([-1.0, 1.0], size=(50, 2))
        x = mag * sign
        x[:, 1] = np.where(rng.random(50) < 0.8, x[:, 0], x[:, 1]) * 0.999999
        out.append(x)
    return out


def _flatten(values: dict) -> dict[str, np.ndarray]:
    out = {}
    for k, v in values.items():
        if isinstance(v, st.Regression):
            v = np.append(v.coef, v.intercept)
        out[k] = np.asarray(v, dtype=np.float64).reshape(-1)
    return out


def _propagated_tolerance(spec: st.Spec, total: np.ndarray,
                          delta: np.ndarray) -> dict[str, np.ndarray]:
    """First-order propagation of per-entry aggregate errors ``delta`` through finalize."""
    tol = {k: np.zeros_like(v) for k, v in _flatten(st.finalize_linear(spec, total)).items()}
    for j in range(total.size):
        h = max(abs(float(total[j])), 1.0) * 1e-7
        up, dn = total.copy(), total.copy()
        up[j] += h
        dn[j] -= h
        fu, fd = _flatten(st.finalize_linear(spec, up)), _flatten(st.finalize_linear(spec, dn))
        for k in tol:
            tol[k] += np.abs(fu[k] - fd[k]) / (2 * h) * delta[j]
    return tol


@pytest.mark.parametrize("kind", ["mixed", "large"])
def test_every_linear_statistic_matches_numpy_within_the_stated_bound(kind: str) -> None:
    data = _datasets(kind)
    kw = {"bins": BINS if kind == "mixed" else [-3e6, -1e6, 0.0, 1e6, 3e6]}
    res = stats.joint(data, LINEAR, backend="ckks", **kw)
    spec = st.make_spec(LINEAR, res.columns, Options(backend="ckks", bins=kw["bins"]))
    locals_ = [st.local_aggregates(x, spec) for x in data]
    model_total = _model(locals_)
    # 1. the release is exactly the integer model (no CKKS noise anywhere)
    got = _flatten(res.values)
    model = _flatten(st.finalize_linear(spec, model_total))
    for k in got:
        assert got[k].tobytes() == model[k].tobytes(), k
    # 2. the integer model is within P * 2^-25 (+ float rounding) of the exact sums
    exact = [sum(Fraction(float(loc[j])) for loc in locals_) for j in range(model_total.size)]
    bound = [Fraction(len(data), 2 ** (F + 1)) + Fraction(math.ulp(float(m))) / 2
             for m in model_total]
    assert all(abs(Fraction(float(m)) - e) <= b for m, e, b in zip(model_total, exact, bound))
    # 3. and hence close to numpy: the bound propagated through finalize, plus the float error
    #    of the two ways of computing (one pass over sums vs numpy on the pooled rows)
    exact_f = np.array([float(e) for e in exact])
    delta = np.array([float(b) for b in bound]) + 2.0**-50 * np.abs(exact_f)
    tol = _propagated_tolerance(spec, exact_f, delta)
    oracle = _flatten(stats.describe(np.concatenate(data), LINEAR, **kw))
    assert res["count"] == sum(len(x) for x in data)
    assert np.array_equal(res["histogram"], stats.describe(np.concatenate(data), ["histogram"],
                                                           **kw)["histogram"])
    for k in got:
        scale = np.maximum(np.abs(oracle[k]), 1.0)
        err = np.abs(got[k] - oracle[k])
        limit = 2 * tol[k] + 1e-9 * scale
        assert np.all(err <= limit), f"{kind} {k}: error {err.max():.3g} > {limit.min():.3g}"


def test_release_is_bit_identical_across_fresh_keys_and_flooding() -> None:
    """Decryption noise never reaches the output: two key pairs, flood on or off, same bits."""
    data = _datasets("mixed")
    names = ["count", "mean", "variance", "correlation", "linear_regression", "sum"]
    runs = [stats.joint(data, names, backend="ckks", flood=flood)
            for flood in (False, False, True)]
    flat = [_flatten(r.values) for r in runs]
    for k in flat[0]:
        assert flat[0][k].tobytes() == flat[1][k].tobytes() == flat[2][k].tobytes(), k
    owners = [np.array([0.1, -7.3, 1e12 / 3]), np.array([1 / 3, 2.0, -5e11])]
    assert _run(owners).tobytes() == _run(owners).tobytes()


def test_out_of_range_statistics_name_the_magnitude_and_the_fix() -> None:
    x = np.full((20, 1), 4e6)  # sum of squares 3.2e14 > 2^48
    with pytest.raises(ConfigurationError,
                       match=r"party 0: a sum of squares .*magnitude 3\.2e\+14.*2\^48.*rescale "
                             r"the data.*backend='paillier'"):
        stats.joint([x, x[:10]], ["variance"], backend="ckks")


# -- what the key holder sees: the aggregate, nothing per limb --------------------------------

def test_zero_sum_mask_adds_nothing_and_stays_in_range() -> None:
    mask = sh.zero_sum_mask(50)
    assert mask.shape == (sh.CKKS_LIMBS, 50) and mask.dtype == np.int64
    assert sh.from_limbs(mask) == [0] * 50
    assert np.abs(mask).max() <= (LIMB + 1) * 2 ** (sh.CKKS_MASK_BITS - 1)
    assert len({tuple(c) for c in mask.T}) == 50  # fresh randomness per statistic


def _views(owner_vectors: list[np.ndarray], noise: np.ndarray | None,
           trials: int) -> np.ndarray:
    """The key holder's rounded decryption of the aggregate, ``trials`` times (rows)."""
    holder = sh.KeyHolder("ckks")
    public = holder.public_message()
    out = []
    for _ in range(trials):
        agg = sh.SumAggregator("ckks", public)
        for v in owner_vectors:
            agg.add(sh.owner_message("ckks", public, v))
        if noise is not None:
            agg.add_noise(noise)
        ctx = holder._ctx  # everything the key holder can decrypt
        raw = np.asarray(ctx.decrypt(ctx.load_tensor(agg.result_message())), dtype=np.float64)
        out.append(np.rint(raw).reshape(-1))
    return np.array(out)


ALPHA = 1e-3  # false-alarm rate of the whole test (Bonferroni over the limbs)


def _assert_same_distribution(a: np.ndarray, b: np.ndarray) -> None:
    """Two-sample Kolmogorov–Smirnov test per decrypted slot, family-wise level ALPHA. The
    distributions may differ by at most CKKS_HIDING_BOUND in total variation, so a correct
    implementation fails with probability at most ALPHA + trials * 2^-21.9."""
    from scipy.stats import ks_2samp

    assert a.shape == b.shape
    pvals = [float(ks_2samp(a[:, j], b[:, j]).pvalue) for j in range(a.shape[1])]
    worst = int(np.argmin(pvals))
    assert pvals[worst] >= ALPHA / a.shape[1], (
        f"slot {worst}: p = {pvals[worst]:.3g}; the key holder's view depends on more than the "
        f"aggregate (samples {a[:3, worst]} vs {b[:3, worst]})")


def test_equal_aggregates_give_identically_distributed_decryptions() -> None:
    """Owners (+5, -3) and (+1, +1) both sum to 2: the key holder must not tell them apart.
    Without the mask the limb sums are fixed and differ (the top limb is minus the number of
    negative owners), which this test catches with p ~ 1e-70."""
    trials = 120
    a = _views([np.array([5.0]), np.array([-3.0])], None, trials)
    b = _views([np.array([1.0]), np.array([1.0])], None, trials)
    assert all(sh.from_limbs(row.astype(np.int64).reshape(sh.CKKS_LIMBS, -1)) == [2 << F]
               for row in np.vstack([a, b]))
    _assert_same_distribution(a, b)
    # the old leak, directly: the top limb sum is no longer -(number of negative owners)
    assert np.mean(a[:, -1] == -1) < 0.05 and np.mean(b[:, -1] == 0) < 0.05


def test_dp_noise_sign_is_hidden_from_the_key_holder() -> None:
    """Same released value 22 from true 20 + noise 2 and from true 24 + noise -2: the key
    holder must not learn whether the truth is above or below the release."""
    trials = 120
    a = _views([np.array([20.0]), np.array([0.0])], np.array([2.0]), trials)
    b = _views([np.array([20.0]), np.array([4.0])], np.array([-2.0]), trials)
    _assert_same_distribution(a, b)
    top_neg_a, top_neg_b = np.mean(a[:, -1] < 0), np.mean(b[:, -1] < 0)
    assert abs(top_neg_a - top_neg_b) < 0.3  # without the mask: 0.0 vs 1.0

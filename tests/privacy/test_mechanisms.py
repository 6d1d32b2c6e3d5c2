"""Noise samplers: exact distributions (χ² / KS against the intended law, with negative controls),
CSPRNG use and calibration.

A correct sampler is accepted at p > 1e-5 (a false alarm about once in 10^5 runs per assertion);
each negative control (a wrong scale) must be rejected at p < 1e-6, which shows the test has power.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as sps

from veil.errors import ConfigurationError
from veil.privacy import mechanisms as mech
from veil.privacy.dp import Block, DPConfig

N = 4000


def _dlap_pmf(z: np.ndarray, scale: float) -> np.ndarray:
    a = math.exp(-1.0 / scale)
    return (1 - a) / (1 + a) * a ** np.abs(z)


def _dgauss_pmf(z: np.ndarray, sigma2: float) -> np.ndarray:
    support = np.arange(-200, 201)
    norm = np.exp(-(support**2) / (2 * sigma2)).sum()
    return np.exp(-(z**2) / (2 * sigma2)) / norm


def _chi2_pvalue(samples: list[int], pmf, cut: int) -> float:
    """χ² goodness of fit with the tails pooled into |z| > cut."""
    s = np.asarray(samples)
    cells = np.arange(-cut, cut + 1)
    observed = np.array([(s == z).sum() for z in cells] + [(np.abs(s) > cut).sum()])
    probs = pmf(cells)
    expected = np.append(probs, max(1.0 - probs.sum(), 1e-12)) * len(s)
    return float(sps.chisquare(observed, expected).pvalue)


def test_discrete_laplace_matches_its_pmf_and_rejects_a_wrong_scale() -> None:
    samples = [mech.sample_discrete_laplace(Fraction(3, 2)) for _ in range(N)]
    assert _chi2_pvalue(samples, lambda z: _dlap_pmf(z, 1.5), cut=6) > 1e-5
    # negative control: the same samples are clearly not discrete Laplace with scale 2.2
    assert _chi2_pvalue(samples, lambda z: _dlap_pmf(z, 2.2), cut=6) < 1e-6


def test_discrete_gaussian_matches_its_pmf_and_rejects_a_wrong_variance() -> None:
    samples = [mech.sample_discrete_gaussian(Fraction(4)) for _ in range(N)]
    assert _chi2_pvalue(samples, lambda z: _dgauss_pmf(z, 4.0), cut=5) > 1e-5
    assert _chi2_pvalue(samples, lambda z: _dgauss_pmf(z, 6.0), cut=5) < 1e-6
    assert abs(np.var(samples) - 4.0) < 0.5


def test_large_scale_laplace_is_ks_close_to_continuous_laplace() -> None:
    samples = np.array([mech.sample_discrete_laplace(1000) for _ in range(N)], dtype=float)
    jitter = samples + np.linspace(-0.5, 0.5, N)  # break ties; ≪ scale
    assert sps.kstest(jitter, sps.laplace(scale=1000).cdf).pvalue > 1e-5
    assert sps.kstest(jitter, sps.laplace(scale=1300).cdf).pvalue < 1e-6  # negative control


def test_samplers_draw_from_the_os_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = mech.secrets.randbelow

    def counting(n: int) -> int:
        calls["n"] += 1
        return real(n)

    monkeypatch.setattr(mech.secrets, "randbelow", counting)
    mech.sample_discrete_gaussian(10)
    assert calls["n"] > 0
    import random

    state = random.getstate()
    mech.sample_discrete_laplace(5)
    assert random.getstate() == state  # the global Mersenne Twister is never touched


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_bad_scales_are_refused(bad: float) -> None:
    with pytest.raises(ConfigurationError):
        mech.sample_discrete_laplace(bad)


def test_rho_conversion_never_exceeds_the_requested_epsilon() -> None:
    for eps, delta in [(0.1, 1e-6), (1.0, 1e-5), (8.0, 1e-9)]:
        rho = mech.rho_for(eps, delta)
        assert rho + 2 * math.sqrt(rho * math.log(1 / delta)) <= eps
        log_term = math.log(1 / delta)
        assert rho > 0.99 * (math.sqrt(log_term + eps) - math.sqrt(log_term)) ** 2


def test_calibration_scales_with_sensitivity_and_budget_split() -> None:
    dp = DPConfig(epsilon=1.0, bounds=(0, 10))
    g = dp.calibrate([Block("count", 1, 1.0, 1.0), Block("sum", 2, 20.0, 14.2)], frac_bits=0)
    # ε split in two: count scale = (1 + 1 rounding unit) / 0.5, sums (20 + 2) / 0.5
    assert [float(x.scale) for x in g] == [4.0, 44.0]
    gauss = DPConfig(epsilon=1.0, delta=1e-6, mechanism="gaussian", bounds=(0, 1))
    (one,) = gauss.calibrate([Block("count", 1, 1.0, 1.0)], frac_bits=0)
    rho = mech.rho_for(1.0, 1e-6)
    assert float(one.scale) == pytest.approx(4.0 / (2 * rho), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0},
        {"epsilon": -1.0},
        {"epsilon": float("nan")},
        {"epsilon": 1.0, "mechanism": "exponential"},
        {"epsilon": 1.0, "mechanism": "gaussian"},  # delta 0
        {"epsilon": 1.0, "delta": 1e-6},  # laplace with delta
        {"epsilon": 1.0, "bounds": (3, 1)},
        {"epsilon": 1.0, "bounds": {"age": (0, float("inf"))}},
    ],
)
def test_dp_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigurationError):
        DPConfig(**{"bounds": (0, 1), **kwargs})


def test_dp_bounds_must_cover_every_column() -> None:
    dp = DPConfig(epsilon=1.0, bounds={"age": (0, 120)})
    assert dp.bounds_for(["age"]) == [(0.0, 120.0)]
    with pytest.raises(ConfigurationError, match="bmi"):
        dp.bounds_for(["age", "bmi"])

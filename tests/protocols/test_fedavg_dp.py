"""Federated averaging with secure aggregation; the DP accountant and the CSPRNG Gaussian."""

from __future__ import annotations

import math

import numpy as np
import pytest

from veil.errors import AggregationAborted, ConfigurationError
from veil.fl import FedAvgConfig, FederatedDP, train_fedavg
from veil.privacy.accountant import RDPAccountant, rdp_to_epsilon, sampled_gaussian_rdp
from veil.privacy.mechanisms import sample_gaussian


# -- accountant ---------------------------------------------------------------------------------
def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Balle & Wang 2018: the exact privacy profile of the Gaussian mechanism (bisection)."""
    def d(eps: float) -> float:
        return _phi(mu / 2 - eps / mu) - math.exp(eps) * _phi(-mu / 2 - eps / mu)

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize(("sigma", "rounds"), [(1.0, 1), (2.0, 10), (5.0, 50), (0.8, 4)])
def test_unsampled_accountant_brackets_the_exact_gaussian_profile(sigma: float,
                                                                  rounds: int) -> None:
    acc = RDPAccountant(sigma)
    acc.step(rounds)
    eps = acc.epsilon(1e-5)
    exact = _exact_gaussian_epsilon(math.sqrt(rounds) / sigma, 1e-5)
    rho = rounds / (2 * sigma**2)
    assert exact <= eps <= 1.25 * exact  # an upper bound, and not a loose one
    assert eps <= rho + 2 * math.sqrt(rho * math.log(1e5))  # beats the classic zCDP bound


def test_sampled_gaussian_rdp_laws() -> None:
    assert sampled_gaussian_rdp(1.0, 2.0, 7) == pytest.approx(7 / 8)
    for a in (2, 8, 32):
        full = sampled_gaussian_rdp(1.0, 1.5, a)
        lows = [sampled_gaussian_rdp(q, 1.5, a) for q in (0.001, 0.01, 0.1, 0.5)]
        assert all(x < y for x, y in zip(lows, lows[1:])) and lows[-1] < full
    # small q: RDP(2) ~ q^2 (e^{1/sigma^2} - 1)  (exact for order 2)
    q, s = 0.01, 1.0
    assert sampled_gaussian_rdp(q, s, 2) == pytest.approx(math.log1p(q * q * (math.e - 1)))
    eps, order = rdp_to_epsilon({a: sampled_gaussian_rdp(0.01, 1.1, a) * 1000
                                 for a in range(2, 65)}, 1e-5)
    assert 0 < eps < 3 and order > 2
    with pytest.raises(ConfigurationError):
        sampled_gaussian_rdp(0.0, 1.0, 2)


def test_csprng_gaussian_moments_and_normality() -> None:
    z = sample_gaussian(200_001, std=3.0)
    assert z.shape == (200_001,)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 3.0) < 0.05
    # Kolmogorov-Smirnov distance to N(0, 9); critical value at alpha=1e-4 is ~ 2.2/sqrt(n)
    xs = np.sort(z / 3.0)
    cdf = np.array([_phi(x) for x in xs[::20]])
    ks = np.max(np.abs(cdf - (np.arange(0, len(xs), 20) + 1) / len(xs)))
    assert ks < 2.2 / math.sqrt(len(xs)) + 1e-4
    assert not np.array_equal(sample_gaussian(8), sample_gaussian(8))


# -- federated averaging ----------------------------------------------------------------------
def test_secure_fedavg_matches_plain_fedavg_in_processes() -> None:
    """Real client processes, SecAgg every round; the model equals plain FedAvg's up to the
    quantization error, so the accuracy is the same (the plain run is the oracle)."""
    base = {"num_clients": 3, "rounds": 3, "seed": 1}
    plain = train_fedavg(FedAvgConfig(aggregation="plain", processes=False, **base))
    secure = train_fedavg(FedAvgConfig(aggregation="masking", processes=True, **base))
    assert plain.accuracy > 0.5
    assert abs(secure.accuracy - plain.accuracy) <= 0.01
    for p, s in zip(plain.model.parameters(), secure.model.parameters()):
        assert float((p - s).detach().abs().max()) < 1e-5
    assert all(r.survivors == (0, 1, 2) and r.clipped == 0 for r in secure.history)


def test_fedavg_with_dropouts_and_aborts() -> None:
    cfg = FedAvgConfig(num_clients=5, rounds=2, processes=False, seed=2)
    res = train_fedavg(cfg, dropouts={0: {"masked": [4]}, 1: {"share": [0], "unmask": [3]}})
    assert res.history[0].survivors == (0, 1, 2, 3)
    assert res.history[1].survivors == (1, 2, 3, 4)
    with pytest.raises(AggregationAborted):
        train_fedavg(cfg, dropouts={1: {"masked": [0, 1, 2]}})
    with pytest.raises(ConfigurationError, match="dropout"):
        train_fedavg(cfg, dropouts={7: {"masked": [0]}})


def test_dp_fedavg_accounts_and_stays_within_noise_of_plain() -> None:
    # 8 rounds: the accuracy gap to plain FedAvg is then about 0.02 +- 0.03 over the CSPRNG
    # noise (measured), so 0.15 is ~4 standard deviations: a real bias fails, noise does not.
    base = {"num_clients": 8, "rounds": 8, "seed": 3, "processes": False}
    plain = train_fedavg(FedAvgConfig(aggregation="plain", **base))
    # Digits has ~1,400 training rows over 8 clients: meaningful epsilon needs far more clients,
    # so this checks the mechanism (clip + distributed noise + accounting) at low noise.
    dp = FederatedDP(l2_clip=3.0, noise_multiplier=0.05, delta=1e-5)
    private = train_fedavg(FedAvgConfig(dp=dp, **base))
    acc = RDPAccountant(0.05)
    acc.step(8)
    assert private.epsilon == pytest.approx(acc.epsilon(1e-5))
    assert [r.epsilon for r in private.history] == sorted(r.epsilon for r in private.history)
    assert abs(private.accuracy - plain.accuracy) < 0.15
    assert sum(r.clipped for r in private.history) == 0


def test_client_sampling_uses_fewer_clients_and_less_budget() -> None:
    dp = FederatedDP(l2_clip=1.0, noise_multiplier=1.0, sample_rate=0.5)
    # Poisson sampling from secrets: P(fewer than 2 or all 16 sampled) is below 1e-3 per run.
    res = train_fedavg(FedAvgConfig(num_clients=16, rounds=2, processes=False, dp=dp))
    full = RDPAccountant(1.0)
    full.step(2)
    assert res.epsilon < full.epsilon(1e-5)
    assert all(len(r.participants) < 16 for r in res.history)


def test_fedavg_rejects_bad_configuration() -> None:
    with pytest.raises(ConfigurationError, match="aggregation"):
        FedAvgConfig(aggregation="homomorphic")
    with pytest.raises(ConfigurationError, match="DP"):
        FederatedDP(l2_clip=1.0, noise_multiplier=0.0)


def test_client_process_failures_name_the_client_and_phase() -> None:
    """A real client process: a malformed request is answered with an error (the process keeps
    serving), a killed process is reported as PartyFailure with its rank and phase."""
    import multiprocessing

    from veil.errors import PartyFailure
    from veil.fl import fedavg

    cfg = FedAvgConfig(num_clients=2, rounds=1, timeout_s=60)
    keys, directory = fedavg.identities(2)
    ep = fedavg._Endpoint(1, cfg, multiprocessing.get_context("forkserver"), keys[1], directory)
    try:
        with pytest.raises(PartyFailure, match="client 1 failed") as info:
            ep.request(fedavg._OP_SHARE, b"not a roster")
        assert (info.value.rank, info.value.phase) == (1, "share")
        ep.proc.kill()
        ep.proc.join(10)
        with pytest.raises(PartyFailure, match="client 1") as info:
            ep.request(fedavg._OP_TRAIN, b"\x00" * 8)
        assert (info.value.rank, info.value.phase) == (1, "advertise")
    finally:
        ep.close()

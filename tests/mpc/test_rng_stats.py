"""Statistical tests: shares are uniform, independent of the secret and independent across runs.

Each test is a chi-square (or z) test whose threshold has a false-positive probability of about
1e-6 per test, and a run must pass in a majority of repeated runs, so a correct sampler fails
with probability far below 1e-9. The same tests are applied to deliberately biased samplers
(negative controls), which must fail: the tests can fail.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import pathlib

import numpy as np
import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "_rng_harness", pathlib.Path(__file__).with_name("_rng_harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

N = 1 << 14  # shares per sample (131072 bytes)
RUNS = 3
BIG = 0x7EDC_BA98_7654_3210  # a large constant secret (all bytes distinct, top bit clear)


def chi2_threshold(dof: int, z: float = 4.7534) -> float:
    """Upper chi-square quantile (Wilson-Hilferty); z = 4.7534 gives p = 1e-6."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


CHI2_255 = chi2_threshold(255)
BIT_Z = 5.5  # two-sided, per bit ~4e-8; 64 bits -> ~2.4e-6


def _bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype("<i8")).view(np.uint8).reshape(-1, 8)


def byte_chi2(x: np.ndarray) -> list[float]:
    """Chi-square against uniform: all bytes together, then each of the 8 byte positions."""
    b = _bytes(x)
    out = []
    for col in [b.ravel(), *(b[:, i] for i in range(8))]:
        counts = np.bincount(col, minlength=256).astype(float)
        expected = col.size / 256.0
        out.append(float(((counts - expected) ** 2 / expected).sum()))
    return out


def max_bit_z(x: np.ndarray) -> float:
    bits = np.unpackbits(_bytes(x), axis=1)  # 64 columns
    ones = bits.sum(axis=0).astype(float)
    n = bits.shape[0]
    return float(np.max(np.abs(ones - n / 2) / math.sqrt(n / 4)))


def homogeneity_chi2(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Two-sample chi-square (2 x 256 table) on all bytes, then on each byte position."""
    ba, bb = _bytes(a), _bytes(b)
    out = []
    for ca, cb in [(ba.ravel(), bb.ravel()), *((ba[:, i], bb[:, i]) for i in range(8))]:
        table = np.stack([np.bincount(ca, minlength=256), np.bincount(cb, minlength=256)])
        table = table.astype(float)
        expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
        mask = expected > 0
        out.append(float((((table - expected) ** 2)[mask] / expected[mask]).sum()))
    return out


def uniform(x: np.ndarray) -> bool:
    return max(byte_chi2(x)) < CHI2_255 and max_bit_z(x) < BIT_Z


def run_passes(sample: dict[str, np.ndarray]) -> bool:
    """One run: shares of 0 and of BIG are uniform and have the same distribution."""
    return (uniform(sample["zero"]) and uniform(sample["big"])
            and max(homogeneity_chi2(sample["zero"], sample["big"])) < CHI2_255)


def runs_independent(samples: list[dict[str, np.ndarray]]) -> bool:
    """Differences of same-secret shares from two different runs are uniform (no reuse)."""
    for a, b in itertools.combinations(samples, 2):
        for key in ("zero", "big"):
            if not uniform(a[key] - b[key]):  # int64 arithmetic wraps mod 2^64
                return False
    return True


def verdict(samples: list[dict[str, np.ndarray]]) -> bool:
    majority = sum(run_passes(s) for s in samples) > len(samples) // 2
    return majority and runs_independent(samples)


# ------------------------------------------------------------------- real shares (Veil)


def _share_job(crypten, rank, n):
    AST = crypten.mpc.primitives.ArithmeticSharedTensor
    zero = AST(torch.zeros(n, dtype=torch.int64) if rank == 0 else None, src=0, precision=0,
               size=(n,))
    big = AST(torch.full((n,), BIG, dtype=torch.int64) if rank == 0 else None, src=0,
              precision=0, size=(n,))
    assert int(zero.reveal()[0]) == 0 and int(big.reveal()[0]) == BIG
    return {"zero": zero.share.numpy().copy(), "big": big.share.numpy().copy()}


@pytest.fixture(scope="module")
def veil_runs() -> list[list[dict[str, np.ndarray]]]:
    """RUNS independent 3-party sessions; per session, each party's shares of 0 and of BIG."""
    return [harness.run_parties(_share_job, 3, args=(N,), provider="TFP") for _ in range(RUNS)]


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_veil_shares_are_uniform_and_secret_independent(veil_runs, rank: int) -> None:
    samples = [run[rank] for run in veil_runs]
    assert verdict(samples)


def test_veil_shares_of_different_parties_are_independent(veil_runs) -> None:
    # party 0 holds secret + r_prev - r_next; the others hold pure PRSS differences; any two
    # parties' shares must not be related beyond the sharing itself
    for run in veil_runs:
        assert uniform(run[0]["big"] - run[1]["big"]) and uniform(run[1]["zero"] - run[2]["zero"])


# ---------------------------------------------------------------- negative controls


def _csprng_int64(n: int) -> np.ndarray:
    return np.frombuffer(os.urandom(8 * n), dtype="<i8").copy()


def _sampler_lowbits() -> dict[str, np.ndarray]:
    # masks only the low 32 bits: high bytes carry the secret
    return {k: (v + (_csprng_int64(N) & 0xFFFF_FFFF)).astype(np.int64)
            for k, v in (("zero", np.zeros(N, np.int64)), ("big", np.full(N, BIG, np.int64)))}


def _sampler_small_seed(run: int) -> dict[str, np.ndarray]:
    # MT19937 (torch) seeded from a tiny seed space: statistically fine, but runs repeat
    g = torch.Generator().manual_seed(run % 2)
    mask = torch.randint(-(2**63), 2**63 - 1, (N,), generator=g, dtype=torch.int64).numpy()
    return {"zero": mask.copy(), "big": (mask + np.int64(BIG)).astype(np.int64)}


def _sampler_never_ff() -> dict[str, np.ndarray]:
    # each byte uniform on 0..254: slightly biased, otherwise perfect
    def draw() -> np.ndarray:
        raw = np.frombuffer(os.urandom(8 * N * 2), dtype=np.uint8)
        raw = raw[raw != 255][: 8 * N]
        return raw.view("<i8").copy()

    return {"zero": draw(), "big": (draw() + np.int64(BIG)).astype(np.int64)}


def test_correct_sampler_passes_control() -> None:
    samples = [{"zero": _csprng_int64(N), "big": (_csprng_int64(N) + np.int64(BIG))}
               for _ in range(RUNS)]
    assert verdict(samples)


def test_low_bit_masking_fails() -> None:
    samples = [_sampler_lowbits() for _ in range(RUNS)]
    assert not any(run_passes(s) for s in samples)
    assert not verdict(samples)


def test_small_seed_mt_fails_on_repeated_runs() -> None:
    samples = [_sampler_small_seed(run) for run in range(RUNS)]
    assert all(run_passes(s) for s in samples)  # each run alone looks uniform ...
    assert not runs_independent(samples)  # ... but runs repeat
    assert not verdict(samples)


def test_slightly_biased_bytes_fail() -> None:
    samples = [_sampler_never_ff() for _ in range(RUNS)]
    assert not any(run_passes(s) for s in samples)
    assert not verdict(samples)


def test_threshold_matches_chi2_quantile() -> None:
    # Wilson-Hilferty vs known quantiles: chi2(255) 0.999 quantile ~ 330.5; 1e-6 ~ 376.9
    assert abs(chi2_threshold(255, z=3.0902) - 330.5) < 1.0
    assert 370 < CHI2_255 < 385


# ------------------------------------------------------------ dealer (Beaver) triple shares


def _triple_job(crypten, rank, n, batches):
    provider = crypten.mpc.get_default_provider()
    out = []
    for _ in range(batches):
        a, b, c = provider.generate_additive_triple(torch.Size([n]), torch.Size([n]), "mul")
        assert torch.equal(c.reveal(), a.reveal() * b.reveal())  # a valid triple
        out.append({"a": a.share.numpy().copy(), "c": c.share.numpy().copy()})
    return out


def test_dealer_triple_shares_are_uniform() -> None:
    # party 0's c share is computed by the dealer (c - the other parties' stream shares);
    # party 1's shares are its dealer stream's keystream
    res = harness.run_parties(_triple_job, 2, args=(N, RUNS), provider="TTP")
    for rank in (0, 1):
        votes = [uniform(batch["a"]) and uniform(batch["c"]) for batch in res[rank]]
        assert sum(votes) > len(votes) // 2
    assert uniform(res[0][0]["c"] - res[0][1]["c"])  # batches do not repeat

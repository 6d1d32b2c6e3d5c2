"""Key-switching noise: every rotating op's ``error_bound`` covers its error, over fresh keys.

Each run draws a fresh key pair (the Galois keys' own noise is the dominant, key-dependent part
of a rotation's error) and fresh inputs of known magnitude, runs ``sum``, ``dot`` (plain and
encrypted), ``matmul``, ``block_sum`` and ``conv2d_im2col`` and compares the decryption with
the exact result times TenSEAL's deterministic scale-reset factor ``2**s / q_L`` (one rescale),
so what is left is the key-dependent noise the bound must cover (it is what
``decrypt(shared=True)`` floods). The negative control recomputes the bound the way it was
before the key-switch term (one rescale-sized term per rotation) and shows it was exceeded.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from veil.he.lattice.ckks import CKKSContext, error_constants
from veil.he.lattice.noise import (
    fold_schedule,
    key_switch_levels,
    rotation_keys,
    sum_schedule,
)
from veil.he.params import CKKSParams

# q0 and the special prime have the same size: the key's part is as large as it gets (the
# default has that too); N=4096 keeps key generation fast
SMALL = CKKSParams(4096, (39, 30, 39), 30)
ROTATING = ("sum37", "sum_full", "dot_plain", "dot_ct", "block_sum", "conv")


def _log2_ceil(n: int) -> int:
    return max(1, int(n - 1).bit_length())


def _cases(ctx: CKKSContext, rng: np.random.Generator) -> list[tuple[str, object, object, float]]:
    """(name, tensor, exact result with the scale-reset factor, bound before the fix)."""
    p, s = ctx.params, ctx.slots
    fresh, rs = error_constants(p)
    fac = 2.0**p.scale_bits / p.primes[p.depth]  # the one rescale divides by q_L
    x, y, w = (rng.uniform(-1, 1, s) for _ in range(3))
    a, b = ctx.encrypt(x, value_bound=1.0), ctx.encrypt(y, value_bound=1.0)
    n = 37
    m = rng.uniform(-1, 1, (16, 8))
    blk, wb = 8, rng.uniform(-1, 1, s // 8)
    img, ker = rng.uniform(-1, 1, (6, 6)), rng.uniform(-1, 1, (3, 3))
    im, windows = ctx.encrypt_im2col(img, 3)
    conv = [np.sum(img[i:i + 3, j:j + 3] * ker) for i in range(4) for j in range(4)]
    l2 = float(np.sqrt((w**2).sum()))
    return [
        ("sum37", ctx.encrypt(x[:n], value_bound=1.0).sum(), x[:n].sum(),
         fresh * math.sqrt(n) + rs * _log2_ceil(n)),
        ("sum_full", a.sum(), x.sum(), fresh * math.sqrt(s) + rs * _log2_ceil(s)),
        ("dot_plain", a.dot(w), fac * (x @ w), fresh * l2 + rs * (1 + _log2_ceil(s))),
        ("dot_ct", a.dot(b), fac * (x @ y),
         math.sqrt(s) * (2 * fresh + fresh**2) + rs * (1 + _log2_ceil(s))),
        ("matmul", ctx.encrypt(x[:16], value_bound=1.0).matmul(m), fac * (x[:16] @ m), math.inf),
        ("block_sum", a.block_sum(wb, blk), fac * (wb[:, None] * x.reshape(-1, blk)).sum(0),
         fresh * float(np.sqrt((wb**2).sum())) + rs * (1 + _log2_ceil(s // blk))),
        ("conv", im.conv2d_im2col(ker, windows), fac * np.array(conv),
         fresh * float(np.sqrt((ker**2).sum())) + rs * (1 + _log2_ceil(9 * windows))),
    ]


def _observe(runs: dict[CKKSParams, int], seed: int) -> dict[str, list[tuple[float, float, float]]]:
    """op -> [(observed max error, tracked bound, bound before the fix)] over all runs."""
    rng = np.random.default_rng(seed)  # test data only
    out: dict[str, list[tuple[float, float, float]]] = {}
    for params, count in runs.items():
        for _ in range(count):
            ctx = CKKSContext.generate(params, galois_keys=True)
            for name, t, exact, old in _cases(ctx, rng):
                got = np.asarray(ctx.decrypt(t), dtype=np.float64).ravel()
                err = float(np.max(np.abs(got - np.asarray(exact).ravel())))
                out.setdefault(name, []).append((err, t.error_bound, old))
    return out


def _check(seen: dict[str, list[tuple[float, float, float]]]) -> None:
    for name, rows in seen.items():
        obs, bound, old = (np.array(c) for c in zip(*rows))
        worst = int(np.argmax(obs / bound))
        assert (obs <= bound).all(), (
            f"{name}: observed error {obs[worst]:.3g} exceeds the tracked bound "
            f"{bound[worst]:.3g} in run {worst}")
        # sound but not inflated: typically 10-20x above the observed error
        assert np.median(bound / obs) < 100, f"{name}: bound {np.median(bound / obs):.0f}x loose"
        if name in ROTATING:  # negative control: without the key-switch term it fails
            assert (obs > old).any(), f"{name}: the old bound {old.max():.3g} was never exceeded"


def test_rotation_error_bounds_hold_over_fresh_keys() -> None:
    _check(_observe({SMALL: 40, CKKSParams.default(): 5}, seed=11))


@pytest.mark.slow
def test_rotation_error_bounds_hold_over_many_fresh_keys() -> None:
    _check(_observe({SMALL: 400, CKKSParams.default(): 40}, seed=12))


def test_tenseal_rotation_schedules() -> None:
    """The key switches counted are the ones TenSEAL and SEAL do (power-of-two Galois keys)."""
    assert rotation_keys(4, 4096) == [4]
    assert rotation_keys(3072, 4096) == [3072]  # = -1024: SEAL has that key
    assert rotation_keys(3, 4096) == [4095, 4]  # NAF 3 = 4 - 1
    assert rotation_keys(0, 4096) == [] == rotation_keys(4096, 4096)
    s = sum_schedule(37, 4096)  # rest by 32 then its sum of 5; main loop 16, 8, 4, 2, 1
    assert dict(s.uses) == {32: 1, 16: 1, 8: 1, 4: 2, 2: 2, 1: 2}
    assert s.window == 5 + 1 + 2 + 1 + 16 + 8 + 4 + 2 + 1
    full = sum_schedule(4096, 4096)
    assert full.window == 4095 and dict(full.uses) == {2**i: 1 for i in range(12)}
    f = fold_schedule(3, 4, 4096)  # folds by 6 = 8 - 2 (window 2) and 3 = 4 - 1 (window 1)
    assert dict(f.uses) == {4094: 1, 8: 1, 4095: 1, 4: 1} and f.window == 2 * 2 + 2 * 1
    assert (s + s).window == 2 * s.window and dict((s + s).uses)[4] == 4


def test_key_switch_bounds_follow_the_model() -> None:
    """The key's part dominates when q0 is as large as the special prime (the default)."""
    p = CKKSParams.default()
    top, low = key_switch_levels(p)[p.depth], key_switch_levels(p)[0]
    n, scale = p.poly_modulus_degree, 2.0**p.scale_bits
    assert low.keyed == pytest.approx(12 * math.sqrt(10.5) * n**1.5 / 4 / scale, rel=1e-6)
    assert top.keyed == pytest.approx(low.keyed, rel=1e-6)  # the 40-bit primes add ~2**-40
    assert 100 * top.fresh < top.keyed
    small_q0 = key_switch_levels(CKKSParams(8192, (50, 40, 40, 60), 40))[0]
    assert small_q0.keyed < low.keyed / 1000  # (q0 / P) = 2**-10

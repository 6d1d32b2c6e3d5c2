"""Shamir sharing, the PRG and quantization: known answers, algebraic laws, statistics."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from veil.errors import ConfigurationError
from veil.protocols import prg, shamir
from veil.protocols.secagg.quant import Quantizer

P = shamir.PRIME


# -- Shamir -----------------------------------------------------------------------------------
def test_shamir_known_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    # f(x) = 1234 + 166 x + 94 x^2 (the textbook example): f(1..6)
    coeffs = iter([166, 94])
    monkeypatch.setattr(shamir.secrets, "randbelow", lambda _p: next(coeffs))
    shares = shamir.split(1234, threshold=3, xs=range(1, 7))
    assert shares == {1: 1494, 2: 1942, 3: 2578, 4: 3402, 5: 4414, 6: 5614}
    assert shamir.reconstruct({2: 1942, 4: 3402, 5: 4414}, threshold=3) == 1234


@given(
    secret=st.integers(min_value=0, max_value=P - 1),
    n=st.integers(min_value=1, max_value=12),
    data=st.data(),
)
def test_any_t_shares_reconstruct(secret: int, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=1, max_value=n))
    xs = data.draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, threshold=t, xs=xs)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    assert shamir.reconstruct({x: shares[x] for x in subset}, threshold=t) == secret


@given(
    secret=st.integers(min_value=0, max_value=P - 1),
    other=st.integers(min_value=0, max_value=P - 1),
    t=st.integers(min_value=2, max_value=8),
)
def test_t_minus_one_shares_are_consistent_with_every_secret(secret: int, other: int,
                                                             t: int) -> None:
    """t-1 shares fix nothing: for ANY candidate secret there is a degree t-1 polynomial through
    (0, candidate) and the observed shares, i.e. a full share set that reconstructs it."""
    xs = list(range(1, t + 1))
    shares = shamir.split(secret, threshold=t, xs=xs)
    seen = {x: shares[x] for x in xs[:-1]}  # t-1 shares
    # Interpolate the polynomial through (0, other) and the seen shares, evaluate at xs[-1].
    pts = {0: other, **seen}
    last = xs[-1]
    val = 0
    for xi, yi in pts.items():
        num, den = 1, 1
        for xj in pts:
            if xj != xi:
                num = num * (last - xj) % P
                den = den * (xi - xj) % P
        val = (val + yi * num * pow(den, -1, P)) % P
    assert shamir.reconstruct({**seen, last: val}, threshold=t) == other


def test_single_share_is_uniform_whatever_the_secret() -> None:
    """chi-square on the low byte of one share (t=2): uniform for secret 0 and secret 2**255."""
    for secret in (0, 1 << 255):
        counts = np.zeros(16)
        for _ in range(1600):
            counts[shamir.split(secret, threshold=2, xs=[1, 2])[1] & 15] += 1
        chi2 = float(((counts - 100.0) ** 2 / 100.0).sum())
        assert chi2 < 45.0, chi2  # 15 dof: p ~ 1e-4


def test_shamir_rejects_bad_input() -> None:
    with pytest.raises(ConfigurationError, match="threshold"):
        shamir.split(1, threshold=4, xs=[1, 2, 3])
    with pytest.raises(ConfigurationError, match="distinct"):
        shamir.split(1, threshold=2, xs=[1, 1, 2])
    with pytest.raises(ConfigurationError, match="evaluation point"):
        shamir.split(1, threshold=1, xs=[0])
    with pytest.raises(ConfigurationError, match="secret"):
        shamir.split(P, threshold=1, xs=[1])
    with pytest.raises(ConfigurationError, match="cannot reconstruct"):
        shamir.reconstruct({1: 5}, threshold=2)
    with pytest.raises(ConfigurationError, match="outside the field"):
        shamir.share_from_bytes(b"\xff" * shamir.SHARE_BYTES)


# -- PRG --------------------------------------------------------------------------------------
def test_prg_matches_an_independent_aes_ecb_construction() -> None:
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seed, domain = bytes(range(32)), b"veil-test"
    got = prg.expand(seed, 12, ring_bits=32, domain=domain)
    prefix = hashlib.sha256(domain).digest()[:8]
    ecb = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    stream = b"".join(ecb.update(prefix + struct.pack(">Q", i)) for i in range(3))
    assert got.tolist() == list(struct.unpack("<12I", stream))
    assert prg.expand(seed, 5, ring_bits=64, domain=domain).tolist() == list(
        struct.unpack("<5Q", stream[:40]))


def test_prg_domains_and_seeds_separate_streams() -> None:
    seed = prg.new_seed()
    a = prg.expand(seed, 64, ring_bits=32, domain=b"a")
    assert not np.array_equal(a, prg.expand(seed, 64, ring_bits=32, domain=b"b"))
    assert not np.array_equal(a, prg.expand(prg.new_seed(), 64, ring_bits=32, domain=b"a"))
    assert np.array_equal(a, prg.expand(seed, 64, ring_bits=32, domain=b"a"))


def _chi2_bytes(data: bytes) -> float:
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256).astype(float)
    expected = len(data) / 256
    return float(((counts - expected) ** 2 / expected).sum())


# 255 degrees of freedom: mean 255, sd ~22.6; 380 is p ~ 1e-6.
CHI2_LIMIT = 380.0


def test_real_prg_mask_bytes_pass_chi_square() -> None:
    mask = prg.expand(prg.new_seed(), 100_000, ring_bits=32, domain=b"mask")
    assert _chi2_bytes(mask.tobytes()) < CHI2_LIMIT


def test_weak_generator_mask_bytes_fail_chi_square() -> None:
    """A 31-bit LCG (the classic rand()) written into 32-bit mask words: the top byte of every
    word is < 128, which the same chi-square check catches at once."""
    x, words = 12345, []
    for _ in range(100_000):
        x = (1103515245 * x + 12345) % (1 << 31)
        words.append(x)
    assert _chi2_bytes(np.array(words, dtype="<u4").tobytes()) > CHI2_LIMIT


def test_seed_health_check_accepts_urandom_and_rejects_truncated_seeds() -> None:
    for _ in range(200):
        prg.check_seed(os.urandom(32))
    flower_style = int.from_bytes(os.urandom(4), "big").to_bytes(32, "big")  # 32-bit seed
    with pytest.raises(ConfigurationError, match="broken"):
        prg.check_seed(flower_style)
    with pytest.raises(ConfigurationError, match="broken"):
        prg.check_seed(bytes(32))
    with pytest.raises(ConfigurationError, match="32 bytes"):
        prg.check_seed(os.urandom(16))


# -- quantization -----------------------------------------------------------------------------
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
    clip=st.floats(1e-3, 1e3),
    n=st.integers(1, 1000),
    bits=st.sampled_from([16, 32, 64]),
)
def test_quantization_round_trip(values: list[float], clip: float, n: int, bits: int) -> None:
    q = Quantizer(clip=clip, max_addends=n, ring_bits=bits)
    idx, clipped = q.quantize(values)
    x = np.asarray(values)
    assert clipped == int(np.count_nonzero(np.abs(x) > clip))
    assert idx.max() <= q.levels and n * q.levels < 2**bits  # sums of n never wrap
    back = q.dequantize(idx)
    assert np.all(np.abs(back - np.clip(x, -clip, clip)) <= q.step / 2 + 1e-9 * clip)


def test_quantization_grid_points_are_fixed_points() -> None:
    q = Quantizer(clip=2.0, max_addends=10, ring_bits=32)
    idx = np.array([0, 1, q.levels // 2, q.levels], dtype=np.uint32)
    again, clipped = q.quantize(q.dequantize(idx))
    assert clipped == 0 and np.array_equal(again, idx)


def test_quantizer_rejects_bad_input() -> None:
    q = Quantizer(clip=1.0, max_addends=4)
    with pytest.raises(ConfigurationError, match="NaN"):
        q.quantize([0.0, float("nan")])
    with pytest.raises(ConfigurationError, match="clip"):
        Quantizer(clip=0.0, max_addends=4)
    with pytest.raises(ConfigurationError, match="ring_bits"):
        Quantizer(clip=1.0, max_addends=4, ring_bits=128)
    with pytest.raises(ConfigurationError, match="levels"):
        Quantizer(clip=1.0, max_addends=2**15, ring_bits=16)

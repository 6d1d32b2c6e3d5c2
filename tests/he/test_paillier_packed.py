"""Packed Paillier aggregation against numpy sums; headroom and layout checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from veil.errors import ConfigurationError, KeyMismatchError, SerializationError
from veil.he.paillier import PackedPaillierVector, PaillierKeyPair


@pytest.fixture(scope="module")
def kp() -> PaillierKeyPair:
    return PaillierKeyPair.generate(1024, allow_insecure=True)


def test_layout_and_roundtrip(kp: PaillierKeyPair) -> None:
    x = np.linspace(-100, 100, 101)
    v = kp.public_key.encrypt_packed(x, precision_bits=16, max_addends=10, max_abs=100)
    # slot = bits(2 · 100·2^16 · 10) = 27 bits; (1024 − 1) // 27 = 37 slots
    assert v.slots_per_ciphertext == 37 and v.num_ciphertexts == 3
    assert v.shape == (101,) and len(v) == 101 and v.addends == 1
    np.testing.assert_allclose(kp.decrypt(v), x, atol=2**-17)


def test_sum_over_parties_matches_numpy(kp: PaillierKeyPair) -> None:
    rng = np.random.default_rng(1)
    parties = rng.uniform(-50, 50, size=(10, 7, 3))
    packed = [
        kp.public_key.encrypt_packed(p, precision_bits=20, max_addends=10, max_abs=50)
        for p in parties
    ]
    total = sum(packed)
    assert total.addends == 10
    np.testing.assert_allclose(kp.decrypt(total), parties.sum(axis=0), atol=10 * 2**-21)


@given(
    st.lists(
        st.lists(st.integers(-(2**20), 2**20), min_size=5, max_size=5), min_size=1, max_size=6
    )
)
def test_integer_sums_are_exact(kp: PaillierKeyPair, rows: list) -> None:
    arr = np.array(rows, dtype=np.int64)
    enc = [
        kp.encrypt_packed(r, precision_bits=0, max_addends=6, max_abs=2**20) for r in arr
    ]
    total = enc[0]
    for e in enc[1:]:
        total = e + total
    out = kp.decrypt(total)
    assert out.dtype == np.int64 and np.array_equal(out, arr.sum(axis=0))


@given(
    st.lists(st.floats(-1000, 1000, allow_nan=False), min_size=1, max_size=80),
    st.integers(0, 30),
)
def test_float_roundtrip_within_precision(kp: PaillierKeyPair, xs: list, prec: int) -> None:
    v = kp.public_key.encrypt_packed(xs, precision_bits=prec, max_addends=3, max_abs=1000)
    np.testing.assert_allclose(kp.decrypt(v), xs, rtol=0, atol=2.0 ** -(prec + 1))
    np.testing.assert_allclose(kp.decrypt(v + v + v), 3 * np.array(xs), atol=3 * 2.0**-prec)


def test_headroom_is_enforced(kp: PaillierKeyPair) -> None:
    v = kp.public_key.encrypt_packed([1.0, -1.0], precision_bits=8, max_addends=2, max_abs=1)
    s = v + v
    with pytest.raises(ConfigurationError, match="3 addends, more than max_addends=2"):
        s + v
    np.testing.assert_array_equal(kp.decrypt(s), [2.0, -2.0])


def test_extreme_values_do_not_bleed_into_neighbours(kp: PaillierKeyPair) -> None:
    x = np.array([1.0, -1.0, 1.0, -1.0] * 10)
    v = kp.encrypt_packed(x, precision_bits=12, max_addends=4, max_abs=1)
    s = v + v + v + v
    np.testing.assert_array_equal(kp.decrypt(s), 4 * x)


def test_mismatches_are_refused(kp: PaillierKeyPair) -> None:
    other = PaillierKeyPair.generate(1024, allow_insecure=True)
    pk = kp.public_key
    a = pk.encrypt_packed([1.0, 2.0], precision_bits=8, max_addends=4, max_abs=10)
    with pytest.raises(KeyMismatchError):
        a + other.public_key.encrypt_packed([1.0, 2.0], precision_bits=8, max_addends=4, max_abs=10)
    with pytest.raises(ConfigurationError, match="layout or shape"):
        a + pk.encrypt_packed([1.0, 2.0], precision_bits=9, max_addends=4, max_abs=10)
    with pytest.raises(ConfigurationError, match="layout or shape"):
        a + pk.encrypt_packed([1.0, 2.0, 3.0], precision_bits=8, max_addends=4, max_abs=10)
    with pytest.raises(ConfigurationError, match="only to another PackedPaillierVector"):
        a + pk.encrypt([1.0, 2.0])
    with pytest.raises(KeyMismatchError):
        other.decrypt(a)
    with pytest.raises(ConfigurationError, match="outside the declared range"):
        pk.encrypt_packed([11.0], precision_bits=8, max_addends=4, max_abs=10)
    with pytest.raises(ConfigurationError, match="more than a 1024-bit key holds"):
        pk.encrypt_packed([1.0], precision_bits=1020, max_addends=4, max_abs=10)
    with pytest.raises(ConfigurationError, match="max_addends"):
        pk.encrypt_packed([1.0], precision_bits=8, max_addends=0)


def test_serialize_roundtrip(kp: PaillierKeyPair) -> None:
    pk = kp.public_key
    x = np.arange(-20, 20, dtype=np.int64).reshape(4, 10)
    v = pk.encrypt_packed(x, precision_bits=0, max_addends=5, max_abs=20)
    s = v + v
    w = PackedPaillierVector.load(s.serialize(), pk)
    assert w.addends == 2 and w.shape == (4, 10) and w.max_addends == 5
    assert not {int(c) for c in w._c} & {int(c) for c in s._c}  # sums are re-randomized
    np.testing.assert_array_equal(kp.decrypt(w), 2 * x)
    np.testing.assert_array_equal(kp.decrypt(w + v + v + v), 5 * x)
    other = PaillierKeyPair.generate(1024, allow_insecure=True)
    with pytest.raises(SerializationError, match="other parameters"):
        PackedPaillierVector.load(v.serialize(), other.public_key)


def test_only_addition_is_supported(kp: PaillierKeyPair) -> None:
    from veil.errors import UnsupportedOperationError

    v = kp.public_key.encrypt_packed([1.0], precision_bits=4, max_addends=2)
    for op in (lambda: v * 2, lambda: v - v, lambda: -v):
        with pytest.raises(UnsupportedOperationError, match="only supports \\+"):
            op()

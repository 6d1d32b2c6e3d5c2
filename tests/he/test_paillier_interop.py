"""Interoperability with phe: Veil decrypts phe's ciphertexts and phe decrypts Veil's."""

from __future__ import annotations

import numpy as np
import phe
import pytest

from veil.errors import ConfigurationError, InsecureParametersError, KeyMismatchError
from veil.he.paillier import (
    PaillierKeyPair,
    PaillierPrivateKey,
    PaillierPublicKey,
    PaillierVector,
)


@pytest.fixture(scope="module")
def phe_keys() -> tuple[phe.PaillierPublicKey, phe.PaillierPrivateKey]:
    kp = PaillierKeyPair.generate(1024, allow_insecure=True)
    return kp.to_phe()


def test_keys_convert_both_ways(phe_keys: tuple) -> None:
    pub, priv = phe_keys
    kp = PaillierKeyPair.from_phe(pub, priv, allow_insecure=True)
    assert kp.public_key.n == pub.n
    back_pub, back_priv = kp.to_phe()
    assert back_pub == pub and back_priv == priv
    with pytest.raises(InsecureParametersError):
        PaillierPublicKey.from_phe(pub)
    with pytest.raises(ConfigurationError, match="phe.PaillierPublicKey"):
        PaillierPublicKey.from_phe(object())
    with pytest.raises(ConfigurationError, match="phe.PaillierPrivateKey"):
        PaillierPrivateKey.from_phe(object())


def test_veil_decrypts_phe_ciphertexts(phe_keys: tuple) -> None:
    pub, priv = phe_keys
    kp = PaillierKeyPair.from_phe(pub, priv, allow_insecure=True)
    values = [1.5, -2.25, 7, 0.001, -123456.789]
    nums = [pub.encrypt(v) for v in values]  # phe picks a different exponent per value
    v = PaillierVector.from_phe(nums, max_abs=1e6, allow_insecure=True)
    np.testing.assert_allclose(kp.decrypt(v), values, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(kp.decrypt(v + v), 2 * np.array(values), rtol=1e-12)
    ints = PaillierVector.from_phe([pub.encrypt(5), pub.encrypt(-9)], allow_insecure=True)
    assert kp.decrypt(ints).tolist() == [5, -9]
    grid = PaillierVector.from_phe(
        [pub.encrypt(i) for i in range(6)], shape=(2, 3), allow_insecure=True
    )
    assert kp.decrypt(grid).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_phe_decrypts_veil_ciphertexts(phe_keys: tuple) -> None:
    pub, priv = phe_keys
    kp = PaillierKeyPair.from_phe(pub, priv, allow_insecure=True)
    x = np.array([0.5, -3.75, 1e4])
    for prec in (0, 13, 32):  # scales that are and are not multiples of phe's base-16 digits
        v = kp.public_key.encrypt(np.round(x) if prec == 0 else x, precision_bits=prec)
        got = [priv.decrypt(e) for e in v.to_phe()]
        np.testing.assert_allclose(got, np.round(x) if prec == 0 else x)
    packed_free = (kp.public_key.encrypt(x) * 3 + 1).to_phe()
    np.testing.assert_allclose([priv.decrypt(e) for e in packed_free], 3 * x + 1)
    # phe adds its own ciphertexts to Veil's
    mixed = kp.public_key.encrypt([2.5]).to_phe()[0] + pub.encrypt(1.25)
    assert priv.decrypt(mixed) == 3.75


def test_phe_without_range_refuses_growth(phe_keys: tuple) -> None:
    pub, _ = phe_keys
    v = PaillierVector.from_phe([pub.encrypt(1.0)], allow_insecure=True)
    with pytest.raises(ConfigurationError, match="could overflow"):
        v + v


def test_phe_numbers_from_two_keys_are_refused(phe_keys: tuple) -> None:
    pub, _ = phe_keys
    other, _ = PaillierKeyPair.generate(1024, allow_insecure=True).to_phe()
    with pytest.raises(KeyMismatchError):
        PaillierVector.from_phe([pub.encrypt(1), other.encrypt(1)], allow_insecure=True)
    with pytest.raises(ConfigurationError, match="EncryptedNumber"):
        PaillierVector.from_phe([1, 2], allow_insecure=True)


def test_absurd_phe_exponents_are_refused(phe_keys: tuple) -> None:
    pub, _ = phe_keys
    e = pub.encrypt(1.0)
    wild = phe.EncryptedNumber(pub, e.ciphertext(be_secure=False), 10**6)
    with pytest.raises(ConfigurationError, match="bits of scale"):
        PaillierVector.from_phe([e, wild], allow_insecure=True)

"""Slot-level CKKS (SEAL through tenseal.sealapi): keys for chosen rotations only, exact
scales, envelopes checked before SEAL parses them, the secret key never in a public context."""

from __future__ import annotations

import numpy as np
import pytest

from veil.errors import (
    ConfigurationError,
    InsecureParametersError,
    KeyMismatchError,
    SerializationError,
    UnsealError,
)
from veil.he.lattice.slotparams import SlotParams
from veil.he.lattice.slots import SlotContext
from veil.trust.seal import Secret

PARAMS = SlotParams(8192, (38, 30, 30, 30), 30, 24)


@pytest.fixture(scope="module")
def ctx() -> SlotContext:
    return SlotContext.generate(PARAMS, [1, 5, -3])


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)  # test data only


def test_params_validate_security_and_shape() -> None:
    with pytest.raises(InsecureParametersError):
        SlotParams(8192, (60, 50, 50, 50, 60), 50, 30)
    with pytest.raises(ConfigurationError, match="middle primes"):
        SlotParams(8192, (38, 30, 29, 30), 30, 24)
    with pytest.raises(ConfigurationError, match="special prime"):
        SlotParams(8192, (38, 30, 30, 20), 30, 24)
    assert SlotParams(8192, (38, 30, 30, 30), 30, 24).integer_bits == 13


def test_rotations_products_and_exact_scale(ctx: SlotContext) -> None:
    x = _rng().random(ctx.slots)
    v = ctx.encrypt(x)
    assert set(ctx.rotations) == {1, 5, ctx.slots - 3}
    q = ctx.prime(v.level)
    w = _rng(1).random(ctx.slots) - 0.5
    prod = v.mul_plain(ctx.encode(w, v.level, q), q)
    rot = prod.rotate(5).add(prod.rotate(-3)).rescale()  # rotate before the rescale
    assert rot.scale == pytest.approx(2.0**30, rel=1e-12) and rot.level == v.level - 1
    want = np.roll(x * w, -5) + np.roll(x * w, 3)
    tol = 40 * 8192 / (6 * 2.0**30)  # ~30 standard deviations of one rescale's rounding
    assert np.abs(ctx.decrypt(rot) - want).max() < tol
    sq = rot.square()
    assert np.abs(ctx.decrypt(sq) - want**2).max() < 1e-4
    with pytest.raises(ConfigurationError, match="Galois key"):
        prod.rotate(2)


def test_public_context_round_trip_has_no_secret(ctx: SlotContext) -> None:
    pub = ctx.public()
    blob = pub.serialize()
    loaded = SlotContext.load(blob)
    assert not loaded.has_secret_key and loaded.rotations == ctx.rotations
    x = _rng(2).random(10)
    fresh = loaded.load_vector(ctx.encrypt(x).serialize())
    with pytest.raises(ConfigurationError, match="before its rescale"):
        fresh.rotate(1)
    q = loaded.prime(fresh.level)
    v = fresh.mul_plain(loaded.encode(np.ones(loaded.slots), fresh.level, q), q).rotate(1)
    v = v.rescale()
    with pytest.raises(ConfigurationError, match="secret key"):
        loaded.decrypt(v)
    with pytest.raises(ConfigurationError, match="secret key"):
        loaded.encrypt(x)
    back = ctx.load_vector(v.serialize())
    assert np.abs(ctx.decrypt(back)[:9] - x[1:10]).max() < 1e-4
    with pytest.raises(ConfigurationError):
        pub.serialize(include_secret_key=True, expose_secret=True)


def test_secret_context_sealed_at_rest(ctx: SlotContext) -> None:
    secret = Secret.passphrase("correct horse battery staple")
    sealed = ctx.serialize(include_secret_key=True, secret=secret, scrypt_log2_n=10)
    with pytest.raises(UnsealError):
        SlotContext.load(sealed, secret=Secret.passphrase("wrong"))
    again = SlotContext.load(sealed, secret=secret)
    x = _rng(3).random(5)
    assert np.abs(again.decrypt(ctx.encrypt(x))[:5] - x).max() < 1e-6
    with pytest.raises(ConfigurationError):
        ctx.serialize(include_secret_key=True)  # neither secret= nor expose_secret=True


def test_fresh_ciphertexts_are_seeded_and_small(ctx: SlotContext) -> None:
    blob = ctx.encrypt(_rng(4).random(ctx.slots)).serialize()
    full = 2 * 8192 * 3 * 8  # two polynomials, three data primes, 8-byte words
    assert len(blob) < 0.5 * full


def test_malformed_payloads_are_typed_errors(ctx: SlotContext) -> None:
    blob = bytearray(ctx.encrypt(_rng(5).random(4)).serialize())
    for pos in (60, 100, len(blob) // 2, len(blob) - 40):
        bad = bytearray(blob)
        bad[pos] ^= 0xFF
        with pytest.raises(SerializationError):
            ctx.load_vector(bytes(bad))
    with pytest.raises(SerializationError):
        ctx.load_vector(bytes(blob[:-100]))
    pub = bytearray(ctx.public().serialize())
    pub[len(pub) // 3] ^= 0x55
    with pytest.raises(SerializationError):
        SlotContext.load(bytes(pub))


def test_vectors_bound_to_their_key(ctx: SlotContext) -> None:
    other = SlotContext.generate(PARAMS, [1])
    data = other.encrypt(np.ones(3)).serialize()
    with pytest.raises((KeyMismatchError, SerializationError)):
        ctx.load_vector(data)
    with pytest.raises(KeyMismatchError):
        ctx.encrypt(np.ones(3)).add(other.encrypt(np.ones(3)))


def test_encrypt_refuses_bad_values(ctx: SlotContext) -> None:
    for bad in ([np.nan], [np.inf], [2.0**40], np.zeros(ctx.slots + 1), []):
        with pytest.raises(ConfigurationError):
            ctx.encrypt(np.asarray(bad, dtype=np.float64))

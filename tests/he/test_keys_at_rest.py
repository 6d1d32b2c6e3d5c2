"""Keys at rest (issue #14): Paillier private keys and secret CKKS/BFV contexts are sealed.

Every test that checks sealing looks for the secret itself in the bytes (p and q of a Paillier
key, windows of the SEAL secret key), so a serializer that skipped the encryption fails here.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.errors import ConfigurationError, SerializationError, UnsealError
from veil.he import BFVContext, CKKSContext, PaillierKeyPair, PaillierPrivateKey
from veil.he.params import BFVParams, CKKSParams
from veil.trust.seal import Secret, is_sealed, new_key_file

FAST = {"scrypt_log2_n": 10}  # test cost only; real keys use the default 2**15
PW = Secret.passphrase("correct horse battery staple")
WRONG = Secret.passphrase("correct horse battery stapler")
SMALL = CKKSParams(4096, (39, 30, 40), 30)
BFV_P = BFVParams.for_plain_bits(20, poly_modulus_degree=4096)


@pytest.fixture(scope="module")
def kp() -> PaillierKeyPair:
    return PaillierKeyPair.generate(1024, allow_insecure=True)


@pytest.fixture(scope="module")
def ckks() -> CKKSContext:
    return CKKSContext.generate(SMALL, galois_keys=False)


@pytest.fixture(scope="module")
def bfv() -> BFVContext:
    return BFVContext.generate(BFV_P, galois_keys=False)


def _factors(kp: PaillierKeyPair) -> list[int]:
    crt = kp.private_key._crt
    return [int(crt.p), int(crt.q)]


def _leaks(blob: bytes, kp: PaillierKeyPair) -> list[str]:
    """Which forms of p or q appear in ``blob``."""
    found = []
    for name, v in zip("pq", _factors(kp)):
        size = (v.bit_length() + 7) // 8
        for form, needle in (("big-endian", v.to_bytes(size, "big")),
                             ("little-endian", v.to_bytes(size, "little")),
                             ("decimal", str(v).encode()), ("hex", f"{v:x}".encode())):
            if needle in blob:
                found.append(f"{name} {form}")
    return found


# -- Paillier ------------------------------------------------------------------------------------


def test_the_leak_probe_finds_p_and_q_in_the_plaintext_envelope(kp) -> None:
    plain = kp.private_key.serialize(expose_secret=True)
    assert not is_sealed(plain)
    assert "p big-endian" in _leaks(plain, kp) and "q big-endian" in _leaks(plain, kp)


def test_sealed_paillier_key_hides_p_and_q_and_round_trips(kp) -> None:
    blob = kp.private_key.serialize(secret=PW, **FAST)
    assert is_sealed(blob)
    assert _leaks(blob, kp) == []
    assert blob != kp.private_key.serialize(secret=PW, **FAST)  # fresh salt and nonce
    sk = PaillierPrivateKey.load(blob, secret=PW, allow_insecure=True)
    assert sk.public_key == kp.public_key
    v = kp.public_key.encrypt([5, -7, 11])
    assert sk.decrypt(v).tolist() == [5, -7, 11]


def test_paillier_key_needs_a_choice(kp) -> None:
    with pytest.raises(ConfigurationError, match=r"secret=Secret\.passphrase.*expose_secret=True"):
        kp.private_key.serialize()
    with pytest.raises(ConfigurationError, match="not both"):
        kp.private_key.serialize(secret=PW, expose_secret=True)
    with pytest.raises(ConfigurationError, match="Secret"):
        kp.private_key.serialize(secret="a passphrase")  # type: ignore[arg-type]


def test_sealed_paillier_key_refuses_a_wrong_or_missing_secret(kp) -> None:
    blob = kp.private_key.serialize(secret=PW, **FAST)
    with pytest.raises(UnsealError, match="wrong passphrase"):
        PaillierPrivateKey.load(blob, secret=WRONG, allow_insecure=True)
    with pytest.raises(ConfigurationError, match="sealed.*secret=Secret"):
        PaillierPrivateKey.load(blob, allow_insecure=True)
    for bad in (blob[:-1], blob[:40], blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:]):
        with pytest.raises(UnsealError):
            PaillierPrivateKey.load(bad, secret=PW, allow_insecure=True)


def test_plain_envelope_still_loads_with_or_without_a_secret(kp) -> None:
    plain = kp.private_key.serialize(expose_secret=True)
    for secret in (None, PW):
        sk = PaillierPrivateKey.load(plain, secret=secret, allow_insecure=True)
        assert sk.public_key == kp.public_key


def test_paillier_key_file_secret_and_save_load(kp, tmp_path) -> None:
    key = Secret.key_file(new_key_file(tmp_path / "kek"))
    path = kp.private_key.save(tmp_path / "paillier.key", key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = path.read_bytes()
    assert is_sealed(data) and _leaks(data, kp) == []
    back = PaillierPrivateKey.load_file(path, key, allow_insecure=True)
    assert back.public_key == kp.public_key
    with pytest.raises(UnsealError, match="passphrase was given"):
        PaillierPrivateKey.load_file(path, PW, allow_insecure=True)
    with pytest.raises(ConfigurationError, match="already exists"):
        kp.private_key.save(path, key)
    kp.private_key.save(path, PW, overwrite=True, **FAST)
    assert PaillierPrivateKey.load_file(path, PW, allow_insecure=True).public_key == kp.public_key
    with pytest.raises(ConfigurationError, match="needs a secret"):
        kp.private_key.save(tmp_path / "other.key", None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="does not exist"):
        PaillierPrivateKey.load_file(tmp_path / "missing.key", PW)


def test_a_sealed_paillier_key_does_not_open_as_a_context(kp) -> None:
    blob = kp.private_key.serialize(secret=PW, **FAST)
    with pytest.raises(UnsealError, match="another purpose"):
        CKKSContext.load(blob, secret=PW)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=40))
def test_any_passphrase_round_trips(kp, text: str) -> None:
    secret = Secret.passphrase(text)
    blob = kp.private_key.serialize(secret=secret, **FAST)
    assert PaillierPrivateKey.load(blob, secret=secret, allow_insecure=True).public_key == \
        kp.public_key


# -- CKKS / BFV ----------------------------------------------------------------------------------


def _sk_probes(ctx, tmp_path) -> list[bytes]:
    """64-byte windows of the SEAL secret key, as TenSEAL saves it."""
    path = tmp_path / f"sk-{ctx.scheme}.bin"
    ctx._native.secret_key().save(str(path))
    sk = path.read_bytes()
    return [sk[i : i + 64] for i in range(100, len(sk) - 64, max(1, len(sk) // 16))]


@pytest.mark.parametrize("name", ["ckks", "bfv"])
def test_sealed_secret_context_holds_no_secret_key_bytes(name, request, tmp_path) -> None:
    ctx = request.getfixturevalue(name)
    probes = _sk_probes(ctx, tmp_path)
    exposed = ctx.serialize(include_secret_key=True, expose_secret=True)
    assert all(p in exposed for p in probes)  # the probe finds the key when it is there
    sealed = ctx.serialize(include_secret_key=True, secret=PW, **FAST)
    assert is_sealed(sealed)
    assert not any(p in sealed for p in probes)
    windows = [exposed[i : i + 64] for i in range(0, len(exposed) - 64, 4096)]
    assert not any(w in sealed for w in windows)  # nothing of the plain envelope survives
    loaded = type(ctx).load(sealed, secret=PW)
    assert loaded.has_secret_key and loaded.key_id == ctx.key_id
    x = [1, 2, 3] if name == "bfv" else np.linspace(-1, 1, 8)
    np.testing.assert_allclose(loaded.decrypt(ctx.encrypt(x)), x, atol=1e-3)


def test_secret_context_needs_a_choice(ckks) -> None:
    with pytest.raises(ConfigurationError, match=r"in the clear.*expose_secret=True"):
        ckks.serialize(include_secret_key=True)
    with pytest.raises(ConfigurationError, match="include_secret_key=True"):
        ckks.serialize(secret=PW)
    with pytest.raises(ConfigurationError, match="not both"):
        ckks.serialize(include_secret_key=True, secret=PW, expose_secret=True)
    public = ckks.serialize()  # unchanged: plain, no secret needed
    assert not is_sealed(public) and not CKKSContext.load(public).has_secret_key
    assert not CKKSContext.load(public, secret=PW).has_secret_key


def test_sealed_context_refuses_a_wrong_or_missing_secret_and_other_schemes(ckks, bfv) -> None:
    sealed = ckks.serialize(include_secret_key=True, secret=PW, **FAST)
    with pytest.raises(UnsealError):
        CKKSContext.load(sealed, secret=WRONG)
    with pytest.raises(ConfigurationError, match="CKKS secret context is sealed"):
        CKKSContext.load(sealed)
    with pytest.raises(UnsealError, match="veil.bfv.secret-context"):
        BFVContext.load(sealed, secret=PW)
    with pytest.raises(UnsealError, match="truncated"):
        CKKSContext.load(sealed[:50], secret=PW)
    flipped = bytearray(sealed)
    flipped[len(flipped) // 2] ^= 0x40
    with pytest.raises(UnsealError):
        CKKSContext.load(bytes(flipped), secret=PW)
    with pytest.raises(SerializationError, match="max_bytes"):
        CKKSContext.load(sealed, secret=PW, max_bytes=1000)
    bfv_sealed = bfv.serialize(include_secret_key=True, secret=PW, **FAST)
    with pytest.raises(UnsealError, match="veil.ckks.secret-context"):
        CKKSContext.load(bfv_sealed, secret=PW)


def test_context_save_and_load_file(ckks, tmp_path) -> None:
    path = ckks.save(tmp_path / "ctx.sealed", PW, **FAST)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert is_sealed(path.read_bytes())
    back = CKKSContext.load_file(path, PW)
    assert back.has_secret_key and back.key_id == ckks.key_id
    with pytest.raises(ConfigurationError, match="already exists"):
        ckks.save(path, PW, **FAST)
    with pytest.raises(ConfigurationError, match="needs a secret"):
        ckks.save(tmp_path / "x", None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="no secret key"):
        ckks.public().save(tmp_path / "y", PW, **FAST)
    public = tmp_path / "public.ctx"
    public.write_bytes(ckks.serialize())
    assert not CKKSContext.load_file(public).has_secret_key
    with pytest.raises(SerializationError, match="more than"):
        CKKSContext.load_file(path, PW, max_bytes=1000)

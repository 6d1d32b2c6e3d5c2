"""Known-answer vectors for Veil's Paillier on a tiny (insecure) key with fixed randomness.

The expected integers were computed independently with plain Python ``pow`` (textbook formula,
g = n + 1) and are cross-checked against phe's ``raw_encrypt`` / ``raw_decrypt``.
"""

from __future__ import annotations

import phe
import pytest
from gmpy2 import mpz

from veil.errors import ConfigurationError, InsecureParametersError
from veil.he.paillier import PaillierKeyPair, PaillierPrivateKey, PaillierPublicKey
from veil.he.paillier import arith as pm

P = 2**61 - 1  # Mersenne prime M61
Q = 2**64 - 59  # largest 64-bit prime
N = 42535295865117307778430344311653531707
N2 = N * N
# (1 + 42·n) · 12345^n mod n²
C_TEXTBOOK = 93253377501963618277824632723965523046799772085870286940575274356611869721
# DJN: x = 7, h = −x² mod n, h_s = h^n mod n²
H_S = 1627940307641767271789324316442947231496923520221894402829820091353435614806
ALPHA_BYTES = bytes(range(1, 9))  # α = 578437695752307201 (little-endian)
ALPHA = 578437695752307201
# (1 + (n − 5)·n) · h_s^α mod n²  (an encryption of −5)
C_DJN = 1260916262200704791814541694331361394221985750182762582674590726418800505761


def test_constants_are_what_they_claim() -> None:
    assert P * Q == N
    assert int.from_bytes(ALPHA_BYTES, "little") == ALPHA
    assert pow(-49 % N, N, N2) == H_S
    assert (1 + 42 * N) * pow(12345, N, N2) % N2 == C_TEXTBOOK
    assert (1 + (N - 5) * N) * pow(H_S, ALPHA, N2) % N2 == C_DJN


def test_textbook_encryption_matches_vector_and_phe() -> None:
    assert pm.raw_encrypt(N, 42, 12345) == C_TEXTBOOK
    assert phe.PaillierPublicKey(N).raw_encrypt(42, r_value=12345) == C_TEXTBOOK


def test_djn_base_and_fixed_base_table() -> None:
    assert pm.djn_base(N, x=7) == H_S
    assert pm.djn_exponent_bytes(N.bit_length()) == len(ALPHA_BYTES)
    table = pm.FixedBaseTable(H_S, N2, len(ALPHA_BYTES))
    assert table.pow(ALPHA_BYTES) == pow(H_S, ALPHA, N2)
    assert table.pow(bytes(8)) == 1
    assert table.pow(b"\xff" * 8) == pow(H_S, 2**64 - 1, N2)


def test_djn_ciphertext_is_a_textbook_ciphertext() -> None:
    # h_s^α = (h^α)^n, so the DJN ciphertext equals phe's encryption with r = h^α mod n
    h = -49 % N
    assert phe.PaillierPublicKey(N).raw_encrypt(N - 5, r_value=pow(h, ALPHA, N)) == C_DJN
    pk = PaillierPublicKey(N, allow_insecure=True)
    pk._h_s = mpz(H_S)
    (r,) = pk._randomizers(1, None, data=ALPHA_BYTES)
    assert (1 + (N - 5) * N) * r % N2 == C_DJN


def test_crt_randomizer_and_decryption() -> None:
    crt = pm.CrtKey(P, Q)
    (r,) = crt.randomizers(H_S, 1, ALPHA_BYTES)
    assert r == pow(H_S, ALPHA, N2)
    assert crt.decrypt([mpz(C_TEXTBOOK), mpz(C_DJN)]) == [42, N - 5]
    sk = phe.PaillierPrivateKey(phe.PaillierPublicKey(N), P, Q)
    assert sk.raw_decrypt(C_DJN) == N - 5


def test_public_decrypt_of_known_ciphertext_through_vector_api() -> None:
    pk = PaillierPublicKey(N, allow_insecure=True)
    sk = PaillierPrivateKey(pk, P, Q)
    from veil.he.encoding import FixedPointEncoding
    from veil.he.paillier import PaillierVector
    from veil.he.paillier.vector import object_array

    v = PaillierVector._make(
        pk,
        object_array([mpz(C_TEXTBOOK), mpz(C_DJN)], (2,)),
        scale=0,
        bound=100,
        integer=True,
        encoding=FixedPointEncoding(0, 100),
        fresh=False,
    )
    assert sk.decrypt(v).tolist() == [42, -5]


def test_tiny_keys_need_the_opt_in() -> None:
    with pytest.raises(InsecureParametersError, match="allow_insecure=True"):
        PaillierPublicKey(N)
    with pytest.raises(InsecureParametersError, match="allow_insecure=True"):
        PaillierKeyPair.generate(1024)
    with pytest.raises(ConfigurationError):
        PaillierKeyPair.generate(64, allow_insecure=True)


@pytest.mark.parametrize(
    ("n", "match"),
    [
        (N * 2, "even"),
        (P * P, "perfect square"),
        (Q, "prime"),
        (3 * P * Q, "prime factor below"),
        (12345, "too small"),
        (-N, "outside"),
        ("123", "must be an int"),
    ],
)
def test_bad_moduli_are_refused(n: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        PaillierPublicKey(n, allow_insecure=True)  # type: ignore[arg-type]


def test_private_key_must_factor_the_modulus() -> None:
    pk = PaillierPublicKey(N, allow_insecure=True)
    with pytest.raises(ValueError, match="p\\*q does not equal"):
        PaillierPrivateKey(pk, P, Q + 2)

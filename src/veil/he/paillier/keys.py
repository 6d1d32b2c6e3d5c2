"""Paillier encryption: keys, encrypted vectors and Veil's fast paths (interoperable with phe).

Who learns what:

* The **public key** holder (any party) can encrypt and compute on ciphertexts (add, subtract,
  multiply by its own plaintexts, sum, dot). It learns nothing about encrypted values (semantic
  security under DCR). It does see the public metadata that travels with every vector: shape,
  fixed-point scale and the worst-case bound, which comes from the *declared* range ``max_abs``
  (never from the data).
* The **private key** holder decrypts and learns the decoded values of what it is sent. Results of
  computations are re-randomized before :meth:`PaillierVector.serialize` by default, so their
  randomness does not reveal the evaluator's plaintext operands (circuit privacy against the key
  holder, as phe's ``obfuscate``).
* Paillier does not authenticate: anyone with the public key can encrypt anything, and a party can
  encrypt values outside the declared range. The range is checked when *we* encrypt; a malicious
  encryptor needs zero-knowledge range proofs, which this module does not provide.

Encryption uses DJN short-exponent randomness with a fixed-base table (see
:mod:`veil.he.paillier.arith` and ``docs/security/paillier.md``): ciphertexts are ordinary
Paillier ciphertexts with ``g = n + 1``, so phe decrypts them and Veil decrypts phe's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from gmpy2 import mpz

from veil.errors import (
    ConfigurationError,
    InsecureParametersError,
    KeyMismatchError,
    SerializationError,
)
from veil.he.atrest import (
    SEAL_OVERHEAD,
    check_secret,
    open_secret,
    read_limited,
    seal_secret,
)
from veil.he.encoding import (
    DEFAULT_FLOAT_PRECISION,
    DEFAULT_MAX_ABS,
    FixedPointEncoding,
    as_plain_array,
    encode_array,
    is_integer_array,
)
from veil.he.paillier import arith as pm
from veil.he.paillier import wire
from veil.he.paillier.core import (
    KEY_MAX_BYTES,
    PublicKeyBase,
    check_modulus,
    check_workers,
    import_phe,
    open_key,
    pack_key,
)
from veil.he.paillier.packed import PackedPaillierVector, encrypt_packed
from veil.he.paillier.parallel import encrypt_residues
from veil.he.paillier.vector import PaillierVector, object_array
from veil.trust.seal import SCRYPT_LOG2_N, Secret, atomic_write

KEY_PURPOSE = "veil.paillier.private-key"

__all__ = ["PaillierKeyPair", "PaillierPublicKey", "PaillierPrivateKey"]


class Encrypts:
    """``encrypt`` and ``encrypt_packed``, for the public key and the key pair; the pair
    computes the randomness mod p² and q² (CRT), which is faster."""

    __slots__ = ()

    def _encryption_key(self) -> tuple[PaillierPublicKey, pm.CrtKey | None]:
        raise NotImplementedError

    def encrypt(
        self,
        x: Any,
        *,
        precision_bits: int | None = None,
        max_abs: float | None = None,
        encoding: FixedPointEncoding | None = None,
        workers: int = 1,
    ) -> PaillierVector:
        """Encrypt an array (any shape) of ints or floats as a :class:`PaillierVector`.

        ``precision_bits`` fractional bits (default: 0 for integer input, 32 for floats) and the
        declared range ``|x| <= max_abs`` (default 2^63) define the :class:`FixedPointEncoding`
        (or pass one as ``encoding=``); values outside the range raise
        :class:`ConfigurationError`. ``workers > 1`` spreads batches of at least 2048 values over
        that many processes.
        """
        pk, crt = self._encryption_key()
        return pk._encrypt(x, precision_bits, max_abs, workers, crt, encoding)

    def encrypt_packed(
        self,
        x: Any,
        *,
        precision_bits: int,
        max_addends: int,
        max_abs: float = float(2**31),
        workers: int = 1,
    ) -> PackedPaillierVector:
        """Encrypt many values per ciphertext for aggregation (:class:`PackedPaillierVector`)."""
        pk, crt = self._encryption_key()
        return encrypt_packed(pk, x, precision_bits, max_addends, max_abs, workers, crt)


class PaillierPublicKey(PublicKeyBase, Encrypts):
    """A Paillier public key ``n`` (``g = n + 1``); validated on construction and on load.

    ``n`` must be odd, at least 2048 bits (or 64 with ``allow_insecure=True``), not a perfect
    square, not prime and free of prime factors below 2^14. Its arithmetic, envelope and phe
    conversion come from :class:`veil.he.paillier.core.PublicKeyBase`; this class encrypts.
    """

    def _encrypt(
        self,
        x: Any,
        precision_bits: int | None,
        max_abs: float | None,
        workers: int,
        crt: pm.CrtKey | None,
        encoding: FixedPointEncoding | None = None,
    ) -> PaillierVector:
        workers = check_workers(workers)
        arr = as_plain_array(x)
        integer = is_integer_array(arr)
        if encoding is not None:
            if not isinstance(encoding, FixedPointEncoding):
                raise ConfigurationError(
                    f"encoding must be a FixedPointEncoding, got {type(encoding).__name__}"
                )
            if precision_bits is not None or max_abs is not None:
                raise ConfigurationError(
                    "pass either encoding= or precision_bits=/max_abs=, not both"
                )
            enc = encoding
        else:
            if precision_bits is None:
                precision_bits = 0 if integer else DEFAULT_FLOAT_PRECISION
            enc = FixedPointEncoding(
                precision_bits, DEFAULT_MAX_ABS if max_abs is None else max_abs
            )
        if enc.bound > self._half:
            raise ConfigurationError(
                f"max_abs={enc.max_abs!r} at precision_bits={enc.precision_bits} needs "
                f"{enc.bound.bit_length()} bits, more than this {self.bits}-bit key holds; "
                "lower them or use a larger key"
            )
        enc.check_range(arr)
        n = self._n
        residues = [v % n for v in encode_array(arr, enc.precision_bits)]
        cs = encrypt_residues(self, residues, crt, workers)
        return PaillierVector._make(
            self,
            object_array(cs, arr.shape),
            scale=enc.precision_bits,
            bound=enc.bound,
            integer=integer,
            encoding=enc,
            fresh=True,
        )

    def _encryption_key(self) -> tuple[PaillierPublicKey, pm.CrtKey | None]:
        return self, None


class PaillierPrivateKey(pm.SecretNoPickle):
    """The factors ``p, q`` of a public key; decrypts with CRT (mod p² and q²)."""

    def __init__(self, public_key: PaillierPublicKey, p: int, q: int) -> None:
        if not isinstance(public_key, PaillierPublicKey):
            raise ConfigurationError(
                f"public_key must be a PaillierPublicKey, got {type(public_key).__name__}"
            )
        if mpz(p) * mpz(q) != public_key._n:
            raise KeyMismatchError(
                f"p*q does not equal the public key's n (key {public_key.fingerprint}); pass "
                "the factors of this key"
            )
        problem = pm.prime_pair_problem(p, q)
        if problem is not None:
            raise ConfigurationError(f"invalid Paillier private key: {problem}")
        self._pk = public_key
        self._crt = pm.CrtKey(p, q)

    @property
    def public_key(self) -> PaillierPublicKey:
        return self._pk

    def __repr__(self) -> str:
        return f"PaillierPrivateKey(bits={self._pk.bits}, fingerprint={self._pk.fingerprint})"

    def decrypt(
        self, v: PaillierVector | PackedPaillierVector, *, workers: int = 1
    ) -> np.ndarray:
        """Decrypt and decode to a numpy array of the vector's shape (floats, or ints).

        ``workers > 1`` spreads batches of at least 128 ciphertexts over that many processes.
        """
        workers = check_workers(workers)
        if not isinstance(v, (PaillierVector, PackedPaillierVector)):
            raise ConfigurationError(
                f"can only decrypt PaillierVector or PackedPaillierVector, got {type(v).__name__}"
            )
        if v.public_key != self._pk:
            raise KeyMismatchError(
                f"ciphertext is under key {v.public_key.fingerprint}, this private key is for "
                f"{self._pk.fingerprint}; decrypt with the matching key"
            )
        return v._decrypt_with(self._crt, workers)

    def serialize(self, *, secret: Secret | None = None, expose_secret: bool = False,
                  scrypt_log2_n: int = SCRYPT_LOG2_N) -> bytes:
        """This key's bytes: sealed under ``secret``, or the plaintext envelope.

        With ``secret`` (``Secret.passphrase(...)`` / ``Secret.key_file(...)`` from
        :mod:`veil.trust.seal`) the envelope of kind ``paillier.private_key`` is sealed with
        AES-256-GCM for purpose ``"veil.paillier.private-key"``; this is the form to store.
        ``expose_secret=True`` (and no secret) returns the **plaintext** envelope, which holds
        p and q in the clear: anyone who reads it can decrypt everything encrypted under this
        key; use it for tests and in-memory hand-overs only. Neither raises
        :class:`ConfigurationError`. ``scrypt_log2_n`` is :func:`veil.trust.seal.seal`'s cost
        (tests only; leave the default for real keys).
        """

        def plain() -> bytes:
            return pack_key(wire.KIND_PRIVATE, [self._crt.p, self._crt.q], self._pk._hash)

        return seal_secret(plain, what="Paillier private key", purpose=KEY_PURPOSE,
                           secret=secret, expose_secret=expose_secret,
                           scrypt_log2_n=scrypt_log2_n)

    def save(self, path: str | os.PathLike[str], secret: Secret, *, overwrite: bool = False,
             scrypt_log2_n: int = SCRYPT_LOG2_N) -> Path:
        """Write this key sealed under ``secret`` to ``path`` (mode 0600, atomically; an
        existing file is refused unless ``overwrite=True``); read it with :meth:`load_file`."""
        data = self.serialize(secret=check_secret(secret, "save"), scrypt_log2_n=scrypt_log2_n)
        return atomic_write(path, data, mode=0o600, overwrite=overwrite)

    @classmethod
    def load(
        cls, data: bytes, *, secret: Secret | None = None, allow_insecure: bool = False,
        max_bytes: int = KEY_MAX_BYTES
    ) -> PaillierPrivateKey:
        """Load a private key (its public key is rebuilt from p·q and checked).

        Sealed bytes (from ``serialize(secret=...)``) need the same ``secret``; a wrong one
        raises :class:`~veil.errors.UnsealError`. A plaintext envelope loads without one.
        """
        data = open_secret(data, what="Paillier private key", purpose=KEY_PURPOSE,
                           secret=secret, max_bytes=max_bytes)
        params_hash, (p, q) = open_key(data, wire.KIND_PRIVATE, "Paillier private key",
                                       max_bytes, [pm.MAX_BITS // 16 + 1] * 2)
        n = p * q
        if params_hash != wire.key_hash(n):
            raise SerializationError("Paillier private key payload: params hash does not match p*q")
        check_modulus(n, allow_insecure, SerializationError, "Paillier private key payload")
        bad = pm.prime_pair_problem(p, q)
        if bad is not None:
            raise SerializationError(f"Paillier private key payload is invalid: {bad}")
        self = cls.__new__(cls)
        self._pk = PaillierPublicKey._trusted(n)
        self._crt = pm.CrtKey(p, q)
        return self

    @classmethod
    def load_file(cls, path: str | os.PathLike[str], secret: Secret | None, *,
                  allow_insecure: bool = False) -> PaillierPrivateKey:
        """Load the key :meth:`save` wrote to ``path`` (its size is checked before reading)."""
        return cls.load(read_limited(Path(path), "Paillier private key file",
                                     KEY_MAX_BYTES + SEAL_OVERHEAD),
                        secret=secret, allow_insecure=allow_insecure)

    def to_phe(self) -> Any:
        """The same key as a ``phe.PaillierPrivateKey`` (with its phe public key)."""
        phe = import_phe()
        return phe.PaillierPrivateKey(self._pk.to_phe(), int(self._crt.p), int(self._crt.q))

    @classmethod
    def from_phe(cls, private_key: Any, *, allow_insecure: bool = False) -> PaillierPrivateKey:
        """Wrap a ``phe.PaillierPrivateKey``."""
        try:
            pub, p, q = private_key.public_key, private_key.p, private_key.q
        except AttributeError as exc:
            raise ConfigurationError(
                f"expected a phe.PaillierPrivateKey, got {type(private_key).__name__}"
            ) from exc
        return cls(PaillierPublicKey.from_phe(pub, allow_insecure=allow_insecure), p, q)


class PaillierKeyPair(pm.SecretNoPickle, Encrypts):
    """A public and private key. The pair encrypts through the CRT fast path."""

    __slots__ = ("public_key", "private_key")

    def __init__(self, public_key: PaillierPublicKey, private_key: PaillierPrivateKey) -> None:
        if private_key.public_key != public_key:
            raise KeyMismatchError(
                f"private key is for {private_key.public_key.fingerprint}, public key is "
                f"{public_key.fingerprint}"
            )
        self.public_key = public_key
        self.private_key = private_key

    def __repr__(self) -> str:
        pk = self.public_key
        return f"PaillierKeyPair(bits={pk.bits}, fingerprint={pk.fingerprint})"

    @classmethod
    def generate(cls, bits: int = 3072, *, allow_insecure: bool = False) -> PaillierKeyPair:
        """Fresh keys of ``bits`` bits from the OS CSPRNG (``secrets``) and gmpy2 Miller–Rabin.

        3072 bits (128-bit security) by default; 2048 (112-bit) is accepted; below that raises
        :class:`InsecureParametersError` unless ``allow_insecure=True`` (for tests; >= 128 bits).
        """
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise ConfigurationError(f"bits must be an int, got {bits!r}; use bits=3072")
        if not 128 <= bits <= pm.MAX_BITS:
            raise ConfigurationError(f"bits={bits} is outside 128..{pm.MAX_BITS}; use 3072")
        if bits < pm.MIN_SECURE_BITS and not allow_insecure:
            raise InsecureParametersError(
                f"a {bits}-bit Paillier key is below 112-bit security; use bits=3072 (128-bit) "
                "or 2048, or pass allow_insecure=True for tests"
            )
        p, q = pm.generate_primes(bits)
        pk = PaillierPublicKey._trusted(p * q)
        sk = PaillierPrivateKey.__new__(PaillierPrivateKey)
        sk._pk, sk._crt = pk, pm.CrtKey(p, q)
        return cls(pk, sk)

    def _encryption_key(self) -> tuple[PaillierPublicKey, pm.CrtKey | None]:
        return self.public_key, self.private_key._crt

    def decrypt(
        self, v: PaillierVector | PackedPaillierVector, *, workers: int = 1
    ) -> np.ndarray:
        """Decrypt with the private key (CRT); see :meth:`PaillierPrivateKey.decrypt`."""
        return self.private_key.decrypt(v, workers=workers)

    def to_phe(self) -> tuple[Any, Any]:
        """``(phe.PaillierPublicKey, phe.PaillierPrivateKey)``."""
        sk = self.private_key.to_phe()
        return sk.public_key, sk

    @classmethod
    def from_phe(
        cls, public_key: Any, private_key: Any, *, allow_insecure: bool = False
    ) -> PaillierKeyPair:
        """Wrap a phe key pair."""
        sk = PaillierPrivateKey.from_phe(private_key, allow_insecure=allow_insecure)
        pk = PaillierPublicKey.from_phe(public_key, allow_insecure=allow_insecure)
        return cls(pk, sk)

"""The Paillier public key's arithmetic, and what the key and its vectors share.

:class:`PublicKeyBase` holds a validated modulus ``n`` (``g = n + 1``) with its DJN randomness,
its envelope and its phe conversion; :class:`veil.he.paillier.keys.PaillierPublicKey` adds
encryption into vectors. The vectors, the packed vectors and the worker processes need only this
base, so they sit below the key module.
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar, Self

import gmpy2
import numpy as np
from gmpy2 import mpz

from veil.errors import (
    BackendUnavailableError,
    ConfigurationError,
    InsecureParametersError,
    SerializationError,
)
from veil.he.paillier import arith as pm
from veil.he.paillier import wire
from veil.he.serialize import DEFAULT_MAX_BYTES, pack, unpack

__all__ = [
    "Ciphertexts",
    "KEY_MAX_BYTES",
    "MAX_SCALE_BITS",
    "PublicKeyBase",
    "check_modulus",
    "check_workers",
    "import_phe",
    "open_key",
    "open_payload",
    "pack_key",
]

# Largest fixed-point scale (fractional bits) a vector may carry.
MAX_SCALE_BITS = 8192

# Build the fixed-base table (≈ 32k multiplications mod n² at 2048 bits) once a key has encrypted
# this many values; fewer are cheaper with one plain exponentiation each.
TABLE_THRESHOLD = 48
KEY_MAX_BYTES = 1 << 20


def import_phe() -> Any:
    """The ``phe`` module (Veil's one import of it)."""
    try:
        import phe
    except ImportError as exc:  # pragma: no cover - phe is a core dependency
        raise BackendUnavailableError(
            "phe is not installed; install it with `pip install phe==1.5.0 gmpy2`"
        ) from exc
    return phe


def check_workers(workers: int) -> int:
    """``workers`` as an int >= 1 (a process count)."""
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigurationError(
            f"workers must be an int >= 1, got {workers!r}; workers=os.cpu_count() uses all cores"
        )
    return int(workers)


def check_modulus(n: Any, allow_insecure: bool, error: type[Exception], what: str) -> None:
    """Raise ``error`` (or :class:`InsecureParametersError`) if ``n`` is no valid modulus."""
    problem = pm.modulus_problem(n, allow_insecure=allow_insecure)
    if problem is not None:
        reason, insecure_only = problem
        raise (InsecureParametersError if insecure_only else error)(f"{what}: {reason}")


class PublicKeyBase:
    """A Paillier public key ``n`` (``g = n + 1``); validated on construction and on load.

    ``n`` must be odd, at least 2048 bits (or 64 with ``allow_insecure=True``), not a perfect
    square, not prime and free of prime factors below 2^14.
    """

    # The full key class (:class:`veil.he.paillier.keys.PaillierPublicKey`, the one subclass):
    # vectors built from phe objects make their key with it without importing the key module.
    key_class: ClassVar[type[PublicKeyBase]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        PublicKeyBase.key_class = cls

    def __init__(self, n: int, *, allow_insecure: bool = False) -> None:
        check_modulus(n, allow_insecure, ConfigurationError, "invalid Paillier public key")
        self._setup(mpz(n))

    @classmethod
    def _trusted(cls, n: mpz) -> Self:
        """A key from an already validated modulus (key generation, worker processes)."""
        self = cls.__new__(cls)
        self._setup(mpz(n))
        return self

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        # only n travels (to this program's own worker processes); tables are rebuilt there
        return (type(self)._trusted, (int(self._n),))

    def _setup(self, n: mpz) -> None:
        self._n = n
        self._n2 = n * n
        self._half = (n - 1) // 2
        self._width = (self._n2.bit_length() + 7) // 8
        self._hash = wire.key_hash(n)
        self._h_s: mpz | None = None
        self._table: pm.FixedBaseTable | None = None
        self._count = 0

    # ----------------------------------------------------------------- properties
    @property
    def n(self) -> int:
        """The modulus."""
        return int(self._n)

    @property
    def bits(self) -> int:
        return self._n.bit_length()

    @property
    def max_plaintext(self) -> int:
        """Largest ``|v|`` of a signed plaintext integer: ``(n − 1) // 2``."""
        return int(self._half)

    @property
    def fingerprint(self) -> str:
        """Short hex id of the key (first 16 hex digits of its params hash)."""
        return self._hash.hex()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKeyBase) and self._n == other._n

    def __hash__(self) -> int:
        return hash(("paillier", int(self._n)))

    def __repr__(self) -> str:
        return f"PaillierPublicKey(bits={self.bits}, fingerprint={self.fingerprint})"

    # ----------------------------------------------------------------- encryption core
    def _djn_base(self) -> mpz:
        if self._h_s is None:
            self._h_s = pm.djn_base(self._n)
        return self._h_s

    def _randomizers(
        self, count: int, crt: pm.CrtKey | None, warm: bool = False, data: bytes | None = None
    ) -> list[mpz]:
        """``h_s^α mod n²`` for ``count`` fresh α (``data`` fixes the α bytes, for tests)."""
        h_s = self._djn_base()
        if crt is not None:
            return crt.randomizers(h_s, count, data)
        eb = pm.djn_exponent_bytes(self.bits)
        self._count += count
        if self._table is None and (warm or self._count >= TABLE_THRESHOLD):
            self._table = pm.FixedBaseTable(h_s, self._n2, eb)
        if data is None:
            data = os.urandom(eb * count)
        chunks = [data[i * eb : (i + 1) * eb] for i in range(count)]
        if self._table is not None:
            return [self._table.pow(a) for a in chunks]
        n2 = self._n2
        return [gmpy2.powmod(h_s, int.from_bytes(a, "little"), n2) for a in chunks]

    def _encrypt_residues(
        self, residues: list[int], *, crt: pm.CrtKey | None = None, warm: bool = False
    ) -> list[mpz]:
        """``(1 + m·n) · h_s^α mod n²`` for each residue ``m`` in ``[0, n)``, in this process
        (:func:`veil.he.paillier.parallel.encrypt_residues` spreads large batches)."""
        rs = self._randomizers(len(residues), crt, warm)
        n, n2 = self._n, self._n2
        return [(1 + m * n) * r % n2 for m, r in zip(residues, rs)]

    def serialize(self) -> bytes:
        """Envelope of kind ``paillier.public_key`` (params hash = hash of n)."""
        return pack_key(wire.KIND_PUBLIC, [self._n], self._hash)

    @classmethod
    def load(
        cls, data: bytes, *, allow_insecure: bool = False, max_bytes: int = KEY_MAX_BYTES
    ) -> Self:
        """Load and validate a public key; malformed payloads raise :class:`SerializationError`."""
        params_hash, (n,) = open_key(data, wire.KIND_PUBLIC, "Paillier public key", max_bytes,
                                     [pm.MAX_BITS // 8])
        if params_hash != wire.key_hash(n):
            raise SerializationError("Paillier public key payload: params hash does not match n")
        check_modulus(n, allow_insecure, SerializationError, "Paillier public key payload")
        return cls._trusted(n)

    def to_phe(self) -> Any:
        """The same key as a ``phe.PaillierPublicKey``."""
        return import_phe().PaillierPublicKey(int(self._n))

    @classmethod
    def from_phe(cls, public_key: Any, *, allow_insecure: bool = False) -> Self:
        """Wrap (and validate) a ``phe.PaillierPublicKey``."""
        n = getattr(public_key, "n", None)
        if n is None:
            raise ConfigurationError(
                f"expected a phe.PaillierPublicKey, got {type(public_key).__name__}"
            )
        return cls(n, allow_insecure=allow_insecure)


def open_payload(data: bytes, public_key: Any, kind: str, what: str,
                 max_bytes: int) -> tuple[wire.Reader, int]:
    """Check the key type, open the envelope for ``public_key`` and read the common prologue
    (format version, flags 0/1); returns the reader positioned after the flags, and the flags."""
    if not isinstance(public_key, PublicKeyBase):
        raise ConfigurationError(
            f"public_key must be a PaillierPublicKey, got {type(public_key).__name__}"
        )
    env = unpack(data, kind=kind, params_hash=public_key._hash, max_bytes=max_bytes)
    r = wire.Reader(env.body, what)
    r.version()
    flags = r.u8()
    if flags not in (0, 1):
        raise r.fail(f"unknown flags {flags:#x}")
    return r, flags


def pack_key(kind: str, values: list[mpz], params_hash: bytes) -> bytes:
    """Envelope of a key: the body version, then ``values`` as big integers."""
    w = wire.Writer()
    w.u8(wire.BODY_VERSION)
    for v in values:
        w.bigint(v)
    return pack(kind, w.bytes(), params_hash=params_hash)


def open_key(data: bytes, kind: str, what: str, max_bytes: int,
             limits: list[int]) -> tuple[bytes, list[mpz]]:
    """Inverse of :func:`pack_key`: the envelope's params hash and one big integer per entry of
    ``limits`` (its largest size in bytes); nothing may follow them."""
    env = unpack(data, kind=kind, max_bytes=max_bytes)
    r = wire.Reader(env.body, what)
    r.version()
    values = [r.bigint(limit) for limit in limits]
    r.finish()
    return env.params_hash, values


class Ciphertexts:
    """What :class:`~veil.he.paillier.vector.PaillierVector` and
    :class:`~veil.he.paillier.packed.PackedPaillierVector` share: the public key, the size,
    re-randomization and the envelope (a subclass writes and reads its body after the common
    prologue)."""

    __slots__ = ()

    wire_kind: ClassVar[str] = ""
    wire_what: ClassVar[str] = ""
    _pk: Any
    _integer: bool
    _fresh: bool

    @property
    def public_key(self) -> Any:
        return self._pk

    def rerandomize(self) -> Self:  # pragma: no cover - each vector class defines it
        raise NotImplementedError

    def _rerandomized(self, cs: list[mpz]) -> list[mpz]:
        """``cs`` times fresh randomizers (the same plaintexts)."""
        rs = self._pk._randomizers(len(cs), None)
        n2 = self._pk._n2
        return [c * r % n2 for c, r in zip(cs, rs)]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def shape(self) -> tuple[int, ...]:  # pragma: no cover - each vector class defines it
        raise NotImplementedError

    def _write_body(self, w: wire.Writer) -> None:
        raise NotImplementedError

    @classmethod
    def _read_body(cls, r: wire.Reader, flags: int, pk: Any) -> Self:
        raise NotImplementedError

    def serialize(self, *, rerandomize: bool | None = None) -> bytes:
        """Envelope of kind ``paillier.vector`` / ``paillier.packed``. Results of operations are
        re-randomized first (``rerandomize=None``), so the key holder learns only the values, not
        the operands."""
        if rerandomize is None:
            rerandomize = not self._fresh
        v = self.rerandomize() if rerandomize else self
        w = wire.Writer()
        w.u8(wire.BODY_VERSION)
        w.u8(1 if self._integer else 0)
        v._write_body(w)
        return pack(self.wire_kind, w.bytes(), params_hash=self._pk._hash)

    @classmethod
    def load(cls, data: bytes, public_key: Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Self:
        """Load a vector made under ``public_key``; its layout, counts and every ciphertext
        (range and unit) are checked."""
        r, flags = open_payload(data, public_key, cls.wire_kind, cls.wire_what, max_bytes)
        return cls._read_body(r, flags, public_key)

"""Binary bodies of Veil's Paillier payloads (inside :mod:`veil.he.serialize` envelopes).

Every field has a fixed width or an explicit, bounded length; a :class:`Reader` refuses to read
past the end and :meth:`Reader.finish` refuses trailing bytes, so a body parses completely or not
at all. Ciphertexts are fixed-width big-endian integers of ``⌈bits(n²)/8⌉`` bytes. No pickle.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import gmpy2
from gmpy2 import mpz

from veil.errors import SerializationError
from veil.he.serialize import params_digest

BODY_VERSION = 1
MAX_NDIM = 32
KIND_PUBLIC = "paillier.public_key"
KIND_PRIVATE = "paillier.private_key"
KIND_VECTOR = "paillier.vector"
KIND_PACKED = "paillier.packed"


def key_hash(n: int) -> bytes:
    """Params hash of everything made under the public key ``n`` (SHA-256 of its description)."""
    return params_digest({"scheme": "paillier", "n": format(int(n), "x")})


def int_bytes(v: int) -> bytes:
    v = int(v)
    return v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")


class Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self.parts.append(struct.pack(">B", v))

    def u16(self, v: int) -> None:
        self.parts.append(struct.pack(">H", v))

    def u64(self, v: int) -> None:
        self.parts.append(struct.pack(">Q", v))

    def f64(self, v: float) -> None:
        self.parts.append(struct.pack(">d", v))

    def bigint(self, v: int) -> None:
        b = int_bytes(v)
        self.u16(len(b))
        self.parts.append(b)

    def shape(self, shape: Sequence[int]) -> None:
        self.u8(len(shape))
        for d in shape:
            self.u64(d)

    def ciphertexts(self, cs: Sequence[mpz], width: int) -> None:
        self.parts.append(b"".join(int(c).to_bytes(width, "big") for c in cs))

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class Reader:
    def __init__(self, body: bytes, what: str) -> None:
        self.body = body
        self.pos = 0
        self.what = what

    def fail(self, reason: str) -> SerializationError:
        return SerializationError(f"malformed {self.what} payload: {reason}")

    def take(self, k: int) -> bytes:
        if k < 0 or self.pos + k > len(self.body):
            raise self.fail(
                f"needs {k} more bytes at offset {self.pos}, only {len(self.body) - self.pos} left"
            )
        out = self.body[self.pos : self.pos + k]
        self.pos += k
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def f64(self) -> float:
        return struct.unpack(">d", self.take(8))[0]

    def bigint(self, max_bytes: int) -> mpz:
        k = self.u16()
        if not 1 <= k <= max_bytes:
            raise self.fail(f"integer field of {k} bytes (allowed 1..{max_bytes})")
        raw = self.take(k)
        if k > 1 and raw[0] == 0:
            raise self.fail("integer field has a leading zero byte (non-canonical)")
        return mpz(int.from_bytes(raw, "big"))

    def version(self) -> None:
        v = self.u8()
        if v != BODY_VERSION:
            raise self.fail(f"body version {v}, this Veil reads {BODY_VERSION}")

    def shape(self, max_elements: int) -> tuple[int, ...]:
        ndim = self.u8()
        if ndim > MAX_NDIM:
            raise self.fail(f"{ndim} dimensions (at most {MAX_NDIM})")
        dims = tuple(self.u64() for _ in range(ndim))
        size = 1
        for d in dims:
            size *= d
            if size > max_elements:
                raise self.fail(f"shape {dims} has more elements than the payload can hold")
        return dims

    def ciphertexts(self, count: int, width: int, n: mpz) -> list[mpz]:
        raw = self.take(count * width)
        n2 = n * n
        out = []
        for i in range(count):
            c = mpz(int.from_bytes(raw[i * width : (i + 1) * width], "big"))
            check_ciphertext(c, n, n2, index=i, error=self.fail)
            out.append(c)
        return out

    def finish(self) -> None:
        if self.pos != len(self.body):
            raise self.fail(f"{len(self.body) - self.pos} unexpected trailing bytes")


def check_ciphertext(c: mpz, n: mpz, n2: mpz, *, index: int, error: type[Exception]) -> None:
    """Raise ``error(reason)`` unless ``0 < c < n²`` and ``gcd(c, n) = 1``."""
    if not 0 < c < n2:
        raise error(f"ciphertext at flat index {index} is outside 0 < c < n^2")
    if gmpy2.gcd(c, n) != 1:
        raise error(
            f"ciphertext at flat index {index} shares a factor with n (not a unit mod n^2)"
        )

"""Cryptographic PRG and key derivation for secure aggregation.

:func:`expand` stretches a 256-bit seed into a vector of ring elements with AES-256 in counter
mode (``cryptography``; AES-NI where the CPU has it). The 16-byte initial counter block is the
first 8 bytes of SHA-256(domain) followed by a 64-bit block counter starting at zero, so distinct
domains give independent streams under the same seed, and no counter block repeats for fewer
than 2**64 blocks.

:func:`new_seed` draws seeds from the OS CSPRNG and :func:`check_seed` is a cheap health check
against a broken or truncated generator (for example a 32-bit seed padded with zeros, as in
implementations that cut seeds to 32 bits): a uniformly random 256-bit seed fails it with
probability below 2**-40.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import TYPE_CHECKING

from veil.errors import ConfigurationError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SEED_BYTES", "new_seed", "check_seed", "expand", "hkdf", "ring_dtype"]

SEED_BYTES = 32


def new_seed() -> bytes:
    """A fresh 256-bit seed from ``os.urandom``, health-checked."""
    seed = os.urandom(SEED_BYTES)
    check_seed(seed)
    return seed


def check_seed(seed: bytes) -> None:
    """Reject seeds that cannot have come from a working 256-bit CSPRNG.

    Checks the length (32 bytes), the bit balance (Hamming weight within 128 +- 64, i.e.
    8 standard deviations) and byte diversity (at least 16 distinct byte values; a random seed
    has about 30). Raises :class:`~veil.errors.ConfigurationError` naming the failed check.
    """
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        got = len(seed) if isinstance(seed, (bytes, bytearray)) else type(seed).__name__
        raise ConfigurationError(
            f"seeds must be {SEED_BYTES} bytes (256 bits), got {got}; draw them with "
            "veil.protocols.prg.new_seed()"
        )
    weight = int.from_bytes(seed, "big").bit_count()
    if not 64 <= weight <= 192:
        raise ConfigurationError(
            f"seed has {weight} of 256 bits set (expected about 128): the random generator "
            "looks broken; seeds must come from os.urandom"
        )
    distinct = len(set(seed))
    if distinct < 16:
        raise ConfigurationError(
            f"seed has only {distinct} distinct byte values (expected about 30): the random "
            "generator looks broken or truncated; seeds must come from os.urandom"
        )


def hkdf(secret: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``secret``."""
    prk = hmac.new(salt or bytes(32), secret, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def ring_dtype(ring_bits: int) -> np.dtype:
    """Smallest unsigned numpy dtype whose native wrap-around is a multiple of 2**ring_bits."""
    import numpy as np

    if not isinstance(ring_bits, int) or not 8 <= ring_bits <= 64:
        raise ConfigurationError(f"ring_bits must be an integer in [8, 64], got {ring_bits!r}")
    return np.dtype(np.uint32) if ring_bits <= 32 else np.dtype(np.uint64)


def expand(seed: bytes, count: int, *, ring_bits: int, domain: bytes) -> np.ndarray:
    """``count`` pseudorandom elements of Z_{2**ring_bits} from a 256-bit ``seed``.

    Returned in :func:`ring_dtype` (uint32 or uint64); elements are uniform in the full dtype
    range, which reduces to uniform elements of the ring (2**ring_bits divides the dtype range).
    """
    import numpy as np
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if len(seed) != SEED_BYTES:
        raise ConfigurationError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if count < 0:
        raise ConfigurationError(f"cannot expand a negative number of elements ({count})")
    dtype = ring_dtype(ring_bits)
    nonce = hashlib.sha256(domain).digest()[:8] + bytes(8)
    enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(nonce)).encryptor()
    stream = enc.update(bytes(count * dtype.itemsize)) + enc.finalize()
    return np.frombuffer(stream, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)

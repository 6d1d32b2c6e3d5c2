"""Two-party arithmetic Beaver triples over Z_{2^64}, made by the parties alone (no dealer).

Party 0 (:class:`KeyHolder`) owns a Paillier key; party 1 (:class:`Evaluator`) computes on its
ciphertexts. For ``count`` triples each party ``p`` draws uniform ``a_p, b_p`` in Z_{2^64} and the
two end with additive shares of ``c = (a0 + a1)(b0 + b1) = a0·b0 + a1·b1 + (a0·b1 + b0·a1)``
(mod 2^64, CrypTen's int64 ring). The local products need nothing; the cross term is one oblivious
linear evaluation (Gilboa) under party 0's key, in one round trip:

1. party 0 → 1 (:meth:`KeyHolder.request`): its public key and ``Enc(a0_i·2^(j·S))``,
   ``Enc(b0_i·2^(j·S))`` for every triple ``i`` (``j`` = the slot of ``i`` in its group, below);
2. party 1 → 0 (:meth:`Evaluator.respond`): per group of ``k`` triples one ciphertext
   ``Π_j Enc(a0_j·2^(jS))^(b1_j) · Enc(b0_j·2^(jS))^(a1_j) · (1 + R·n) · Enc(0)``, the encryption
   of ``M = Σ_j v_j·2^(jS)`` with ``v_j = a0_j·b1_j + b0_j·a1_j + r_j``; party 1 keeps
   ``c1 = a1·b1 − r mod 2^64``;
3. party 0 (:meth:`KeyHolder.finish`) decrypts, reads the slots ``v_j`` and keeps
   ``c0 = a0·b0 + v mod 2^64``. Then ``c0 + c1 = c`` (mod 2^64).

Squares ``(a, a²)`` (``kind="squares"``) need one cross term: ``a² = a0² + a1² + a0·(2·a1)``; party
0 sends only ``Enc(a0)`` and party 1 raises it to ``2·a1 mod 2^64``.

**Packing without carries.** The mask ``r_j`` is uniform in ``[0, 2^(129+σ))`` and a slot has
``S = 130 + σ`` bits (``128 + σ + 2``). Each slot value is below ``2^S``:
``v_j ≤ 2·(2^64 − 1)² + 2^(129+σ) − 1 < 2^129 + 2^(129+σ) ≤ 2^(130+σ)``. A group holds
``k = ⌊(bits(n) − 2) / S⌋`` slots, so ``M < 2^(k·S) ≤ 2^(bits(n)−2) < n``: every homomorphic step
computes the exact integer (nothing wraps mod n), and as each digit ``v_j`` is below ``2^S`` the
base-``2^S`` expansion of ``M`` is unique, so digit ``j`` *is* ``v_j`` — no slot carries into the
next. (With σ = 40: S = 170, 12 slots per 2048-bit and 18 per 3072-bit ciphertext.)

**Security (semi-honest).** Party 1 sees only ciphertexts under party 0's key: semantic security of
Paillier (DCR) hides ``a0, b0``. Party 0 decrypts ``v_j = X_j + r_j`` with ``X_j < 2^129``; for any
two values of ``X_j`` the distributions of ``X_j + r_j`` differ by at most ``2^129 / 2^(129+σ) =
2^-σ`` in statistical distance, so ``v_j`` (hence ``c0``) is statistically independent of party
1's ``a1, b1`` up to ``2^-σ`` per triple; ``r_j mod 2^64`` is uniform, so ``c1`` is uniform.
The reply is multiplied by a fresh ``Enc(0)`` (DJN randomness from Veil's Paillier), so its
randomness says nothing about how it was computed: party 0 learns ``M`` and nothing else (circuit
privacy). **Semi-honest only**: a party that deviates (sends other ciphertexts, other
exponents, out-of-range plaintexts) can make triples wrong without being detected here, and
party 0 could encrypt values above 2^64 to probe party 1's inputs; the caller must use a later
sacrifice / MAC check (e.g. SPDZ-style) against active adversaries. The count, kind and σ are
public. Timing of the exponentiations depends on party 1's values (gmpy2 is not constant-time).

**Parameters.** 3072-bit keys (128-bit security) by default, 2048 accepted; smaller keys only
with ``allow_insecure=True`` (tests). σ = ``statistical_bits`` ≥ 40 (default 40), lower only with
``allow_insecure=True``. **Costs** per triple at 3072 bits: 2 encryptions for party 0 and ``1/k``
decryption; 2 exponentiations with 64-bit exponents mod n² for party 1 and ``1/k`` encryption;
``2·768 + 768/k ≈ 1579`` bytes (about ``2·512 + 512/12 ≈ 1067`` at 2048 bits). Squares halve the
request. All shares and masks come from :func:`secrets.randbits` (the OS CSPRNG).
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import gmpy2
import numpy as np
from gmpy2 import mpz

from veil.errors import ConfigurationError, InsecureParametersError, SerializationError
from veil.he.paillier import PaillierKeyPair, PaillierPublicKey

__all__ = [
    "Kind", "TripleShares", "SquareShares", "KeyHolder", "Evaluator", "local_pair",
    "slot_bits", "slots_per_ciphertext", "pack_slots", "unpack_slots", "request_size",
    "reply_size", "DEFAULT_KEY_BITS", "DEFAULT_STATISTICAL_BITS", "MAX_COUNT",
]

Kind = Literal["triples", "squares"]
RandBits = Callable[[int], int]

DEFAULT_KEY_BITS = 3072
DEFAULT_STATISTICAL_BITS = 40
MIN_STATISTICAL_BITS = 40
MAX_STATISTICAL_BITS = 128
MAX_COUNT = 1 << 22
MAX_KEY_BITS = 8192
RING_BITS = 64
_RING = 1 << RING_BITS
_CROSS_BITS = 129  # a0·b1 + b0·a1 < 2^129
_KINDS: dict[str, int] = {"triples": 1, "squares": 2}
_REQ_MAGIC, _REP_MAGIC = b"VBTq", b"VBTr"
_REQ_HEAD = struct.Struct(">4sBBBIH")  # magic, version, kind, sigma, count, len(n)
_REP_HEAD = struct.Struct(">4sBBBII")  # magic, version, kind, sigma, count, groups
_VERSION = 1


@dataclass(frozen=True)
class TripleShares:
    """One party's shares of ``count`` triples: ``c = a·b`` (mod 2^64) summed over parties."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray


@dataclass(frozen=True)
class SquareShares:
    """One party's shares of ``count`` squares: ``a2 = a·a`` (mod 2^64) summed over parties."""

    a: np.ndarray
    a2: np.ndarray


# ----------------------------------------------------------------------------- layout
def slot_bits(statistical_bits: int = DEFAULT_STATISTICAL_BITS) -> int:
    """Bits of one packed slot: ``130 + σ`` (cross term < 2^129, mask < 2^(129+σ))."""
    return _CROSS_BITS + 1 + statistical_bits


def slots_per_ciphertext(n_bits: int, statistical_bits: int = DEFAULT_STATISTICAL_BITS) -> int:
    """Slots ``k`` per plaintext of an ``n_bits`` modulus: ``k·S ≤ n_bits − 2`` (so ``M < n``)."""
    k = (n_bits - 2) // slot_bits(statistical_bits)
    if k < 1:
        raise ConfigurationError(
            f"a {n_bits}-bit Paillier key cannot hold one {slot_bits(statistical_bits)}-bit "
            "slot; use a larger key (3072 bits by default)"
        )
    return k


def pack_slots(values: Sequence[int], bits: int) -> int:
    """``Σ_j values[j]·2^(j·bits)``; every value must be in ``[0, 2^bits)`` (no carries)."""
    m = 0
    for v in reversed(values):
        if not 0 <= v < (1 << bits):
            raise ConfigurationError(f"a slot value does not fit in {bits} bits")
        m = (m << bits) | int(v)
    return m


def unpack_slots(m: int, bits: int, count: int) -> list[int]:
    """The ``count`` base-``2^bits`` digits of ``m`` (inverse of :func:`pack_slots`)."""
    if not 0 <= m < (1 << (bits * count)):
        raise ConfigurationError(f"packed value does not fit in {count} slots of {bits} bits")
    mask = (1 << bits) - 1
    return [(m >> (bits * j)) & mask for j in range(count)]


def _ciphertexts_per_item(kind: str) -> int:
    return 2 if kind == "triples" else 1


def _width(n: int) -> int:
    return ((n * n).bit_length() + 7) // 8


def request_size(n: int, count: int, kind: Kind = "triples") -> int:
    """Exact byte length of the request for ``count`` items under modulus ``n``."""
    nlen = (int(n).bit_length() + 7) // 8
    return _REQ_HEAD.size + nlen + _ciphertexts_per_item(kind) * count * _width(int(n))


def reply_size(n: int, count: int, statistical_bits: int = DEFAULT_STATISTICAL_BITS) -> int:
    """Exact byte length of the reply for ``count`` items under modulus ``n``."""
    groups = -(-count // slots_per_ciphertext(int(n).bit_length(), statistical_bits))
    return _REP_HEAD.size + groups * _width(int(n))


# ----------------------------------------------------------------------------- checks
def _check_common(count: int, kind: str, statistical_bits: int,
                  allow_insecure: bool) -> None:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise ConfigurationError(f"count must be an int, got {type(count).__name__}")
    if not 1 <= int(count) <= MAX_COUNT:
        raise ConfigurationError(
            f"count={count} is outside 1..{MAX_COUNT}; make large batches in several runs"
        )
    if kind not in _KINDS:
        raise ConfigurationError(f"kind must be 'triples' or 'squares', got {kind!r}")
    sigma = statistical_bits
    if isinstance(sigma, bool) or not isinstance(sigma, int) or not 0 <= sigma <= \
            MAX_STATISTICAL_BITS:
        raise ConfigurationError(
            f"statistical_bits must be an int in 0..{MAX_STATISTICAL_BITS}, got {sigma!r}; "
            f"use {DEFAULT_STATISTICAL_BITS}"
        )
    if sigma < MIN_STATISTICAL_BITS and not allow_insecure:
        raise InsecureParametersError(
            f"statistical_bits={sigma} masks the cross terms with less than "
            f"{MIN_STATISTICAL_BITS}-bit statistical security; use {DEFAULT_STATISTICAL_BITS} "
            "or pass allow_insecure=True for tests"
        )


def _draw(randbits: RandBits, count: int, bits: int) -> list[int]:
    out = [int(randbits(bits)) for _ in range(count)]
    if any(not 0 <= v < (1 << bits) for v in out):
        raise ConfigurationError(f"randbits returned a value outside 0..2^{bits}-1")
    return out


def _ring(values: Sequence[int]) -> np.ndarray:
    """Python ints (any sign) reduced mod 2^64, as int64 (two's complement)."""
    return np.array([v % _RING for v in values], dtype=np.uint64).view(np.int64)


def _read_ciphertexts(data: bytes, offset: int, count: int, n: mpz, what: str) -> list[mpz]:
    width, n2 = _width(int(n)), n * n
    out = []
    for i in range(count):
        start = offset + i * width
        c = mpz(int.from_bytes(data[start : start + width], "big"))
        if not 0 < c < n2 or gmpy2.gcd(c, n) != 1:
            raise SerializationError(
                f"{what}: ciphertext {i} is not a unit of Z_(n^2) (outside 0 < c < n^2 or "
                "sharing a factor with n); the message is corrupt or from another key"
            )
        out.append(c)
    return out


def _zero_ciphertexts(encryptor: PaillierKeyPair | PaillierPublicKey, count: int) -> list[mpz]:
    """``count`` fresh encryptions of 0 (Veil's DJN randomness) as raw integers."""
    vec = encryptor.encrypt(np.zeros(count, dtype=np.int64))
    return [mpz(e.ciphertext(be_secure=False)) for e in vec.to_phe()]


# ----------------------------------------------------------------------------- party 0
class KeyHolder:
    """Party 0: owns the Paillier key, sends :meth:`request`, decrypts the reply in :meth:`finish`.

    ``keypair`` defaults to a fresh key of ``key_bits`` bits (3072; below 2048 needs
    ``allow_insecure=True``). ``randbits`` replaces :func:`secrets.randbits` for the shares
    (known-answer tests only). The object is single-use.
    """

    def __init__(self, count: int, *, kind: Kind = "triples", key_bits: int = DEFAULT_KEY_BITS,
                 keypair: PaillierKeyPair | None = None,
                 statistical_bits: int = DEFAULT_STATISTICAL_BITS, allow_insecure: bool = False,
                 randbits: RandBits | None = None) -> None:
        _check_common(count, kind, statistical_bits, allow_insecure)
        if keypair is None:
            keypair = PaillierKeyPair.generate(key_bits, allow_insecure=allow_insecure)
        elif not isinstance(keypair, PaillierKeyPair):
            raise ConfigurationError(
                f"keypair must be a PaillierKeyPair, got {type(keypair).__name__}"
            )
        self.count, self.kind, self.sigma = int(count), kind, statistical_bits
        self._kp = keypair
        self._n = mpz(keypair.public_key.n)
        self._k = slots_per_ciphertext(keypair.public_key.bits, statistical_bits)
        draw = randbits or secrets.randbits
        self._a = _draw(draw, self.count, RING_BITS)
        self._b = _draw(draw, self.count, RING_BITS) if kind == "triples" else []
        self._done = False

    def request(self) -> bytes:
        """Round 1 (to party 1): header, ``n`` and the encrypted, slot-shifted shares."""
        n, s, k = self._n, slot_bits(self.sigma), self._k
        values = self._a + self._b
        zs = _zero_ciphertexts(self._kp, len(values))
        n2 = n * n
        cs = [(1 + ((v << (s * ((i % self.count) % k))) % n) * n) * z % n2
              for i, (v, z) in enumerate(zip(values, zs))]
        nbytes = int(n).to_bytes((int(n).bit_length() + 7) // 8, "big")
        head = _REQ_HEAD.pack(_REQ_MAGIC, _VERSION, _KINDS[self.kind], self.sigma, self.count,
                              len(nbytes))
        width = _width(int(n))
        return head + nbytes + b"".join(int(c).to_bytes(width, "big") for c in cs)

    def _masked_values(self, reply: bytes) -> list[int]:
        """The decrypted slot values ``v`` (party 0's whole view of party 1's reply)."""
        if not isinstance(reply, (bytes, bytearray)):
            raise SerializationError(f"reply must be bytes, got {type(reply).__name__}")
        expected = reply_size(int(self._n), self.count, self.sigma)
        if len(reply) != expected:
            raise SerializationError(
                f"triple reply is {len(reply)} bytes, expected exactly {expected} for "
                f"{self.count} {self.kind} under this key; it is truncated, padded or for "
                "another request"
            )
        magic, version, kind, sigma, count, groups = _REP_HEAD.unpack_from(reply)
        if (magic, version, kind, sigma, count) != (
                _REP_MAGIC, _VERSION, _KINDS[self.kind], self.sigma, self.count):
            raise SerializationError(
                "triple reply header does not match the request (magic, version, kind, "
                "statistical_bits or count differ); answer this KeyHolder's request"
            )
        cs = _read_ciphertexts(reply, _REP_HEAD.size, groups, self._n, "triple reply")
        sk = self._kp.private_key.to_phe()
        s, k, out = slot_bits(self.sigma), self._k, []
        for g, c in enumerate(cs):
            take = min(k, self.count - g * k)
            try:
                out.extend(unpack_slots(int(sk.raw_decrypt(int(c))), s, take))
            except ConfigurationError as exc:
                raise SerializationError(
                    f"triple reply group {g} does not decrypt to {take} packed slots; party "
                    "1 deviated from the protocol or the reply is corrupt"
                ) from exc
        return out

    def finish(self, reply: bytes) -> TripleShares | SquareShares:
        """Round 2 (from party 1): decrypt and return party 0's shares (int64 arrays)."""
        if self._done:
            raise ConfigurationError("this KeyHolder already finished; make a new one per batch")
        v = self._masked_values(reply)
        self._done = True
        a = self._a
        if self.kind == "squares":
            return SquareShares(a=_ring(a), a2=_ring([x * x + m for x, m in zip(a, v)]))
        b = self._b
        return TripleShares(a=_ring(a), b=_ring(b),
                            c=_ring([x * y + m for x, y, m in zip(a, b, v)]))


# ----------------------------------------------------------------------------- party 1
class Evaluator:
    """Party 1: answers party 0's request with :meth:`respond`; its shares are then
    :attr:`shares`. ``count``, ``kind`` and ``statistical_bits`` must be those party 0 uses
    (agreed beforehand); ``allow_insecure`` accepts keys below 2048 bits and σ < 40 (tests).
    ``randbits`` replaces :func:`secrets.randbits` for shares and masks (tests only)."""

    def __init__(self, count: int, *, kind: Kind = "triples",
                 statistical_bits: int = DEFAULT_STATISTICAL_BITS, allow_insecure: bool = False,
                 randbits: RandBits | None = None) -> None:
        _check_common(count, kind, statistical_bits, allow_insecure)
        self.count, self.kind, self.sigma = int(count), kind, statistical_bits
        self._insecure = allow_insecure
        self._randbits = randbits or secrets.randbits
        self._shares: TripleShares | SquareShares | None = None

    @property
    def shares(self) -> TripleShares | SquareShares:
        if self._shares is None:
            raise ConfigurationError("no shares yet: call respond() with party 0's request")
        return self._shares

    def _parse(self, request: bytes) -> tuple[PaillierPublicKey, list[mpz]]:
        if not isinstance(request, (bytes, bytearray)):
            raise SerializationError(f"request must be bytes, got {type(request).__name__}")
        if len(request) < _REQ_HEAD.size:
            raise SerializationError(
                f"triple request is {len(request)} bytes, shorter than its "
                f"{_REQ_HEAD.size}-byte header; it is truncated"
            )
        magic, version, kind, sigma, count, nlen = _REQ_HEAD.unpack_from(request)
        if (magic, version, kind, sigma, count) != (
                _REQ_MAGIC, _VERSION, _KINDS[self.kind], self.sigma, self.count):
            raise SerializationError(
                "triple request header does not match this Evaluator (magic, version, kind, "
                "statistical_bits or count differ); agree on them with party 0 first"
            )
        if not 1 <= nlen <= MAX_KEY_BITS // 8 or len(request) < _REQ_HEAD.size + nlen:
            raise SerializationError(f"triple request: modulus field of {nlen} bytes is invalid")
        n = int.from_bytes(request[_REQ_HEAD.size : _REQ_HEAD.size + nlen], "big")
        expected = request_size(n, self.count, self.kind)
        if nlen != (n.bit_length() + 7) // 8 or len(request) != expected:
            raise SerializationError(
                f"triple request is {len(request)} bytes, expected exactly {expected} for "
                f"{self.count} {self.kind} under its {n.bit_length()}-bit key; it is "
                "truncated, padded or non-canonical"
            )
        try:
            pk = PaillierPublicKey(n, allow_insecure=self._insecure)
            slots_per_ciphertext(pk.bits, self.sigma)
        except ConfigurationError as exc:
            raise SerializationError(f"triple request carries an unusable key: {exc}") from exc
        m = _ciphertexts_per_item(self.kind) * self.count
        return pk, _read_ciphertexts(request, _REQ_HEAD.size + nlen, m, mpz(n),
                                     "triple request")

    def respond(self, request: bytes) -> bytes:
        """Round 1 → 2: evaluate the cross terms under party 0's key; returns the reply."""
        if self._shares is not None:
            raise ConfigurationError("this Evaluator already responded; make a new one per batch")
        pk, cs = self._parse(request)
        count, draw, sigma = self.count, self._randbits, self.sigma
        a = _draw(draw, count, RING_BITS)
        b = _draw(draw, count, RING_BITS) if self.kind == "triples" else []
        r = _draw(draw, count, _CROSS_BITS + sigma)
        n, n2 = mpz(pk.n), mpz(pk.n) ** 2
        if self.kind == "triples":
            ca, cb = cs[:count], cs[count:]
            terms = [gmpy2.powmod(x, y1, n2) * gmpy2.powmod(z, x1, n2) % n2
                     for x, z, x1, y1 in zip(ca, cb, a, b)]
            self._shares = TripleShares(a=_ring(a), b=_ring(b),
                                        c=_ring([x * y - m for x, y, m in zip(a, b, r)]))
        else:
            terms = [gmpy2.powmod(x, (2 * x1) % _RING, n2) for x, x1 in zip(cs, a)]
            self._shares = SquareShares(a=_ring(a), a2=_ring([x * x - m for x, m in zip(a, r)]))
        k, s = slots_per_ciphertext(pk.bits, sigma), slot_bits(sigma)
        groups = -(-count // k)
        zs = _zero_ciphertexts(pk, groups)
        out = []
        for g in range(groups):
            acc = (1 + pack_slots(r[g * k : (g + 1) * k], s) * n) * zs[g] % n2
            for t in terms[g * k : (g + 1) * k]:
                acc = acc * t % n2
            out.append(int(acc).to_bytes(_width(int(n)), "big"))
        head = _REP_HEAD.pack(_REP_MAGIC, _VERSION, _KINDS[self.kind], sigma, count, groups)
        return head + b"".join(out)


# ----------------------------------------------------------------------------- both
def local_pair(n: int, *, key_bits: int = DEFAULT_KEY_BITS, kind: Kind = "triples",
               statistical_bits: int = DEFAULT_STATISTICAL_BITS, allow_insecure: bool = False,
               keypair: PaillierKeyPair | None = None,
               ) -> tuple[TripleShares, TripleShares] | tuple[SquareShares, SquareShares]:
    """Run both parties in this process (tests, benchmarks): ``(party 0 shares, party 1
    shares)`` of ``n`` triples (or squares with ``kind="squares"``)."""
    p0 = KeyHolder(n, kind=kind, key_bits=key_bits, keypair=keypair,
                   statistical_bits=statistical_bits, allow_insecure=allow_insecure)
    p1 = Evaluator(n, kind=kind, statistical_bits=statistical_bits,
                   allow_insecure=allow_insecure)
    shares0 = p0.finish(p1.respond(p0.request()))
    return shares0, p1.shares  # type: ignore[return-value]

"""Fast dealer-free arithmetic Beaver triples over Z_{2^64} from OT extension (Gilboa 1999).

Each party ``p`` ends with uniform ``a_p, b_p`` and a share ``c_p`` such that ``c_0 + c_1 =
(a_0 + a_1)(b_0 + b_1)`` mod 2^64 (CrypTen's int64 ring), or for squares ``a2_0 + a2_1 =
(a_0 + a_1)^2``. The outputs are :class:`~veil.protocols.triples.arith.TripleShares` /
``SquareShares`` (int64 arrays), so this module is a drop-in for the Paillier generator
:mod:`~veil.protocols.triples.arith`, which is some 50-100 times slower.

**Gilboa's product.** The sender holds ``x``, the receiver ``y = sum_i y_i 2^i`` (i < 64); they
run 64 random OTs of :mod:`~veil.protocols.triples.iknp` in which the receiver's choice bits are
the bits ``y_i`` (IKNP takes chosen choices). Let ``h0_i, h1_i`` be the low 64 bits of the
sender's two (already TCCR-hashed) random messages and ``h_i = h_{y_i, i}`` the receiver's. OT
``i`` only has to carry its message mod ``2^(64-i)``, as its output is scaled by ``2^i``:

* correlated-OT derandomisation: the sender takes ``t_i = h0_i`` and sends the correction
  ``d_i = h0_i - h1_i + x mod 2^(64-i)`` (rounded up to whole bytes: 288 bytes per product
  instead of 512, the bits above ``64-i`` vanish when scaled);
* the receiver computes ``w_i = h_i + y_i d_i``: for ``y_i = 0`` that is ``t_i``, for ``y_i =
  1`` it is ``h1_i + h0_i - h1_i + x = t_i + x`` (mod ``2^(64-i)``): a correlated OT with
  messages ``(t_i, t_i + x)``;
* shares: sender ``z_S = -sum_i 2^i t_i``, receiver ``z_R = sum_i 2^i w_i`` (mod 2^64). Then
  ``z_S + z_R = sum_i 2^i y_i x = x y`` (``2^i (v mod 2^(64-i)) = 2^i v`` mod 2^64).

(Equivalently, with unscaled messages ``(t_i, t_i + 2^i x)`` over Z_{2^64}, ``d_i = h0_i - h1_i
+ 2^i x``; the scaled form is the same correlation with the dead high bits dropped.)

**Triples.** ``c = a_0 b_0 + a_1 b_1 + a_1 b_0 + a_0 b_1``: two IKNP batches run in opposite
directions, as in :mod:`~veil.protocols.triples.binary`. In batch ``p`` party ``p`` receives
with the bits of ``b_p`` and party ``1 - p`` sends with ``x = a_{1-p}``, giving shares of
``a_{1-p} b_p``; party ``p`` keeps ``c_p = a_p b_p + (its share of a_{1-p} b_p) + (its share of
a_p b_{1-p})``. **Squares** ``a^2 = a_0^2 + a_1^2 + 2 a_0 a_1`` need one product ``a_0 a_1`` per
square; to balance the work, batch 0 (party 0 receives ``a_0``) makes the first ``ceil(n/2)``
of them and batch 1 the rest; ``a2_p = a_p^2 + 2 z_p``.

**Security (semi-honest).** Receiver privacy: ``y`` enters only as IKNP choice bits, which the
OT sender's view (the matrix ``u``) hides because it is masked by PRG streams of base-OT keys
that the sender does not hold. Sender privacy: the receiver sees ``d_i = h0_i - h1_i + x``; it
holds ``h_{y_i}`` but the other message ``h_{1-y_i} = H(i, t^i ^ s)`` stays pseudorandom to it
because the IKNP hash is (tweakable) correlation robust, so ``d_i`` is a one-time pad of ``x``
(uniform whatever ``x`` is) and ``w_i`` is all it learns. Outputs: ``z_S`` contains ``t_0 =
h0_0``, a fresh random-OT output with coefficient 1, so it is uniform and independent of ``y``;
``z_R = x y - z_S`` is then uniform too, and the receiver's view is simulated from ``(y, z_R)``
alone; ``a_p, b_p`` are fresh CSPRNG draws, so each party's ``(a_p, b_p, c_p)`` is uniform.
Every batch has its own base OTs, session tag and per-OT tweaks. **Only semi-honest**: a
malicious party can send wrong corrections or choose non-uniform shares and make triples wrong
without being detected here (or bias them); use a later sacrifice / MAC check (SPDZ-style)
against active adversaries. ``n`` and the kind are public; the Gilboa arithmetic is branch-free
numpy (no secret-dependent control flow).

**Costs.** A triple is 2 x 64 = 128 random OTs; bytes per triple: 128 x 16 (IKNP matrix ``u``)
+ 2 x 288 (corrections) = 2624, plus per batch 128 base OTs (about 4.2 kB) and 11-byte
headers. A square is 64 OTs and 1024 + 288 = 1312 bytes. (Paillier ``arith`` sends about 1067
bytes per triple at 2048 bits, but its modular exponentiations are far slower than AES.)

Two-party API: :class:`TripleParty` with ``first()``, ``second(peer)``, ``third(peer)``,
``fourth(peer)`` and ``finish(peer) -> TripleShares | SquareShares``; both parties call the
steps in lock-step, each handing the other's last message to its next step. Every message is
labelled (sender, step, kind, count), its size is checked before it is parsed, and malformed,
crossed or replayed messages raise :class:`~veil.errors.SerializationError`; steps out of order
raise :class:`~veil.errors.ConfigurationError`. :func:`local_pair` runs both parties in one
process; :func:`local_products` is one Gilboa product. All randomness is ``os.urandom`` (the
shares) or IKNP's (``os.urandom``/``secrets`` seeded AES-CTR).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

import numpy as np

from veil.errors import ConfigurationError, SerializationError
from veil.protocols.triples import iknp
from veil.protocols.triples.arith import Kind, SquareShares, TripleShares
from veil.protocols.triples.steps import check_step

__all__ = [
    "RING_BITS",
    "MAX_COUNT",
    "CORRECTION_BYTES",
    "random_ring",
    "ring_bits",
    "sender_corrections",
    "receiver_combine",
    "pack_corrections",
    "unpack_corrections",
    "TripleParty",
    "local_products",
    "local_pair",
]

RING_BITS = 64
MAX_COUNT = iknp.MAX_OTS // RING_BITS  # products per IKNP batch
_SHIFTS = np.arange(RING_BITS, dtype=np.uint64)
# OT i = 8 q + r (q, r < 8) needs 64 - i bits, so 8 - q bytes: group q of 8 OTs keeps 8 - q bytes
_GROUP_BYTES = tuple(8 - q for q in range(8))
CORRECTION_BYTES = 8 * sum(_GROUP_BYTES)  # 288 bytes of corrections per product
_MAGIC = b"VGT1"
_HEAD = struct.Struct("<4sBBBI")  # magic, sender party, step, kind, count
_KINDS: dict[str, int] = {"triples": 1, "squares": 2}
_STEPS = ("first", "second", "third", "fourth", "finish")
_RING = 1 << RING_BITS


def random_ring(n: int) -> np.ndarray:
    """``n`` uniform elements of Z_{2^64} (uint64) from ``os.urandom``."""
    return np.frombuffer(os.urandom(8 * n), dtype="<u8").astype(np.uint64)


def ring_bits(values: np.ndarray) -> np.ndarray:
    """The 64 bits of each uint64, least significant first: element ``64 k + i`` is bit ``i``
    of ``values[k]`` (uint8 0/1, the IKNP choice layout)."""
    return np.unpackbits(np.ascontiguousarray(values, dtype="<u8").view(np.uint8),
                         bitorder="little")


def sender_corrections(h0: np.ndarray, h1: np.ndarray, x: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Sender side of ``k`` products: from the low words ``h0, h1`` (k, 64) of its random OT
    messages and its values ``x`` (k,), the corrections ``d = h0 - h1 + x`` (k, 64) and its
    shares ``-sum_i 2^i h0_i`` (k,), all mod 2^64."""
    d = h0 - h1 + x[:, None]
    return d, np.uint64(0) - (h0 << _SHIFTS).sum(axis=1, dtype=np.uint64)


def receiver_combine(choices: np.ndarray, h: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Receiver side of ``k`` products: its shares ``sum_i 2^i (h_i + y_i d_i)`` (k,) from its
    choice bits ``y`` (k, 64), received messages ``h`` and corrections ``d`` (k, 64)."""
    mask = np.uint64(0) - choices.astype(np.uint64)  # 0 or all ones
    return ((h + (d & mask)) << _SHIFTS).sum(axis=1, dtype=np.uint64)


def pack_corrections(d: np.ndarray) -> bytes:
    """The wire form of (k, 64) corrections: for OT ``i`` the ``ceil((64 - i) / 8)`` low bytes
    of ``d_i`` (little endian), in OT order, ``CORRECTION_BYTES`` bytes per product."""
    b = np.ascontiguousarray(d, dtype="<u8").view(np.uint8).reshape(-1, 8, 8, 8)
    return np.concatenate([b[:, q, :, :w].reshape(-1, 8 * w)
                           for q, w in enumerate(_GROUP_BYTES)], axis=1).tobytes()


def unpack_corrections(body: bytes, k: int) -> np.ndarray:
    """Parse ``k`` products' corrections (the dropped high bytes read as zero); the length is
    checked first."""
    if not isinstance(body, (bytes, bytearray)) or len(body) != k * CORRECTION_BYTES:
        got = len(body) if isinstance(body, (bytes, bytearray)) else type(body).__name__
        raise SerializationError(f"a correction message for {k} products must be "
                                 f"{k * CORRECTION_BYTES} bytes, got {got}; pass the peer's "
                                 "bytes unchanged")
    src = np.frombuffer(body, dtype=np.uint8).reshape(k, CORRECTION_BYTES)
    buf = np.zeros((k, 8, 8, 8), dtype=np.uint8)
    off = 0
    for q, w in enumerate(_GROUP_BYTES):
        buf[:, q, :, :w] = src[:, off:off + 8 * w].reshape(k, 8, w)
        off += 8 * w
    return buf.view("<u8").reshape(k, RING_BITS).astype(np.uint64, copy=False)


def _low_words(messages: np.ndarray) -> np.ndarray:
    return messages[:, 0].reshape(-1, RING_BITS)


def _ring_input(values: np.ndarray | Sequence[int], n: int, name: str) -> np.ndarray:
    """Caller-fixed shares (tests, audits) as uint64, reduced mod 2^64."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iu" or values.shape != (n,):
            raise ConfigurationError(f"{name} must be {n} integers (integer dtype, shape "
                                     f"({n},)), got dtype {values.dtype} shape {values.shape}")
        return values.astype(np.uint64)
    items = list(values)
    if len(items) != n or any(not isinstance(v, int) or isinstance(v, bool) for v in items):
        raise ConfigurationError(f"{name} must be {n} Python ints or an integer array")
    return np.array([v % _RING for v in items], dtype=np.uint64)


def _split(n: int, kind: str) -> int:
    """Products made in batch 0 (party 0 receives); batch 1 makes the rest (squares) or as
    many (triples)."""
    return n if kind == "triples" else -(-n // 2)


def _check_params(party: int, n: int, kind: str) -> None:
    if party not in (0, 1) or isinstance(party, bool):
        raise ConfigurationError(f"party must be 0 or 1, got {party!r}")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_COUNT:
        raise ConfigurationError(f"the count must be an integer in [1, {MAX_COUNT}], got "
                                 f"{n!r}; split larger requests")
    if kind not in _KINDS:
        raise ConfigurationError(f"kind must be 'triples' or 'squares', got {kind!r}")


class TripleParty:
    """One party (``party`` 0 or 1) of the Gilboa triple protocol for ``n`` triples or squares.

    ``a`` and ``b`` fix this party's input shares instead of drawing them from the CSPRNG; they
    are for tests and audits only (the triples are secure only with uniform shares). Squares
    take no ``b``.
    """

    def __init__(self, party: int, n: int, kind: Kind = "triples", *,
                 a: np.ndarray | Sequence[int] | None = None,
                 b: np.ndarray | Sequence[int] | None = None) -> None:
        _check_params(party, n, kind)
        if kind == "squares" and b is not None:
            raise ConfigurationError("squares have no b share; pass only a")
        self.party, self.n, self.kind = party, n, kind
        self._a = random_ring(n) if a is None else _ring_input(a, n, "a")
        self._b: np.ndarray | None = None
        h = _split(n, kind)
        if kind == "triples":
            self._b = random_ring(n) if b is None else _ring_input(b, n, "b")
            self._recv_part, self._send_part = slice(0, n), slice(0, n)
            recv_values, self._send_values = self._b, self._a
        else:
            mine, other = (slice(0, h), slice(h, n)) if party == 0 else (slice(h, n),
                                                                        slice(0, h))
            self._recv_part, self._send_part = mine, other
            recv_values, self._send_values = self._a[mine], self._a[other]
        self._k_recv = len(recv_values)
        self._k_send = len(self._send_values)
        self._choices = ring_bits(recv_values)
        self._step = 0
        self._recv_state: iknp.ExtReceiverState | None = None
        self._send_state: iknp.ExtSenderState | None = None
        self._recv_out: iknp.ROTReceiverOutput | None = None
        self._send_share: np.ndarray | None = None

    # ------------------------------------------------------------------------- framing
    def _expect(self, step: str) -> None:
        check_step(_STEPS, self._step, step)

    def _advance(self, step: int, body: bytes) -> bytes:
        self._step += 1
        return _HEAD.pack(_MAGIC, self.party, step, _KINDS[self.kind], self.n) + body

    def _unframe(self, msg: bytes, step: int) -> bytes:
        if not isinstance(msg, (bytes, bytearray)) or len(msg) < _HEAD.size:
            raise SerializationError(f"Gilboa triple message is shorter than its {_HEAD.size}-"
                                     "byte header; pass the peer's bytes unchanged")
        magic, sender, got, kind, n = _HEAD.unpack_from(msg)
        if magic != _MAGIC:
            raise SerializationError("not a Gilboa triple message (bad header)")
        if sender != 1 - self.party or got != step:
            raise SerializationError(
                f"party {self.party} expected message {step} of party {1 - self.party}, got "
                f"message {got} of party {sender}; messages were crossed or replayed")
        if kind != _KINDS[self.kind] or n != self.n:
            raise SerializationError(f"the peer makes {n} items of kind code {kind}, this party "
                                     f"{self.n} {self.kind}; both must agree")
        return bytes(msg[_HEAD.size:])

    @staticmethod
    def _empty(body: bytes, what: str) -> bytes:
        if body:
            raise SerializationError(f"{what} must be empty for this batch split, got "
                                     f"{len(body)} bytes")
        return b""

    # ------------------------------------------------------------------------- steps
    def first(self) -> bytes:
        """Step 1: start the IKNP batch in which this party receives (choices: its bits)."""
        self._expect("first")
        body = b""
        if self._k_recv:
            self._recv_state, body = iknp.receiver_start(RING_BITS * self._k_recv,
                                                         self._choices)
        return self._advance(1, body)

    def second(self, peer_first: bytes) -> bytes:
        """Step 2: answer the peer's batch as its OT sender."""
        self._expect("second")
        body = self._unframe(peer_first, 1)
        if self._k_send:
            self._send_state, reply = iknp.sender_respond(body, RING_BITS * self._k_send)
        else:
            reply = self._empty(body, "the peer's start message")
        return self._advance(2, reply)

    def third(self, peer_second: bytes) -> bytes:
        """Step 3: finish this party's receiving batch; returns the IKNP matrix for the peer."""
        self._expect("third")
        body = self._unframe(peer_second, 2)
        if self._k_recv:
            if self._recv_state is None:  # unreachable after _expect
                raise ConfigurationError("TripleParty.first() was not called")
            self._recv_out, u_msg = iknp.receiver_extend(self._recv_state, body)
            self._recv_state = None
        else:
            u_msg = self._empty(body, "the peer's base-OT reply")
        return self._advance(3, u_msg)

    def fourth(self, peer_third: bytes) -> bytes:
        """Step 4: finish the peer's batch as sender; returns the corrections ``d``."""
        self._expect("fourth")
        body = self._unframe(peer_third, 3)
        if self._k_send:
            if self._send_state is None:  # unreachable after _expect
                raise ConfigurationError("TripleParty.second() was not called")
            sent = iknp.sender_finish(self._send_state, body)
            d, share = sender_corrections(_low_words(sent.m0), _low_words(sent.m1),
                                          self._send_values)
            self._send_state, out = None, pack_corrections(d)
        else:
            out, share = self._empty(body, "the peer's IKNP matrix"), np.zeros(0, np.uint64)
        self._send_share = share
        return self._advance(4, out)

    def finish(self, peer_fourth: bytes) -> TripleShares | SquareShares:
        """Step 5: apply the peer's corrections and combine everything into this party's
        shares (int64 arrays, CrypTen's ring)."""
        self._expect("finish")
        body = self._unframe(peer_fourth, 4)
        if self._send_share is None:
            raise ConfigurationError("TripleParty steps were skipped; call them in order")
        recv_share = np.zeros(0, np.uint64)
        if self._k_recv:
            if self._recv_out is None:
                raise ConfigurationError("TripleParty.third() was not called")
            d = unpack_corrections(body, self._k_recv)
            recv_share = receiver_combine(self._recv_out.choices.reshape(-1, RING_BITS),
                                          _low_words(self._recv_out.messages), d)
        else:
            self._empty(body, "the peer's corrections")
        cross = np.zeros(self.n, dtype=np.uint64)
        cross[self._recv_part] += recv_share
        cross[self._send_part] += self._send_share
        self._recv_out, self._send_share = None, None
        self._step += 1
        a = self._a
        if self._b is None:
            return SquareShares(a=a.view(np.int64), a2=(a * a + 2 * cross).view(np.int64))
        return TripleShares(a=a.view(np.int64), b=self._b.view(np.int64),
                            c=(a * self._b + cross).view(np.int64))


def local_products(x: np.ndarray | Sequence[int], y: np.ndarray | Sequence[int]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One Gilboa product per element in this process: uint64 ``(z_S, z_R)`` with ``z_S + z_R
    = x y`` mod 2^64 (sender holds ``x``, receiver ``y``; tests, benchmarks)."""
    k = len(x)
    if len(y) != k or not 1 <= k <= MAX_COUNT:
        raise ConfigurationError(f"x and y must have the same length in [1, {MAX_COUNT}], got "
                                 f"{k} and {len(y)}")
    x, y = _ring_input(x, k, "x"), _ring_input(y, k, "y")
    sent, received = iknp.local_random_ots(RING_BITS * k, ring_bits(y))
    d, z_s = sender_corrections(_low_words(sent.m0), _low_words(sent.m1), x)
    d = unpack_corrections(pack_corrections(d), k)
    z_r = receiver_combine(received.choices.reshape(-1, RING_BITS),
                           _low_words(received.messages), d)
    return z_s, z_r


def local_pair(n: int, kind: Kind = "triples", *,
               a: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
               b: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
               ) -> tuple[TripleShares, TripleShares] | tuple[SquareShares, SquareShares]:
    """Run both parties in this process (tests, benchmarks): ``(party 0, party 1)`` shares of
    ``n`` triples or squares; ``a=(a0, a1)``, ``b=(b0, b1)`` fix input shares (tests only)."""
    p0 = TripleParty(0, n, kind, a=a[0], b=b[0])
    p1 = TripleParty(1, n, kind, a=a[1], b=b[1])
    f0, f1 = p0.first(), p1.first()
    s0, s1 = p0.second(f1), p1.second(f0)
    t0, t1 = p0.third(s1), p1.third(s0)
    d0, d1 = p0.fourth(t1), p1.fourth(t0)
    return p0.finish(d1), p1.finish(d0)  # type: ignore[return-value]

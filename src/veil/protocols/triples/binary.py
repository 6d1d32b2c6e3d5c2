"""Binary (AND) Beaver triples for two parties from random OTs, with no dealer.

Each party ``p`` ends with bit arrays ``(a_p, b_p, c_p)``, packed 64 to a uint64 word, such that
``(a_0 ^ a_1) & (b_0 ^ b_1) == c_0 ^ c_1``. ``n_words`` words are ``64 n_words`` AND triples.

Construction (2 random OTs per AND triple, as in ABY / Asharov-Lindell-Schneider-Zohner 2013).
Two IKNP batches (:mod:`veil.protocols.triples.iknp`) run in opposite directions; only the low
bit of each 128-bit random message is used.

* Batch 0: party 0 is the OT receiver with random choices ``a_0``, party 1 the sender with
  random bits ``(x_0, x_1)``. Party 1 sets ``b_1 = x_0 ^ x_1`` and ``u_1 = x_0``; party 0 gets
  ``v_0 = x_{a_0} = u_1 ^ a_0 b_1``.
* Batch 1: the same with the parties swapped: ``b_0 = y_0 ^ y_1``, ``u_0 = y_0`` and
  ``v_1 = y_{a_1} = u_0 ^ a_1 b_0``.
* Each party: ``c_p = a_p b_p ^ u_p ^ v_p``. Then ``c_0 ^ c_1 = a_0 b_0 ^ a_1 b_1 ^ a_0 b_1 ^
  a_1 b_0 = (a_0 ^ a_1)(b_0 ^ b_1)``.

Privacy: each party's shares are its own OT choices and messages, which are uniform; what it
sees of the other party's shares is only the other side of random OTs, which hides the peer's
choices (``a_q``) and the message it did not receive (so ``b_q`` and ``u_q``). The random OT
messages need no correction bits, so the only traffic is the two IKNP runs: 256 bits per triple
plus two batches of 128 base OTs.

Two-party API: :class:`TripleParty` with ``first() -> bytes``, ``second(peer) -> bytes``,
``third(peer) -> bytes`` and ``finish(peer) -> BinaryTriples``; the two parties call the steps
in lock-step, each handing the other's message to its next step. :func:`local_pair` runs both in
one process. Malformed or crossed messages raise :class:`~veil.errors.SerializationError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from veil.errors import ConfigurationError, SerializationError
from veil.protocols.triples import iknp
from veil.protocols.triples.steps import check_step

__all__ = ["MAX_WORDS", "BinaryTriples", "TripleParty", "pack_bits", "local_pair"]

MAX_WORDS = iknp.MAX_OTS // 64
_MAGIC = b"VBT1"
_STEPS = ("first", "second", "third", "finish")


@dataclass(frozen=True)
class BinaryTriples:
    """One party's shares: three uint64 arrays of shape (n_words,), 64 AND triples a word."""

    a: np.ndarray = field(repr=False)
    b: np.ndarray = field(repr=False)
    c: np.ndarray = field(repr=False)

    @property
    def n_words(self) -> int:
        """Number of uint64 words (``64 * n_words`` triples)."""
        return int(self.a.shape[0])


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a 0/1 array whose length is a multiple of 64 into uint64 words (bit i of word w is
    element ``64 w + i``)."""
    return np.packbits(bits.astype(np.uint8), bitorder="little").view("<u8").astype(np.uint64)


def _low_bits(messages: np.ndarray) -> np.ndarray:
    return (messages[:, 0] & np.uint64(1)).astype(np.uint8)


class TripleParty:
    """One party of the dealer-free binary triple protocol (``party`` is 0 or 1)."""

    def __init__(self, party: int, n_words: int) -> None:
        if party not in (0, 1) or isinstance(party, bool):
            raise ConfigurationError(f"party must be 0 or 1, got {party!r}")
        if not isinstance(n_words, int) or isinstance(n_words, bool) or \
                not 1 <= n_words <= MAX_WORDS:
            raise ConfigurationError(f"n_words must be an integer in [1, {MAX_WORDS}], got "
                                     f"{n_words!r}; split larger requests")
        self.party = party
        self.n_words = n_words
        self._m = 64 * n_words
        self._step = 0
        self._recv_state: iknp.ExtReceiverState | None = None
        self._send_state: iknp.ExtSenderState | None = None
        self._recv_out: iknp.ROTReceiverOutput | None = None

    def _expect(self, step: str) -> None:
        check_step(_STEPS, self._step, step)

    def _frame(self, step: int, body: bytes) -> bytes:
        return _MAGIC + bytes([self.party, step]) + body

    def _unframe(self, msg: bytes, step: int) -> bytes:
        if not isinstance(msg, (bytes, bytearray)) or len(msg) < len(_MAGIC) + 2:
            raise SerializationError("binary-triple message is shorter than its header; pass "
                                     "the peer's bytes unchanged")
        if msg[: len(_MAGIC)] != _MAGIC:
            raise SerializationError("not a binary-triple message (bad header)")
        sender, got = msg[len(_MAGIC)], msg[len(_MAGIC) + 1]
        if sender != 1 - self.party or got != step:
            raise SerializationError(
                f"party {self.party} expected message {step} of party {1 - self.party}, got "
                f"message {got} of party {sender}; messages were crossed or replayed")
        return bytes(msg[len(_MAGIC) + 2:])

    def first(self) -> bytes:
        """Step 1: start the IKNP batch in which this party receives (random choices = a)."""
        self._expect("first")
        self._recv_state, msg = iknp.receiver_start(self._m)
        self._step += 1
        return self._frame(1, msg)

    def second(self, peer_first: bytes) -> bytes:
        """Step 2: answer the peer's batch as its OT sender."""
        self._expect("second")
        self._send_state, msg = iknp.sender_respond(self._unframe(peer_first, 1), self._m)
        self._step += 1
        return self._frame(2, msg)

    def third(self, peer_second: bytes) -> bytes:
        """Step 3: finish this party's receiving batch; returns the matrix for the peer."""
        self._expect("third")
        if self._recv_state is None:  # unreachable after _expect; keeps type checkers calm
            raise ConfigurationError("TripleParty.first() was not called")
        self._recv_out, msg = iknp.receiver_extend(self._recv_state,
                                                   self._unframe(peer_second, 2))
        self._recv_state = None
        self._step += 1
        return self._frame(3, msg)

    def finish(self, peer_third: bytes) -> BinaryTriples:
        """Step 4: finish the peer's batch as sender and combine everything into triples."""
        self._expect("finish")
        if self._send_state is None or self._recv_out is None:
            raise ConfigurationError("TripleParty steps were skipped; call them in order")
        sent = iknp.sender_finish(self._send_state, self._unframe(peer_third, 3))
        x0, x1 = _low_bits(sent.m0), _low_bits(sent.m1)
        a = self._recv_out.choices
        v = _low_bits(self._recv_out.messages)
        b = x0 ^ x1
        c = (a & b) ^ x0 ^ v
        self._send_state, self._recv_out = None, None
        self._step += 1
        return BinaryTriples(a=pack_bits(a), b=pack_bits(b), c=pack_bits(c))


def local_pair(n_words: int) -> tuple[BinaryTriples, BinaryTriples]:
    """Run both parties in this process (tests, benchmarks): ``(party 0, party 1)`` shares."""
    p0, p1 = TripleParty(0, n_words), TripleParty(1, n_words)
    f0, f1 = p0.first(), p1.first()
    s0, s1 = p0.second(f1), p1.second(f0)
    t0, t1 = p0.third(s1), p1.third(s0)
    return p0.finish(t1), p1.finish(t0)

"""IKNP OT extension: correctness on 10^5 OTs, the sender's view is uniform, negative controls."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.errors import ConfigurationError, SerializationError
from veil.protocols.triples import iknp, ot

M = 100_000


def _check_outputs(sender: iknp.ROTSenderOutput, receiver: iknp.ROTReceiverOutput) -> None:
    c = receiver.choices.astype(bool)[:, None]
    assert (np.where(c, sender.m1, sender.m0) == receiver.messages).all()
    other = np.where(c, sender.m0, sender.m1)
    assert (other != receiver.messages).any(axis=1).all()
    assert (sender.m0 != sender.m1).any(axis=1).all()


def test_random_ots_are_correct() -> None:
    sender, receiver = iknp.local_random_ots(M)
    assert sender.m0.shape == sender.m1.shape == receiver.messages.shape == (M, 2)
    assert receiver.choices.shape == (M,)
    _check_outputs(sender, receiver)
    assert abs(receiver.choices.mean() - 0.5) < 6 * 0.5 / np.sqrt(M)


@pytest.mark.parametrize("m", [1, 7, 64, 65, 1000])
def test_odd_sizes_and_given_choices(m: int) -> None:
    choices = np.arange(m) % 3 == 0
    sender, receiver = iknp.local_random_ots(m, choices.astype(np.uint8))
    assert (receiver.choices == choices).all()
    _check_outputs(sender, receiver)


def _view(choices: np.ndarray) -> np.ndarray:
    r_state, first = iknp.receiver_start(M, choices)
    _, reply = iknp.sender_respond(first, M)
    _, u_msg = iknp.receiver_extend(r_state, reply)
    return iknp.sender_view(u_msg, M)


def _view_is_biased(u: np.ndarray, choices: np.ndarray) -> bool:
    """Per column j of the sender's view: ones-fraction and agreement with the choices within
    6 sigma of 1/2 (a false alarm over all 256 checks has probability < 1e-6)."""
    bound = 6 * 0.5 / np.sqrt(u.shape[1])
    balance = np.abs(u.mean(axis=1) - 0.5)
    agreement = np.abs((u == choices[None, :]).mean(axis=1) - 0.5)
    return bool((balance > bound).any() or (agreement > bound).any())


CHOICES = {
    "zeros": np.zeros(M, dtype=np.uint8),
    "ones": np.ones(M, dtype=np.uint8),
    "random": iknp.random_bits(M),
}


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_sender_view_is_uniform_whatever_the_choices(name: str) -> None:
    choices = CHOICES[name]
    assert not _view_is_biased(_view(choices), choices)


class _TiledStreams:
    """Broken PRG: the key repeated instead of expanded."""

    def __init__(self, keys) -> None:
        self._keys = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16)

    def take(self, nbytes: int) -> np.ndarray:
        return np.tile(self._keys, (1, -(-nbytes // 16)))[:, :nbytes]


class _FixedStreams:
    """Broken PRG: one fixed stream for every key, so ``u = choices ^ fixed key``."""

    def __init__(self, keys) -> None:
        self._n = len(keys)

    def take(self, nbytes: int) -> np.ndarray:
        return np.full((self._n, nbytes), 0x5A, dtype=np.uint8)


@pytest.mark.parametrize("broken", [_TiledStreams, _FixedStreams])
@pytest.mark.parametrize("name", ["zeros", "random"])
def test_negative_control_broken_prg_is_detected(monkeypatch: pytest.MonkeyPatch, broken,
                                                 name: str) -> None:
    monkeypatch.setattr(iknp, "KeyStreams", broken)
    choices = CHOICES[name]
    assert _view_is_biased(_view(choices), choices)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4).map(lambda k: 8 * k), st.integers(1, 12), st.binary(min_size=1))
def test_transpose_matches_the_naive_transpose(k: int, nb: int, seed: bytes) -> None:
    rng = np.random.default_rng(list(seed))
    mat = rng.integers(0, 256, (k, nb), dtype=np.uint8)
    out = iknp.transpose_bits(mat)
    assert out.shape == (8 * nb, k // 8)
    bits = np.unpackbits(mat, axis=1, bitorder="little")
    assert (np.unpackbits(out, axis=1, bitorder="little") == bits.T).all()
    assert (iknp.transpose_bits(out) == mat).all()  # an involution


def test_hash_separates_indices_and_sessions() -> None:
    rows = np.zeros((4, 2), dtype=np.uint64)
    h = iknp.tccr_hash(rows, 0, 1)
    assert len({bytes(x) for x in h}) == 4
    assert not (iknp.tccr_hash(rows, 0, 2) == h).all(axis=1).any()
    assert (iknp.tccr_hash(rows, 0, 1) == h).all()


def test_bad_messages_raise() -> None:
    r_state, first = iknp.receiver_start(100)
    with pytest.raises(SerializationError):
        iknp.sender_respond(first[:6], 100)
    with pytest.raises(SerializationError):
        iknp.sender_respond(b"XXXXX" + first[5:], 100)
    with pytest.raises(SerializationError):
        iknp.sender_respond(first, 101)  # size mismatch
    s_state, reply = iknp.sender_respond(first, 100)
    with pytest.raises(SerializationError):
        iknp.receiver_extend(r_state, reply[:-1])
    base_state, _ = iknp.receiver_start(100)
    _, short_reply = ot.receiver_respond(base_state.first, [0] * 64)
    with pytest.raises(SerializationError):
        iknp.receiver_extend(base_state, short_reply)  # 64 base OTs instead of 128
    _, u_msg = iknp.receiver_extend(r_state, reply)
    for bad in (u_msg[:-1], u_msg + b"\0", b"XXXXX" + u_msg[5:], b""):
        with pytest.raises(SerializationError):
            iknp.sender_finish(s_state, bad)


@pytest.mark.parametrize("m", [0, -1, iknp.MAX_OTS + 1, 2.5, True])
def test_bad_sizes_raise(m) -> None:
    with pytest.raises(ConfigurationError):
        iknp.receiver_start(m)


def test_bad_choices_raise() -> None:
    with pytest.raises(ConfigurationError):
        iknp.receiver_start(10, np.full(10, 2))
    with pytest.raises(ConfigurationError):
        iknp.receiver_start(10, np.zeros(9))

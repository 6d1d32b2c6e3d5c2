"""Base OT from X25519: correctness, receiver privacy (statistics), key hiding, bad messages."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from veil.errors import ConfigurationError, SerializationError
from veil.protocols.triples import ot

ORDER8 = 325606250916557431795983626356110631294008115727848805560023387167927233504


def _choices(n: int) -> list[int]:
    return [secrets.randbelow(2) for _ in range(n)]


def test_random_choices_give_the_chosen_key() -> None:
    choices = _choices(128)
    pairs, keys = ot.local_ot(choices)
    assert len(pairs) == len(keys) == 128
    assert all(pair[c] == k for pair, c, k in zip(pairs, choices, keys))
    assert all(len(k0) == len(k1) == ot.KEY_BYTES for k0, k1 in pairs)


def test_receiver_cannot_compute_the_other_key() -> None:
    choices = _choices(128)
    pairs, keys = ot.local_ot(choices)
    held = set(keys)
    others = [pair[1 - c] for pair, c in zip(pairs, choices)]
    assert held.isdisjoint(others)
    assert len(set(others) | held) == 256  # all 2n keys distinct


def test_keys_are_bound_to_the_transcript() -> None:
    s_state, first = ot.sender_first()
    r_state, reply = ot.receiver_respond(first, [0, 1])
    flipped = bytearray(reply)
    flipped[-5] ^= 1  # a different (valid-looking) point for instance 1
    pairs = ot.sender_keys(s_state, bytes(flipped))
    assert pairs[0][0] == ot.receiver_keys(r_state)[0]
    assert ot.receiver_keys(r_state)[1] not in pairs[1]


def _point_bytes(choice: int, batches: int = 8) -> np.ndarray:
    out = []
    for _ in range(batches):
        _, first = ot.sender_first()
        _, reply = ot.receiver_respond(first, [choice] * 128)
        out.append(np.frombuffer(reply, dtype=np.uint8, offset=9).reshape(128, 32))
    return np.concatenate(out)


def _uniform_p(values: np.ndarray) -> float:
    return float(stats.chisquare(np.bincount(values.ravel(), minlength=256)).pvalue)


def test_receiver_message_is_independent_of_its_choices() -> None:
    zeros, ones = _point_bytes(0), _point_bytes(1)
    # bytes 0..30 of a u-coordinate are uniform; byte 31 is < 128 (u < 2^255 - 19)
    assert _uniform_p(zeros[:, :31]) > 1e-6
    assert _uniform_p(ones[:, :31]) > 1e-6
    table = np.stack([np.bincount(x[:, :31].ravel(), minlength=256) for x in (zeros, ones)])
    assert stats.chi2_contingency(table).pvalue > 1e-6
    # negative control: the same test rejects the (non-uniform) top byte
    assert _uniform_p(zeros[:, 31]) < 1e-6


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=ot.GROUP_L - 1))
def test_clamped_scalar_represents_plus_or_minus_r(r: int) -> None:
    enc = ot.clamped_scalar(r)
    if enc is None:  # probability 2^-126
        return
    t = int.from_bytes(enc, "little")
    assert t % 8 == 0 and 2**254 <= t < 2**255
    assert t % ot.GROUP_L in (r % ot.GROUP_L, -r % ot.GROUP_L)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1), min_size=1, max_size=8))
def test_small_batches_are_correct(choices: list[int]) -> None:
    pairs, keys = ot.local_ot(choices)
    assert [pair[c] for pair, c in zip(pairs, choices)] == keys


def test_clamped_scalar_acts_as_r_on_the_base_point() -> None:
    r = 1 + secrets.randbelow(ot.GROUP_L - 1)
    minus = ot.clamped_scalar(ot.GROUP_L - r)
    plus = ot.clamped_scalar(r)
    assert plus is not None and minus is not None
    u = [X25519PrivateKey.from_private_bytes(x).public_key().public_bytes_raw()
         for x in (plus, minus)]
    assert u[0] == u[1]  # u(rG) = u(-rG)


@pytest.mark.parametrize("bad", [b"", b"VOT1a", b"x" * 53, b"VOT1b" + bytes(48)])
def test_bad_sender_messages_raise(bad: bytes) -> None:
    with pytest.raises(SerializationError):
        ot.receiver_respond(bad, [0, 1])


@pytest.mark.parametrize("u", [0, 1, ORDER8, ot.FIELD_P, 2**256 - 1])
def test_low_order_or_noncanonical_sender_point_raises(u: int) -> None:
    _, first = ot.sender_first()
    forged = first[:-32] + u.to_bytes(32, "little")
    with pytest.raises(SerializationError) as info:
        ot.receiver_respond(forged, [0, 1])
    assert "point" in str(info.value)


def test_bad_receiver_messages_raise() -> None:
    s_state, first = ot.sender_first()
    _, reply = ot.receiver_respond(first, [0, 1, 1])
    cases = [reply[:8], reply[:-1], reply + b"\0", b"VOT1a" + reply[5:],
             reply[:5] + (0).to_bytes(4, "little") + reply[9:],
             reply[:5] + (9999).to_bytes(4, "little") + reply[9:],
             reply[:-32] + bytes(32), reply[:-32] + ORDER8.to_bytes(32, "little")]
    for bad in cases:
        with pytest.raises(SerializationError):
            ot.sender_keys(s_state, bad)


def test_error_messages_do_not_show_secrets() -> None:
    s_state, first = ot.sender_first()
    with pytest.raises(SerializationError) as info:
        ot.sender_keys(s_state, b"VOT1b" + (1).to_bytes(4, "little") + bytes(32))
    text = str(info.value) + repr(s_state)
    assert s_state.scalar.hex() not in text and s_state.inverse.hex() not in text


@pytest.mark.parametrize("choices", [[], [2], [0] * (ot.MAX_INSTANCES + 1)])
def test_bad_choices_raise(choices: list[int]) -> None:
    _, first = ot.sender_first()
    with pytest.raises(ConfigurationError):
        ot.receiver_respond(first, choices)

"""Gilboa (OT-extension) arithmetic triples: exact correctness on 10^5 triples and squares, edge
values, each party's view and output shares uniform, negative controls (broken variants the same
statistics catch), malformed and reordered messages."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.errors import ConfigurationError, SerializationError
from veil.protocols.triples import gilboa, iknp
from veil.protocols.triples.arith import SquareShares, TripleShares

N = 100_000
RING = 1 << 64
ONES = RING - 1
EDGES = [0, 1, 2, (1 << 63) - 1, 1 << 63, ONES]
U64 = st.integers(0, ONES)


def _u(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint64)


def _triples_hold(s0: TripleShares, s1: TripleShares) -> bool:
    a, b, c = _u(s0.a) + _u(s1.a), _u(s0.b) + _u(s1.b), _u(s0.c) + _u(s1.c)
    return bool((a * b == c).all())  # numpy uint64 arithmetic wraps: the ring Z_2^64


def _squares_hold(s0: SquareShares, s1: SquareShares) -> bool:
    a = _u(s0.a) + _u(s1.a)
    return bool((a * a == _u(s0.a2) + _u(s1.a2)).all())


@pytest.fixture(scope="module")
def triples() -> tuple[TripleShares, TripleShares]:
    return gilboa.local_pair(N)


def test_triples_are_exact_on_many(triples) -> None:
    s0, s1 = triples
    for arr in (s0.a, s0.b, s0.c, s1.a, s1.b, s1.c):
        assert arr.dtype == np.int64 and arr.shape == (N,)
    assert _triples_hold(s0, s1)
    for i in range(0, N, N // 50):  # and with Python integers, no numpy involved
        a = (int(_u(s0.a)[i]) + int(_u(s1.a)[i])) % RING
        b = (int(_u(s0.b)[i]) + int(_u(s1.b)[i])) % RING
        assert (int(_u(s0.c)[i]) + int(_u(s1.c)[i])) % RING == a * b % RING


def test_squares_are_exact_on_many() -> None:
    s0, s1 = gilboa.local_pair(N, "squares")
    assert s0.a.dtype == s0.a2.dtype == np.int64 and s1.a2.shape == (N,)
    assert _squares_hold(s0, s1)
    assert _output_fails(s0, s1, "a a2", "a2") == []


@pytest.mark.parametrize("n", [1, 2, 3, 65])
def test_small_and_odd_counts(n: int) -> None:
    assert _triples_hold(*gilboa.local_pair(n))
    assert _squares_hold(*gilboa.local_pair(n, "squares"))


def test_edge_values_through_the_test_hook() -> None:
    combos = np.array(list(itertools.product(EDGES, repeat=4)), dtype=np.uint64)
    n = combos.shape[0]
    s0, s1 = gilboa.local_pair(n, a=(combos[:, 0], combos[:, 1]), b=(combos[:, 2], combos[:, 3]))
    assert (_u(s0.a) == combos[:, 0]).all() and (_u(s1.b) == combos[:, 3]).all()
    for row, c0, c1 in zip(combos.tolist(), _u(s0.c).tolist(), _u(s1.c).tolist()):
        a0, a1, b0, b1 = row
        assert (c0 + c1) % RING == (a0 + a1) * (b0 + b1) % RING
    pairs = list(itertools.product(EDGES, repeat=2))
    q0, q1 = gilboa.local_pair(len(pairs), "squares", a=([p[0] for p in pairs],
                                                         [p[1] for p in pairs]))
    for (a0, a1), v0, v1 in zip(pairs, _u(q0.a2).tolist(), _u(q1.a2).tolist()):
        assert (v0 + v1) % RING == (a0 + a1) ** 2 % RING


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(U64, U64), min_size=1, max_size=4))
def test_gilboa_identity_through_ot_extension(pairs: list[tuple[int, int]]) -> None:
    x = np.array([p[0] for p in pairs], dtype=np.uint64)
    y = np.array([p[1] for p in pairs], dtype=np.uint64)
    z_s, z_r = gilboa.local_products(x, y)
    assert [(int(s) + int(r)) % RING for s, r in zip(z_s, z_r)] == \
        [p[0] * p[1] % RING for p in pairs]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(U64, U64), min_size=1, max_size=3), st.binary(min_size=8))
def test_gilboa_algebra_on_ideal_random_ots(pairs: list[tuple[int, int]], seed: bytes) -> None:
    """The derandomisation alone, with ideal random OTs (h0, h1 arbitrary)."""
    rng = np.random.default_rng(list(seed))
    k = len(pairs)
    x = np.array([p[0] for p in pairs], dtype=np.uint64)
    y = np.array([p[1] for p in pairs], dtype=np.uint64)
    h0, h1 = (rng.integers(0, ONES, (k, 64), dtype=np.uint64, endpoint=True) for _ in "01")
    c = gilboa.ring_bits(y).reshape(k, 64)
    d, z_s = gilboa.sender_corrections(h0, h1, x)
    d = gilboa.unpack_corrections(gilboa.pack_corrections(d), k)  # truncated on the wire
    z_r = gilboa.receiver_combine(c, np.where(c.astype(bool), h1, h0), d)
    assert ((z_s + z_r) == x * y).all()


# ----------------------------------------------------------------------------- views
K = 4000
# [OT i, bit j] is on the wire: OT i sends ceil((64 - i) / 8) bytes of its correction
_SENT_BITS = np.arange(64)[None, :] < 8 * (-(-(64 - np.arange(64)) // 8))[:, None]


def _biased(bits: np.ndarray, mask: np.ndarray | None = None) -> bool:
    """Any column of the (samples, ...) 0/1 array whose ones-fraction is 6 sigma off 1/2."""
    frac = bits.mean(axis=0)
    off = np.abs(frac - 0.5) > 6 * 0.5 / np.sqrt(bits.shape[0])
    return bool(off[mask].any() if mask is not None else off.any())


def _word_bits(words: np.ndarray) -> np.ndarray:
    """(k, 64) uint64 -> (k, 64, 64) bits: [product, OT i, bit j]."""
    k = words.shape[0]
    return np.unpackbits(words.astype("<u8").view(np.uint8).reshape(k, 64, 8), axis=2,
                         bitorder="little")


def _run_with_views(monkeypatch: pytest.MonkeyPatch, x: int, y: int):
    """Triples where party 1 sends with a1 = x and party 0 receives with b0 = y; records party
    0's view of that batch (choices, received OT words, corrections) and party 1's IKNP view."""
    seen: dict[str, np.ndarray] = {}
    combine, finish = gilboa.receiver_combine, iknp.sender_finish

    def spy_combine(choices, h, d):
        if "d" not in seen:  # party 0 finishes first in local_pair
            seen.update(c=choices, h=h, d=d)
        return combine(choices, h, d)

    calls: list[int] = []

    def spy_finish(state, msg):
        calls.append(1)
        if len(calls) == 2:  # party 0's fourth() runs first and sends in batch 1: skip it
            seen["u"] = iknp.sender_view(msg, state.m)
        return finish(state, msg)

    monkeypatch.setattr(gilboa, "receiver_combine", spy_combine)
    monkeypatch.setattr(iknp, "sender_finish", spy_finish)
    fixed = np.full(K, x, dtype=np.uint64), np.full(K, y, dtype=np.uint64)
    shares = gilboa.local_pair(K, a=(None, fixed[0]), b=(fixed[1], None))
    return shares, seen


def _view_fails(seen: dict[str, np.ndarray]) -> list[str]:
    """What a party could tell about the other's fixed input from its view of one batch."""
    c, h, d = seen["c"], seen["h"], seen["d"]
    bad = []
    if _biased(_word_bits(d), _SENT_BITS):
        bad.append("corrections unbalanced")
    # the receiver's guess of the OTHER message (h0 - d = h1 - x or d + h1 = h0 + x) must be
    # independent of the message it holds (an unhashed IKNP gives h0 ^ h1 = s, a constant)
    other = np.where(c.astype(bool), d + h, h - d)
    if _biased(_word_bits(other ^ h), _SENT_BITS):
        bad.append("unchosen message correlated with the chosen one")
    u = seen["u"]  # OT sender's view: (128, 64 K) bits, must not depend on the choices
    choices = c.reshape(-1)
    if _biased(u.T) or _biased((u == choices[None, :]).T):
        bad.append("IKNP matrix depends on the choices")
    return bad


XY = [(0, 0), (0, ONES), (ONES, 0), (ONES, ONES)]


@pytest.mark.parametrize(("x", "y"), XY)
def test_each_partys_view_hides_the_others_input(monkeypatch: pytest.MonkeyPatch, x: int,
                                                 y: int) -> None:
    shares, seen = _run_with_views(monkeypatch, x, y)
    assert _triples_hold(*shares)
    assert (seen["c"] == y % 2).all()  # the view is of the batch with the fixed inputs
    assert _view_fails(seen) == []


def test_negative_control_unhashed_iknp_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iknp, "tccr_hash", lambda rows, start, tag: rows.copy())
    shares, seen = _run_with_views(monkeypatch, 0, 0)
    assert _triples_hold(*shares)  # still correct: correctness cannot see the leak ...
    assert "unchosen message correlated with the chosen one" in _view_fails(seen)  # ... this can


def test_negative_control_unmasked_corrections_are_detected(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = gilboa.sender_corrections

    def unmasked(h0, h1, x):
        d, share = real(h0, h1, x)
        return np.broadcast_to(x[:, None], d.shape).copy(), share  # d = x: no one-time pad

    monkeypatch.setattr(gilboa, "sender_corrections", unmasked)
    _, seen = _run_with_views(monkeypatch, 0, ONES)
    assert "corrections unbalanced" in _view_fails(seen)


# ----------------------------------------------------------------------------- outputs
def _share_bits(s, keys: str) -> dict[str, np.ndarray]:
    return {k: np.unpackbits(_u(getattr(s, k)).astype("<u8").view(np.uint8).reshape(-1, 8),
                             axis=1, bitorder="little") for k in keys.split()}


def _output_fails(s0, s1, keys: str = "a b c", tied: str = "c") -> list[str]:
    b0, b1 = _share_bits(s0, keys), _share_bits(s1, keys)
    bad = [f"{k}{p} unbalanced" for p, s in enumerate((b0, b1)) for k, v in s.items()
           if _biased(v)]
    for (k0, v0), (k1, v1) in itertools.product(b0.items(), b1.items()):
        if (k0, k1) != (tied, tied) and _biased(v0 == v1):  # c0 + c1 = ab ties only c0, c1
            bad.append(f"{k0}0 correlated with {k1}1")
    return bad


def test_output_shares_are_uniform_and_independent(triples) -> None:
    assert _output_fails(*triples) == []


def _same_for_everyone(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)


@pytest.mark.parametrize(("rng", "symptom"), [
    (lambda n: np.zeros(n, dtype=np.uint64), "a0 unbalanced"),
    (_same_for_everyone, "a0 correlated with a1"),
])
def test_negative_control_broken_share_randomness_is_detected(monkeypatch: pytest.MonkeyPatch,
                                                               rng, symptom: str) -> None:
    monkeypatch.setattr(gilboa, "random_ring", rng)
    s0, s1 = gilboa.local_pair(5000)
    assert _triples_hold(s0, s1)
    assert symptom in _output_fails(s0, s1)


# ----------------------------------------------------------------------------- messages
def _parties(n: int = 3, kind: str = "triples"):
    return gilboa.TripleParty(0, n, kind), gilboa.TripleParty(1, n, kind)  # type: ignore[arg-type]


def test_crossed_truncated_or_foreign_messages_raise() -> None:
    p0, p1 = _parties()
    f0, f1 = p0.first(), p1.first()
    for bad in (f0, f1[:5], b"", b"XXXX" + f1[4:], bytearray(3), "text"):
        with pytest.raises(SerializationError):
            p0.second(bad)  # type: ignore[arg-type]
    for other in (gilboa.TripleParty(0, 4), gilboa.TripleParty(0, 3, "squares")):
        other.first()
        with pytest.raises(SerializationError):
            other.second(f1)  # another count, another kind
    s0 = p0.second(f1)  # the rejected attempts did not move the step
    s1 = p1.second(f0)
    with pytest.raises(SerializationError):
        p0.third(f1)  # step 1 message where step 2 is due
    t0, t1 = p0.third(s1), p1.third(s0)
    with pytest.raises(SerializationError):
        p0.fourth(t1[:-1])
    d0, d1 = p0.fourth(t1), p1.fourth(t0)
    for bad in (d1[:-1], d1 + b"\0", d0, t1):
        with pytest.raises(SerializationError):
            p0.finish(bad)
    assert _triples_hold(p0.finish(d1), p1.finish(d0))


def test_empty_batch_of_a_single_square_refuses_padding() -> None:
    p0, p1 = _parties(1, "squares")  # party 1 receives in no batch
    f0, f1 = p0.first(), p1.first()
    with pytest.raises(SerializationError):
        p0.second(f1 + b"\0")
    s0, s1 = p0.second(f1), p1.second(f0)
    t0, t1 = p0.third(s1), p1.third(s0)
    d0, d1 = p0.fourth(t1), p1.fourth(t0)
    with pytest.raises(SerializationError):
        p1.finish(d0 + b"\0")
    assert _squares_hold(p0.finish(d1), p1.finish(d0))


def test_corrections_parser_checks_the_size() -> None:
    with pytest.raises(SerializationError):
        gilboa.unpack_corrections(bytes(gilboa.CORRECTION_BYTES - 1), 1)
    assert gilboa.CORRECTION_BYTES == 288


def test_steps_out_of_order_and_after_the_end_raise() -> None:
    p = gilboa.TripleParty(0, 1)
    with pytest.raises(ConfigurationError):
        p.finish(b"")
    p.first()
    with pytest.raises(ConfigurationError):
        p.first()
    p0, p1 = _parties(1)
    f0, f1 = p0.first(), p1.first()
    s0, s1 = p0.second(f1), p1.second(f0)
    t0, t1 = p0.third(s1), p1.third(s0)
    _, d1 = p0.fourth(t1), p1.fourth(t0)
    p0.finish(d1)
    with pytest.raises(ConfigurationError):
        p0.finish(d1)


@pytest.mark.parametrize("kwargs", [
    {"party": 2, "n": 1}, {"party": True, "n": 1}, {"party": 0, "n": 0},
    {"party": 0, "n": 2.0}, {"party": 0, "n": gilboa.MAX_COUNT + 1},
    {"party": 0, "n": 1, "kind": "cubes"},
    {"party": 0, "n": 1, "kind": "squares", "b": [1]},
    {"party": 0, "n": 2, "a": [1]}, {"party": 0, "n": 1, "a": np.array([1.5])},
    {"party": 0, "n": 1, "a": [True]},
])
def test_bad_parameters_raise(kwargs) -> None:
    with pytest.raises(ConfigurationError):
        gilboa.TripleParty(**kwargs)


def test_local_products_checks_shapes() -> None:
    with pytest.raises(ConfigurationError):
        gilboa.local_products(np.zeros(2, np.uint64), np.zeros(3, np.uint64))
    with pytest.raises(ConfigurationError):
        gilboa.local_products([-1.5], [2])
    z_s, z_r = gilboa.local_products([-1], [ONES])  # Python ints, reduced mod 2^64
    assert (z_s + z_r).tolist() == [1]

"""Binary Beaver triples: the AND relation on 10^5 words, uniform and independent shares,
negative controls (a broken generator still passes the relation but fails the statistics)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from veil.errors import ConfigurationError, SerializationError
from veil.protocols.triples import binary, iknp

WORDS = 100_000


@pytest.fixture(scope="module")
def pair() -> tuple[binary.BinaryTriples, binary.BinaryTriples]:
    return binary.local_pair(WORDS)


def _bits(words: np.ndarray) -> np.ndarray:
    return np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little")


def _relation_holds(t0: binary.BinaryTriples, t1: binary.BinaryTriples) -> bool:
    return bool((((t0.a ^ t1.a) & (t0.b ^ t1.b)) == (t0.c ^ t1.c)).all())


def _biased(x: np.ndarray, y: np.ndarray | None = None, expect: float = 0.5) -> bool:
    """Ones-fraction of x (or agreement of x with y) farther than 6 sigma from ``expect``."""
    v = x if y is None else (x == y)
    sigma = np.sqrt(expect * (1 - expect) / v.size)
    return bool(abs(v.mean() - expect) > 6 * sigma)


def _shares(t: binary.BinaryTriples) -> dict[str, np.ndarray]:
    return {"a": _bits(t.a), "b": _bits(t.b), "c": _bits(t.c)}


def _statistics_fail(t0: binary.BinaryTriples, t1: binary.BinaryTriples) -> list[str]:
    s0, s1 = _shares(t0), _shares(t1)
    bad = [f"{k}{p} unbalanced" for p, s in enumerate((s0, s1)) for k, v in s.items()
           if _biased(v)]
    for (k0, v0), (k1, v1) in itertools.product(s0.items(), s1.items()):
        # c0 ^ c1 = a & b is 0 with probability 3/4; every other pair is independent
        if _biased(v0, v1, 0.75 if k0 == k1 == "c" else 0.5):
            bad.append(f"{k0}0 correlated with {k1}1")
    return bad


def test_and_relation_on_many_words(pair) -> None:
    t0, t1 = pair
    assert t0.n_words == t1.n_words == WORDS
    assert t0.a.dtype == np.uint64 and t0.a.shape == (WORDS,)
    assert _relation_holds(t0, t1)


def test_shares_are_uniform_and_independent(pair) -> None:
    assert _statistics_fail(*pair) == []


def test_each_partys_view_is_uniform(pair) -> None:
    for t in pair:
        s = _shares(t)
        patterns = s["a"] * 4 + s["b"] * 2 + s["c"]
        assert stats.chisquare(np.bincount(patterns, minlength=8)).pvalue > 1e-6


def _same_rng_for_everyone(n: int) -> np.ndarray:
    """Broken RNG: both parties draw the same 'random' bits."""
    return np.random.default_rng(7).integers(0, 2, n, dtype=np.uint8)


@pytest.mark.parametrize(("rng", "symptom"), [
    (lambda n: np.zeros(n, dtype=np.uint8), "a0 unbalanced"),
    (_same_rng_for_everyone, "a0 correlated with a1"),
])
def test_negative_control_broken_randomness_is_detected(monkeypatch: pytest.MonkeyPatch, rng,
                                                        symptom: str) -> None:
    monkeypatch.setattr(iknp, "random_bits", rng)
    t0, t1 = binary.local_pair(2_000)
    assert _relation_holds(t0, t1)  # correctness alone cannot see the bug ...
    assert symptom in _statistics_fail(t0, t1)  # ... the statistics do


def test_negative_control_wrong_c_share_is_detected(pair) -> None:
    t0, t1 = pair
    broken = binary.BinaryTriples(a=t1.a, b=t1.b, c=t1.c ^ np.uint64(1 << 5))
    assert not _relation_holds(t0, broken)


@settings(max_examples=8, deadline=None)
@given(st.integers(min_value=1, max_value=4))
def test_small_batches_satisfy_the_relation(n_words: int) -> None:
    assert _relation_holds(*binary.local_pair(n_words))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=64, max_size=64).map(np.array))
def test_pack_bits_puts_element_i_at_bit_i(bits: np.ndarray) -> None:
    (word,) = binary.pack_bits(bits)
    assert [(int(word) >> i) & 1 for i in range(64)] == bits.tolist()


def test_crossed_replayed_or_truncated_messages_raise() -> None:
    p0, p1 = binary.TripleParty(0, 3), binary.TripleParty(1, 3)
    f0, f1 = p0.first(), p1.first()
    with pytest.raises(SerializationError):
        p0.second(f0)  # its own message fed back
    with pytest.raises(SerializationError):
        p1.second(f0[:3])
    p0 = binary.TripleParty(0, 3)
    f0 = p0.first()
    _, s1 = p0.second(f1), p1.second(f0)
    with pytest.raises(SerializationError):
        p0.third(f1)  # step 1 message where step 2 is due
    p0b = binary.TripleParty(0, 3)
    p0b.first()
    with pytest.raises(SerializationError):
        p0b.second(s1)


def test_steps_out_of_order_raise() -> None:
    p = binary.TripleParty(0, 1)
    with pytest.raises(ConfigurationError):
        p.finish(b"")
    p.first()
    with pytest.raises(ConfigurationError):
        p.first()


def test_a_finished_party_refuses_more_steps() -> None:
    p0, p1 = binary.TripleParty(0, 1), binary.TripleParty(1, 1)
    f0, f1 = p0.first(), p1.first()
    s0, s1 = p0.second(f1), p1.second(f0)
    _, t1 = p0.third(s1), p1.third(s0)
    p0.finish(t1)
    with pytest.raises(ConfigurationError):
        p0.finish(t1)


@pytest.mark.parametrize(("party", "n_words"), [(2, 1), (-1, 1), (0, 0), (1, 2.0),
                                                (0, binary.MAX_WORDS + 1)])
def test_bad_parameters_raise(party, n_words) -> None:
    with pytest.raises(ConfigurationError):
        binary.TripleParty(party, n_words)

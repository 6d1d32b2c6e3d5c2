"""Dealer-free arithmetic Beaver triples (veil.protocols.triples.arith): plaintext oracles,
known answers, the decrypting party's view, re-randomisation, malformed messages, packing."""

from __future__ import annotations

import hashlib
import itertools
import secrets

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2_contingency

from veil.errors import ConfigurationError, InsecureParametersError, SerializationError
from veil.he.paillier import PaillierKeyPair, PaillierPrivateKey, PaillierPublicKey
from veil.protocols.triples import arith
from veil.protocols.triples.arith import (
    Evaluator,
    KeyHolder,
    SquareShares,
    TripleShares,
    local_pair,
    pack_slots,
    slot_bits,
    slots_per_ciphertext,
    unpack_slots,
)

RING = 1 << 64
EDGES = [0, 1, 2, 1 << 63, (1 << 63) - 1, RING - 1, RING - 2]


@pytest.fixture(scope="module")
def kp1024() -> PaillierKeyPair:
    return PaillierKeyPair.generate(1024, allow_insecure=True)


def u(x: np.ndarray) -> list[int]:
    return [int(v) % RING for v in x.tolist()]


def check_triples(s0: TripleShares, s1: TripleShares) -> None:
    a = [(x + y) % RING for x, y in zip(u(s0.a), u(s1.a))]
    b = [(x + y) % RING for x, y in zip(u(s0.b), u(s1.b))]
    c = [(x + y) % RING for x, y in zip(u(s0.c), u(s1.c))]
    assert c == [x * y % RING for x, y in zip(a, b)]
    for arr in (s0.a, s0.b, s0.c, s1.a, s1.b, s1.c):
        assert arr.dtype == np.int64


def check_squares(s0: SquareShares, s1: SquareShares) -> None:
    a = [(x + y) % RING for x, y in zip(u(s0.a), u(s1.a))]
    a2 = [(x + y) % RING for x, y in zip(u(s0.a2), u(s1.a2))]
    assert a2 == [x * x % RING for x in a]


def run(kp, count, *, kind="triples", sigma=40, rb0=None, rb1=None):
    p0 = KeyHolder(count, kind=kind, keypair=kp, statistical_bits=sigma, allow_insecure=True,
                   randbits=rb0)
    p1 = Evaluator(count, kind=kind, statistical_bits=sigma, allow_insecure=True, randbits=rb1)
    req = p0.request()
    rep = p1.respond(req)
    return p0, p1, req, rep


# ----------------------------------------------------------------------------- (1) correctness
def test_thousands_of_triples_and_squares_are_correct(kp1024) -> None:
    s0, s1 = local_pair(3000, keypair=kp1024, allow_insecure=True)
    check_triples(s0, s1)
    q0, q1 = local_pair(2000, keypair=kp1024, kind="squares", allow_insecure=True)
    check_squares(q0, q1)
    # shares look uniform: not all equal, both signs present
    assert len(set(s0.c.tolist())) == 3000 and (s1.c < 0).any() and (s1.c > 0).any()


def edge_randbits(edges):
    cycle = itertools.cycle(edges)

    def rb(bits: int) -> int:
        if bits == 64:
            return next(cycle)
        return secrets.choice([0, 1, (1 << bits) - 1, secrets.randbits(bits)])

    return rb


@pytest.mark.parametrize("kind", ["triples", "squares"])
def test_edge_values_are_correct(kp1024, kind) -> None:
    rb0 = edge_randbits(EDGES)
    rb1 = edge_randbits(list(reversed(EDGES)) + [0, RING - 1])  # other phase: all pairs meet
    for _ in range(3):
        p0, p1, _, rep = run(kp1024, 60, kind=kind, rb0=rb0, rb1=rb1)
        s0 = p0.finish(rep)
        (check_triples if kind == "triples" else check_squares)(s0, p1.shares)
    assert int(s0.a[0]) % RING in EDGES


def test_default_3072_bit_key_small_batch() -> None:
    s0, s1 = local_pair(20)
    check_triples(s0, s1)
    assert slots_per_ciphertext(3072) == 18 and slots_per_ciphertext(2048) == 12


# ----------------------------------------------------------------------------- (2) known answer
def det(tag: str):
    ctr = [0]

    def rb(bits: int) -> int:
        ctr[0] += 1
        h = b"".join(hashlib.sha256(f"{tag}:{ctr[0]}:{i}".encode()).digest()
                     for i in range((bits + 255) // 256))
        return int.from_bytes(h, "big") >> (len(h) * 8 - bits)

    return rb


def tiny_keypair() -> PaillierKeyPair:
    p = int(gmpy2.next_prime(2**255 + 2**200 + 12345))
    q = int(gmpy2.next_prime(2**256 - 2**190 + 999))
    pk = PaillierPublicKey(p * q, allow_insecure=True)
    return PaillierKeyPair(pk, PaillierPrivateKey(pk, p, q))


def test_known_answer() -> None:
    kp = tiny_keypair()
    p0, p1, _, rep = run(kp, 5, rb0=det("p0"), rb1=det("p1"))
    s0, s1 = p0.finish(rep), p1.shares
    assert [s0.a.tolist(), s0.b.tolist(), s0.c.tolist()] == [
        [-8141237588232220756, 6104338928383287832, -6751603864104181166, 6638373435209571660,
         6961678951035049872],
        [-3882863951452387151, 7119189462069895800, 8678776291856766776, -6001901955120072803,
         5554116051153193985],
        [-7104837600253613767, -4483756024255580303, -6150600460431049172, 4343371294846452600,
         -6620764685446429223]]
    assert [s1.a.tolist(), s1.b.tolist(), s1.c.tolist()] == [
        [2660052933477658488, 1979779524826455879, 3726980755091966246, 4426089184763979772,
         4277824163738984760],
        [377392369070134377, -8694349980290865503, -3895025175966014636, -8993900116758438974,
         -5701204711335035194],
        [-8312624927142964113, 6156831718784844246, -1768493079788669068, -5325256732727817664,
         3947067175157607839]]
    check_triples(s0, s1)


# ----------------------------------------------------------------------------- (3) the view
def view_pvalue(kp, sigma: int, count: int = 400) -> float:
    """p-value of a chi-square test: do the top bits of party 0's decrypted masked values
    depend on party 1's inputs (all zeros vs all ones)?"""
    mask_bits = 129 + sigma
    rows = []
    for fixed in (0, RING - 1):
        p0, _, _, rep = run(kp, count, sigma=sigma, rb1=lambda b, f=fixed: f if b == 64
                            else secrets.randbits(b))
        top = [v >> (mask_bits - 3) for v in p0._masked_values(rep)]
        rows.append([top.count(t) for t in range(16)])
    table = np.array(rows)
    table = table[:, table.sum(axis=0) > 0]
    return float(chi2_contingency(table)[1])


def test_decrypting_party_view_is_independent_of_evaluator_inputs(kp1024) -> None:
    assert view_pvalue(kp1024, 40) > 1e-4


def test_negative_control_without_statistical_margin_leaks(kp1024) -> None:
    assert view_pvalue(kp1024, 0) < 1e-6


def test_negative_control_without_mask_reveals_the_cross_term(kp1024) -> None:
    def no_mask(bits: int) -> int:
        return 0 if bits != 64 else 5

    p0, _, _, rep = run(kp1024, 8, rb1=no_mask)
    v = p0._masked_values(rep)
    assert v == [(a + b) * 5 for a, b in zip(p0._a, p0._b)]


# ----------------------------------------------------------------------------- (4) rerandomised
def test_reply_is_rerandomised(kp1024) -> None:
    p0a, _, req, rep1 = run(kp1024, 6, rb0=det("x"), rb1=det("y"))
    p0b = KeyHolder(6, keypair=kp1024, allow_insecure=True, randbits=det("x"))
    p1b = Evaluator(6, allow_insecure=True, randbits=det("y"))
    rep2 = p1b.respond(req)  # same request, same evaluator inputs and masks
    assert rep1 != rep2
    assert p0a._masked_values(rep1) == p0b._masked_values(rep2)
    # and not the deterministic product Enc(a0)^b1 · Enc(b0)^a1 · (1 + R n)
    n = kp1024.public_key.n
    n2, width = n * n, ((n * n).bit_length() + 7) // 8
    off = arith.request_size(n, 0)  # header and modulus
    cs = [int.from_bytes(req[off + i * width: off + (i + 1) * width], "big") for i in range(12)]
    rb = det("y")
    a1, b1 = [rb(64) for _ in range(6)], [rb(64) for _ in range(6)]
    r = [rb(169) for _ in range(6)]
    acc = (1 + pack_slots(r, slot_bits(40)) * n) % n2
    for i in range(6):
        acc = acc * pow(cs[i], b1[i], n2) * pow(cs[6 + i], a1[i], n2) % n2
    assert int.from_bytes(rep1[-width:], "big") != acc


# ----------------------------------------------------------------------------- (5) malformed
@pytest.fixture(scope="module")
def exchange(kp1024):
    p0 = KeyHolder(10, keypair=kp1024, allow_insecure=True)
    req = p0.request()
    rep = Evaluator(10, allow_insecure=True).respond(req)
    return req, rep


def no_heavy_work(monkeypatch) -> None:
    def boom(*_a, **_k):
        raise AssertionError("heavy work before validation")

    monkeypatch.setattr(arith, "_draw", boom)
    monkeypatch.setattr(arith, "_zero_ciphertexts", boom)


def corrupt_ciphertext(msg: bytes, width: int, value: int) -> bytes:
    return msg[: len(msg) - width] + value.to_bytes(width, "big")


def test_malformed_requests_are_rejected_before_work(kp1024, exchange, monkeypatch) -> None:
    req, _ = exchange
    n = kp1024.public_key.n
    width = ((n * n).bit_length() + 7) // 8
    bad = [b"", req[:5], req[:-1], req + b"\0", b"XXXX" + req[4:],
           corrupt_ciphertext(req, width, 0), corrupt_ciphertext(req, width, n * n),
           corrupt_ciphertext(req, width, 256**width - 1), corrupt_ciphertext(req, width, n)]
    no_heavy_work(monkeypatch)
    for msg in bad:
        with pytest.raises(SerializationError):
            Evaluator(10, allow_insecure=True).respond(msg)
    with pytest.raises(SerializationError, match="count"):
        Evaluator(11, allow_insecure=True).respond(req)  # header says 10
    with pytest.raises(SerializationError, match="kind"):
        Evaluator(10, kind="squares", allow_insecure=True).respond(req)
    with pytest.raises(SerializationError, match="key"):  # 1024-bit key refused by default
        Evaluator(10).respond(req)
    with pytest.raises(SerializationError):
        Evaluator(10, allow_insecure=True).respond("text")  # type: ignore[arg-type]


def test_malformed_replies_are_rejected(kp1024, exchange) -> None:
    _, rep = exchange
    n = kp1024.public_key.n
    width = ((n * n).bit_length() + 7) // 8
    p0 = KeyHolder(10, keypair=kp1024, allow_insecure=True)
    for msg in [b"", rep[:-1], rep + b"\0", b"XXXX" + rep[4:],
                corrupt_ciphertext(rep, width, 0), corrupt_ciphertext(rep, width, n * n + 1)]:
        with pytest.raises(SerializationError):
            p0.finish(msg)
    with pytest.raises(SerializationError, match="count"):
        KeyHolder(11, keypair=kp1024, allow_insecure=True).finish(rep)
    # a valid ciphertext of a plaintext that overflows the slots is refused after decryption
    big = kp1024.encrypt(np.array([1]), max_abs=2.0).to_phe()[0]
    over = pow(int(big.ciphertext(be_secure=False)), 1 << 1000, n * n)
    with pytest.raises(SerializationError, match="packed slots"):
        p0.finish(corrupt_ciphertext(rep, width, over))


def test_parameters_are_checked(kp1024) -> None:
    with pytest.raises(InsecureParametersError):
        KeyHolder(4, keypair=kp1024, statistical_bits=20)
    with pytest.raises(InsecureParametersError):
        Evaluator(4, statistical_bits=0)
    with pytest.raises(InsecureParametersError):
        KeyHolder(4, key_bits=1024)
    for bad in (0, -1, arith.MAX_COUNT + 1, True, 2.5):
        with pytest.raises(ConfigurationError):
            Evaluator(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Evaluator(4, kind="cubes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        _ = Evaluator(4).shares
    with pytest.raises(ConfigurationError):
        slots_per_ciphertext(160)


def test_parties_are_single_use(kp1024) -> None:
    p0, p1, req, rep = run(kp1024, 3)
    p0.finish(rep)
    with pytest.raises(ConfigurationError):
        p0.finish(rep)
    with pytest.raises(ConfigurationError):
        p1.respond(req)


# ----------------------------------------------------------------------------- (6) packing
slot_lists = st.integers(min_value=1, max_value=250).flatmap(
    lambda s: st.tuples(st.just(s), st.lists(st.integers(0, (1 << s) - 1), min_size=1,
                                             max_size=20)))


@settings(max_examples=200, deadline=None)
@given(slot_lists)
def test_pack_round_trip(case) -> None:
    bits, values = case
    m = pack_slots(values, bits)
    assert 0 <= m < 1 << (bits * len(values))
    assert unpack_slots(m, bits, len(values)) == values


@settings(max_examples=200, deadline=None)
@given(slot_lists, st.data())
def test_packed_sums_do_not_carry(case, data) -> None:
    bits, v = case
    w = [data.draw(st.integers(0, (1 << bits) - 1 - x)) for x in v]  # v_j + w_j < 2^bits
    assert unpack_slots(pack_slots(v, bits) + pack_slots(w, bits), bits, len(v)) == \
        [x + y for x, y in zip(v, w)]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 128), st.integers(256, 8192))
def test_layout_fits_below_the_modulus(sigma, n_bits) -> None:
    s = slot_bits(sigma)
    if n_bits - 2 < s:
        return
    k = slots_per_ciphertext(n_bits, sigma)
    worst = 2 * (RING - 1) ** 2 + (1 << (129 + sigma)) - 1
    assert worst < 1 << s and k * s <= n_bits - 2 and (k + 1) * s > n_bits - 2


@given(st.integers(1, 64))
def test_out_of_range_slots_are_refused(bits) -> None:
    with pytest.raises(ConfigurationError):
        pack_slots([1 << bits], bits)
    with pytest.raises(ConfigurationError):
        pack_slots([-1], bits)
    with pytest.raises(ConfigurationError):
        unpack_slots(1 << (2 * bits), bits, 2)

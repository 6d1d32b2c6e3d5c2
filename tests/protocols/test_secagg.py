"""SecAgg masking: exact sums under dropouts, aborts, authentication, never-both rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.errors import (
    AggregationAborted,
    ConfigurationError,
    InsecureParametersError,
    SerializationError,
)
from veil.fl.aggregation import MaskingAggregator, secure_sum
from veil.protocols.secagg import (
    PHASES,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    generate_identities,
)
from veil.protocols.secagg.messages import UnmaskShares

N, D, T = 10, 257, 7


def _make_clients(cfg: SecAggConfig, server: SecAggServer) -> dict[int, SecAggClient]:
    keys, directory = generate_identities(range(cfg.num_clients))
    return {c: SecAggClient(c, cfg, round_id=server.round_id, server_public_key=server.public_key,
                            identity_key=keys[c], directory=directory)
            for c in range(cfg.num_clients)}


def _consistency(server: SecAggServer, clients: dict, survivors: bytes,
                 skip: set[int] = frozenset()) -> bytes:
    for c in server._u3:
        if c not in skip:
            server.receive_consistency(clients[c].consistency(survivors))
    return server.close_consistency()


@pytest.fixture(scope="module")
def updates() -> dict[int, np.ndarray]:
    gen = np.random.default_rng(7)  # test data, not key material
    return {c: gen.normal(0.0, 1.0, D) * (c + 1) for c in range(N)}


def _expected_q(agg: MaskingAggregator, updates: dict, ids: tuple[int, ...]) -> np.ndarray:
    q = agg.config.quantizer
    return sum(q.quantize(updates[c])[0].astype(np.uint64) for c in ids)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 0.3])
def test_sum_is_exact_with_dropouts_below_threshold(updates: dict, phase: str,
                                                    rate: float) -> None:
    agg = MaskingAggregator(num_clients=N, vector_length=D, clip=4.0, threshold=T)
    dropped = list(range(1, N, 3))[: round(rate * N)]
    res = agg.aggregate(updates, dropouts={phase: dropped})
    late = phase in ("consistency", "unmask")  # they sent their masked inputs
    expected_survivors = tuple(c for c in range(N) if late or c not in dropped)
    assert res.survivors == expected_survivors
    assert np.array_equal(res.quantized_total, _expected_q(agg, updates, res.survivors))
    plain = sum(np.clip(updates[c], -4.0, 4.0) for c in res.survivors)
    tol = len(res.survivors) * agg.config.quantizer.step / 2 + 1e-9
    assert np.max(np.abs(res.total - plain)) <= tol
    assert res.clipped == sum(int(np.sum(np.abs(updates[c]) > 4.0)) for c in res.survivors)
    if late:
        assert res.dropped[phase] == tuple(dropped)


def test_mixed_dropouts_across_phases(updates: dict) -> None:
    agg = MaskingAggregator(num_clients=N, vector_length=D, clip=4.0, threshold=T)
    res = agg.aggregate(updates, dropouts={"share": [0], "masked": [5], "unmask": [9]})
    assert res.survivors == (1, 2, 3, 4, 6, 7, 8, 9)
    assert res.dropped == {"advertise": (), "share": (0,), "masked": (5,), "consistency": (),
                           "unmask": (9,)}
    assert np.array_equal(res.quantized_total, _expected_q(agg, updates, res.survivors))


@pytest.mark.parametrize("phase", PHASES)
def test_round_aborts_above_the_dropout_threshold(updates: dict, phase: str) -> None:
    agg = MaskingAggregator(num_clients=N, vector_length=D, clip=4.0, threshold=T)
    with pytest.raises(AggregationAborted, match="below the threshold"):
        agg.aggregate(updates, dropouts={phase: [0, 2, 4, 6]})


def test_secure_defaults_and_threshold_policy() -> None:
    cfg = SecAggConfig(10, 5, 1.0)
    assert cfg.threshold == 6 and cfg.ring_bits == 32
    with pytest.raises(InsecureParametersError, match="allow_insecure"):
        SecAggConfig(10, 5, 1.0, threshold=5)
    assert SecAggConfig(10, 5, 1.0, threshold=5, allow_insecure=True).threshold == 5
    with pytest.raises(ConfigurationError, match="wrap"):
        SecAggConfig(1000, 10**7, 1.0)


def test_ring_never_wraps_at_the_extremes() -> None:
    n, d = 6, 31
    agg = MaskingAggregator(num_clients=n, vector_length=d, clip=1.0, ring_bits=20)
    ups = {c: np.full(d, 5.0 if c % 2 else -5.0) for c in range(n)}
    ups[0][:] = 1.0
    res = agg.aggregate(ups)
    assert res.clipped == (n - 1) * d
    assert np.allclose(res.total, 1.0 + 3 * 1.0 - 2 * 1.0)
    top = secure_sum({c: np.full(d, 9.0) for c in range(n)}, clip=1.0, ring_bits=20)
    assert np.array_equal(top.quantized_total, np.full(d, n * agg.config.quantizer.levels))
    assert np.allclose(top.total, n)


def test_sixty_four_bit_ring() -> None:
    ups = {c: np.linspace(-1, 1, 9) * c for c in range(4)}
    res = secure_sum(ups, clip=10.0, ring_bits=64, dropouts={"masked": [3]})
    assert np.allclose(res.total, np.linspace(-1, 1, 9) * 3, atol=1e-12)


def test_a_single_masked_input_looks_uniform(updates: dict) -> None:
    """What the server sees from one client is indistinguishable from random bytes, although
    the quantized update itself is far from uniform."""
    cfg = SecAggConfig(3, 20_000, 4.0)
    server = SecAggServer(cfg)
    cl = _make_clients(cfg, server)
    for c in cl:
        server.receive_advertise(cl[c].advertise())
    roster = server.close_advertise()
    for c in cl:
        server.receive_shares(cl[c].share_keys(roster))
    deliveries = server.close_shares()
    x = np.zeros(20_000)  # all-zero update: quantized bytes are maximally non-uniform
    msg = cl[0].masked_input(x, deliveries[0])
    payload = np.frombuffer(msg[-32 - 80_004 - 32 : -64], dtype=np.uint8)
    counts = np.bincount(payload, minlength=256)
    chi2 = float(((counts - payload.size / 256) ** 2 / (payload.size / 256)).sum())
    assert chi2 < 380.0
    q = cfg.quantizer.quantize(x)[0]
    plain_counts = np.bincount(q.view(np.uint8), minlength=256)
    assert float(((plain_counts - q.nbytes / 256) ** 2 / (q.nbytes / 256)).sum()) > 380.0


class _Round:
    """A round driven by hand, for adversarial message tests."""

    def __init__(self, n: int = 5, d: int = 16) -> None:
        self.cfg = SecAggConfig(n, d, 2.0)
        self.server = SecAggServer(self.cfg)
        self.clients = _make_clients(self.cfg, self.server)
        self.x = {c: np.full(d, 0.1 * c) for c in range(n)}

    def to_masked(self) -> dict[int, bytes]:
        s, cl = self.server, self.clients
        for c in cl:
            s.receive_advertise(cl[c].advertise())
        roster = s.close_advertise()
        for c in cl:
            s.receive_shares(cl[c].share_keys(roster))
        self.deliveries = s.close_shares()
        return {c: cl[c].masked_input(self.x[c], self.deliveries[c]) for c in cl}


def test_replayed_duplicated_and_forged_submissions_are_rejected() -> None:
    old, new = _Round(), _Round()
    old_msgs, new_msgs = old.to_masked(), new.to_masked()
    s = new.server
    with pytest.raises(SerializationError, match="replay"):
        s.receive_masked(old_msgs[0])  # from another round
    s.receive_masked(new_msgs[0])
    with pytest.raises(SerializationError, match="duplicate"):
        s.receive_masked(new_msgs[0])
    forged = bytearray(new_msgs[1])
    forged[-40] ^= 1  # flip a bit of the payload and fix nothing else
    with pytest.raises(SerializationError):
        s.receive_masked(bytes(forged))
    # A well-formed message whose tag is wrong: re-sign client 1's vector under a wrong key.
    from veil.he.serialize import pack, unpack
    env = unpack(new_msgs[1], kind="veil.secagg.masked")
    bad = pack(env.kind, env.body[:-32] + bytes(32), params_hash=env.params_hash)
    with pytest.raises(SerializationError, match="authentication tag"):
        s.receive_masked(bad)
    for c in range(1, 5):  # state unchanged by the rejected messages: the round still works
        s.receive_masked(new_msgs[c])
    req = _consistency(s, new.clients, s.close_masked())
    for c in range(5):
        s.receive_unmask(new.clients[c].unmask(req))
    res = s.finish()
    assert np.allclose(res.total, sum(new.x.values()), atol=5 * new.cfg.quantizer.step)
    with pytest.raises(SerializationError, match="round is in finished"):
        s.receive_masked(new_msgs[0])


def test_server_never_gets_seed_and_key_shares_of_one_client() -> None:
    r = _Round()
    msgs = r.to_masked()
    for c in (0, 1, 2, 3):  # client 4 drops after sharing keys
        r.server.receive_masked(msgs[c])
    survivors = r.server.close_masked()
    # Client 4 computed its masked input (lost on the way): listed as dropped, it refuses.
    with pytest.raises(AggregationAborted, match="as dropped although"):
        r.clients[4].consistency(survivors)
    req = _consistency(r.server, r.clients, survivors)
    answer = r.clients[0].unmask(req)
    parsed = UnmaskShares.from_bytes(answer, params_hash=r.cfg.params_hash, max_bytes=10**6)
    assert set(parsed.seed_shares) == {0, 1, 2, 3} and set(parsed.key_shares) == {4}
    with pytest.raises(ConfigurationError, match="out of order"):
        r.clients[0].unmask(req)  # a second request is refused
    lying = _Round()
    lmsgs = lying.to_masked()
    for c in (0, 1, 2, 3, 4):
        lying.server.receive_masked(lmsgs[c])
    from veil.protocols.secagg.messages import SurvivorList
    fake = SurvivorList(lying.server.round_id, (1, 2, 3, 4)).to_bytes(lying.cfg.params_hash)
    with pytest.raises(AggregationAborted, match="as dropped although"):
        lying.clients[0].consistency(fake)  # client 0 did send: its key would expose it
    # Server side: a response carrying a survivor's key share is refused before it is stored.
    from dataclasses import replace
    greedy = replace(parsed, key_shares={**parsed.key_shares, 1: parsed.seed_shares[1]})
    with pytest.raises(SerializationError, match="exactly"):
        r.server.receive_unmask(r.clients[0]._sign(greedy))  # validly signed, still refused
    r.server.receive_unmask(answer)  # the honest answer is accepted afterwards


def test_tampered_share_ciphertext_is_detected_by_the_recipient() -> None:
    r = _Round()
    s, cl = r.server, r.clients
    for c in cl:
        s.receive_advertise(cl[c].advertise())
    roster = s.close_advertise()
    for c in cl:
        s.receive_shares(cl[c].share_keys(roster))
    deliveries = s.close_shares()
    from veil.protocols.secagg.messages import ShareDelivery
    d = ShareDelivery.from_bytes(deliveries[0], params_hash=r.cfg.params_hash, max_bytes=10**6)
    cts = dict(d.ciphertexts)
    cts[1] = cts[1][:-1] + bytes([cts[1][-1] ^ 1])
    bad = ShareDelivery(d.round_id, 0, cts).to_bytes(r.cfg.params_hash)
    with pytest.raises(SerializationError, match="failed authentication"):
        cl[0].masked_input(r.x[0], bad)


def test_bad_input_is_rejected_before_any_work(updates: dict) -> None:
    agg = MaskingAggregator(num_clients=N, vector_length=D, clip=4.0)
    bad = dict(updates)
    bad[3] = np.full(D, np.nan)
    with pytest.raises(ConfigurationError, match="NaN"):
        agg.aggregate(bad)
    with pytest.raises(ConfigurationError, match="every client id"):
        agg.aggregate({0: updates[0]})
    with pytest.raises(ConfigurationError, match="dropout phase"):
        agg.aggregate(updates, dropouts={"later": [1]})
    with pytest.raises(SerializationError):
        SecAggServer(agg.config).receive_advertise(b"VEIL junk")


def test_byte_overhead_is_small_for_long_vectors() -> None:
    n, d = 8, 20_000
    ups = {c: np.zeros(d) for c in range(n)}
    res = secure_sum(ups, clip=1.0)
    assert 1.0 < res.stats.expansion < 1.05


@settings(max_examples=15)
@given(data=st.data())
def test_random_dropout_patterns_sum_exactly_or_abort(data: st.DataObject) -> None:
    n = data.draw(st.integers(3, 7))
    d = data.draw(st.integers(1, 6))
    when = {c: data.draw(st.sampled_from((None, *PHASES))) for c in range(n)}
    values = {c: np.array(data.draw(st.lists(st.floats(-3, 3), min_size=d, max_size=d)))
              for c in range(n)}
    agg = MaskingAggregator(num_clients=n, vector_length=d, clip=2.0)
    drops = {p: [c for c in range(n) if when[c] == p] for p in PHASES}
    responders = [c for c in range(n) if when[c] is None]
    if len(responders) < agg.threshold:
        with pytest.raises(AggregationAborted):
            agg.aggregate(values, dropouts=drops)
        return
    res = agg.aggregate(values, dropouts=drops)
    assert res.survivors == tuple(c for c in range(n)
                                  if when[c] in (None, "consistency", "unmask"))
    assert np.array_equal(res.quantized_total, _expected_q(agg, values, res.survivors))


def test_aborted_round_keeps_nothing() -> None:
    r = _Round()
    msgs = r.to_masked()
    for c in (0, 1):
        r.server.receive_masked(msgs[c])
    with pytest.raises(AggregationAborted):
        r.server.close_masked()
    assert r.server._acc is None  # the partial sum of masked inputs is dropped
    with pytest.raises(SerializationError, match="finished"):
        r.server.receive_masked(msgs[2])


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2])
def test_secagg_plus_sparse_graph_sums_exactly(rate: float) -> None:
    # k = 12: each client's secrets need k // 2 + 1 = 7 of its 13 holders, so the (at most 5)
    # dropped clients can never abort the round whatever the random graph (with k = 8 a window
    # holding 5 dropped clients aborts, correctly, in a few % of round ids).
    n, d, k = 24, 33, 12
    gen = np.random.default_rng(5)
    ups = {c: gen.normal(0, 1, d) for c in range(n)}
    agg = MaskingAggregator(num_clients=n, vector_length=d, clip=3.0, neighbours=k)
    dropped = list(range(0, n, 5))[: round(rate * n)]
    res = agg.aggregate(ups, dropouts={"masked": dropped[::2], "share": dropped[1::2]})
    assert res.survivors == tuple(c for c in range(n) if c not in dropped)
    assert np.array_equal(res.quantized_total, _expected_q(agg, ups, res.survivors))
    full = MaskingAggregator(num_clients=n, vector_length=d, clip=3.0).aggregate(ups)
    assert res.stats.bytes_sent_per_client < full.stats.bytes_sent_per_client


def test_secagg_plus_graph_is_regular_symmetric_and_round_keyed() -> None:
    cfg = SecAggConfig(20, 4, 1.0, neighbours=6)
    g1 = cfg.graph(range(20), b"\x01" * 16)
    assert all(len(nb) == 6 and u not in nb for u, nb in g1.items())
    assert all(u in g1[v] for u, nb in g1.items() for v in nb)
    assert g1 != cfg.graph(range(20), b"\x02" * 16)
    assert cfg.share_threshold(20) == 4 and SecAggConfig(20, 4, 1.0).share_threshold(20) == 11
    with pytest.raises(ConfigurationError, match="even"):
        SecAggConfig(20, 4, 1.0, neighbours=5)


def test_secagg_plus_aborts_when_a_neighbourhood_is_lost() -> None:
    n, k = 16, 4
    agg = MaskingAggregator(num_clients=n, vector_length=3, clip=1.0, neighbours=k)
    cfg = agg.config
    server = SecAggServer(cfg)
    cl = _make_clients(cfg, server)
    for c in cl:
        server.receive_advertise(cl[c].advertise())
    roster = server.close_advertise()
    graph = cfg.graph(range(n), server.round_id)
    for c in cl:
        server.receive_shares(cl[c].share_keys(roster))
    deliveries = server.close_shares()
    victim = 0
    silent = set(list(graph[victim])[:3])  # 3 of its 4 neighbours drop after masking
    for c in cl:
        server.receive_masked(cl[c].masked_input(np.zeros(3), deliveries[c]))
    req = _consistency(server, cl, server.close_masked())
    for c in cl:
        if c not in silent:
            server.receive_unmask(cl[c].unmask(req))
    with pytest.raises(AggregationAborted, match="neighbours of client"):
        server.finish()

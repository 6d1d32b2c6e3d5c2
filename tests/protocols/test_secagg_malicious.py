"""SecAgg against a lying server (Bonawitz et al. 2017, malicious-server variant).

Every test drives Veil's real client code (:class:`SecAggClient`, FedAvg's client worker) with a
scripted malicious server that builds its own server-to-client messages.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from veil.errors import AggregationAborted, SerializationError, VeilError
from veil.fl.aggregation import MaskingAggregator
from veil.protocols.prg import expand, hkdf, ring_dtype
from veil.protocols.secagg import (
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    generate_identities,
)
from veil.protocols.secagg.common import pair_info, ring_mask, x25519
from veil.protocols.secagg.messages import (
    ConsistencySignature,
    MaskedInput,
    Roster,
    ShareDelivery,
    UnmaskRequest,
    UnmaskShares,
)

TARGET = 0
# The attack that recovered client 0's update on the semi-honest code (n = 5, default t = 3):
# client 0 is shown only clients 1 and 2 as key-sharers (so its masked input carries the pair
# masks with 1 and 2 only); clients 1..4 are shown survivor lists that all contain client 0 (so
# each reveals a share of its self-mask seed b_0) but leave out client 1 or 2 (so clients 2, 3, 4
# reveal shares of 1's masking key and clients 1, 3, 4 shares of 2's): 4 seed shares and 3 + 3
# key shares, enough for t = 3.
TARGET_VIEW = (1, 2)
VIEWS = {1: (0, 1, 3, 4), 2: (0, 2, 3, 4), 3: (0, 3, 4), 4: (0, 3, 4)}


class _Round:
    def __init__(self, n: int = 5, d: int = 12, threshold: int = 0) -> None:
        self.cfg = SecAggConfig(n, d, 2.0, threshold)
        self.server = SecAggServer(self.cfg)
        self.keys, self.directory = generate_identities(range(n))
        self.clients = {c: SecAggClient(c, self.cfg, round_id=self.server.round_id,
                                        server_public_key=self.server.public_key,
                                        identity_key=self.keys[c], directory=self.directory)
                        for c in range(n)}
        gen = np.random.default_rng(11)  # test data, not key material
        self.x = {c: gen.uniform(-1.5, 1.5, d) for c in range(n)}
        self.ph = self.cfg.params_hash
        self.max = self.cfg.max_message_bytes()

    def advertise_and_share(self) -> dict[int, bytes]:
        s, cl = self.server, self.clients
        for c in cl:
            s.receive_advertise(cl[c].advertise())
        self.roster = s.close_advertise()
        for c in cl:
            s.receive_shares(cl[c].share_keys(self.roster))
        return s.close_shares()

    def masked(self, deliveries: dict[int, bytes]) -> dict[int, np.ndarray]:
        out = {}
        for c, cl in self.clients.items():
            raw = cl.masked_input(self.x[c], deliveries[c])
            self.server.receive_masked(raw)
            out[c] = MaskedInput.from_bytes(raw, params_hash=self.ph, max_bytes=self.max,
                                            length=self.cfg.masked_length,
                                            dtype=ring_dtype(self.cfg.ring_bits)).vector
        return out

    def lying_rounds_0_to_2(self) -> dict[int, np.ndarray]:
        deliveries = self.advertise_and_share()
        d = ShareDelivery.from_bytes(deliveries[TARGET], params_hash=self.ph, max_bytes=self.max)
        deliveries[TARGET] = ShareDelivery(d.round_id, TARGET, {
            v: d.ciphertexts[v] for v in TARGET_VIEW}).to_bytes(self.ph)
        return self.masked(deliveries)

    def survivor_list(self, ids: tuple[int, ...]) -> bytes:
        from veil.protocols.secagg.messages import SurvivorList

        return SurvivorList(self.server.round_id, ids).to_bytes(self.ph)


def _unmask_target(r: _Round, y: np.ndarray, seed: bytes, mask_keys: dict[int, bytes]
                   ) -> np.ndarray:
    """The attacker's last step: remove b_0's mask and the pair masks of 0 with 1 and 2."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    cfg, rid = r.cfg, r.server.round_id
    entries = {e[0]: e for e in Roster.from_bytes(r.roster, params_hash=r.ph,
                                                   max_bytes=r.max).entries}
    acc = y.copy()
    acc -= expand(seed, cfg.masked_length, ring_bits=cfg.ring_bits,
                  domain=b"veil-secagg-self" + rid)
    for v, raw in mask_keys.items():
        pair = hkdf(x25519(X25519PrivateKey.from_private_bytes(raw), entries[TARGET][2]),
                    salt=rid, info=pair_info(b"veil-secagg-pair", TARGET, v))
        mask = expand(pair, cfg.masked_length, ring_bits=cfg.ring_bits,
                      domain=b"veil-secagg-pair" + rid)
        acc = acc - mask if TARGET < v else acc + mask
    return ring_mask(acc, cfg.ring_bits)[:-1]


def test_the_attack_would_recover_the_update_given_both_kinds_of_share() -> None:
    """Positive control: with b_0 and the masking keys of 1 and 2 (what the semi-honest code
    revealed to this server), the attacker's arithmetic gives client 0's update exactly."""
    r = _Round()
    y = r.lying_rounds_0_to_2()
    leaked = _unmask_target(r, y[TARGET], r.clients[TARGET]._seed,
                            {v: r.clients[v]._mask.private_bytes_raw() for v in TARGET_VIEW})
    assert np.array_equal(leaked, r.cfg.quantizer.quantize(r.x[TARGET])[0])


def test_inconsistent_survivor_lists_reveal_no_share() -> None:
    """(a) The attack of the review, on the real client code: every client refuses (typed
    error) before revealing any share, so neither b_0 nor the masking keys can be rebuilt."""
    r = _Round()
    r.lying_rounds_0_to_2()
    sigs: dict[tuple[int, ...], dict[int, bytes]] = {}
    for c, view in VIEWS.items():
        raw = r.clients[c].consistency(r.survivor_list(view))
        sig = ConsistencySignature.from_bytes(raw, params_hash=r.ph).signature
        sigs.setdefault(view, {})[c] = sig
    # Client 0 sees itself with 1 and 2 only and refuses any of the lists above.
    with pytest.raises(SerializationError, match="never shared keys"):
        r.clients[TARGET].consistency(r.survivor_list(VIEWS[3]))
    everything = sorted((c, s) for group in sigs.values() for c, s in group.items())
    revealed = []
    for c, view in VIEWS.items():
        # Best offers: the signatures on this list only (too few), or every signature held.
        offer = sorted(sigs[view].items()) if c in (1, 3) else everything
        req = UnmaskRequest(r.server.round_id, view, tuple(offer)).to_bytes(r.ph)
        with pytest.raises(VeilError) as info:
            revealed.append(r.clients[c].unmask(req))
        assert isinstance(info.value, AggregationAborted | SerializationError)
        # and a second chance with another list is refused too
        with pytest.raises(VeilError, match="out of order"):
            r.clients[c].unmask(UnmaskRequest(r.server.round_id, VIEWS[3],
                                              tuple(everything)).to_bytes(r.ph))
    assert revealed == []


def test_consistent_list_after_a_lying_delivery_hides_the_target() -> None:
    """The server may still pick one list and get t signatures; then it learns a sum only:
    client 0 (given a short U2 view) either refuses the list or is unmasked with everyone."""
    r = _Round()
    r.lying_rounds_0_to_2()
    honest = r.server.close_masked()  # the true U3: all five inputs arrived
    with pytest.raises(SerializationError):
        r.clients[TARGET].consistency(honest)  # 3 and 4 never shared keys with it
    for c in (1, 2, 3, 4):
        r.server.receive_consistency(r.clients[c].consistency(honest))
    req = r.server.close_consistency()
    answers = [UnmaskShares.from_bytes(r.clients[c].unmask(req), params_hash=r.ph,
                                       max_bytes=r.max) for c in (1, 2, 3, 4)]
    for a in answers:  # seed shares for every listed survivor, no key share of anyone
        assert set(a.seed_shares) == {0, 1, 2, 3, 4} and a.key_shares == {}


def _honest_until_consistency(r: _Round) -> tuple[bytes, dict[int, bytes]]:
    r.masked(r.advertise_and_share())
    survivors = r.server.close_masked()
    sigs = {}
    for c in r.clients:
        raw = r.clients[c].consistency(survivors)
        sigs[c] = ConsistencySignature.from_bytes(raw, params_hash=r.ph).signature
    return survivors, sigs


def test_forged_missing_duplicated_and_replayed_signatures_are_refused() -> None:
    """(b) Every client checks >= t valid signatures by distinct clients over its own list."""
    r = _Round(n=8, threshold=5)
    _, sigs = _honest_until_consistency(r)
    rid, u3 = r.server.round_id, tuple(range(8))

    def request(pairs: list[tuple[int, bytes]], survivors: tuple[int, ...] = u3) -> bytes:
        return UnmaskRequest(rid, survivors, tuple(pairs)).to_bytes(r.ph)

    good = sorted(sigs.items())
    forged = [(c, bytes([s[0] ^ 1]) + s[1:]) if c == 3 else (c, s) for c, s in good]
    with pytest.raises(SerializationError, match=r"clients \[3\] do not verify"):
        r.clients[0].unmask(request(forged))
    with pytest.raises(AggregationAborted, match="only 4 clients signed"):
        r.clients[1].unmask(request(good[:4]))  # missing: t - 1 signatures
    with pytest.raises(SerializationError, match="strictly increasing"):
        r.clients[2].unmask(request([good[0], good[0], *good[1:4]]))  # duplicated signer
    stolen = [(c, sigs[1]) for c in range(5)]  # one client's signature under five names
    with pytest.raises(SerializationError, match="do not verify"):
        r.clients[3].unmask(request(stolen))
    with pytest.raises(AggregationAborted, match="inconsistent views"):
        r.clients[4].unmask(request(good, survivors=u3[:-1]))  # not the list it signed
    # Replay: the same identities sign the same list in another round; those signatures are
    # bound to that round's id and roster and do not verify here.
    other = _Round(n=8, threshold=5)
    other.keys, other.directory = r.keys, r.directory
    other.clients = {c: SecAggClient(c, other.cfg, round_id=other.server.round_id,
                                     server_public_key=other.server.public_key,
                                     identity_key=r.keys[c], directory=r.directory)
                     for c in range(8)}
    _, old_sigs = _honest_until_consistency(other)
    with pytest.raises(SerializationError, match="do not verify"):
        r.clients[5].unmask(request(sorted(old_sigs.items())))
    answer = r.clients[6].unmask(request(good[2:7]))  # exactly t valid ones: accepted
    assert set(UnmaskShares.from_bytes(answer, params_hash=r.ph, max_bytes=r.max).seed_shares
               ) == set(u3)


def test_server_checks_signatures_too_when_it_has_the_directory() -> None:
    cfg = SecAggConfig(4, 3, 1.0)
    keys, directory = generate_identities(range(4))
    server = SecAggServer(cfg, directory=directory)
    wrong_keys, _ = generate_identities(range(4))
    cl = {c: SecAggClient(c, cfg, round_id=server.round_id, server_public_key=server.public_key,
                          identity_key=keys[c], directory=directory) for c in range(4)}
    impostor = SecAggClient(0, cfg, round_id=server.round_id,
                            server_public_key=server.public_key, identity_key=wrong_keys[0],
                            directory=_self_directory(wrong_keys))
    with pytest.raises(SerializationError, match="not signed by its identity key"):
        server.receive_advertise(impostor.advertise())
    for c in cl:
        server.receive_advertise(cl[c].advertise())  # state unchanged by the rejection


def _self_directory(keys: dict) -> object:
    from veil.protocols.secagg import IdentityDirectory

    return IdentityDirectory({c: k.public_key().public_bytes_raw() for c, k in keys.items()})


def test_substituted_or_sybil_roster_entries_are_refused() -> None:
    """The roster's keys must be signed by the identities of the clients' own directory: a
    server can neither swap a client's encryption key (to read its shares) nor add a client."""
    from veil.protocols.secagg.identity import advertise_payload

    r = _Round()
    s, cl = r.server, r.clients
    for c in cl:
        s.receive_advertise(cl[c].advertise())
    roster = Roster.from_bytes(s.close_advertise(), params_hash=r.ph, max_bytes=r.max)
    own, _ = generate_identities([1])
    swapped = list(roster.entries)
    cid, enc, mask, sig = swapped[1]
    swapped[1] = (cid, bytes(31) + b"\x09", mask, sig)  # the server's own key for client 1
    with pytest.raises(SerializationError, match="entry of client 1 is not signed"):
        cl[0].share_keys(replace(roster, entries=tuple(swapped)).to_bytes(r.ph))
    # Client 4 replaced by a Sybil whose keys some other identity signed.
    fake = advertise_payload(r.ph, s.round_id, 4, enc, mask)
    entries = [*roster.entries[:4], (4, enc, mask, own[1].sign(fake))]
    with pytest.raises(SerializationError, match="entry of client 4 is not signed"):
        cl[1].share_keys(replace(roster, entries=tuple(entries)).to_bytes(r.ph))


@pytest.mark.parametrize("n", [5, 12])
def test_honest_rounds_with_dropouts_at_every_round_sum_exactly(n: int) -> None:
    """(c) A dropout in each of the five rounds at once (and one round per phase)."""
    gen = np.random.default_rng(n)  # test data
    ups = {c: gen.normal(0, 1, 9) for c in range(n)}
    agg = MaskingAggregator(num_clients=n, vector_length=9, clip=3.0)
    phases = ("advertise", "share", "masked", "consistency", "unmask")
    spec = ({p: [i] for i, p in enumerate(phases)} if n == 12
            else {"masked": [1], "consistency": [2]})
    res = agg.aggregate(ups, dropouts=spec)
    late = {c for p in ("consistency", "unmask") for c in spec.get(p, [])}
    gone = {c for ids in spec.values() for c in ids} - late
    assert res.survivors == tuple(c for c in range(n) if c not in gone)
    q = agg.config.quantizer
    expected = sum(q.quantize(ups[c])[0].astype(np.uint64) for c in res.survivors)
    assert np.array_equal(res.quantized_total, expected)
    with pytest.raises(AggregationAborted, match="signed the survivor list"):
        agg.aggregate(ups, dropouts={"consistency": list(range(n - agg.threshold + 1))})


def test_fedavg_clients_ignore_the_servers_threshold_and_dp_header(monkeypatch) -> None:
    """(d) A header saying threshold=1 / allow_insecure=True / a huge threshold (tiny DP noise)
    changes nothing a client enforces: it uses its own configuration."""
    import json

    from veil.fl import FederatedDP, fedavg

    stds: list[float] = []
    real = fedavg.sample_gaussian

    def record(size: int, *, std: float) -> np.ndarray:
        stds.append(std)
        return real(size, std=std)

    monkeypatch.setattr(fedavg, "sample_gaussian", record)
    dp = FederatedDP(l2_clip=1.0, noise_multiplier=1.0)
    cfg = fedavg.FedAvgConfig(num_clients=5, rounds=1, processes=False, dp=dp)
    keys, directory = fedavg.identities(5)
    worker = fedavg._ClientWorker(2, cfg, keys[2], directory)
    server = SecAggServer(SecAggConfig(5, 1, 1.0))
    size = sum(p.numel() for p in worker.model.parameters())
    params = np.zeros(size, dtype="<f4").tobytes()
    head = {"round": 0, "participants": [0, 1, 2, 3, 4], "round_id": server.round_id.hex(),
            "server_key": server.public_key.hex(), "threshold": 10**6, "secagg_id": 2,
            "allow_insecure": True, "dp": {"noise_multiplier": 0.0},
            "secagg": {"num_clients": 5, "clip": 1e9, "threshold": 1, "ring_bits": 64,
                       "allow_insecure": True}}
    hb = json.dumps(head).encode()
    worker.handle(fedavg._OP_TRAIN, fedavg._U32.pack(len(hb)) + hb + params)
    own_t, own_clip = fedavg.round_params(cfg, 5)
    got = worker.secagg.config
    assert (got.threshold, got.allow_insecure, got.ring_bits) == (3, False, 32) == (
        own_t, False, cfg.ring_bits)
    assert got.clip == own_clip < 1e9
    assert stds == [pytest.approx(1.0 / np.sqrt(own_t - 1))]
    # The server may not shrink the round either: without sampling every client takes part.
    head["participants"] = [1, 2]
    hb = json.dumps(head).encode()
    with pytest.raises(SerializationError, match="every client takes part"):
        worker.handle(fedavg._OP_TRAIN, fedavg._U32.pack(len(hb)) + hb + params)


def test_fedavg_round_with_a_consistency_dropout() -> None:
    from veil.fl.fedavg import FedAvgConfig, train_fedavg

    cfg = FedAvgConfig(num_clients=5, rounds=1, processes=False, seed=4)
    res = train_fedavg(cfg, dropouts={0: {"consistency": [1], "share": [3]}})
    assert res.history[0].survivors == (0, 1, 2, 4)


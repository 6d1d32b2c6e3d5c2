"""veil.mpc.accounting: exact byte and round counts derived from the protocols."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

from veil.errors import ConfigurationError
from veil.mpc import accounting
from veil.mpc._crypten import messages as _messages

_spec = importlib.util.spec_from_file_location(
    "_rng_harness", pathlib.Path(__file__).with_name("_rng_harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

N = 1000
WORD = 8  # bytes per int64 share element


def _totals(s: dict) -> tuple[int, int, int]:
    return s["bytes_sent"], s["bytes_received"], s["rounds"]


def _reveal_job(crypten, rank):
    x = crypten.cryptensor(torch.ones(N), src=0)  # shape known: no communication
    after_share = accounting.stats()
    accounting.reset()
    x.get_plain_text()  # reveal to all: one all_reduce of the shares
    to_all = accounting.stats()
    accounting.reset()
    x.get_plain_text(dst=1)  # reveal to party 1 only: one reduce to party 1
    to_one = accounting.stats()
    accounting.reset()
    AST = crypten.mpc.primitives.ArithmeticSharedTensor
    y = AST(torch.zeros(3, N) if rank == 0 else None, src=0,
            broadcast_size=True)  # the shape travels as an object message
    shared = accounting.stats()
    del y
    return {"after_share": after_share, "to_all": to_all, "to_one": to_one, "shared": shared,
            "crypten_own": crypten.communicator.get().comm_bytes,
            "verbose": bool(crypten.config.cfg.communicator.verbose)}


@pytest.mark.parametrize("world", [2, 3])
def test_reveal_and_share_counts_are_exact(world: int) -> None:
    results = harness.run_parties(_reveal_job, world, provider="TFP")
    shape_msg = 8 + len(_messages.encode(torch.Size([3, N])))
    for rank, res in enumerate(results):
        assert _totals(res["after_share"]) == (0, 0, 0)
        peers = world - 1
        # reveal of N elements to all: send my share to each peer, receive each peer's share
        assert _totals(res["to_all"]) == (peers * N * WORD, peers * N * WORD, 1)
        assert res["to_all"]["operations"]["get_plain_text"] == {
            "bytes_sent": peers * N * WORD, "bytes_received": peers * N * WORD, "rounds": 1,
            "calls": 1}
        # reveal to party 1 with CrypTen's reduce (gloo's ring): every party receives data,
        # the destination and the others alike
        sent, received = accounting.gloo_reduce_bytes(N * WORD, WORD, world, rank, 1)
        assert _totals(res["to_one"]) == (sent, received, 1)
        assert received > 0
        # share with a broadcast shape: the source sends the size message to every peer
        expected_shared = (peers * shape_msg, 0, 1) if rank == 0 else (0, shape_msg, 1)
        assert _totals(res["shared"]) == expected_shared
        assert res["to_all"]["dealer"] == {"bytes_sent": 0, "bytes_received": 0, "rounds": 0}
        # always on, without CrypTen's verbose mode (whose own counter stays at zero)
        assert res["verbose"] is False and res["crypten_own"] == 0


def test_gloo_reduce_model_conserves_bytes_and_reaches_every_party() -> None:
    for world in (2, 3, 4):
        for n in (8, 8 * 7, 8 * 1000, 8 * 300_000):
            counts = [accounting.gloo_reduce_bytes(n, WORD, world, r, 0) for r in range(world)]
            assert sum(s for s, _ in counts) == sum(r for _, r in counts)
            assert counts[0][1] >= (world - 1) * (n // world) // 2
            if n >= world * WORD * 2:  # every chunk is non-empty: every party receives
                assert all(r > 0 for _, r in counts)


def test_gloo_broadcast_tree_delivers_one_copy_to_every_non_root() -> None:
    for world in range(2, 9):
        for root in range(world):
            counts = [accounting.gloo_broadcast_messages(world, r, root) for r in range(world)]
            assert [rcv for _, rcv in counts] == [0 if r == root else 1 for r in range(world)]
            assert sum(snd for snd, _ in counts) == world - 1
            if world <= 3:  # the direct exchange: the root sends every copy
                assert counts[root][0] == world - 1


class _Party:
    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world_size = rank, world


def _p2p_job(crypten, rank, to):
    from veil.mpc.tensor import open_ring

    x = crypten.cryptensor(torch.arange(N, dtype=torch.float64), src=0)
    accounting.reset()
    total = open_ring(_Party(rank, crypten.communicator.get().get_world_size()),
                      x._tensor.share, to)
    return {"stats": accounting.stats(),
            "value": None if total is None else x._tensor.encoder.decode(total)}


@pytest.mark.parametrize("recipient", [0, 1, 2])
def test_point_to_point_opening_to_one_party_of_three(recipient: int) -> None:
    """to=[r] in 3 parties: r receives one share from each peer; the others receive nothing."""
    results = harness.run_parties(_p2p_job, 3, args=([recipient],), provider="TFP")
    for rank, res in enumerate(results):
        if rank == recipient:
            assert _totals(res["stats"]) == (0, 2 * N * WORD, 2)
            torch.testing.assert_close(res["value"], torch.arange(N, dtype=torch.float64),
                                       atol=1e-4, rtol=0, check_dtype=False)
        else:
            assert _totals(res["stats"]) == (N * WORD, 0, 1)
            assert res["value"] is None


def _mul_job(crypten, rank):
    x = crypten.cryptensor(torch.full((N,), 1.5), src=0)
    y = crypten.cryptensor(torch.full((N,), 2.0), src=1)
    accounting.reset()
    z = x * y
    s = accounting.stats()
    return {"stats": s, "z": z.get_plain_text()}


def test_two_party_dealer_mul_counts_are_exact() -> None:
    results = harness.run_parties(_mul_job, 2, provider="TTP")
    for res in results:
        torch.testing.assert_close(res["z"], torch.full((N,), 3.0), atol=1e-3, rtol=0)
    # Beaver: both parties open [x - a] and [y - b] in one batched all_reduce (2N elements)
    opened = 2 * N * WORD
    assert _totals(results[1]["stats"]) == (opened, opened, 1)
    # party 0 also asks the dealer for c (request message, size reply, c broadcast to it)
    request = {"function": "additive", "device": "cpu",
               "args": (torch.Size([N]), torch.Size([N]), "mul"), "kwargs": {}}
    req_bytes = 8 + len(_messages.encode(request))
    reply_bytes = 8 + len(_messages.encode(torch.Size([N])))
    dealer = {"bytes_sent": req_bytes, "bytes_received": reply_bytes + N * WORD, "rounds": 3}
    s0 = results[0]["stats"]
    assert s0["dealer"] == dealer
    assert _totals(s0) == (opened + req_bytes, opened + reply_bytes + N * WORD, 4)
    assert s0["operations"]["mul"]["rounds"] == 4 and s0["operations"]["mul"]["calls"] == 1


def _ops_job(crypten, rank):
    x = crypten.cryptensor(torch.tensor([1.0, -1.0, 2.0]), src=0)
    accounting.reset()
    with accounting.operation("my block"):
        x.relu()  # nested ops are attributed to the outer block
        with accounting.operation("inner"):
            x.get_plain_text()
    r = x < 0.5  # Python operators are tracked too
    r.get_plain_text()
    return accounting.stats()


def test_operations_are_attributed_to_the_outermost_name() -> None:
    s = harness.run_parties(_ops_job, 2, provider="TFP")[0]
    ops = s["operations"]
    assert set(ops) == {"my block", "lt", "get_plain_text"}
    assert ops["my block"]["calls"] == 1 and ops["my block"]["rounds"] > 1
    assert ops["lt"]["rounds"] > 0 and ops["get_plain_text"]["rounds"] == 1
    assert sum(v["rounds"] for v in ops.values()) == s["rounds"]
    assert sum(v["bytes_sent"] for v in ops.values()) == s["bytes_sent"]


def test_reset_and_names() -> None:
    accounting.reset()
    with accounting.operation("local only"):
        pass
    s = accounting.stats()
    assert _totals(s) == (0, 0, 0)
    assert s["operations"] == {"local only": {"bytes_sent": 0, "bytes_received": 0,
                                              "rounds": 0, "calls": 1}}
    accounting.reset()
    assert accounting.stats()["operations"] == {}
    with pytest.raises(ConfigurationError, match="non-empty str"):
        with accounting.operation(""):
            pass

"""veil.mpc.accounting: exact byte and round counts derived from the protocols."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

from veil.errors import ConfigurationError
from veil.mpc import _messages, accounting

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
        # reveal to party 1: everybody else sends its share to party 1
        expected_one = (0, peers * N * WORD, 1) if rank == 1 else (N * WORD, 0, 1)
        assert _totals(res["to_one"]) == expected_one
        # share with a broadcast shape: the source sends the size message to every peer
        expected_shared = (peers * shape_msg, 0, 1) if rank == 0 else (0, shape_msg, 1)
        assert _totals(res["shared"]) == expected_shared
        assert res["to_all"]["dealer"] == {"bytes_sent": 0, "bytes_received": 0, "rounds": 0}
        # always on, without CrypTen's verbose mode (whose own counter stays at zero)
        assert res["verbose"] is False and res["crypten_own"] == 0


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

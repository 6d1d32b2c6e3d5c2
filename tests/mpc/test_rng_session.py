"""Randomness and accounting wired into ``veil.mpc.run`` (the session engineer's launcher)."""

from __future__ import annotations

import pytest
import torch

from veil import mpc

N = 500


def secure_streams_job(party):
    from veil.mpc._crypten import rng

    crypten = party.crypten

    def _forbidden(*_a, **_k):
        raise AssertionError("torch random generator used for MPC randomness")

    saved, torch.randint = torch.randint, _forbidden  # this party process, during the job
    try:
        return _streams_checks(party, crypten, rng)
    finally:
        torch.randint = saved


def _streams_checks(party, crypten, rng):
    cpu = torch.device("cpu")
    views = [crypten.generators[k][cpu] for k in ("prev", "next", "local")]
    out = {"views": all(isinstance(v, rng._StreamView) for v in views)}
    if crypten.mpc.ttp_required():
        client = crypten.mpc.provider.ttp_provider.TTPClient.get()
        out["dealer"] = isinstance(client.generator, rng._StreamView)
    x = party.share(torch.tensor([1.5, -2.0, 0.25]) if party.rank == 0 else None, src=0)
    y = party.share(torch.tensor([2.0, 3.0, -4.0]) if party.rank == 1 else None, src=1)
    out["mul"] = party.reveal(x * y)
    out["lt"] = party.reveal(x < y)
    out["relu"] = party.reveal(x.relu())
    out["next"] = views[1].stream.random_bytes(16)
    out["prev"] = views[0].stream.random_bytes(16)
    return out


@pytest.mark.parametrize(("parties", "provider"), [(2, "dealer"), (3, "dealer"), (3, "tfp")])
def test_sessions_draw_from_secure_streams(parties: int, provider: str) -> None:
    kwargs = {"allow_party0_sees_inputs": True} if provider == "tfp" else {}
    res = mpc.run(secure_streams_job, parties=parties, provider=provider, timeout=60, **kwargs)
    x, y = torch.tensor([1.5, -2.0, 0.25]), torch.tensor([2.0, 3.0, -4.0])
    tol = 0.02  # exact decode of negatives: Veil's import-stage patch fixes CrypTen's decoder
    for r in res:
        assert r["views"] and r.get("dealer", True)
        torch.testing.assert_close(r["mul"], x * y, atol=tol, rtol=0.01)
        assert r["lt"].tolist() == (x < y).long().tolist()
        torch.testing.assert_close(r["relu"], x.relu(), atol=0.01, rtol=0)
    for rank in range(parties):
        assert res[rank]["next"] == res[(rank + 1) % parties]["prev"]


def counts_job(party):
    x = party.share(torch.ones(N) if party.rank == 0 else None, src=0, shape=(N,))
    before = party.comm_stats()
    party.reveal(x)  # to all
    to_all = party.comm_stats()
    party.reveal(x, to=[1])
    to_one = party.comm_stats()
    return before, to_all, to_one


def test_comm_stats_through_sessions_are_exact() -> None:
    res = mpc.run(counts_job, parties=3, timeout=60)
    word = 8
    for rank, (before, to_all, to_one) in enumerate(res):
        assert (before["bytes_sent"], before["bytes_received"], before["rounds"]) == (0, 0, 0)
        # reveal to all: one all_reduce, each party exchanges its share with the 2 others
        assert (to_all["bytes_sent"], to_all["bytes_received"], to_all["rounds"]) == (
            2 * N * word, 2 * N * word, 1)
        # reveal to party 1: parties 0 and 2 send their share; party 1 receives two
        sent = to_one["bytes_sent"] - to_all["bytes_sent"]
        received = to_one["bytes_received"] - to_all["bytes_received"]
        rounds = to_one["rounds"] - to_all["rounds"]
        if rank == 1:
            assert (sent, received, rounds) == (0, 2 * N * word, 2)
        else:
            assert (sent, received, rounds) == (N * word, 0, 1)

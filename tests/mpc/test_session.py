"""veil.mpc sessions: real party processes, CrypTen operations checked against torch.

Few sessions, many checks per session: each session costs a fraction of a second once the
forkserver (preloaded with torch and crypten) is up.
"""

from __future__ import annotations

import math

import pytest
import torch

from veil import mpc
from veil.errors import ConfigurationError, PartyFailure

ATOL = 2e-3  # 16 fractional bits: products and sums stay within a few ulps of 2^-16


def _inputs(seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(12, generator=g, dtype=torch.float64) * 3,
        "y": torch.randn(12, generator=g, dtype=torch.float64) * 3,
        "w": torch.randn(12, generator=g, dtype=torch.float64),
        "small": torch.linspace(-2.0, 2.0, 12, dtype=torch.float64),
        "pos": torch.linspace(0.5, 8.0, 12, dtype=torch.float64),
        "A": torch.randn(4, 5, generator=g, dtype=torch.float64),
        "B": torch.randn(5, 3, generator=g, dtype=torch.float64),
        "img": torch.randn(1, 1, 6, 6, generator=g, dtype=torch.float64),
        "ker": torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64),
    }


# Which party holds which input (the last party holds "w" when there are three).
_OWNER = {"x": 0, "small": 0, "pos": 0, "A": 0, "img": 0, "y": 1, "B": 1, "ker": 1}


def oracle_job(party, data):
    """Runs in every party: share each input from its owner, compute, reveal."""
    mine = {k: v for k, v in data.items() if _OWNER.get(k, party.world_size - 1) == party.rank}
    sh = {}
    for k, v in data.items():
        src = _OWNER.get(k, party.world_size - 1)
        # shape known to all for some inputs, announced by the owner for the others
        shape = v.shape if k in ("x", "A") else None
        sh[k] = party.share(mine.get(k), src=src, shape=shape)
    x, y, w = sh["x"], sh["y"], sh["w"]
    with party.phase("arithmetic"):
        ops = {
            "add": x + y, "sub": x - y, "mul": x * y, "scale": x * 2.5, "pub_add": x + 1.25,
            "div_pub": x / 4, "three": x * y + w, "sum": (x * y).sum(), "mean": x.mean(),
            "square": x.square(), "neg": -x,
        }
    with party.phase("comparison"):
        ops.update({"lt": x < y, "gt0": x > 0, "ge": x >= y, "relu": x.relu(), "max": x.max()})
    with party.phase("functions"):
        ops.update({"exp": sh["small"].exp(), "recip": sh["pos"].reciprocal()})
    with party.phase("linear algebra"):
        ops.update({"matmul": sh["A"].matmul(sh["B"]),
                    "conv": sh["img"].conv2d(sh["ker"], padding=1),
                    "cat": mpc.cat([x, y]), "stack": mpc.stack([x, y]),
                    "where": mpc.where(x > y, x, y),
                    "where_pub": mpc.where(data["x"] > 0, x, y)})
    out = {name: party.reveal(v) for name, v in ops.items()}
    # reveal to a subset: what does each party receive?
    z = x * y
    before = party.comm_stats()["bytes_received"]
    only1 = party.reveal(z, to=[1])
    got = party.comm_stats()["bytes_received"] - before
    to_two = party.reveal(z, to=[0, party.world_size - 1])
    binary = party.reveal(x.to(party.crypten.mpc.ptype.binary), to=[1])  # XOR shares
    return {"ops": out, "only1": only1, "received_in_reveal": got, "to_two": to_two,
            "binary": binary,
            "is_shared": (mpc.is_shared(z), mpc.is_shared(torch.ones(1))),
            "world": (party.rank, party.world_size, str(party.device))}


def _expected(d: dict[str, torch.Tensor], parties: int) -> dict[str, torch.Tensor]:
    x, y, w = d["x"], d["y"], d["w"]
    return {
        "add": x + y, "sub": x - y, "mul": x * y, "scale": x * 2.5, "pub_add": x + 1.25,
        "div_pub": x / 4, "three": x * y + w, "sum": (x * y).sum(), "mean": x.mean(),
        "square": x * x, "neg": -x,
        "lt": (x < y).double(), "gt0": (x > 0).double(), "ge": (x >= y).double(),
        "relu": x.relu(), "max": x.max(),
        "exp": d["small"].exp(), "recip": 1 / d["pos"],
        "matmul": d["A"] @ d["B"],
        "conv": torch.nn.functional.conv2d(d["img"], d["ker"], padding=1),
        "cat": torch.cat([x, y]), "stack": torch.stack([x, y]), "where": torch.maximum(x, y),
        "where_pub": torch.where(x > 0, x, y),
    }


_REL = {"exp": 2e-2, "recip": 2e-2, "square": 1e-3,
        "mul": 1e-3, "three": 1e-3, "sum": 1e-3, "matmul": 1e-3, "conv": 1e-3}


@pytest.fixture(scope="module", params=[2, 3])
def session(request):
    data = _inputs()
    results = mpc.run(oracle_job, parties=request.param, args=(data,), timeout=30)
    return request.param, data, results


def test_every_operation_matches_torch(session) -> None:
    parties, data, results = session
    assert len(results) == parties
    exp = _expected(data, parties)
    for r in results:  # every party got the same revealed values
        for name, want in exp.items():
            got = r["ops"][name].double().reshape(want.shape)
            tol = ATOL + _REL.get(name, 0.0) * want.abs()
            assert torch.all((got - want).abs() <= tol), (name, got, want)


def test_reveal_to_subset_sends_shares_only_to_recipients(session) -> None:
    parties, data, results = session
    want = data["x"] * data["y"]
    n = want.numel()
    for rank, r in enumerate(results):
        if rank == 1:
            assert torch.allclose(r["only1"].double(), want, atol=1e-3)
            # one 64-bit share from each other party, nothing more
            assert r["received_in_reveal"] == (parties - 1) * n * 8
        else:
            assert r["only1"] is None
            assert r["received_in_reveal"] == 0  # never saw a single share of the result
        if rank in (0, parties - 1):
            assert torch.allclose(r["to_two"].double(), want, atol=1e-3)
        else:
            assert r["to_two"] is None
        if rank == 1:
            assert torch.allclose(r["binary"].double(), data["x"], atol=1e-4)
        else:
            assert r["binary"] is None


def test_party_view_and_helpers(session) -> None:
    parties, _, results = session
    assert [r["world"] for r in results] == [(k, parties, "cpu") for k in range(parties)]
    assert all(r["is_shared"] == (True, False) for r in results)


# --- configuration: known answers, providers, precision -------------------------------------

def known_answer_job(party, precision):
    x = party.share(torch.tensor([0.3, -1.5, 2.0]) if party.rank == 0 else None, src=0)
    return party.reveal(x), party.precision_bits, precision


def test_precision_bits_sets_the_fixed_point_grid() -> None:
    res = mpc.run(known_answer_job, parties=2, args=(4,), per_party_args=[(), ()],
                  precision_bits=4, provider="tfp", allow_party0_sees_inputs=True, timeout=20)
    for got, bits, _ in res:
        assert bits == 4
        # CrypTen's encoder truncates toward zero: 0.3 * 16 = 4.8 -> 4/16 = 0.25;
        # -1.5 and 2.0 are exact on the 2^-4 grid
        assert got.tolist() == [0.25, -1.5, 2.0]


def test_tfp_is_refused_without_the_named_opt_in() -> None:
    with pytest.raises(ConfigurationError, match="allow_party0_sees_inputs=True"):
        mpc.run(known_answer_job, parties=2, args=(16,), provider="tfp")
    with pytest.raises(ConfigurationError, match="allow_party0_sees_inputs=True"):
        mpc.run(known_answer_job, parties=2, args=(16,), provider="tfp",
                allow_party0_sees_inputs="yes")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"parties": 1}, "parties must be an int in 2"),
        ({"parties": True}, "parties must be"),
        ({"provider": "ttp"}, "provider must be one of"),
        ({"timeout": 0}, "timeout must be"),
        ({"timeout": float("nan")}, "timeout must be"),
        ({"precision_bits": 40}, "precision_bits must be"),
        ({"per_party_args": [()]}, "one tuple per party"),
    ],
)
def test_bad_settings_are_refused_before_any_process_starts(kwargs, match) -> None:
    kwargs = {"parties": 2, **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        mpc.run(known_answer_job, args=(16,), **kwargs)


def test_lambdas_and_closures_are_refused_with_a_hint() -> None:
    with pytest.raises(ConfigurationError, match="module-level functions"):
        mpc.run(lambda party: 1, parties=2)

    def nested(party):
        return 1

    with pytest.raises(ConfigurationError, match="module-level functions"):
        mpc.run(nested, parties=2)


# --- errors inside jobs ------------------------------------------------------------------------

def raising_job(party, bad_rank):
    x = party.share(torch.ones(3) if party.rank == 0 else None, src=0)
    with party.phase("user step"):
        if party.rank == bad_rank:
            raise ValueError("boom from the job")
        return party.reveal(x * x)


def bad_input_job(party):
    return party.share(torch.tensor([1.0, math.nan]) if party.rank == 1 else None, src=1)


def misuse_job(party, what):
    x = party.share(torch.ones(2) if party.rank == 0 else None, src=0)
    if what == "reveal_plain":
        return party.reveal(torch.ones(2))
    if what == "bad_to":
        return party.reveal(x, to=[5])
    if what == "unpicklable":
        return lambda: x  # cannot be pickled back to the launcher
    if what == "extra_tensor":
        return party.share(torch.ones(2), src=0)
    if what == "shape_mismatch":
        return party.share(torch.ones(2) if party.rank == 0 else None, src=0, shape=(3,))
    return None


def test_an_exception_in_one_party_names_that_party_and_the_error() -> None:
    with pytest.raises(PartyFailure) as info:
        mpc.run(raising_job, parties=3, args=(2,), timeout=20)
    err = info.value
    assert err.rank == 2 and err.phase == "user step"
    assert "ValueError" in str(err) and "boom from the job" in str(err)


def test_non_finite_input_is_reported_by_its_owner() -> None:
    with pytest.raises(PartyFailure, match="non-finite") as info:
        mpc.run(bad_input_job, parties=2, timeout=20)
    assert info.value.rank == 1 and info.value.phase == "share from party 1"
    assert "ConfigurationError" in str(info.value)


@pytest.mark.parametrize(
    ("what", "rank", "match"),
    [
        # every party makes the same mistake: whichever reports first is named
        ("reveal_plain", None, "UnsupportedOperationError.*shared tensor"),
        ("bad_to", None, "to must be None or a non-empty list"),
        ("unpicklable", None, "cannot be sent back"),
        ("extra_tensor", 1, "only party 0 provides the data"),
        ("shape_mismatch", 0, r"has shape \(2,\) but shape=\(3,\)"),
    ],
)
def test_misuse_inside_a_job_is_a_clear_error(what, rank, match) -> None:
    with pytest.raises(PartyFailure, match=match) as info:
        mpc.run(misuse_job, parties=2, args=(what,), timeout=20)
    assert info.value.rank == rank if rank is not None else info.value.rank in (0, 1)

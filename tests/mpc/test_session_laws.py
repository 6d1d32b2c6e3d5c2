"""Property tests: algebraic laws under MPC, and the pure helpers of the session layer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from veil import mpc
from veil.errors import ConfigurationError
from veil.mpc._runtime.launch import job_ref
from veil.mpc._runtime.party import parse_master
from veil.mpc.tensor import MAX_DIMS, _check_shape

finite = st.floats(min_value=-100, max_value=100, allow_nan=False, allow_infinity=False)
vectors = st.lists(finite, min_size=1, max_size=8)


def laws_job(party, xs, ys, zs):
    x = party.share(torch.tensor(xs, dtype=torch.float64) if party.rank == 0 else None, src=0)
    y = party.share(torch.tensor(ys, dtype=torch.float64) if party.rank == 1 else None, src=1)
    z = party.share(torch.tensor(zs, dtype=torch.float64) if party.rank == 0 else None, src=0)
    return {
        "assoc": (party.reveal((x + y) + z), party.reveal(x + (y + z))),
        "comm": (party.reveal(x * y), party.reveal(y * x)),
        "dist": (party.reveal(x * (y + z)), party.reveal(x * y + x * z)),
        "plain": party.reveal(x),
    }


@settings(max_examples=4, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(
    *(st.lists(finite, min_size=n, max_size=n) for _ in range(3)))))
def test_ring_laws_hold_under_sharing(vals) -> None:
    xs, ys, zs = vals
    res = mpc.run(laws_job, parties=2, args=(xs, ys, zs), timeout=30)[0]
    a, b = res["assoc"]
    assert torch.equal(a, b)  # additions are exact in the ring
    a, b = res["comm"]
    assert torch.allclose(a, b, atol=1e-3)
    a, b = res["dist"]
    assert torch.allclose(a, b, atol=2e-2)
    x = torch.tensor(xs, dtype=torch.float64)
    # encoding truncates toward zero on the 2^-16 grid
    assert torch.allclose(res["plain"].double(), torch.trunc(x * 2**16) / 2**16, atol=2**-16)


@given(st.sampled_from(["127.0.0.1", "10.77.0.1", "host.example", "[::1]"]),
       st.integers(1, 65535))
def test_parse_master_accepts_host_port(host, port) -> None:
    assert parse_master(f"{host}:{port}") == (host.strip("[]"), port)


@pytest.mark.parametrize("bad", ["", "host", "host:", ":29500", "host:0", "host:70000",
                                 "host:port", "host:-1"])
def test_parse_master_rejects_malformed(bad) -> None:
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        parse_master(bad)


@given(st.lists(st.integers(0, 4), max_size=MAX_DIMS))
def test_small_shapes_are_accepted(shape) -> None:
    assert _check_shape(shape, "shape") == tuple(shape)


@pytest.mark.parametrize("bad", [[-1], [1] * (MAX_DIMS + 1), [1 << 15, 1 << 14], ["a"], 3])
def test_bad_shapes_are_refused(bad) -> None:
    with pytest.raises(ConfigurationError):
        _check_shape(bad, "shape")


def test_job_ref_names_module_level_functions() -> None:
    ref = job_ref(laws_job)
    assert ref.qualname == "laws_job" and ref.path and ref.path.endswith("test_session_laws.py")
    with pytest.raises(ConfigurationError, match="module-level"):
        job_ref(lambda p: p)
    with pytest.raises(ConfigurationError, match="job"):
        job_ref(42)

"""veil.mpc._crypten.messages: object messages between parties never unpickle peer data."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from veil.errors import SerializationError, UnsupportedOperationError
from veil.mpc._crypten import messages as msg

_spec = importlib.util.spec_from_file_location(
    "_rng_harness", pathlib.Path(__file__).with_name("_rng_harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

scalars = (st.none() | st.booleans() | st.integers() | st.text(max_size=20)
           | st.binary(max_size=20) | st.floats(allow_nan=False))
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=4)),
    max_leaves=20,
)


@given(values)
def test_roundtrip(obj) -> None:
    back = msg.decode(msg.encode(obj))
    assert back == obj and type(back) is type(obj)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.uint8, torch.bool,
                                   torch.bfloat16, torch.float64])
def test_tensors_sizes_and_devices_roundtrip(dtype: torch.dtype) -> None:
    t = (torch.arange(12) % 3).to(dtype).reshape(3, 4)
    obj = {"t": t, "size": torch.Size([3, 4]), "dev": torch.device("cpu"), "empty": t[:0]}
    back = msg.decode(msg.encode(obj))
    assert back["t"].dtype == dtype and torch.equal(back["t"], t)
    assert back["size"] == torch.Size([3, 4]) and isinstance(back["size"], torch.Size)
    assert back["dev"] == torch.device("cpu") and back["empty"].shape == (0, 4)


def test_ttp_request_message_roundtrips() -> None:
    m = {"function": "additive", "device": "cpu", "args": (torch.Size([5]), torch.Size([5]),
                                                          "mul"), "kwargs": {}}
    assert msg.decode(msg.encode(m)) == m
    assert msg.decode(msg.encode("terminate")) == "terminate"


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/veil-pwned",))


def test_malicious_pickle_is_refused(tmp_path: pathlib.Path) -> None:
    marker = pathlib.Path("/tmp/veil-pwned")
    marker.unlink(missing_ok=True)
    payload = pickle.dumps(_Evil())
    with pytest.raises(SerializationError, match="bad magic"):
        msg.decode(payload)
    with pytest.raises(SerializationError):
        msg.decode(msg.MAGIC + payload)
    assert not marker.exists()


def test_senders_refuse_unsupported_objects() -> None:
    with pytest.raises(UnsupportedOperationError, match="cannot be sent"):
        msg.encode(_Evil())
    with pytest.raises(UnsupportedOperationError, match="cannot be sent"):
        msg.encode(torch.nn.Linear(2, 2))
    with pytest.raises(UnsupportedOperationError, match="complex64"):
        msg.encode(torch.zeros(2, dtype=torch.complex64))
    deep: list = []
    for _ in range(msg.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(UnsupportedOperationError, match="nesting"):
        msg.encode(deep)


@pytest.mark.parametrize("payload", [
    msg.MAGIC + b"{not json",
    msg.MAGIC + b'{"$evil": 1}',
    msg.MAGIC + b'{"$tensor": ["int64", [4], "AAAA"]}',  # 3 bytes for a 32-byte tensor
    msg.MAGIC + b'{"$tensor": ["object", [1], ""]}',
    msg.MAGIC + b'{"$size": [-1]}',
    msg.MAGIC + b'{"$d": [[[1], 2]]}',  # unhashable key
    msg.MAGIC + b"NaN",
    msg.MAGIC + b"[" * 5000 + b"]" * 5000,
    msg.MAGIC + b'{"$b": "!!"}',
])
def test_malformed_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(SerializationError, match="malformed message"):
        msg.decode(payload)


def test_size_limit_is_checked_first() -> None:
    with pytest.raises(SerializationError, match="exceeds the 10-byte limit"):
        msg.decode(msg.encode("x" * 20), max_bytes=10)


# ---------------------------------------------------------------- between real processes


def _attack_job(crypten, rank, kind):
    import torch as t
    import torch.distributed as dist

    comm = crypten.communicator.get()
    group = comm.main_group
    if rank == 0:  # the malicious party writes raw bytes on the wire
        if kind == "pickle":
            buf = pickle.dumps(_Evil())
            dist.send(t.tensor([len(buf)], dtype=t.int64), 1, group=group)
            dist.send(t.frombuffer(bytearray(buf), dtype=t.uint8), 1, group=group)
        elif kind == "huge":
            dist.send(t.tensor([1 << 40], dtype=t.int64), 1, group=group)
        elif kind == "ok":
            comm.send_obj({"shape": t.Size([2, 3]), "n": 7}, 1)
            comm.broadcast_obj((1, "two", t.tensor([3.0])), 0)
        return None
    try:
        if kind == "ok":
            got = comm.recv_obj(0)
            got_b = comm.broadcast_obj(None, 0)
            return [got, got_b]
        comm.recv_obj(0)
    except SerializationError as exc:
        return f"refused: {exc}"
    return "accepted"


def test_pickle_on_the_wire_is_refused_between_parties() -> None:
    marker = pathlib.Path("/tmp/veil-pwned")
    marker.unlink(missing_ok=True)
    out = harness.run_parties(_attack_job, 2, args=("pickle",), provider="TFP")
    assert out[1].startswith("refused: malformed message") and "bad magic" in out[1]
    assert not marker.exists()


def test_oversized_announcement_is_refused_before_allocation() -> None:
    out = harness.run_parties(_attack_job, 2, args=("huge",), provider="TFP")
    assert out[1].startswith("refused: party 0 announced a message of 1099511627776 bytes")


def test_objects_still_flow_between_parties() -> None:
    out = harness.run_parties(_attack_job, 2, args=("ok",), provider="TFP")
    got, got_b = out[1]
    assert got == {"shape": torch.Size([2, 3]), "n": 7}
    assert got_b[:2] == (1, "two") and torch.equal(got_b[2], torch.tensor([3.0]))


def _crypten_pickle_job(crypten, rank):
    # CrypTen's own unpickling entry points are closed too
    with pytest.raises(SerializationError, match="refuses all unpickling"):
        crypten.common.serial.restricted_loads(pickle.dumps([1]))
    with pytest.raises(UnsupportedOperationError, match="disabled by Veil"):
        crypten.common.serial.register_safe_class(_Evil)
    # sharing with broadcast size (the path CrypTen pickles a torch.Size on) still works
    AST = crypten.mpc.primitives.ArithmeticSharedTensor
    x = AST(torch.arange(6).reshape(2, 3) if rank == 0 else None, src=0, broadcast_size=True,
            precision=0)
    return x.reveal().tolist()


def test_crypten_unpickling_paths_are_closed() -> None:
    out = harness.run_parties(_crypten_pickle_job, 2, provider="TFP")
    assert out == [[[0, 1, 2], [3, 4, 5]]] * 2


# ------------------------------------------------------------------ requests to the dealer

_SZ = torch.Size([4, 5])


@pytest.mark.parametrize("request_", [
    "terminate",
    {"function": "additive", "device": "cpu", "args": (_SZ, _SZ, "mul"), "kwargs": {}},
    {"function": "additive", "device": "cuda:0", "args": (torch.Size([1, 3, 8, 8]),
     torch.Size([2, 3, 3, 3]), "conv2d"), "kwargs": {"stride": 1, "padding": (1, 1)}},
    {"function": "square", "device": None, "args": (_SZ,), "kwargs": {}},
    {"function": "binary", "device": "cpu", "args": (_SZ, _SZ), "kwargs": {}},
    {"function": "wraps", "device": "cpu", "args": (_SZ,), "kwargs": {}},
    {"function": "B2A", "device": "cpu", "args": (_SZ,), "kwargs": {}},
])
def test_dealer_accepts_what_crypten_asks(request_) -> None:
    assert msg.check_dealer_request(msg.decode(msg.encode(request_))) == request_


@pytest.mark.parametrize(("request_", "why"), [
    ({"function": "__init__", "device": "cpu", "args": (), "kwargs": {}}, "not one of"),
    ({"function": "additive", "device": "cpu", "args": (_SZ, _SZ, "save"), "kwargs": {}},
     "dealer op"),
    ({"function": "square", "device": "cpu", "args": (torch.Size([1 << 20, 1 << 10]),),
      "kwargs": {}}, "elements"),
    ({"function": "square", "device": "/etc/passwd", "args": (_SZ,), "kwargs": {}}, "device"),
    ({"function": "square", "device": "cpu", "args": ((4, 5),), "kwargs": {}}, "bad size"),
    ({"function": "square", "device": "cpu", "args": (_SZ,), "kwargs": {"f": "x"}}, "keyword"),
    ({"function": "additive", "device": "cpu", "args": (_SZ, _SZ, "mul", "x"), "kwargs": {}},
     "extra"),
    ({"function": "square"}, "must be a dict"),
    ([1, 2], "must be a dict"),
])
def test_dealer_refuses_other_requests(request_, why: str) -> None:
    with pytest.raises(SerializationError, match=why):
        msg.check_dealer_request(request_)


def _evil_request_job(crypten, rank):
    comm = crypten.communicator.get()
    if rank == 0:  # party 0 asks the dealer to run something it does not serve
        evil = {"function": "_setup_generators", "device": "cpu", "args": (), "kwargs": {}}
        comm.send_obj(evil, comm.get_ttp_rank(), comm.ttp_group)
    return rank


def test_dealer_stops_on_a_bad_request() -> None:
    with pytest.raises(RuntimeError, match=r"party 2 failed:(.|\n)*SerializationError"
                                           r"(.|\n)*_setup_generators"):
        harness.run_parties(_evil_request_job, 2, provider="TTP", timeout=60)


def test_party0_checks_the_dealers_size_reply() -> None:
    msg._check_size_reply(torch.Size([3, 4]))
    for bad in (torch.Size([1 << 20, 1 << 20]), (3, 4), "x"):
        with pytest.raises(SerializationError, match="the dealer announced"):
            msg._check_size_reply(bad)

"""Always-on communication accounting: bytes and rounds per party, per operation, per session.

CrypTen counts communication only in verbose mode (and then counts 8 bytes per element whatever
the dtype, and ``world_size`` peers even for the two-member dealer group). Veil's installer
(``veil.mpc._crypten.install``) wraps the methods of CrypTen's ``DistributedCommunicator`` with
:func:`wrap_call` (a few integer additions each) and the MPC tensor operations with
:func:`wrap_op`, so the counts are always available and cheap.

Over Veil's own transport (``veil.mpc._runtime.backend``, the default) every collective is
built on point-to-point messages and the counts are exactly the payload bytes it sends and
receives (``tests/mpc/test_transport.py`` compares them with the transport's own counters):
``broadcast`` root ``(p - 1) n`` / others ``n``; ``all_reduce`` the direct exchange, or for
tensors of at least ``backend.RING_MIN_BYTES`` in groups of 3 or more the ring
(:func:`veil.mpc._runtime.backend.allreduce_bytes`); ``reduce`` and ``gather`` others send
``n`` and the root receives ``(p - 1) n``: **non-roots receive nothing**. The table below is
the model for gloo (``transport="gloo"``, ``veil party --insecure-plaintext``).

The gloo model (what one party counts; ``n`` = payload bytes of the tensor, ``p`` = members of
the group the call runs in):

============================  ==================  ======================
call                          bytes_sent          bytes_received
============================  ==================  ======================
send / isend                  n                   0
recv / irecv                  0                   n
broadcast (source)            (p - 1) * n         0
broadcast (others)            0                   n
all_reduce, all_gather        (p - 1) * n         (p - 1) * n
reduce                        gloo's ring reduce  gloo's ring reduce
gather (destination)          0                   (p - 1) * n
gather (others)               n                   0
scatter (source)              sum of others' n    0
scatter (others)              0                   own n
barrier                       0                   0
object messages               8 + encoded size    8 + encoded size
============================  ==================  ======================

Broadcasts follow gloo's binomial tree (:func:`gloo_broadcast_messages`): the table's numbers
hold for 2 and 3 processes; from 4 on, the root sends ``ceil(log2 p)`` copies and some other
processes forward copies (and count them as sent).

Each call counts one round (CrypTen's definition). ``all_reduce`` and ``all_gather`` are counted
as the direct exchange (gloo's ring moves about ``2 (p - 1) / p · n`` each way instead; every
party receives the full result either way). ``reduce`` follows gloo's ring algorithm
(:func:`gloo_reduce_bytes`): a ring reduce-scatter in which *every* party receives chunks of
partial sums — for the last chunks of the ring, sums of every party's input — followed by a
gather of the reduced chunks to the destination. Non-destination parties therefore receive data
(about ``(p - 1) / p · n``), and for a sum of shares that data is part of the opened value: Veil
never opens a value to a subset with ``reduce`` (see :func:`veil.mpc.tensor.open_ring`).
Traffic with the dealer (CrypTen's TTP groups) is counted in the totals and, separately, under
``"dealer"``.

Per-operation breakdown: communication is attributed to the outermost named operation in
progress, either one of the MPC tensor operations wrapped here (mul, matmul, lt, relu, exp, ...)
or a block opened with :func:`operation`. Counters are per process (each party counts its own).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from veil.errors import ConfigurationError

__all__ = ["is_installed", "stats", "totals", "reset", "operation", "record", "TRACKED_OPS",
           "TENSOR_CALLS", "OPERATORS", "wrap_call", "wrap_op", "gloo_reduce_bytes",
           "gloo_broadcast_messages"]

# CrypTen communicator methods whose traffic is counted.
TENSOR_CALLS = (
    "send", "recv", "isend", "irecv", "broadcast", "all_reduce", "all_gather", "reduce",
    "gather", "scatter", "barrier",
)
# MPC tensor operations whose communication is attributed to them (outermost wins).
TRACKED_OPS = (
    "add", "sub", "mul", "div", "matmul", "conv1d", "conv2d", "square", "pow", "lt", "le",
    "gt", "ge", "eq", "ne", "relu", "sign", "abs", "exp", "log", "reciprocal", "sqrt",
    "sigmoid", "tanh", "softmax", "log_softmax", "max", "min", "argmax", "argmin",
    "max_pool2d", "avg_pool2d", "where", "get_plain_text", "reveal", "sum", "mean", "dot",
    "polynomial", "inv_sqrt", "cos", "sin",
)
# Python operators look methods up on the class directly, bypassing CrypTen's dispatch.
# (MPCTensor has no ``__pow__`` of its own: ``x ** k`` reaches ``pow`` through its dispatch.)
OPERATORS = {
    "__add__": "add", "__radd__": "add", "__sub__": "sub", "__rsub__": "sub", "__mul__": "mul",
    "__rmul__": "mul", "__matmul__": "matmul", "__truediv__": "div", "__abs__": "abs",
    "__lt__": "lt", "__le__": "le", "__gt__": "gt", "__ge__": "ge",
}


class _Ledger:
    __slots__ = ("sent", "received", "rounds", "dealer", "ops", "stack")

    def __init__(self) -> None:
        self.sent = self.received = self.rounds = 0
        self.dealer = [0, 0, 0]
        self.ops: dict[str, list[int]] = {}
        self.stack: list[str] = []

    def add(self, sent: int, received: int, dealer: bool) -> None:
        self.sent += sent
        self.received += received
        self.rounds += 1
        if dealer:
            d = self.dealer
            d[0] += sent
            d[1] += received
            d[2] += 1
        if self.stack:
            op = self.ops[self.stack[0]]
            op[0] += sent
            op[1] += received
            op[2] += 1


_ledger = _Ledger()


def is_installed(crypten: Any) -> bool:
    """Whether Veil's installer has wrapped this process's CrypTen communicator."""
    cls = crypten.communicator.DistributedCommunicator
    return bool(getattr(cls, "_veil_accounting", False))


def _group_info(comm: Any, group: Any) -> tuple[int, bool]:
    """(members of ``group``, whether it involves the dealer)."""
    if group is None or group is getattr(comm, "main_group", None):
        return comm.get_world_size(), False
    import torch.distributed as dist

    dealer = group is getattr(comm, "ttp_group", None) or group is getattr(
        comm, "ttp_comm_group", None)
    return dist.get_world_size(group), dealer


def _nbytes(t: Any) -> int:
    t = getattr(t, "_tensor", t)  # CUDALongTensor wraps a tensor
    return t.numel() * t.element_size()


def record(comm: Any, group: Any, *, sent: int = 0, received: int = 0) -> None:
    """Count one communication round of this party (used by Veil's object messages)."""
    if comm is None or not _is_installed_cls(type(comm)):
        return
    _ledger.add(sent, received, _group_info(comm, group)[1])


def _is_installed_cls(cls: type) -> bool:
    return bool(getattr(cls, "_veil_accounting", False))


def _count(name: str, comm: Any, args: tuple, kwargs: dict, result: Any) -> tuple[int, int, Any]:
    rank = comm.get_rank()
    group = kwargs.get("group")
    if name == "broadcast" and group is None and len(args) > 2:
        group = args[2]
    p, _ = _group_info(comm, group)
    if name == "barrier":
        return 0, 0, group
    if name in ("send", "isend"):
        return _nbytes(args[0]), 0, group
    if name in ("recv", "irecv"):
        return 0, _nbytes(args[0]), group
    batched = kwargs.get("batched", False)
    n = sum(_nbytes(x) for x in args[0]) if batched else (
        _nbytes(args[0]) if name != "scatter" else 0)
    if _veil_backend():
        return _count_veil(name, comm, args, kwargs, result, group, p, n)
    if name == "broadcast":
        src = args[1] if len(args) > 1 else kwargs["src"]
        sends, receives = gloo_broadcast_messages(p, _group_rank(comm, group, rank),
                                                  _group_rank(comm, group, src))
        return sends * n, receives * n, group
    if name in ("all_reduce", "all_gather"):
        return (p - 1) * n, (p - 1) * n, group
    if name == "reduce":
        dst = args[1] if len(args) > 1 else kwargs["dst"]
        elem = getattr(args[0], "_tensor", args[0]).element_size()
        sent, received = gloo_reduce_bytes(n, elem, p, _group_rank(comm, group, rank),
                                           _group_rank(comm, group, dst))
        return sent, received, group
    if name == "gather":
        dst = args[1] if len(args) > 1 else kwargs["dst"]
        return (0, (p - 1) * n, group) if dst == rank else (n, 0, group)
    # scatter(scatter_list, src, ...)
    src = args[1] if len(args) > 1 else kwargs["src"]
    if src == rank:
        return sum(_nbytes(x) for i, x in enumerate(args[0]) if i != rank), 0, group
    return 0, _nbytes(result), group


def _veil_backend() -> bool:
    """Whether this session runs on Veil's own transport (``veil.mpc._runtime.backend``)."""
    from veil.mpc._runtime import backend

    return backend.current() is not None


def _count_veil(name: str, comm: Any, args: tuple, kwargs: dict, result: Any, group: Any,
                p: int, n: int) -> tuple[int, int, Any]:
    """Veil's transport: direct messages (see ``veil.mpc._runtime.backend``)."""
    from veil.mpc._runtime.backend import allreduce_bytes

    rank = comm.get_rank()
    if name == "broadcast":
        src = args[1] if len(args) > 1 else kwargs["src"]
        return ((p - 1) * n, 0, group) if src == rank else (0, n, group)
    if name == "all_reduce":
        tensors = args[0] if kwargs.get("batched", False) else [args[0]]
        me = _group_rank(comm, group, rank)
        totals = [allreduce_bytes(getattr(x, "_tensor", x), p, me) for x in tensors]
        return sum(s for s, _ in totals), sum(r for _, r in totals), group
    if name == "all_gather":
        return (p - 1) * n, (p - 1) * n, group
    if name in ("reduce", "gather"):
        dst = args[1] if len(args) > 1 else kwargs["dst"]
        return (0, (p - 1) * n, group) if dst == rank else (n, 0, group)
    src = args[1] if len(args) > 1 else kwargs["src"]  # scatter
    if src == rank:
        return sum(_nbytes(x) for i, x in enumerate(args[0]) if i != rank), 0, group
    return 0, _nbytes(result), group


def _group_rank(comm: Any, group: Any, rank: int) -> int:
    """A global rank's rank inside ``group`` (CrypTen's calls pass global ranks)."""
    if group is None or group is getattr(comm, "main_group", None):
        return rank
    import torch.distributed as dist

    try:
        return int(dist.get_group_rank(group, rank))
    except (RuntimeError, ValueError, AttributeError):
        return rank


_GLOO_MAX_SEGMENT = 1024 * 1024  # gloo::ReduceOptions::kMaxSegmentSize


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def gloo_broadcast_messages(p: int, rank: int, root: int) -> tuple[int, int]:
    """(copies sent, copies received) by ``rank`` in gloo's binomial-tree broadcast from
    ``root`` (gloo/broadcast.cc): with more than 3 processes some non-roots forward the value."""
    v = (rank - root) % p
    dim = max(1, (p - 1).bit_length())
    mask = (1 << dim) - 1
    sends = receives = 0
    for i in range(dim):
        mask ^= 1 << i
        if v & mask or (v ^ (1 << i)) >= p:
            continue
        if v & (1 << i):
            receives += 1
        else:
            sends += 1
    return sends, receives


def gloo_reduce_bytes(nbytes: int, element_size: int, p: int, rank: int,
                      root: int) -> tuple[int, int]:
    """(bytes sent, bytes received) by ``rank`` in gloo's ring ``reduce`` of ``nbytes`` to
    ``root`` among ``p`` processes (gloo/reduce.cc: a segmented ring reduce-scatter, then every
    process sends its reduced chunk to the root). Every process receives data, not only the
    root."""
    if nbytes <= 0 or p < 2:
        return 0, 0
    max_seg = element_size * max(1, _GLOO_MAX_SEGMENT // element_size)
    seg = _round_up(min((nbytes + 2 * p - 1) // (2 * p), max_seg), element_size)
    segments = _round_up(max((nbytes + seg - 1) // seg, 2 * p), p)
    per_rank = segments // p
    ring = segments * seg
    sent = received = 0
    for i in range(segments - 2):  # reduce-scatter: send to rank - 1, receive from rank + 1
        sent += max(0, min(seg, nbytes - (((rank + 1) * per_rank + i) * seg) % ring))
        received += max(0, min(seg, nbytes - (((rank + 2) * per_rank + i) * seg) % ring))
    chunk = per_rank * seg
    if rank == root:
        received += sum(max(0, min(chunk, nbytes - r * chunk)) for r in range(p) if r != root)
    else:
        sent += max(0, min(chunk, nbytes - rank * chunk))
    return sent, received


def wrap_call(name: str, fn: Any) -> Any:
    """``fn`` (the communicator method ``name``) counting its bytes and rounds."""

    @functools.wraps(fn)
    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = fn(self, *args, **kwargs)
        if self.get_world_size() >= 2:
            sent, received, group = _count(name, self, args, kwargs, result)
            _ledger.add(sent, received, _group_info(self, group)[1])
        return result

    counted._veil_original = fn  # type: ignore[attr-defined]
    return counted


def wrap_op(name: str, fn: Any) -> Any:
    """``fn`` (an MPC tensor operation) attributing the communication inside it to ``name``."""

    @functools.wraps(fn)
    def tracked(*args: Any, **kwargs: Any) -> Any:
        stack = _ledger.stack
        if stack:
            return fn(*args, **kwargs)
        entry = _ledger.ops.get(name)
        if entry is None:
            entry = _ledger.ops[name] = [0, 0, 0, 0]
        entry[3] += 1
        stack.append(name)
        try:
            return fn(*args, **kwargs)
        finally:
            stack.pop()

    tracked._veil_original = fn  # type: ignore[attr-defined]
    return tracked


@contextmanager
def operation(name: str) -> Iterator[None]:
    """Attribute the communication inside this block to ``name`` (unless an outer one is open).

    Example: ``with accounting.operation("share"): x = party.share(t, src=0)``.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"an operation name must be a non-empty str, got {name!r}")
    stack = _ledger.stack
    if stack:
        yield
        return
    entry = _ledger.ops.get(name)
    if entry is None:
        entry = _ledger.ops[name] = [0, 0, 0, 0]
    entry[3] += 1
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _op_dict(v: list[int]) -> dict[str, int]:
    return {"bytes_sent": v[0], "bytes_received": v[1], "rounds": v[2], "calls": v[3]}


def stats() -> dict[str, Any]:
    """This party's counters since the last :func:`reset`.

    Keys: ``bytes_sent``, ``bytes_received``, ``rounds`` (totals), ``dealer`` (the part of the
    totals exchanged with the dealer, same keys) and ``operations`` (name -> bytes_sent,
    bytes_received, rounds, calls). Cheap: a few dict look-ups.
    """
    d = _ledger.dealer
    return {
        "bytes_sent": _ledger.sent,
        "bytes_received": _ledger.received,
        "rounds": _ledger.rounds,
        "dealer": {"bytes_sent": d[0], "bytes_received": d[1], "rounds": d[2]},
        "operations": {k: _op_dict(v) for k, v in _ledger.ops.items()},
    }


def totals() -> tuple[int, int, int]:
    """``(bytes_sent, bytes_received, rounds)`` of this party since the last :func:`reset`
    (the totals of :func:`stats`, without building its dicts: cheap enough for every phase)."""
    return _ledger.sent, _ledger.received, _ledger.rounds


def reset() -> None:
    """Zero every counter of this party (an operation block in progress keeps its name)."""
    _ledger.sent = _ledger.received = _ledger.rounds = 0
    _ledger.dealer = [0, 0, 0]
    _ledger.ops = {name: [0, 0, 0, 0] for name in _ledger.stack}

"""The ``veil`` torch.distributed backend: CrypTen's collectives over :class:`Mesh` streams.

Registered with ``torch.distributed.Backend.register_backend`` (:func:`register`), it replaces
gloo for every process group of a session, so CrypTen, Veil's own messages and the dealer run
unchanged while every byte goes over an authenticated stream. The collectives are built on
point-to-point messages, each keyed by ``(group, step, sequence)``: members call collectives
of a group in the same order (as with gloo), so their sequence numbers agree.

Algorithms (they fix what each process receives, which ``veil.mpc.accounting`` counts):

* ``broadcast``: the root sends to each member; ``reduce`` and ``gather``: each member sends
  to the root only, so **non-root members receive nothing** (gloo's ring reduce hands every
  member partial sums of the opened value);
* ``all_reduce``: each member sends its tensor to every other member and adds the others' in
  rank order (so every member gets bit-identical results), except for tensors of at least
  :data:`RING_MIN_BYTES` in groups of 3 or more, which use a ring (reduce-scatter then
  all-gather, ``2 (p - 1) / p`` of the tensor each way, like gloo);
* ``all_gather``, ``scatter``: direct; ``barrier``: an empty message to and from every member.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from veil.mpc._runtime.mesh import Mesh

__all__ = ["register", "attach", "detach", "current", "set_timeout", "allreduce_bytes",
           "RING_MIN_BYTES", "NAME"]

NAME = "veil"
RING_MIN_BYTES = 1 << 18
_P2P = 0
_state: dict[str, Any] = {"mesh": None, "timeout": 60.0}
_lock = threading.Lock()


def attach(mesh: Mesh, timeout: float) -> None:
    """Make ``mesh`` the transport of process groups created from now on in this process."""
    with _lock:
        _state["mesh"], _state["timeout"] = mesh, float(timeout)


def detach() -> Mesh | None:
    with _lock:
        mesh, _state["mesh"] = _state["mesh"], None
    return mesh


def current() -> Mesh | None:
    return _state["mesh"]


def set_timeout(timeout: float) -> None:
    """Per-operation deadline (seconds) of every ``veil`` process group of this process."""
    _state["timeout"] = float(timeout)


def register() -> None:
    """Register the ``veil`` backend with torch.distributed (once per process)."""
    if NAME in getattr(dist.Backend, "backend_list", ()):
        return
    dist.Backend.register_backend(NAME, _create, extended_api=True, devices=["cpu", "cuda"])


def _create(dist_opts: Any, backend_opts: Any = None) -> Any:
    mesh = _state["mesh"]
    if mesh is None:
        raise RuntimeError("the veil backend has no mesh: veil.mpc sets one up before "
                           "crypten.init(); use veil.mpc.run or `veil party`")
    ranks = list(dist_opts.global_ranks_in_group) or list(range(dist_opts.group_size))
    gid = str(dist_opts.group_id)
    group = int(gid) if gid.isdigit() else abs(hash(gid)) % (1 << 31)
    return Group(mesh, dist_opts.group_rank, ranks, group)


class Done(dist._Work):
    def __init__(self, result: list[Any] | None = None) -> None:
        super().__init__()
        self._fut = torch.futures.Future()
        self._fut.set_result(result or [])

    def wait(self, timeout: timedelta = timedelta(0)) -> bool:
        return True

    def is_completed(self) -> bool:
        return True

    def is_success(self) -> bool:
        return True

    def get_future(self) -> Any:
        return self._fut

class Pending(Done):
    """A receive, carried out when it is waited for."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        self._run, self._done = run, False

    def wait(self, timeout: timedelta = timedelta(0)) -> bool:
        if not self._done:
            self._run()
            self._done = True
        return True

    def is_completed(self) -> bool:
        return self._done

class Group(dist.ProcessGroup):
    def __init__(self, mesh: Mesh, rank: int, ranks: list[int], group: int) -> None:
        super().__init__(rank, len(ranks))
        self.mesh, self.me, self.ranks, self.group = mesh, rank, ranks, group
        self.seq = 0
        self.p2p_sent: dict[tuple[int, int], int] = {}
        self.p2p_recv: dict[tuple[int, int], int] = {}

    def getBackendName(self) -> str:
        return NAME

    # -- messages ----------------------------------------------------------------------
    def _send(self, dst: int, kind: int, seq: int, t: Any) -> None:
        self.mesh.send(self.ranks[dst], self.group, kind, seq, as_bytes(t))

    def _recv_into(self, src: int, kind: int, seq: int, t: Any) -> None:
        buf = self.mesh.recv(self.ranks[src], self.group, kind, seq, _state["timeout"])
        fill(t, buf, src=self.ranks[src])

    def _recv_new(self, src: int, kind: int, seq: int, like: Any) -> Any:
        out = torch.empty_like(like, device="cpu")
        self._recv_into(src, kind, seq, out)
        return out

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    # -- point to point ----------------------------------------------------------------
    def send(self, tensors: list[Any], dst: int, tag: int) -> Any:
        for t in tensors:
            n = self.p2p_sent.get((dst, tag), 0)
            self.p2p_sent[(dst, tag)] = n + 1
            self._send(dst, _P2P, (tag & 0xFFFFFFFF) << 32 | n, t)
        return Done()

    def recv(self, tensors: list[Any], src: int, tag: int) -> Any:
        seqs = []
        for _ in tensors:
            n = self.p2p_recv.get((src, tag), 0)
            self.p2p_recv[(src, tag)] = n + 1
            seqs.append((tag & 0xFFFFFFFF) << 32 | n)

        def run() -> None:
            for t, s in zip(tensors, seqs, strict=True):
                self._recv_into(src, _P2P, s, t)
        return Pending(run)

    # -- collectives -------------------------------------------------------------------
    def broadcast(self, tensors: list[Any], opts: Any) -> Any:
        seq, root = self._next(), opts.rootRank
        for i, t in enumerate(tensors):
            if self.me == root:
                for r in range(len(self.ranks)):
                    if r != root:
                        self._send(r, 1 + i, seq, t)
            else:
                self._recv_into(root, 1 + i, seq, t)
        return Done(tensors)

    def allreduce(self, tensors: list[Any], opts: Any) -> Any:
        seq, op = self._next(), opts.reduceOp
        for i, t in enumerate(tensors):
            p = len(self.ranks)
            if p >= 3 and t.numel() * t.element_size() >= RING_MIN_BYTES:
                self._ring_allreduce(t, op, seq, 1 + 2 * p * i)
            else:
                self._direct_allreduce(t, op, seq, 1 + 2 * p * i)
        return Done(tensors)

    def _direct_allreduce(self, t: Any, op: Any, seq: int, kind: int) -> None:
        p = len(self.ranks)
        for r in range(p):
            if r != self.me:
                self._send(r, kind, seq, t)
        mine = t.detach().to("cpu", copy=True)
        acc = None
        for r in range(p):  # rank order: identical results everywhere
            part = mine if r == self.me else self._recv_new(r, kind, seq, mine)
            acc = part if acc is None else combine(acc, part, op)
        t.copy_(finish(acc, op, p))

    def _ring_allreduce(self, t: Any, op: Any, seq: int, kind: int) -> None:
        p, r = len(self.ranks), self.me
        flat = t.detach().to("cpu", copy=True).reshape(-1)
        chunks = list(torch.tensor_split(flat, p))
        nxt, prv = (r + 1) % p, (r - 1) % p
        for s in range(p - 1):  # reduce-scatter
            self._send(nxt, kind + s, seq, chunks[(r - s) % p])
            j = (r - s - 1) % p
            chunks[j].copy_(combine(chunks[j], self._recv_new(prv, kind + s, seq,
                                                              chunks[j]), op))
        for s in range(p - 1):  # all-gather of the reduced chunks
            k = kind + p + s
            self._send(nxt, k, seq, chunks[(r - s + 1) % p])
            self._recv_into(prv, k, seq, chunks[(r - s) % p])
        t.copy_(finish(flat, op, p).view(t.shape))

    def reduce(self, tensors: list[Any], opts: Any) -> Any:
        seq, root, op = self._next(), opts.rootRank, opts.reduceOp
        p = len(self.ranks)
        for i, t in enumerate(tensors):
            if self.me != root:
                self._send(root, 1 + i, seq, t)
                continue
            mine, acc = t.detach().to("cpu", copy=True), None
            for r in range(p):
                part = mine if r == root else self._recv_new(r, 1 + i, seq, mine)
                acc = part if acc is None else combine(acc, part, op)
            t.copy_(finish(acc, op, p))
        return Done(tensors)

    def allgather(self, outputs: list[list[Any]], inputs: list[Any], opts: Any) -> Any:
        seq = self._next()
        for i, (outs, t) in enumerate(zip(outputs, inputs, strict=True)):
            for r in range(len(self.ranks)):
                if r != self.me:
                    self._send(r, 1 + i, seq, t)
            for r, out in enumerate(outs):
                if r == self.me:
                    out.copy_(t)
                else:
                    self._recv_into(r, 1 + i, seq, out)
        return Done(outputs)

    def gather(self, outputs: list[list[Any]], inputs: list[Any], opts: Any) -> Any:
        seq, root = self._next(), opts.rootRank
        for i, t in enumerate(inputs):
            if self.me != root:
                self._send(root, 1 + i, seq, t)
                continue
            for r, out in enumerate(outputs[i]):
                if r == root:
                    out.copy_(t)
                else:
                    self._recv_into(r, 1 + i, seq, out)
        return Done(outputs)

    def scatter(self, outputs: list[Any], inputs: list[list[Any]], opts: Any) -> Any:
        seq, root = self._next(), opts.rootRank
        for i, out in enumerate(outputs):
            if self.me != root:
                self._recv_into(root, 1 + i, seq, out)
                continue
            for r, t in enumerate(inputs[i]):
                if r == root:
                    out.copy_(t)
                else:
                    self._send(r, 1 + i, seq, t)
        return Done(outputs)

    def barrier(self, opts: Any = None) -> Any:
        seq = self._next()
        empty = torch.empty(0, dtype=torch.uint8)
        for r in range(len(self.ranks)):
            if r != self.me:
                self._send(r, 1, seq, empty)
        for r in range(len(self.ranks)):
            if r != self.me:
                self._recv_into(r, 1, seq, empty)
        return Done()


def allreduce_bytes(t: Any, p: int, rank: int) -> tuple[int, int]:
    """(bytes sent, bytes received) by group rank ``rank`` in an ``all_reduce`` of ``t``."""
    elem, numel = t.element_size(), t.numel()
    if p < 3 or numel * elem < RING_MIN_BYTES:
        return (p - 1) * numel * elem, (p - 1) * numel * elem
    sizes = [c.numel() * elem for c in torch.tensor_split(torch.empty(numel, device="meta"), p)]
    sent = sum(sizes[(rank - s) % p] + sizes[(rank - s + 1) % p] for s in range(p - 1))
    received = sum(sizes[(rank - s - 1) % p] + sizes[(rank - s) % p] for s in range(p - 1))
    return sent, received


def as_bytes(t: Any) -> Any:
    """The raw bytes of tensor ``t`` as a buffer (a copy only if it is on a GPU or strided)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy()


def fill(t: Any, buf: bytearray, *, src: int) -> None:
    """Copy received bytes into tensor ``t``; refuses a payload of the wrong length."""
    want = t.numel() * t.element_size()
    if len(buf) != want:
        raise ConnectionError(f"rank {src} sent {len(buf)} bytes where {want} were expected "
                              "(the parties' programs diverge)")
    if want == 0:
        return
    flat = torch.frombuffer(buf, dtype=torch.uint8).view(t.dtype).view(t.shape)
    t.copy_(flat)


def combine(a: Any, b: Any, op: Any) -> Any:
    """``a (op) b`` for a torch.distributed ReduceOp."""
    R = dist.ReduceOp.RedOpType
    op = getattr(op, "op", op)
    if op == R.SUM or op == R.AVG:
        return a + b
    if op == R.PRODUCT:
        return a * b
    if op == R.MIN:
        return torch.minimum(a, b)
    if op == R.MAX:
        return torch.maximum(a, b)
    if op == R.BAND:
        return a & b
    if op == R.BOR:
        return a | b
    if op == R.BXOR:
        return a ^ b
    raise ValueError(f"the veil backend does not support reduce op {op}")


def finish(acc: Any, op: Any, p: int) -> Any:
    return acc / p if getattr(op, "op", op) == dist.ReduceOp.RedOpType.AVG else acc

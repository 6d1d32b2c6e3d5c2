"""Leakage harness: what a party that is NOT a recipient of a release receives.

One body for every protocol: a :class:`Backend` runs a release over ``datasets`` (one per party)
and hands back each party's :class:`View`: everything the party process received over the
communicator, recorded by wrapping ``torch.distributed``'s receiving calls *inside the party
process* (recv/irecv, broadcast, all_reduce, reduce, all_gather, gather, scatter,
batch_isend_irecv: the buffers as they are after the call, i.e. the raw bytes that reached the
party, not only what the API returns), plus what the API returned to it.
:func:`check_non_recipients` runs the release on two datasets ``a`` and ``b`` that agree on
every output a non-recipient is entitled to (the row count ``N``, which the preflight opens to
all, and nothing else: the recipients' outputs *differ*), and compares every non-recipient's two
views.

How the harness decides that a view does not depend on the data. Shares, Beaver openings and
dealer traffic are fresh random ring elements in every run, so two views can never be equal
byte for byte. The rule, message by message (the i-th receiving call of run a against the i-th
of run b):

1. the *structure* must be identical: call name, peer, dtype and shape (so the traffic pattern
   depends on nothing but public sizes);
2. the payloads must be identical (public values: the preflight, the cohort bit, shape and
   size messages), or every element that differs must look uniformly random in *both* runs:
   a 64-bit ring element whose signed value has ``|v| >= 2**32``. A uniform element fails that
   with probability ``2**-31``; an opened plaintext of the test data (fixed point, 16
   fractional bits, ``|x| < 2**15``) or a 0/1 bit always fails it. Payloads of any other
   dtype (object messages) must be identical;
2b. one exception, by construction of CrypTen's protocols: an XOR ``all_reduce`` of 0/1
   values is the masked bit ``z = b ⊕ r`` of a binary-to-arithmetic conversion
   (``beaver.B2A_single_bit``, ``r`` a fresh random bit from the provider), a uniform bit
   whatever ``b``. Such bits are accepted one by one, and checked in aggregate: over all of
   them, a party's fraction of ones must lie within 6 standard deviations of 1/2 (plaintext
   comparison bits are not balanced). Opening a *comparison result* goes through the
   arithmetic sum (values 0/1 with ``op=SUM``) and is flagged by rule 2;
3. what the API returned must be identical (``None`` for a non-recipient).

Masking is the only way a data-dependent value may reach a non-recipient, and a masked value is
uniform; a plaintext (the leak this harness was built for: CrypTen's ``reveal(dst=r)`` is a gloo
ring reduce that leaves chunks of the opened output in every party's buffer) is small and
differs between the datasets. :func:`leaky_reduce_opening` re-creates that leak over gloo
(``transport="gloo"``), as the negative control; over Veil's own transport a reduce reaches its
root only, so even CrypTen's ``reveal(dst=r)`` would no longer leak this way.

Plugging in another backend or protocol: subclass :class:`Backend` (``parties``,
``run(datasets, stats, to, options) -> list[View]``); see :class:`MPCBackend`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNIFORM_MIN = 2**32  # a uniform 64-bit element is below this with probability 2^-31
_RECV_CALLS = ("recv", "irecv", "broadcast", "all_reduce", "reduce", "all_gather", "gather",
               "scatter", "batch_isend_irecv")


@dataclass
class Message:
    """One receiving call: ``(call, peer, dtype, shape)`` and the payload (a copy)."""

    call: str
    peer: Any
    payload: np.ndarray
    op: str = ""
    opaque: bool = False  # encrypted to a key the receiver lacks, or fresh key material


    @property
    def structure(self) -> tuple:
        return (self.call, self.peer, self.op, str(self.payload.dtype),
                tuple(self.payload.shape))

    @property
    def masked_bits(self) -> bool:
        """An XOR all_reduce of 0/1 values: CrypTen's B2A masked bit (rule 2b)."""
        return (self.call == "all_reduce" and "XOR" in self.op.upper()
                and self.payload.dtype == np.int64 and bool(np.isin(self.payload, (0, 1)).all()))


@dataclass
class View:
    """A party's complete view of one run: received messages and the API's return value."""

    rank: int
    returned: Any
    messages: list[Message] = field(default_factory=list)


# --- recording inside the party process -------------------------------------------------------
class Recorder:
    """Wraps torch.distributed's receiving calls of this process; :meth:`messages` afterwards."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, Any, Any, str]] = []  # (call, peer, tensor, op)
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> Recorder:
        import torch.distributed as dist
        import torch.distributed.distributed_c10d as c10d

        for mod in (dist, c10d):
            for name in _RECV_CALLS:
                fn = getattr(mod, name, None)
                if fn is not None:
                    self._saved.append((mod, name, fn))
                    setattr(mod, name, self._wrap(name, getattr(fn, "_leak_original", fn)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for mod, name, fn in reversed(self._saved):
            setattr(mod, name, fn)

    def _keep(self, call: str, peer: Any, tensor: Any, later: bool = False, op: str = "") -> None:
        if tensor is None:
            return
        if not later:  # synchronous: copy now (the caller may reuse the buffer)
            t = getattr(tensor, "_tensor", tensor)
            tensor = t.detach().cpu().clone()
        self._pending.append((call, peer, tensor, op))

    def _wrap(self, name: str, fn: Any) -> Any:
        import torch.distributed as dist

        @functools.wraps(fn)
        def recording(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            me = dist.get_rank()
            later = bool(kwargs.get("async_op")) or name in ("irecv", "batch_isend_irecv")

            def arg(i: int, key: str) -> Any:
                return args[i] if len(args) > i else kwargs.get(key)

            if name in ("recv", "irecv"):
                self._keep(name, arg(1, "src"), arg(0, "tensor"), later)
            elif name == "broadcast":
                if arg(1, "src") != me:
                    self._keep(name, arg(1, "src"), arg(0, "tensor"), later)
            elif name in ("all_reduce", "reduce"):  # every rank's buffer after the call
                op = arg(1 if name == "all_reduce" else 2, "op")
                self._keep(name, None, arg(0, "tensor"), later, str(op or "SUM"))
            elif name == "all_gather":
                for i, t in enumerate(arg(0, "tensor_list") or []):
                    self._keep(name, i, t, later)
            elif name == "gather":
                for i, t in enumerate(arg(1, "gather_list") or []):
                    self._keep(name, i, t, later)
            elif name == "scatter":
                if arg(2, "src") != me:
                    self._keep(name, arg(2, "src"), arg(0, "tensor"), later)
            elif name == "batch_isend_irecv":
                for op in arg(0, "p2p_op_list") or []:
                    if getattr(op.op, "__name__", "") == "irecv":
                        self._keep("irecv", op.peer, op.tensor, True)
            return out

        recording._leak_original = fn  # type: ignore[attr-defined]
        return recording

    def messages(self) -> list[Message]:
        out = []
        for call, peer, t, op in self._pending:
            t = getattr(t, "_tensor", t)
            out.append(Message(call, peer, t.detach().cpu().clone().numpy(), op))
        return out


def leaky_reduce_opening(party: Any, share: Any, to: Sequence[int], *, binary: bool = False) -> Any:
    """The old restricted opening (CrypTen's reduce), for the harness's negative control."""
    from veil.mpc._crypten import import_crypten

    comm = import_crypten().communicator
    if binary:
        raise NotImplementedError
    out = None
    for r in to:
        total = comm.get().reduce(share.clone(), dst=r)
        if party.rank == r:
            out = total
    return out


def _mpc_job(party: Any, x: np.ndarray, stats: Sequence[str], to: Sequence[int] | None,
             options: dict, leaky: bool) -> dict:
    from veil import stats as api

    if leaky:
        from veil.protocols.stats import shares as stats_mpc_core

        stats_mpc_core.open_ring = leaky_reduce_opening
    with Recorder() as rec:
        out = api.describe(np.asarray(x, dtype=np.float64), list(stats), party=party, to=to,
                           **options)
    return {"returned": _plain(out), "messages": rec.messages()}


def _plain(value: Any) -> Any:
    """Results as plain comparable data (arrays to lists, Regression to its fields)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "coef"):
        return {"coef": _plain(value.coef), "intercept": float(value.intercept)}
    return np.asarray(value).tolist()


# --- backends ---------------------------------------------------------------------------------
class Backend:
    """A protocol under test: runs one release and returns every party's :class:`View`."""

    name = "backend"

    def run(self, datasets: Sequence[np.ndarray], stats: Sequence[str],
            to: Sequence[int] | None, options: dict) -> list[View]:
        raise NotImplementedError


class MPCBackend(Backend):
    """``veil.stats.describe(..., party=party, to=to)`` in ``mpc.run`` (one process per party)."""

    name = "mpc"

    def __init__(self, *, leaky: bool = False, timeout: float = 300.0) -> None:
        self.leaky = leaky
        self.timeout = timeout

    def run(self, datasets: Sequence[np.ndarray], stats: Sequence[str],
            to: Sequence[int] | None, options: dict) -> list[View]:
        from veil import mpc

        # The leaky control runs over gloo, whose ring reduce is the leak it re-creates (Veil's
        # own transport sends a reduce to its root only: non-roots receive nothing).
        res = mpc.run(_mpc_job, parties=len(datasets), timeout=self.timeout,
                      transport="gloo" if self.leaky else "local",
                      per_party_args=[(d, list(stats), to, options, self.leaky)
                                      for d in datasets])
        return [View(r, out["returned"], out["messages"]) for r, out in enumerate(res)]


class HEBackend(Backend):
    """``veil.stats.joint(..., backend="paillier" | "ckks")``: roles in one process, messages
    recorded by wrapping ``stats_he.Wire.send``. The only recipient is the ``"key holder"``
    (the analyst: the API has no ``to=``); the non-recipients are the ``"aggregator"`` and the
    owners ``"owner<i>"``. Ciphertexts and public keys are *opaque* to them (semantic security;
    only kind and size are compared), every other payload must be identical."""

    def __init__(self, backend: str) -> None:
        self.name = backend

    def run(self, datasets: Sequence[np.ndarray], stats: Sequence[str],
            to: Sequence[Any] | None, options: dict) -> list[View]:
        from veil import stats as api
        from veil.protocols.stats import homomorphic as stats_he

        seen: list[tuple[str, str, str, bytes]] = []
        real = stats_he.Wire.send

        def send(wire: Any, sender: str, receiver: str, what: str, payload: bytes) -> bytes:
            seen.append((sender, receiver, what, bytes(payload)))
            return real(wire, sender, receiver, what, payload)

        stats_he.Wire.send = send  # type: ignore[method-assign]
        try:
            res = api.joint([np.asarray(d, dtype=np.float64) for d in datasets], list(stats),
                            backend=self.name, paillier_bits=1024, allow_insecure=True,
                            **options)
        finally:
            stats_he.Wire.send = real  # type: ignore[method-assign]
        roles = ["key holder", "aggregator", *(f"owner{i}" for i in range(len(datasets)))]
        views = []
        for role in roles:
            msgs = [Message(what, sender, np.frombuffer(p, dtype=np.uint8).copy(),
                            opaque=what == "public key" or "encrypted" in what
                            or what.startswith("aggregate"))
                    for sender, receiver, what, p in seen if receiver == role]
            views.append(View(role, _plain(dict(res.values)) if role == "key holder" else None,
                              msgs))  # type: ignore[arg-type]
        return views


# --- the decision ----------------------------------------------------------------------------
def _uniform(v: np.ndarray) -> np.ndarray:
    return np.abs(v.astype(np.int64).astype(np.float64)) >= UNIFORM_MIN


def compare_views(a: View, b: View) -> list[str]:
    """Reasons why ``a`` and ``b`` (one party, two datasets) differ in a data-dependent way."""
    problems = []
    if a.returned != b.returned:
        problems.append(f"party {a.rank}: the API returned different values")
    if [m.structure for m in a.messages] != [m.structure for m in b.messages]:
        problems.append(f"party {a.rank}: the traffic pattern differs "
                        f"({len(a.messages)} vs {len(b.messages)} receiving calls)")
        return problems
    for view in (a, b):
        bits = [m.payload.reshape(-1) for m in view.messages if m.masked_bits]
        total = sum(v.size for v in bits)
        if total >= 100:
            ones = sum(int(v.sum()) for v in bits)
            if abs(ones - total / 2) > 6 * (total / 4) ** 0.5:
                problems.append(f"party {view.rank}: {ones} of {total} masked B2A bits are 1 "
                                "(not uniform)")
    for i, (ma, mb) in enumerate(zip(a.messages, b.messages)):
        if np.array_equal(ma.payload, mb.payload) or (ma.masked_bits and mb.masked_bits):
            continue
        if ma.opaque and mb.opaque:  # only the structure (kind and size) is compared
            continue
        if ma.payload.dtype != np.int64:
            problems.append(f"party {a.rank}: message {i} ({ma.call}, {ma.payload.dtype}) "
                            "differs between the datasets")
            continue
        diff = ma.payload != mb.payload
        small = ~(_uniform(ma.payload[diff]) & _uniform(mb.payload[diff]))
        if small.any():
            problems.append(
                f"party {a.rank}: message {i} ({ma.call} from {ma.peer}, shape "
                f"{ma.payload.shape}) holds {int(small.sum())} data-dependent non-random "
                f"elements, e.g. {ma.payload[diff][small][:3].tolist()} vs "
                f"{mb.payload[diff][small][:3].tolist()}")
    return problems


def check_non_recipients(backend: Backend, a: Sequence[np.ndarray], b: Sequence[np.ndarray],
                         stats: Sequence[str], to: Sequence[int], options: dict | None = None,
                         ) -> tuple[list[View], list[View]]:
    """Run ``stats`` to ``to`` on datasets ``a`` and ``b``; assert every non-recipient's views
    agree (see the module docstring). Returns both runs' views (for further checks)."""
    if len(a) != len(b):
        raise ValueError("a and b need the same number of parties")
    if sum(len(x) for x in a) != sum(len(x) for x in b):
        raise ValueError("a and b need the same total row count (opened to every party)")
    views_a = backend.run(a, stats, to, dict(options or {}))
    views_b = backend.run(b, stats, to, dict(options or {}))
    problems: list[str] = []
    for va, vb in zip(views_a, views_b):
        if va.rank in to:
            continue
        assert va.returned is None, f"party {va.rank} is not in to={to} but got results"
        problems.extend(compare_views(va, vb))
    assert not problems, f"{backend.name} {list(stats)} to={to}: " + "; ".join(problems)
    return views_a, views_b

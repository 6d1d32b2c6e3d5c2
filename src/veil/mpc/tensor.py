"""Sharing from one party, revealing to chosen parties, and functional helpers.

Encoding: values are fixed-point numbers in the ring Z/2^64 with ``precision_bits`` fractional
bits (``mpc.run(..., precision_bits=16)`` by default): ``x`` is stored as ``round(x * 2^p)``.

What is revealed to whom:

* :func:`share` — party ``src`` splits its tensor into additive shares with a pseudo-random
  sharing of zero (no message carries the tensor). The *shape* is public: it is broadcast by
  ``src`` unless every party passes ``shape=``.
* :func:`reveal` — with ``to=None`` every party learns the value (all-reduce of the shares). With
  ``to=[r, ...]`` every party sends its share point-to-point to each recipient only; parties not
  in ``to`` receive nothing and get ``None``. (CrypTen's own ``get_plain_text(dst=r)`` is a
  ``reduce``; over gloo its ring hands partial sums of shares to other parties; it is not used.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from veil.errors import ConfigurationError, SerializationError, UnsupportedOperationError

__all__ = ["share", "reveal", "open_ring", "check_recipients", "cat", "stack", "where",
           "is_shared", "MAX_DIMS", "MAX_ELEMENTS"]

MAX_DIMS = 16
MAX_ELEMENTS = 1 << 28  # per shared tensor: 2 GiB of 64-bit shares per party


def _crypten() -> Any:
    from veil.mpc._crypten import import_crypten

    return import_crypten()


def is_shared(x: Any) -> bool:
    """True when ``x`` is a secret-shared tensor (a CrypTen MPCTensor)."""
    from veil.mpc._crypten import import_crypten

    return isinstance(x, import_crypten().mpc.MPCTensor)


def _check_shape(shape: Any, what: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{what} must be a sequence of ints, got {shape!r}") from exc
    if len(dims) > MAX_DIMS or any(d < 0 for d in dims):
        raise ConfigurationError(
            f"{what} must have at most {MAX_DIMS} non-negative dimensions, got {dims}")
    n = 1
    for d in dims:
        n *= d
    if n > MAX_ELEMENTS:
        raise ConfigurationError(
            f"{what} {dims} has {n} elements; at most {MAX_ELEMENTS} may be shared at once — "
            "split the tensor")
    return dims


def _as_input(t: Any, precision_bits: int) -> Any:
    import torch

    if not torch.is_tensor(t):
        try:
            t = torch.as_tensor(t, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigurationError(
                f"share() needs a torch tensor (or array-like of numbers), got {type(t).__name__}"
            ) from exc
    if t.is_complex():
        raise ConfigurationError("share() got a complex tensor; share real and imaginary parts")
    if t.dtype == torch.bool:
        t = t.to(torch.float64)
    if t.is_floating_point():
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = t[~finite].flatten()[0].item()
            raise ConfigurationError(
                f"share() got a non-finite value ({bad}); remove NaN/inf before sharing")
    limit = 2.0 ** (62 - precision_bits)
    if t.numel() and float(t.abs().max()) >= limit:
        raise ConfigurationError(
            f"share() got |x| = {float(t.abs().max()):g}, which does not fit the fixed-point "
            f"encoding with {precision_bits} fractional bits (|x| < 2^{62 - precision_bits}); "
            "scale the data down or lower precision_bits")
    return t


def share(
    party: Any,
    tensor: Any,
    *,
    src: int,
    shape: Sequence[int] | None = None,
) -> Any:
    """Secret-share ``tensor`` held by party ``src``; every party must call this together."""
    import torch

    crypten = _crypten()
    comm = crypten.comm.get()
    ws, rank = party.world_size, party.rank
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < ws:
        raise ConfigurationError(f"src must be a party rank in 0..{ws - 1}, got {src!r}")
    precision = crypten.cfg.encoder.precision_bits
    dims: tuple[int, ...] | None = None if shape is None else _check_shape(shape, "shape")
    if rank == src:
        if tensor is None:
            raise ConfigurationError(
                f"party {rank} is src of this share() call and must pass its tensor, got None")
        t = _as_input(tensor, precision)
        _check_shape(t.shape, "tensor shape")
        if dims is not None and tuple(t.shape) != dims:
            raise ConfigurationError(
                f"share(): tensor has shape {tuple(t.shape)} but shape={dims} was passed")
    elif tensor is not None:
        raise ConfigurationError(
            f"party {rank} passed a tensor to share(src={src}); only party {src} provides the "
            "data, the others pass None")
    if dims is None:  # src broadcasts the shape as plain integers (no pickle)
        head = torch.zeros(1 + MAX_DIMS, dtype=torch.long)
        if rank == src:
            head[0] = t.dim()
            head[1:1 + t.dim()] = torch.tensor(t.shape, dtype=torch.long)
        comm.broadcast(head, src)
        ndim = int(head[0])
        if not 0 <= ndim <= MAX_DIMS:
            raise SerializationError(
                f"party {src} announced a tensor with {ndim} dimensions (at most {MAX_DIMS})")
        dims = tuple(int(d) for d in head[1:1 + ndim])
        try:
            _check_shape(dims, f"shape announced by party {src}")
        except ConfigurationError as exc:
            raise SerializationError(str(exc)) from exc
    device = party.device
    data = t.to(device) if rank == src else torch.zeros(dims, device=device)
    return crypten.cryptensor(data, src=src, device=device)


def reveal(party: Any, x: Any, *, to: Sequence[int] | None = None) -> Any:
    """Open ``x`` to the parties in ``to`` (all when ``None``); ``None`` on the others."""
    crypten = _crypten()
    if not isinstance(x, crypten.mpc.MPCTensor):
        raise UnsupportedOperationError(
            f"reveal() takes a shared tensor (from party.share or arithmetic on one), got "
            f"{type(x).__name__}")
    ws = party.world_size
    if to is None:
        return x.get_plain_text()
    inner = x._tensor
    binary = isinstance(inner, crypten.mpc.primitives.BinarySharedTensor)
    total = open_ring(party, inner.share, check_recipients(ws, to), binary=binary)
    return None if total is None else inner.encoder.decode(total)


def check_recipients(world_size: int, to: Sequence[int] | int) -> list[int]:
    """``to`` as the sorted list of distinct ranks it names; a typed error if it names none or
    anything that is not a rank of this session."""
    if isinstance(to, int):
        to = [to]
    recipients = sorted(set(to))
    if not recipients or any(isinstance(r, bool) or not isinstance(r, int)
                             or not 0 <= r < world_size for r in recipients):
        raise ConfigurationError(
            f"to must be None or a non-empty list of party ranks in 0..{world_size - 1}, "
            f"got {to!r}")
    return recipients


def open_ring(party: Any, share: Any, to: Sequence[int], *, binary: bool = False) -> Any:
    """Point-to-point opening of a ring tensor: every party sends its ``share`` to each rank in
    ``to`` and only those ranks receive anything. Returns the exact ring sum (XOR when
    ``binary``) on the ranks in ``to``, ``None`` elsewhere; every party must call this together
    with the same sorted, validated ``to``. Used by :func:`reveal` and the statistics kernels
    (which decode the ring elements themselves, exactly in float64)."""
    import torch

    comm = _crypten().comm.get()
    ws, rank = party.world_size, party.rank
    out = None
    for r in to:
        if rank == r:
            total = share.clone()
            for other in range(ws):
                if other == r:
                    continue
                got = comm.recv(torch.empty_like(share), src=other)
                total = total ^ got if binary else total + got
            out = total
        else:
            comm.send(share, dst=r)
    return out


def cat(tensors: Sequence[Any], dim: int = 0) -> Any:
    """Concatenate shared tensors (``torch.cat`` for MPCTensors)."""
    return _crypten().cat(list(tensors), dim=dim)


def stack(tensors: Sequence[Any], dim: int = 0) -> Any:
    """Stack shared tensors (``torch.stack`` for MPCTensors)."""
    return _crypten().stack(list(tensors), dim=dim)


def where(condition: Any, a: Any, b: Any) -> Any:
    """Element-wise ``condition ? a : b``; ``condition`` is a 0/1 tensor, shared or public.

    With a shared condition this costs one multiplication (``b + c * (a - b)``).
    """
    if is_shared(condition):
        return b + condition * (a - b)
    if is_shared(a):
        return a.where(condition, b)
    if is_shared(b):
        return b.where(~condition.bool() if hasattr(condition, "bool") else condition, a)
    raise UnsupportedOperationError("where() needs at least one shared operand; use torch.where")

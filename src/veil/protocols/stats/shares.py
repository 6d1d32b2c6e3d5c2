"""Low-level helpers of the MPC statistics kernels: sharing sums, exact opening, fixed point.

Opening goes through :func:`open_to_all` / :func:`reveal`, which decode CrypTen's ring elements
exactly in float64 (CrypTen's own decoder stops at float32) and record every opened value in the
party's transcript while one is being kept (:func:`recording`, used by
``veil.protocols.stats.secret.run_release``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from veil.errors import ConfigurationError
from veil.mpc.tensor import check_recipients, open_ring
from veil.protocols.stats import spec as st

FRAC_BITS = 16
UNIT = 2.0**-FRAC_BITS
MAX_ROWS = 2**24
_INV_SQRT_EXP = range(-8, 16)  # inv_sqrt handles v in [4^-8, 4^16)
PUBLIC_FANOUT = 15  # thresholds per round of the public search (4 bits of the output per round)
OBLIVIOUS_FANOUT = 3  # thresholds per round of the oblivious search


def load_torch() -> Any:
    import torch

    return torch


def sum_from_all(party: Any, local: np.ndarray) -> Any:
    """Shared sum over parties of each party's vector (all vectors have the same shape)."""
    torch = load_torch()
    t = torch.as_tensor(np.asarray(local, dtype=np.float64))
    total = None
    for r in range(party.world_size):
        s = party.share(t if r == party.rank else None, src=r, shape=tuple(t.shape))
        total = s if total is None else total + s
    return total


def _decode(ring: Any, scale: int) -> np.ndarray:
    """Exact float64 decoding of fixed-point ring elements (CrypTen's decode stops at float32)."""
    r = ring.cpu().numpy().astype(np.int64)
    whole = np.floor_divide(r, scale)
    return whole.astype(np.float64) + (r - whole * scale).astype(np.float64) / scale


def reveal(party: Any, x: Any, to: Sequence[int] | None) -> np.ndarray | None:
    """Open the shared ``x`` to the parties in ``to`` (all when None), in float64.

    A restricted opening is point to point (:func:`veil.mpc.tensor.open_ring`): every party
    sends its share to each recipient only, so non-recipients receive nothing, whatever the
    transport (CrypTen's ``reveal(dst=r)`` is a ``reduce``: over gloo a ring that leaves chunks of
    the opened value in every party's buffer)."""
    if to is None:
        return open_to_all(party, x)
    inner = x._tensor
    ring = open_ring(party, inner.share, check_recipients(party.world_size, to))  # point to point
    out = None if ring is None else _decode(ring, inner.encoder.scale)
    _record(party, out)
    return out


def open_to_all(party: Any, x: Any) -> np.ndarray:
    """Open ``x`` to every party, in float64 (recorded in ``party``'s transcript, if any)."""
    inner = x._tensor
    out = _decode(inner.reveal(), inner.encoder.scale)
    _record(party, out)
    return out


_TRANSCRIPTS: dict[int, list[np.ndarray]] = {}


@contextmanager
def recording(party: Any, transcript: list[np.ndarray] | None) -> Iterator[None]:
    """While inside, every value opened to ``party`` is appended to ``transcript`` (a copy);
    ``None`` records nothing."""
    if transcript is None:
        yield
        return
    _TRANSCRIPTS[id(party)] = transcript
    try:
        yield
    finally:
        _TRANSCRIPTS.pop(id(party), None)


def _record(party: Any, value: np.ndarray | None) -> None:
    log = _TRANSCRIPTS.get(id(party))
    if log is not None and value is not None:
        log.append(np.array(value, copy=True))


def as_fixed(bits: Any, like: Any) -> Any:
    """Comparison results are integer-encoded; re-encode them on ``like``'s fixed-point scale."""
    out = bits.clone()
    out._tensor.encode_(like.encoder)
    return out


def inv_sqrt(v: Any) -> Any:
    """1/sqrt(v) on shares for 4^-8 <= v < 4^16 (see :func:`inv_sqrt_parts`)."""
    y, scale = inv_sqrt_parts(v)
    return y * scale


def inv_sqrt_parts(v: Any) -> tuple[Any, Any]:
    """``(y, scale)`` with ``1/sqrt(v) = y * scale``, ``y`` in (1/2, 1] and ``scale`` a power of
    two, on shares, for 4^-8 <= v < 4^16: oblivious power-of-4 normalisation + Newton.

    Keeping the two factors apart lets callers multiply by ``scale`` first (exact up to one unit
    of the result) and by ``y`` last, so small results keep their relative precision.

    One batched comparison gives the bits ``c_i = [v >= 4^k_i]``; the normalising factor
    ``2^-k`` of v's interval is the linear form ``w_0 + sum_i c_i (w_i - w_(i-1))`` in those bits,
    with ``w_i = 2^-k_i`` exact on the fixed-point grid, so it is computed on the shares without
    communication (no per-interval multiplication and truncation).
    """
    torch = load_torch()
    exps = list(_INV_SQRT_EXP)
    w = [2.0**-k for k in exps]
    thresholds = torch.tensor([4.0**k for k in exps], dtype=torch.float64)
    bits = v.unsqueeze(-1) >= thresholds  # (m, K) shared 0/1, integer encoding
    unit = v._tensor.encoder.scale
    if bits._tensor.encoder.scale != 1 or any((wi * unit) % 1 for wi in w):
        raise ConfigurationError("inv_sqrt: unexpected fixed-point encoding of the comparison")
    steps = torch.tensor([int((w[i] - w[i - 1]) * unit) for i in range(1, len(w))],
                         dtype=torch.int64)
    scale = v.clone()
    scale._tensor.share = (bits._tensor.share[..., 1:] * steps).sum(dim=-1)  # on v's encoding
    scale = scale + w[0]
    u = (v * scale) * scale  # in [1, 4)
    half_u = u * 0.5
    y = 1.1 - 0.15 * u  # relative error <= 0.13 on [1, 4); Newton: e -> 1.5 e^2
    for _ in range(3):  # rel. error 0.13 -> 0.025 -> 1e-3 -> 1.4e-6
        y = y * (1.5 - (half_u * y) * y)
    return y, scale


def moments(party: Any, x: np.ndarray, spec: st.Spec, n: float, full: bool) -> tuple[Any, Any]:
    """Shared E[x] (d) and E[x xᵀ] (d × d) over all rows; each party divides its sums by N."""
    d = spec.d
    x = st.clip(x, spec)
    second = (x.T @ x) if full else np.diag((x * x).sum(axis=0))
    local = np.concatenate([x.sum(axis=0), second.reshape(-1)]) / n
    v = sum_from_all(party, local)
    return v[:d], v[d:].reshape(d, d)


def value_range(spec: st.Spec, col: int) -> tuple[float, float]:
    if spec.bounds is not None:
        return spec.bounds[col]
    return (-st.VALUE_LIMIT, st.VALUE_LIMIT)



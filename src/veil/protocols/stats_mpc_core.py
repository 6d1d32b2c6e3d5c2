"""Low-level helpers of the MPC statistics kernels: sharing sums, exact opening, fixed point.

Opening goes through :func:`_open` / :func:`_reveal`, which decode CrypTen's ring elements exactly
in float64 (CrypTen's own decoder stops at float32) and record every opened value in the
party's transcript when one is being kept (see ``stats_mpc.run_release``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from veil.errors import ConfigurationError
from veil.protocols import statistics as st

FRAC_BITS = 16
UNIT = 2.0**-FRAC_BITS
MAX_ROWS = 2**24
_INV_SQRT_EXP = range(-8, 16)  # inv_sqrt handles v in [4^-8, 4^16)
PUBLIC_FANOUT = 15  # thresholds per round of the public search (4 bits of the output per round)
OBLIVIOUS_FANOUT = 3  # thresholds per round of the oblivious search


def _torch() -> Any:
    import torch

    return torch


def _sum_from_all(party: Any, local: np.ndarray) -> Any:
    """Shared sum over parties of each party's vector (all vectors have the same shape)."""
    torch = _torch()
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


def _reveal(party: Any, x: Any, to: Sequence[int] | None) -> np.ndarray | None:
    """Open the shared ``x`` to the parties in ``to`` (all when None), in float64."""
    if to is None:
        return _open(party, x)
    recipients = sorted(set(to))
    if not recipients or any(not isinstance(r, int) or not 0 <= r < party.world_size
                             for r in recipients):
        raise ConfigurationError(
            f"to must be None or party ranks in 0..{party.world_size - 1}, got {list(to)}")
    out = None
    inner = x._tensor
    for r in recipients:
        ring = inner.reveal(dst=r)
        if party.rank == r:
            out = _decode(ring, inner.encoder.scale)
    _record(party, out)
    return out


def _open(party: Any, x: Any) -> np.ndarray:
    """Open ``x`` to every party, in float64 (recorded in ``party``'s transcript, if any)."""
    inner = x._tensor
    out = _decode(inner.reveal(), inner.encoder.scale)
    _record(party, out)
    return out


_TRANSCRIPTS: dict[int, list[np.ndarray]] = {}


def _record(party: Any, value: np.ndarray | None) -> None:
    log = _TRANSCRIPTS.get(id(party))
    if log is not None and value is not None:
        log.append(np.array(value, copy=True))


def _fixed(bits: Any, like: Any) -> Any:
    """Comparison results are integer-encoded; re-encode them on ``like``'s fixed-point scale."""
    out = bits.clone()
    out._tensor.encode_(like.encoder)
    return out


def inv_sqrt(v: Any) -> Any:
    """1/sqrt(v) on shares for 4^-8 <= v < 4^16: oblivious power-of-4 normalisation + Newton."""
    torch = _torch()
    exps = list(_INV_SQRT_EXP)
    thresholds = torch.tensor([4.0**k for k in exps], dtype=torch.float64)
    c = _fixed(v.unsqueeze(-1) >= thresholds, v)  # (m, K) shared bits: v >= 4^k
    ones = c[..., :-1] - c[..., 1:]
    onehot = [ones[..., i] for i in range(len(exps) - 1)] + [c[..., -1]]
    scale = None
    for k, oh in zip(exps, onehot):
        term = oh * (2.0**-k)
        scale = term if scale is None else scale + term
    scale = scale + (1 - c[..., 0]) * (2.0 ** -exps[0])  # below range: treat as 4^-8
    u = (v * scale) * scale  # in [1, 4)
    y = 1.1 - 0.15 * u  # relative error <= 0.13 on [1, 4); Newton: e -> 1.5 e^2
    for _ in range(3):  # rel. error 0.13 -> 0.025 -> 1e-3 -> 1.4e-6
        y = y * (3.0 - u * y * y) * 0.5
    return y * scale


def _moments(party: Any, x: np.ndarray, spec: st.Spec, n: float, full: bool) -> tuple[Any, Any]:
    """Shared E[x] (d) and E[x xᵀ] (d × d) over all rows; each party divides its sums by N."""
    d = spec.d
    x = st.clip(x, spec)
    second = (x.T @ x) if full else np.diag((x * x).sum(axis=0))
    local = np.concatenate([x.sum(axis=0), second.reshape(-1)]) / n
    v = _sum_from_all(party, local)
    return v[:d], v[d:].reshape(d, d)


def _range(spec: st.Spec, col: int) -> tuple[float, float]:
    if spec.bounds is not None:
        return spec.bounds[col]
    return (-st.VALUE_LIMIT, st.VALUE_LIMIT)



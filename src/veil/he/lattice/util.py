"""Small helpers of :mod:`veil.he.lattice.tensor`: operand checks and parameter suggestions."""

from __future__ import annotations

from typing import Any

from veil.errors import ConfigurationError
from veil.he.lattice.native import is_torch

__all__: list[str] = []


def _log2(n: int) -> int:
    return max(1, int(n - 1).bit_length())


def _is_scalar(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, (int, float)):
        return True
    return getattr(x, "shape", None) == () and getattr(getattr(x, "dtype", None), "kind",
                                                       "") in "iuf" and not is_torch(x)


def _as_array(x: Any) -> Any:
    import numpy as np

    if is_torch(x):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ConfigurationError(f"expected a numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _plain_matrix(x: Any, op: str) -> Any:
    import numpy as np

    m = _as_array(x)
    if m.ndim != 2 or m.size == 0:
        raise ConfigurationError(f"{op}: expected a non-empty 2-D plain matrix, got {m.shape}")
    if not np.isfinite(m).all():
        raise ConfigurationError(f"{op}: matrix has non-finite entries")
    return m


def _suggest(depth: int) -> str:
    from veil.he.params import CKKSParams

    try:
        p = CKKSParams.for_depth(depth)
    except ConfigurationError:
        return "no 128-bit parameter set holds it; reduce the depth"
    return f"N={p.poly_modulus_degree}, coeff_mod_bit_sizes={p.coeff_mod_bit_sizes}"

"""Small helpers of the CKKS tensor: operand checks, ciphertext levels, parameter suggestions."""

from __future__ import annotations

from typing import Any

from veil.errors import ConfigurationError
from veil.he.lattice.native import is_torch

__all__ = ["as_array", "is_scalar", "level_of", "log2_ceil", "plain_matrix", "suggest_params"]


def level_of(chunk: Any) -> int:
    """Levels left in one TenSEAL ``CKKSVector`` (its modulus chain length minus one)."""
    return chunk.ciphertext()[0].coeff_modulus_size() - 1


def log2_ceil(n: int) -> int:
    """``ceil(log2(n))``, at least 1: the rotations of a sum over ``n`` slots."""
    return max(1, int(n - 1).bit_length())


def is_scalar(x: Any) -> bool:
    """A plain real number (Python or numpy 0-d; not bool, not torch)."""
    if isinstance(x, bool):
        return False
    if isinstance(x, (int, float)):
        return True
    return getattr(x, "shape", None) == () and getattr(getattr(x, "dtype", None), "kind",
                                                       "") in "iuf" and not is_torch(x)


def as_array(x: Any) -> Any:
    """A float64 numpy array of a numeric array-like (torch tensors included)."""
    import numpy as np

    if is_torch(x):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ConfigurationError(f"expected a numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def plain_matrix(x: Any, op: str) -> Any:
    """A finite, non-empty 2-D float64 matrix for ``op``."""
    import numpy as np

    m = as_array(x)
    if m.ndim != 2 or m.size == 0:
        raise ConfigurationError(f"{op}: expected a non-empty 2-D plain matrix, got {m.shape}")
    if not np.isfinite(m).all():
        raise ConfigurationError(f"{op}: matrix has non-finite entries")
    return m


def suggest_params(depth: int) -> str:
    """A parameter set for ``depth``, as text for an error message."""
    from veil.he.params import CKKSParams

    try:
        p = CKKSParams.for_depth(depth)
    except ConfigurationError:
        return "no 128-bit parameter set holds it; reduce the depth"
    return f"N={p.poly_modulus_degree}, coeff_mod_bit_sizes={p.coeff_mod_bit_sizes}"

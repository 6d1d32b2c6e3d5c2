"""Fixed-point encoding of real numbers as signed integers, for additive HE (Paillier).

A value ``x`` is encoded as the integer ``round(x · 2^precision_bits)`` (round half to even, so the
encoding error is at most ``2^-(precision_bits+1)``). Integer arrays with ``precision_bits = 0``
are encoded exactly. Signed integers live in ``Z_n`` as ``v mod n``; decoding maps ``[0, n/2]``
to non-negative and ``(n/2, n)`` to negative values.

The encoding declares a plaintext range ``|x| ≤ max_abs``. Values outside it are refused with
:class:`~veil.errors.ConfigurationError` (never wrapped or clipped). Because the range is declared
rather than measured, the worst-case bound ``bound = ⌈max_abs · 2^precision_bits⌉`` that travels
with a ciphertext reveals only this public choice, nothing about the data. Homomorphic operations
grow the bound (sums add bounds, products multiply them) and refuse to run once it could leave the
signed range of the key, so a decryption never returns a silently wrapped value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from veil.errors import ConfigurationError

__all__ = [
    "FixedPointEncoding",
    "DEFAULT_FLOAT_PRECISION",
    "DEFAULT_MAX_ABS",
    "MAX_PRECISION_BITS",
]

DEFAULT_FLOAT_PRECISION = 32
DEFAULT_MAX_ABS = float(2**63)
MAX_PRECISION_BITS = 1024
_INT64_MAX = 2**63 - 1


def as_plain_array(x: Any, *, what: str = "input") -> np.ndarray:
    """``x`` as a numeric numpy array: integer kind, float kind or an object array of ints."""
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        raise ConfigurationError(
            f"{what} is not a rectangular numeric array ({exc}); pass a numpy array or a "
            "list of numbers with one shape"
        ) from exc
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64) if arr.dtype.kind == "b" else arr
    if arr.dtype.kind == "f":
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind == "O":
        flat = arr.ravel().tolist()
        if all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
            return arr
        if all(isinstance(v, (int, float)) for v in flat):
            return arr.astype(np.float64)
    raise ConfigurationError(
        f"{what} has dtype {arr.dtype}, which cannot be encoded; pass ints or floats"
    )


def is_integer_array(arr: np.ndarray) -> bool:
    """True for integer dtypes and object arrays of Python ints."""
    return arr.dtype.kind in "iuO"


def check_finite(flat: np.ndarray, what: str) -> None:
    """Raise :class:`ConfigurationError` naming the first NaN or infinity of ``flat``."""
    finite = np.isfinite(flat)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise ConfigurationError(
            f"{what} holds a non-finite value {float(flat[bad])!r} at flat index {bad}; "
            "NaN and infinity cannot be encrypted"
        )


def encode_array(arr: np.ndarray, precision_bits: int, *, what: str = "input") -> list[int]:
    """Signed integers ``round(x · 2^precision_bits)`` of ``arr`` (flattened, C order)."""
    if is_integer_array(arr):
        return [int(v) << precision_bits for v in arr.ravel().tolist()]
    flat = arr.ravel()
    check_finite(flat, what)
    with np.errstate(over="ignore"):
        scaled = np.ldexp(flat, precision_bits)
    if np.isfinite(scaled).all():
        return [int(v) for v in np.rint(scaled).tolist()]
    scale = 1 << precision_bits
    return [round(Fraction(v) * scale) for v in flat.tolist()]


def decode_ints(
    ints: Sequence[int], shape: tuple[int, ...], *, scale_bits: int, integer: bool
) -> np.ndarray:
    """Numpy array of ``v / 2^scale_bits`` (float64), or exact integers when ``integer``."""
    if integer and scale_bits == 0:
        vals = [int(v) for v in ints]
        if all(-_INT64_MAX - 1 <= v <= _INT64_MAX for v in vals):
            return np.array(vals, dtype=np.int64).reshape(shape)
        out = np.empty(len(vals), dtype=object)
        out[:] = vals
        return out.reshape(shape)
    d = 1 << scale_bits
    try:
        vals_f = [int(v) / d for v in ints]
    except OverflowError as exc:
        raise ConfigurationError(
            "a decrypted value does not fit in a float64; decrypt with a smaller scale or "
            "keep values within about 1e308"
        ) from exc
    return np.array(vals_f, dtype=np.float64).reshape(shape)


def max_abs_int(ints: Iterable[int]) -> int:
    """Largest absolute value in ``ints`` (0 for none)."""
    return max((abs(v) for v in ints), default=0)


@dataclass(frozen=True)
class FixedPointEncoding:
    """Fixed-point encoding with ``precision_bits`` fractional bits and range ``|x| ≤ max_abs``.

    ``precision_bits = 0`` with integer inputs is exact integer arithmetic. The worst-case encoded
    magnitude, :attr:`bound`, is derived from the declared range only, so it reveals nothing about
    the data.
    """

    precision_bits: int
    max_abs: float = DEFAULT_MAX_ABS

    def __post_init__(self) -> None:
        p = self.precision_bits
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise ConfigurationError(
                f"precision_bits must be an int, got {p!r}; use e.g. precision_bits=32"
            )
        if not 0 <= p <= MAX_PRECISION_BITS:
            raise ConfigurationError(
                f"precision_bits={p} is outside 0..{MAX_PRECISION_BITS}; 16-53 is typical for "
                "floats, 0 for exact integers"
            )
        object.__setattr__(self, "precision_bits", int(p))
        m = self.max_abs
        try:
            m_f = float(m)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigurationError(f"max_abs must be a positive number, got {m!r}") from exc
        if not (math.isfinite(m_f) and m_f > 0):
            raise ConfigurationError(
                f"max_abs must be a finite positive number, got {m!r}; it declares the largest "
                "|value| you will encrypt"
            )
        object.__setattr__(self, "max_abs", m_f)

    @property
    def bound(self) -> int:
        """Worst-case ``|encoded value|``: ``⌈max_abs · 2^precision_bits⌉``."""
        return math.ceil(Fraction(self.max_abs) * (1 << self.precision_bits))

    def check_range(self, arr: np.ndarray, *, what: str = "input") -> None:
        """Raise :class:`ConfigurationError` for non-finite values or ``|x| > max_abs``."""
        flat = arr.ravel()
        if flat.size == 0:
            return
        if is_integer_array(arr):
            vals = flat.tolist()
            big = max(range(len(vals)), key=lambda i: abs(vals[i]))
            worst = vals[big]
            too_big = abs(worst) > self.max_abs
        else:
            check_finite(flat, what)
            big = int(np.argmax(np.abs(flat)))
            worst = float(flat[big])
            too_big = abs(worst) > self.max_abs
        if too_big:
            raise ConfigurationError(
                f"{what} value {worst!r} at flat index {big} is outside the declared range "
                f"|x| <= max_abs={self.max_abs!r}; pass a larger max_abs (the key must hold "
                "max_abs * 2**precision_bits)"
            )

    def encode(self, values: Any) -> list[int]:
        """Signed integers for ``values`` (any shape, flattened in C order); checks the range."""
        arr = as_plain_array(values)
        self.check_range(arr)
        return encode_array(arr, self.precision_bits)

    def decode(self, ints: Sequence[int], shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Float64 array ``ints / 2^precision_bits`` (int64/object ints when precision is 0)."""
        shape = (len(ints),) if shape is None else tuple(shape)
        return decode_ints(
            ints, shape, scale_bits=self.precision_bits, integer=self.precision_bits == 0
        )

    def to_residues(self, ints: Sequence[int], modulus: int) -> list[int]:
        """Signed integers as residues mod ``modulus``; refuses values outside ±(modulus−1)/2."""
        half = (modulus - 1) // 2
        for i, v in enumerate(ints):
            if abs(v) > half:
                raise ConfigurationError(
                    f"encoded value at flat index {i} needs {abs(v).bit_length()} bits but the "
                    f"modulus holds signed values of {half.bit_length()} bits; lower "
                    "precision_bits or max_abs, or use a larger key"
                )
        return [v % modulus for v in ints]

    @staticmethod
    def from_residues(residues: Iterable[int], modulus: int) -> list[int]:
        """Residues mod ``modulus`` back to signed integers (upper half is negative)."""
        half = (modulus - 1) // 2
        return [int(r) - modulus if r > half else int(r) for r in residues]

"""``CKKSTensor``: an encrypted real tensor of any shape, packed into one or more CKKS ciphertexts.

Layout: the tensor is flattened (C order) and cut into chunks of ``slots = N/2`` values; chunk
``i`` holds elements ``[i*slots, (i+1)*slots)``. Element-wise ops work chunk by chunk.

Rotation-free (no Galois keys needed): ``+ - *`` with tensors / scalars / plain arrays, unary
``-``, ``square``, ``polyval``, :func:`veil.he.lattice.ckks.linear_combination`.
Need Galois keys (rotations): ``sum``, ``dot``, ``matmul``/``mv``, ``conv2d_im2col``,
``block_sum``, in the base class :class:`veil.he.lattice.rotations.RotationOps`.

Depth: every multiplication (ciphertext or plaintext operand, scalars included) consumes one
level; ``polyval`` of degree ``d`` consumes ``floor(log2 d) + 1``. Veil checks the remaining
levels before calling TenSEAL and raises :class:`~veil.errors.DepthExhaustedError`.

Error tracking: every tensor carries ``error_bound``, a data-independent bound on the
key-dependent noise per element, propagated through the ops (independent noises add in
quadrature; see docs/security/he-ckks.md). It sizes the noise flooding of
``CKKSContext.decrypt(..., shared=True)``.
"""

from __future__ import annotations

import math
from typing import Any

from veil.errors import ConfigurationError, DepthExhaustedError, KeyMismatchError
from veil.he.lattice.base import SealContext, SealTensor
from veil.he.lattice.native import as_plain_vector, cpp, is_transparent_error, translate
from veil.he.lattice.rotations import RotationOps
from veil.he.lattice.util import as_array, is_scalar, level_of, suggest_params

__all__ = ["CKKSTensor", "polyval_depth"]


def polyval_depth(degree: int) -> int:
    """Levels TenSEAL's ``polyval`` consumes for a polynomial of ``degree >= 1``."""
    return int(math.floor(math.log2(degree))) + 1


class CKKSTensor(RotationOps, SealTensor):
    """An encrypted tensor. Create with ``CKKSContext.encrypt``; never construct directly.

    Reveals nothing about the values to whoever holds it (IND-CPA under RLWE); its shape, its
    remaining levels and ``error_bound`` are public metadata.
    """

    __slots__ = ("_ctx", "_chunks", "_shape", "_size", "_level", "_err", "_mag", "_torch",
                 "_padded")
    __array_ufunc__ = None  # numpy defers to our reflected operators (arr + t -> t.__radd__)

    # TenSEAL fills a fresh ciphertext's unused slots with copies of the vector, and its
    # row-rotating ``mm`` (``matmul``/``mv``) relies on those copies; a plaintext *vector* operand
    # is encoded zero-padded, which breaks them. ``_padded`` marks such tensors (it propagates
    # through every later operation and through serialization) so matmul refuses them instead of
    # returning wrong numbers. Element-wise ops, sum and dot are unaffected.

    def __init__(self, ctx: SealContext, chunks: list[Any], shape: tuple[int, ...], *,
                 level: int, err: float, mag: float, torch: bool = False,
                 padded: bool = False) -> None:
        self._padded = padded
        self._ctx = ctx
        self._chunks = chunks
        self._shape = shape
        self._size = math.prod(shape)
        self._level = level
        self._err = err
        self._mag = mag
        self._torch = torch

    # -- metadata ----------------------------------------------------------------------------
    @property
    def levels_left(self) -> int:
        """Multiplications still possible (rescales left in the modulus chain)."""
        return self._level

    @property
    def n_ciphertexts(self) -> int:
        return len(self._chunks)

    @property
    def error_bound(self) -> float:
        """Bound on the key-dependent noise in each element (average-case model; see
        docs/security/he-ckks.md). This is what ``decrypt(shared=True)`` must hide. The total
        error can also include a deterministic, key-independent relative error of up to
        ``params.rescale_relative_error`` per multiplication (TenSEAL's scale reset)."""
        return self._err

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d CKKSTensor")
        return self._shape[0]

    def __repr__(self) -> str:
        return (f"CKKSTensor(shape={self._shape}, levels_left={self._level}, "
                f"ciphertexts={len(self._chunks)})")

    def reshape(self, *shape: int) -> CKKSTensor:
        """Same ciphertexts, new shape (no computation); sizes must match."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if math.prod(shape) != self._size or any(s < 0 for s in shape):
            raise ConfigurationError(f"cannot reshape {self._shape} to {shape}: size differs")
        return self._new(self._chunks, tuple(shape), self._level, self._err, self._mag)

    # -- internals -----------------------------------------------------------------------------
    def _new(self, chunks: list[Any], shape: tuple[int, ...], level: int, err: float,
             mag: float, *, padded: bool | None = None) -> CKKSTensor:
        t = object.__new__(CKKSTensor)  # hot path: skip __init__'s recomputation
        t._ctx, t._chunks, t._shape, t._level, t._err, t._mag, t._torch = (
            self._ctx, chunks, shape, level, err, mag, self._torch)
        t._padded = self._padded if padded is None else padded
        t._size = self._size if shape == self._shape else math.prod(shape)
        return t

    def _check_same(self, other: CKKSTensor, op: str) -> None:
        if other._ctx is not self._ctx and other._ctx._key_id != self._ctx._key_id:
            raise KeyMismatchError(
                f"{op}: operands were encrypted under different keys (key ids "
                f"{self._ctx.key_id[:8]}… and {other._ctx.key_id[:8]}…); encrypt both with the "
                "same CKKSContext (or its .public())"
            )
        if other._shape != self._shape:
            raise ConfigurationError(
                f"{op}: shapes {self._shape} and {other._shape} differ; element-wise ops need "
                "equal shapes (no broadcasting)"
            )

    def _need_levels(self, needed: int, op: str, level: int | None = None) -> None:
        have = self._level if level is None else level
        if have < needed:
            p = self._ctx.params
            used = p.depth - have
            raise DepthExhaustedError(
                f"{op} needs {needed} more level(s) but the ciphertext has {have} left "
                f"({used} of depth {p.depth} used); the computation needs depth >= "
                f"{used + needed}: use CKKSParams.for_depth({used + needed}) "
                f"(e.g. {suggest_params(used + needed)})"
            )

    def _split(self, flat: Any) -> list[list[float]]:
        slots = self._ctx.slots
        return [flat[i : i + slots].tolist() for i in range(0, self._size, slots)]

    def _zeros_like_chunk(self, chunk: Any) -> Any:
        return cpp().CKKSVector(self._ctx._native, [0.0] * chunk.size())

    def _pairwise(self, other: CKKSTensor, fn: str, op: str) -> list[Any]:
        """Apply ``fn`` chunk by chunk, always on the operand with more levels.

        TenSEAL mod-switches the *argument* in place when it has more levels than ``self``;
        calling on the higher operand keeps both caller-visible tensors unchanged.
        """
        pairs = zip(other._chunks, self._chunks) if other._level > self._level \
            else zip(self._chunks, other._chunks)
        try:
            return [getattr(hi, fn)(lo) for hi, lo in pairs]
        except Exception as exc:
            if not is_transparent_error(exc):
                with translate(op):
                    raise
        # exact cancellation somewhere (e.g. a - a): SEAL refuses transparent results
        out = []
        with translate(op):
            for a, b in zip(self._chunks, other._chunks):
                hi, lo = (b, a) if other._level > self._level else (a, b)
                try:
                    out.append(getattr(hi, fn)(lo))
                except RuntimeError as exc:
                    if not is_transparent_error(exc):
                        raise
                    out.append(self._zeros_like_chunk(a))  # fresh encryption of zero
        return out

    def _min_level(self, chunks: list[Any]) -> int:
        return min(level_of(c) for c in chunks)

    @property
    def _rescale_err(self) -> float:
        return self._ctx._rescale_err

    def _rs(self, mag: float, times: int = 1) -> float:
        """Key-dependent noise added by ``times`` rescales (rounding noise; rotations' key
        switches are bounded separately, in :mod:`veil.he.lattice.rotations`).

        TenSEAL's scale reset also multiplies a value of magnitude ``mag`` by up to
        ``1 +- params.rescale_relative_error``; that error depends only on the values, reveals
        nothing about the key, and is not part of ``error_bound``."""
        del mag  # the scale-reset error is deterministic (key-independent): not tracked here
        return times * self._ctx._rescale_err

    # -- element-wise arithmetic -----------------------------------------------------------
    def __add__(self, other: Any) -> CKKSTensor:
        if isinstance(other, CKKSTensor):
            self._check_same(other, "add")
            chunks = self._pairwise(other, "add", "add")
            return self._new(chunks, self._shape, min(self._level, other._level),
                             math.hypot(self._err, other._err), self._mag + other._mag,
                             padded=self._padded or other._padded)
        return self._plain_op(other, "add_plain", "add")

    __radd__ = __add__

    def __sub__(self, other: Any) -> CKKSTensor:
        if isinstance(other, CKKSTensor):
            self._check_same(other, "sub")
            if other._level > self._level:  # (-b) + a keeps `other` from being mod-switched
                with translate("sub"):
                    neg = [c.neg() for c in other._chunks]
                tmp = self._new(neg, self._shape, other._level, other._err, other._mag)
                chunks = tmp._pairwise(self, "add", "sub")
            else:
                chunks = self._pairwise(other, "sub", "sub")
            return self._new(chunks, self._shape, min(self._level, other._level),
                             math.hypot(self._err, other._err), self._mag + other._mag,
                             padded=self._padded or other._padded)
        return self._plain_op(other, "sub_plain", "sub")

    def __rsub__(self, other: Any) -> CKKSTensor:
        return (-self)._plain_op(other, "add_plain", "sub")

    def __neg__(self) -> CKKSTensor:
        with translate("neg"):
            chunks = [c.neg() for c in self._chunks]
        return self._new(chunks, self._shape, self._level, self._err, self._mag)

    def __mul__(self, other: Any) -> CKKSTensor:
        if isinstance(other, CKKSTensor):
            self._check_same(other, "mul")
            self._need_levels(1, "ciphertext multiplication",
                              min(self._level, other._level))
            chunks = self._pairwise(other, "mul", "mul")
            err = (self._mag * other._err + other._mag * self._err + self._err * other._err
                   + self._rs(self._mag * other._mag))
            return self._new(chunks, self._shape, self._min_level(chunks), err,
                             self._mag * other._mag, padded=self._padded or other._padded)
        return self._plain_op(other, "mul_plain", "mul")

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> CKKSTensor:
        """Division by a plaintext scalar (multiplication by its inverse: one level)."""
        if isinstance(other, CKKSTensor) or not is_scalar(other):
            raise ConfigurationError(
                "CKKSTensor can only be divided by a plaintext scalar; for 1/x use polyval with "
                "an approximation of the reciprocal on your input domain"
            )
        if float(other) == 0.0:
            raise ConfigurationError("division of a CKKSTensor by zero")
        return self * (1.0 / float(other))

    def square(self) -> CKKSTensor:
        """Element-wise square (one level, rotation-free)."""
        self._need_levels(1, "square")
        with translate("square"):
            chunks = [c.square() for c in self._chunks]
        err = 2 * self._mag * self._err + self._err**2 + self._rs(self._mag**2)
        return self._new(chunks, self._shape, self._min_level(chunks), err, self._mag**2)

    def _plain_op(self, other: Any, fn: str, op: str) -> CKKSTensor:
        is_mul = fn == "mul_plain"
        if is_scalar(other):
            operand: Any = float(other)
            if not math.isfinite(operand):
                raise ConfigurationError(f"{op}: scalar operand {other!r} is not finite")
            wmax = abs(operand)
        else:
            if isinstance(other, (str, bytes)) or other is None:
                return NotImplemented
            flat = as_plain_vector(other, self._size, op)
            wmax = float(abs(flat).max())
            operand = None
        if wmax >= self._ctx.params.max_abs_value:
            raise ConfigurationError(
                f"{op}: plaintext operand magnitude {wmax:g} is too large to encode; |w| must "
                f"stay below {self._ctx.params.max_abs_value:g} (2^integer_bits)"
            )
        if is_mul:
            self._need_levels(1, "multiplication by a plaintext")
        with translate(op):
            if operand is not None:
                chunks = [getattr(c, fn)(operand) for c in self._chunks]
            else:
                chunks = [getattr(c, fn)(p) for c, p in zip(self._chunks, self._split(flat))]
        padded = self._padded or operand is None
        if is_mul:
            err = self._err * wmax + self._rs(self._mag * wmax)
            return self._new(chunks, self._shape, self._min_level(chunks), err, self._mag * wmax,
                             padded=padded)
        return self._new(chunks, self._shape, self._level, self._err, self._mag + wmax,
                         padded=padded)

    def polyval(self, coeffs: Any) -> CKKSTensor:
        """Element-wise ``sum_i coeffs[i] * x**i`` (lowest degree first), rotation-free.

        Uses ``floor(log2(degree)) + 1`` levels (degree after dropping zero leading terms);
        degree 1 -> 1, 2-3 -> 2, 4-7 -> 3, 8-15 -> 4.
        """
        c = [float(v) for v in as_array(coeffs).ravel()]
        while c and c[-1] == 0.0:
            c.pop()
        if len(c) < 2 or not all(math.isfinite(v) for v in c):
            raise ConfigurationError(
                f"polyval needs finite coefficients of degree >= 1 (lowest first), got {coeffs!r}"
            )
        deg = len(c) - 1
        need = polyval_depth(deg)
        self._need_levels(need, f"polyval of degree {deg}")
        with translate("polyval"):
            chunks = [ch.polyval(c) for ch in self._chunks]
        m, e = max(self._mag, 1.0), self._err
        deriv = sum(abs(ci) * i * m ** (i - 1) for i, ci in enumerate(c))
        mag = sum(abs(ci) * m**i for i, ci in enumerate(c))
        err = deriv * e + self._rs(sum(abs(ci) for ci in c) * m**deg, need) * (deg + 1)
        return self._new(chunks, self._shape, self._min_level(chunks), err, mag)

    # -- serialization -------------------------------------------------------------------------
    def serialize(self) -> bytes:
        """Envelope ``ckks.tensor``: shape, level, error bound and the ciphertexts (no keys)."""
        return self._ctx._serialize_tensor(self)

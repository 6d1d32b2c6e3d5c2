"""The encrypted tensor's operations that rotate slots, and so need Galois keys.

``sum``, ``dot``, ``matmul``/``mv`` (and ``@``), ``conv2d_im2col`` and ``block_sum``, as a base
class of :class:`veil.he.lattice.tensor.CKKSTensor`, which holds the data and the depth and error
bookkeeping these methods use (``_new``, ``_check_same``, ``_need_levels``, ``_pairwise``,
``_split``, ``_rs``). Each consumes at most one level. Error bounds (docs/security/he-ckks.md,
"Key switching"): the input's error through the linear map, plus the rescale rounding summed over
the slots each output adds up, plus the noise of every key switch of the rotation circuit
(:mod:`veil.he.lattice.noise`: the exact rotations TenSEAL does, per Galois key).
"""

from __future__ import annotations

import math
from typing import Any, Self

from veil.errors import ConfigurationError, UnsupportedOperationError
from veil.he.lattice.native import as_plain_vector, cpp, translate
from veil.he.lattice.noise import Schedule, diagonal_schedule, fold_schedule, sum_schedule
from veil.he.lattice.util import as_array, level_of, plain_matrix

__all__ = ["RotationOps"]


class RotationOps:
    """Slot rotations of a CKKS tensor: reductions and products with plain matrices."""

    __slots__ = ()

    def _need_galois(self, op: str) -> None:
        if not self._ctx.has_galois_keys:
            raise ConfigurationError(
                f"{op} uses rotations and needs Galois keys, which this context lacks; create "
                "it with CKKSContext.generate(params, galois_keys=True)"
            )

    def _ks_error(self, level: int, schedule: Schedule) -> float:
        """Bound on the key-switching noise of ``schedule`` run at ``level`` (working scale)."""
        return schedule.error(self._ctx._ks[level])

    def _sum_schedule(self) -> Schedule:
        """The rotations of TenSEAL's ``sum`` over every chunk (the same Galois keys in each)."""
        slots = self._ctx.slots
        out = Schedule()
        for i in range(0, self._size, slots):
            out = out + sum_schedule(min(slots, self._size - i), slots)
        return out

    def _reduce_chunks(self, parts: list[Any]) -> Any:
        acc = parts[0]
        for p in parts[1:]:
            acc = acc.add(p) if level_of(acc) >= level_of(p) else p.add(acc)
        return acc

    def sum(self) -> Self:
        """Sum of all elements -> 0-d tensor (rotations; no level consumed)."""
        self._need_galois("sum")
        with translate("sum"):
            total = self._reduce_chunks([c.sum() for c in self._chunks])
        err = self._err * math.sqrt(self._size) + self._ks_error(self._level,
                                                                 self._sum_schedule())
        return self._new([total], (), self._level, err,
                         self._mag * self._size)

    def dot(self, other: Any) -> Self:
        """Inner product with an encrypted or plain vector of the same size -> 0-d tensor.

        One level, rotations (Galois keys).
        """
        import numpy as np

        self._need_galois("dot")
        if isinstance(other, type(self)):
            self._check_same(other, "dot")
            self._need_levels(1, "dot", min(self._level, other._level))
            parts = self._pairwise(other, "dot", "dot")
            err = math.sqrt(self._size) * (self._mag * other._err + other._mag * self._err
                                           + self._err * other._err + self._rs(0))
            mag = self._size * self._mag * other._mag
        else:
            flat = as_plain_vector(other, self._size, "dot")
            self._need_levels(1, "dot")
            ptd = cpp().PlainTensorDouble
            with translate("dot"):
                parts = [c.dot(ptd(p)) for c, p in zip(self._chunks, self._split(flat))]
            l1 = float(abs(flat).sum())
            l2 = float(np.sqrt((flat**2).sum()))
            err = self._err * l2 + math.sqrt(self._size) * self._rs(0)
            mag = self._mag * l1
        with translate("dot"):
            total = self._reduce_chunks(parts)
        level = level_of(total)  # rotations run after the product's rescale
        err += self._ks_error(level, self._sum_schedule())
        return self._new([total], (), level, err, mag)

    def matmul(self, matrix: Any) -> Self:
        """Vector x plain matrix: ``x[n] @ M[n, m] -> [m]``; one level, rotations.

        ``m`` must not exceed the slot count; ``n`` may (x is then chunked and the partial
        products are added). Cost: TenSEAL's algorithm does one rotation and one plaintext
        product per row, so it is O(n) key switches (seconds for n in the thousands); for
        batched inference prefer one tensor per feature and :func:`linear_combination`.
        """
        import numpy as np

        self._need_galois("matmul")
        if self._padded:
            raise UnsupportedOperationError(
                "matmul after adding, subtracting or multiplying a plaintext *vector* is not "
                "supported: TenSEAL's matrix product relies on the slot layout of a fresh "
                "encryption, which a plaintext vector operand breaks (the result would be wrong). "
                "Do the matmul first and apply the vector afterwards, or add the vector as a "
                "ciphertext (ctx.encrypt(v)); dot() and sum() work on any tensor."
            )
        m = plain_matrix(matrix, "matmul")
        if len(self._shape) != 1 or m.shape[0] != self._size:
            raise ConfigurationError(
                f"matmul: vector of shape {self._shape} cannot multiply a matrix of shape "
                f"{m.shape}; need x.shape == (n,) and M.shape == (n, m)"
            )
        if m.shape[1] > self._ctx.slots:
            raise ConfigurationError(
                f"matmul: {m.shape[1]} output columns exceed the {self._ctx.slots} slots; split "
                "the matrix by columns"
            )
        self._need_levels(1, "matmul")
        slots = self._ctx.slots
        ptd = cpp().PlainTensorDouble
        with translate("matmul"):
            parts = [c.mm(ptd(m[i * slots : i * slots + c.size()].tolist()))
                     for i, c in enumerate(self._chunks)]
            out = self._reduce_chunks(parts)
        l1 = float(np.abs(m).sum(axis=0).max())
        l2 = float(np.sqrt((m**2).sum(axis=0)).max())
        # The rotations run on the products before their rescale (scale 2**(2 s)), so their
        # noise, and that of TenSEAL's accumulators (one encryption of zero per thread plus one;
        # at most 256 threads counted), shrinks by 2**s. One rescale per chunk.
        sched = Schedule()
        for c in self._chunks:
            sched = sched + diagonal_schedule(c.size(), slots)
        zeros = math.sqrt(257 * len(self._chunks)) * self._ctx._clean_err
        ks = (self._ks_error(self._level, sched) + zeros) / 2.0**self._ctx.params.scale_bits
        err = self._err * l2 + math.sqrt(len(self._chunks)) * self._rs(0) + ks
        return self._new([out], (m.shape[1],), level_of(out), err, self._mag * l1)

    def mv(self, matrix: Any) -> Self:
        """Plain matrix x vector: ``M[m, n] @ x[n] -> [m]`` (== ``x.matmul(M.T)``)."""
        m = plain_matrix(matrix, "mv")
        return self.matmul(m.T)

    def __matmul__(self, other: Any) -> Self:
        if isinstance(other, type(self)):
            return self.dot(other)
        arr = as_array(other)
        return self.matmul(arr) if arr.ndim == 2 else self.dot(arr)

    def __rmatmul__(self, other: Any) -> Self:
        arr = as_array(other)
        return self.mv(arr) if arr.ndim == 2 else self.dot(arr)

    def conv2d_im2col(self, kernel: Any, windows: int) -> Self:
        """Convolution of an ``encrypt_im2col`` image with a plain ``kernel`` (kh x kw).

        Returns the ``windows`` outputs (row-major over output positions); one level,
        rotations. See :meth:`CKKSContext.encrypt_im2col` for the layout.
        """
        import numpy as np

        self._need_galois("conv2d_im2col")
        k = plain_matrix(kernel, "conv2d_im2col")
        if len(self._chunks) != 1 or windows <= 0 or k.size * windows > self._size:
            raise ConfigurationError(
                f"conv2d_im2col: kernel {k.shape} x {windows} windows does not match this "
                "tensor; pass the (tensor, windows) pair from CKKSContext.encrypt_im2col"
            )
        self._need_levels(1, "conv2d_im2col")
        with translate("conv2d_im2col"):
            out = self._chunks[0].conv2d_im2col(k.tolist(), int(windows))
        l1 = float(np.abs(k).sum())
        l2 = float(np.sqrt((k**2).sum()))
        blocks = 1 << (k.size - 1).bit_length()  # TenSEAL pads the kernel to a power of two
        err = self._err * l2 + self._fold_error(level_of(out), int(windows), blocks)
        return self._new([out], (int(windows),), level_of(out), err, self._mag * l1)

    def block_sum(self, weights: Any, block: int) -> Self:
        """``out[r] = sum_i weights[i] * self[i * block + r]`` for ``r < block``.

        A weighted sum of the tensor's consecutive blocks of ``block`` values: one level and
        ``log2(size // block)`` rotations by multiples of ``block`` (one key switch each), however
        many blocks. The tensor must fill exactly one ciphertext (``size == slots``), ``block``
        must be a power of two and ``weights`` must hold ``size // block`` finite values.
        """
        import numpy as np

        self._need_galois("block_sum")
        w = as_array(weights).ravel()
        slots = self._ctx.slots
        ok_block = isinstance(block, int) and not isinstance(block, bool) and 0 < block <= slots \
            and not block & (block - 1)
        nb = self._size // block if ok_block else 0
        if len(self._chunks) != 1 or self._size != slots or not ok_block or w.size != nb:
            raise ConfigurationError(
                f"block_sum: needs a tensor filling one ciphertext ({slots} values, got "
                f"{self._size}), a power-of-two block (got {block!r}) and one weight per block "
                f"({nb} expected, got {w.size})"
            )
        if not np.isfinite(w).all() or float(np.abs(w).max()) >= self._ctx.params.max_abs_value:
            raise ConfigurationError(
                f"block_sum: weights must be finite and below {self._ctx.params.max_abs_value:g} "
                "in magnitude"
            )
        self._need_levels(1, "block_sum")
        with translate("block_sum"):
            out = self._chunks[0].enc_matmul_plain(w.tolist(), block)
        err = self._err * float(np.sqrt((w**2).sum())) + self._fold_error(level_of(out), block, nb)
        return self._new([out], (block,), level_of(out), err,
                         self._mag * float(np.abs(w).sum()), padded=True)

    def _fold_error(self, level: int, rows: int, blocks: int) -> float:
        """Rescale and key-switch noise of TenSEAL's ``enc_matmul_plain``: the product's rescale
        rounding summed over ``blocks`` slots, and the folds by ``rows * blocks/2, ..., rows``
        (run after the rescale, at the output's ``level``)."""
        slots = self._ctx.slots
        return math.sqrt(blocks) * self._rs(0) + self._ks_error(
            level, fold_schedule(rows, blocks, slots))

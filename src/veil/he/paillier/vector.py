"""PaillierVector: an array of Paillier ciphertexts with its fixed-point scale and bound.

Operations run on the public key only. Every result carries a worst-case bound on ``|plaintext|``
derived from declared ranges and the evaluator's own plaintexts; an operation whose result could
leave the signed range ``±(n−1)/2`` raises :class:`ConfigurationError` *before* computing, so a
decryption never returns a wrapped value.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz

from veil.errors import (
    ConfigurationError,
    KeyMismatchError,
    SerializationError,
    UnsupportedOperationError,
)
from veil.he.encoding import (
    DEFAULT_FLOAT_PRECISION,
    MAX_PRECISION_BITS,
    FixedPointEncoding,
    as_plain_array,
    decode_ints,
    encode_array,
    is_integer_array,
    max_abs_int,
)
from veil.he.paillier import native, wire
from veil.he.paillier.core import MAX_SCALE_BITS, Ciphertexts, PublicKeyBase
from veil.he.paillier.parallel import decrypt_residues


def object_array(values: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(shape)


def _arr(x: Any) -> np.ndarray:
    """Object ndarray from a numpy result that may have collapsed to a scalar (0-d inputs)."""
    if isinstance(x, np.ndarray):
        return x.astype(object, copy=False)
    return object_array([x], ())


def _check_key(a: Any, b: Any, what: str) -> None:
    if a._n != b._n:
        raise KeyMismatchError(
            f"cannot {what} ciphertexts under different Paillier keys ({a.fingerprint} vs "
            f"{b.fingerprint}); bring both under one key first"
        )


class PaillierVector(Ciphertexts):
    """Encrypted array of any shape. Supports ``+ - *`` with plaintexts, ``+ -`` with vectors
    under the same key, ``sum``, ``dot``/``@``, indexing and reshape.

    ``scale`` is the number of fractional bits of the encrypted integers and ``bound`` the public
    worst-case ``|integer|``; both are metadata visible to whoever holds the vector.
    """

    wire_kind = wire.KIND_VECTOR
    wire_what = "Paillier vector"

    __slots__ = ("_pk", "_c", "_scale", "_bound", "_integer", "_encoding", "_fresh")
    __array_ufunc__ = None  # make numpy defer: ndarray * vector -> vector.__rmul__

    @classmethod
    def _make(
        cls,
        pk: Any,
        c: np.ndarray,
        *,
        scale: int,
        bound: int,
        integer: bool,
        encoding: FixedPointEncoding,
        fresh: bool,
    ) -> PaillierVector:
        if bound > pk._half:
            raise ConfigurationError(
                f"result could overflow: worst-case |plaintext| needs {bound.bit_length()} bits, "
                f"the {pk.bits}-bit key holds signed values of {pk._half.bit_length()} bits; "
                "declare a smaller max_abs / precision_bits, sum fewer values, or use a larger key"
            )
        if scale > MAX_SCALE_BITS:
            raise ConfigurationError(
                f"fixed-point scale of {scale} bits exceeds {MAX_SCALE_BITS}; multiply by "
                "plaintexts with fewer precision_bits"
            )
        self = cls.__new__(cls)
        self._pk, self._c, self._scale, self._bound = pk, c, scale, bound
        self._integer, self._encoding, self._fresh = integer, encoding, fresh
        return self

    def _like(self, c: np.ndarray, **kw: Any) -> PaillierVector:
        args = dict(
            scale=self._scale,
            bound=self._bound,
            integer=self._integer,
            encoding=self._encoding,
            fresh=False,
        )
        args.update(kw)
        return PaillierVector._make(self._pk, c, **args)

    # ----------------------------------------------------------------- metadata
    @property
    def shape(self) -> tuple[int, ...]:
        return self._c.shape

    @property
    def ndim(self) -> int:
        return self._c.ndim

    @property
    def scale(self) -> int:
        """Fractional bits of the encrypted integers (grows with plaintext multiplications)."""
        return self._scale

    @property
    def bound(self) -> int:
        """Public worst-case ``|encrypted integer|`` (from declared ranges, not from data)."""
        return self._bound

    @property
    def encoding(self) -> FixedPointEncoding:
        """The encoding chosen at encryption (its precision is the default for plaintexts)."""
        return self._encoding

    def __len__(self) -> int:
        if self._c.ndim == 0:
            raise TypeError("len() of a 0-d PaillierVector")
        return self._c.shape[0]

    def __repr__(self) -> str:
        return (
            f"PaillierVector(shape={self.shape}, scale={self._scale}, "
            f"bound_bits={self._bound.bit_length()}, key={self._pk.fingerprint})"
        )

    def __getitem__(self, idx: Any) -> PaillierVector:
        sub = self._c[idx]
        if not isinstance(sub, np.ndarray):
            sub = object_array([sub], ())
        return self._like(sub, fresh=self._fresh)

    def reshape(self, *shape: Any) -> PaillierVector:
        try:
            c = self._c.reshape(*shape)
        except ValueError as exc:
            raise ConfigurationError(f"cannot reshape {self.shape} to {shape}: {exc}") from exc
        return self._like(c, fresh=self._fresh)

    # ----------------------------------------------------------------- helpers
    def _aligned(self, scale: int) -> tuple[np.ndarray, int]:
        """Ciphertexts and bound at a larger ``scale`` (multiplying by 2^diff)."""
        diff = scale - self._scale
        if diff == 0:
            return self._c, self._bound
        factor, n2 = mpz(1) << diff, self._pk._n2
        up = np.frompyfunc(lambda c: gmpy2.powmod(c, factor, n2), 1, 1)
        return _arr(up(self._c)), self._bound << diff

    def _broadcast(self, other_shape: tuple[int, ...]) -> tuple[int, ...]:
        try:
            return np.broadcast_shapes(self.shape, other_shape)
        except ValueError as exc:
            raise ConfigurationError(
                f"shapes {self.shape} and {other_shape} do not broadcast together"
            ) from exc

    def _plain(self, y: Any, what: str, precision_bits: int | None) -> tuple[np.ndarray, int]:
        """A plaintext operand and the fractional bits to encode it with."""
        arr = as_plain_array(y, what=what)
        if precision_bits is not None:
            FixedPointEncoding(precision_bits)  # validates
            return arr, int(precision_bits)
        if is_integer_array(arr):
            return arr, 0
        if not np.isfinite(arr).all():
            raise ConfigurationError(f"{what} holds NaN or infinity")
        if (arr == np.round(arr)).all() and (np.abs(arr) < 2.0**53).all():
            return arr.astype(np.int64), 0
        return arr, self._encoding.precision_bits or DEFAULT_FLOAT_PRECISION

    # ----------------------------------------------------------------- arithmetic
    def __add__(self, other: Any) -> PaillierVector:
        if isinstance(other, PaillierVector):
            return self._add_vector(other, negate=False)
        if hasattr(other, "_layout"):
            raise UnsupportedOperationError(
                "cannot add a PackedPaillierVector to a PaillierVector; packed vectors add only "
                "to packed vectors of the same layout"
            )
        return self._add_plain(other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> PaillierVector:
        if isinstance(other, PaillierVector):
            return self._add_vector(other, negate=True)
        return self._add_plain(other, negate=True)

    def __rsub__(self, other: Any) -> PaillierVector:
        return (-self)._add_plain(other)

    def __neg__(self) -> PaillierVector:
        n2 = self._pk._n2
        inv = np.frompyfunc(lambda c: gmpy2.invert(c, n2), 1, 1)
        return self._like(_arr(inv(self._c)))

    def _add_vector(self, other: PaillierVector, *, negate: bool) -> PaillierVector:
        _check_key(self._pk, other._pk, "add")
        self._broadcast(other.shape)
        scale = max(self._scale, other._scale)
        ca, ba = self._aligned(scale)
        cb, bb = other._aligned(scale)
        n2 = self._pk._n2
        if negate:
            cb = _arr(np.frompyfunc(lambda c: gmpy2.invert(c, n2), 1, 1)(cb))
        self._precheck(ba + bb)
        c = (ca * cb) % n2
        return self._like(
            _arr(c),
            scale=scale,
            bound=ba + bb,
            integer=self._integer and other._integer,
        )

    def _precheck(self, bound: int) -> None:
        if bound > self._pk._half:
            PaillierVector._make(  # raises the overflow error
                self._pk, self._c, scale=0, bound=bound, integer=True, encoding=self._encoding,
                fresh=False,
            )

    def _add_plain(self, y: Any, *, negate: bool = False) -> PaillierVector:
        arr, prec = self._plain(y, "plaintext addend", None)
        self._broadcast(arr.shape)
        scale = max(self._scale, prec)
        ints = encode_array(arr, scale, what="plaintext addend")
        if negate:
            ints = [-v for v in ints]
        ca, ba = self._aligned(scale)
        bound = ba + max_abs_int(ints)
        self._precheck(bound)
        n, n2 = self._pk._n, self._pk._n2
        gm = object_array([(1 + (v % n) * n) % n2 for v in ints], arr.shape)
        c = (ca * gm) % n2
        return self._like(
            _arr(c),
            scale=scale,
            bound=bound,
            integer=self._integer and prec == 0,
        )

    def mul(self, k: Any, *, precision_bits: int | None = None) -> PaillierVector:
        """Multiply by a plaintext scalar or array (broadcast); ``k`` is encoded with
        ``precision_bits`` (default: 0 for integral values, else the vector's precision or 32).
        Timing depends on ``k``'s size (gmpy2 exponentiation is not constant-time)."""
        arr, prec = self._plain(k, "plaintext factor", precision_bits)
        self._broadcast(arr.shape)
        ints = encode_array(arr, prec, what="plaintext factor")
        bound = self._bound * max_abs_int(ints)
        self._precheck(bound)
        n2 = self._pk._n2
        exps = object_array(ints, arr.shape)
        c = np.frompyfunc(lambda ci, e: gmpy2.powmod(ci, e, n2), 2, 1)(self._c, exps)
        return self._like(
            _arr(c),
            scale=self._scale + prec,
            bound=bound,
            integer=self._integer and prec == 0 and is_integer_array(arr),
        )

    def __mul__(self, other: Any) -> PaillierVector:
        if isinstance(other, PaillierVector) or hasattr(other, "_layout"):
            raise UnsupportedOperationError(
                "Paillier cannot multiply two ciphertexts (it is additively homomorphic); "
                "multiply by a plaintext, or use CKKS/BFV or MPC for products of secrets"
            )
        return self.mul(other)

    __rmul__ = __mul__

    def __truediv__(self, k: Any) -> PaillierVector:
        """Multiply by ``1/k`` encoded with 64 fractional bits (error ``|x| · 2^-65`` on top of
        float64's rounding of ``1/k``); the scale grows by 64 bits."""
        arr = as_plain_array(k, what="plaintext divisor").astype(np.float64)
        if not np.all(np.isfinite(arr)) or np.any(arr == 0):
            raise ConfigurationError("plaintext divisor must be finite and non-zero")
        return self.mul(1.0 / arr, precision_bits=64)

    def sum(self, axis: int | None = None) -> PaillierVector:
        """Encrypted sum over all elements (``axis=None``) or along ``axis``."""
        n2 = self._pk._n2
        mulmod = np.frompyfunc(lambda a, b: a * b % n2, 2, 1)
        if axis is None:
            count = self.size
            flat = self._c.ravel().tolist()
            c = object_array([functools.reduce(lambda a, b: a * b % n2, flat, mpz(1))], ())
        else:
            if not isinstance(axis, int) or not -self.ndim <= axis < self.ndim:
                raise ConfigurationError(f"axis={axis!r} is invalid for shape {self.shape}")
            count = self.shape[axis]
            if count == 0:
                out_shape = self.shape[:axis] + self.shape[axis + 1 :]
                c = object_array([mpz(1)] * math.prod(out_shape), out_shape)
            else:
                c = _arr(mulmod.reduce(self._c, axis=axis))
        return self._like(c, bound=self._bound * count)

    def dot(self, w: Any, *, precision_bits: int | None = None) -> PaillierVector:
        """``Σ_i x_i · w_i`` for a 1-d vector and plaintext ``w`` of shape (len,) or (len, k)."""
        if self.ndim != 1:
            raise ConfigurationError(f"dot needs a 1-d PaillierVector, got shape {self.shape}")
        arr, prec = self._plain(w, "plaintext weights", precision_bits)
        if arr.ndim not in (1, 2) or arr.shape[0] != self.shape[0]:
            raise ConfigurationError(
                f"weights of shape {arr.shape} do not match vector of length {self.shape[0]}; "
                "pass shape (len,) or (len, k)"
            )
        ints = encode_array(arr, prec, what="plaintext weights")
        cols = 1 if arr.ndim == 1 else arr.shape[1]
        n2 = self._pk._n2
        rows = [ints[i * cols : (i + 1) * cols] for i in range(self.shape[0])]
        weight = max((sum(abs(r[j]) for r in rows) for j in range(cols)), default=0)
        bound = self._bound * weight
        self._precheck(bound)
        cts = self._c.tolist()
        out = []
        for j in range(cols):
            acc = mpz(1)
            for ci, r in zip(cts, rows):
                if r[j]:
                    acc = acc * gmpy2.powmod(ci, r[j], n2) % n2
            out.append(acc)
        shape: tuple[int, ...] = () if arr.ndim == 1 else (cols,)
        return self._like(
            object_array(out, shape),
            scale=self._scale + prec,
            bound=bound,
            integer=self._integer and prec == 0 and is_integer_array(arr),
        )

    def __matmul__(self, w: Any) -> PaillierVector:
        return self.dot(w)

    def rerandomize(self) -> PaillierVector:
        """Same plaintexts under fresh randomness (costs about one encryption per element)."""
        c = self._rerandomized(self._c.ravel().tolist())
        return self._like(object_array(c, self.shape), fresh=True)

    # ----------------------------------------------------------------- decryption / I/O
    def _decrypt_with(self, crt: Any, workers: int = 1) -> np.ndarray:
        residues = decrypt_residues(crt, self._c.ravel().tolist(), workers)
        n, half = self._pk._n, self._pk._half
        ints = [int(m) - n if m > half else int(m) for m in residues]
        return decode_ints(ints, self.shape, scale_bits=self._scale, integer=self._integer)

    def _write_body(self, w: wire.Writer) -> None:
        w.u16(self._scale)
        w.u16(self._encoding.precision_bits)
        w.f64(self._encoding.max_abs)
        w.bigint(self._bound)
        w.shape(self.shape)
        w.ciphertexts(self._c.ravel().tolist(), self._pk._width)

    @classmethod
    def _read_body(cls, r: wire.Reader, flags: int, pk: Any) -> PaillierVector:
        scale, prec, max_abs = r.u16(), r.u16(), r.f64()
        if scale > MAX_SCALE_BITS or prec > MAX_PRECISION_BITS:
            raise r.fail(f"scale {scale} / precision {prec} out of range")
        bound = r.bigint(pk._width)
        if bound > pk._half:
            raise r.fail("bound exceeds the key's signed range")
        try:
            enc = FixedPointEncoding(prec, max_abs)
        except ConfigurationError as exc:
            raise SerializationError(f"malformed Paillier vector payload: {exc}") from exc
        remaining = len(r.body) - r.pos
        shape = r.shape(max(remaining // pk._width, 1))
        cs = r.ciphertexts(math.prod(shape), pk._width, pk._n)
        r.finish()
        return cls._make(
            pk, object_array(cs, shape), scale=scale, bound=bound, integer=bool(flags),
            encoding=enc, fresh=False,
        )

    def to_phe(self) -> list[Any]:
        """Flat list (C order) of ``phe.EncryptedNumber`` with the same values.

        phe treats plaintexts above ``n/3`` as overflow, so values must fit that range. Fresh
        ciphertexts are marked as obfuscated; results are left to phe's own obfuscation.
        """
        extra = (-self._scale) % 4  # phe's exponents count hex digits: align to 4 bits
        c = self._aligned(self._scale + extra)[0] if extra else self._c
        return native.ciphertexts_to_phe(self._pk, c, self._scale + extra, fresh=self._fresh)

    @classmethod
    def from_phe(
        cls,
        numbers: Any,
        *,
        shape: tuple[int, ...] | None = None,
        max_abs: float | None = None,
        allow_insecure: bool = False,
    ) -> PaillierVector:
        """Wrap ``phe.EncryptedNumber`` s (one key); ``max_abs`` declares their range (without it
        the bound is phe's ``n/3`` and any further addition is refused as a possible overflow).
        Each ciphertext is checked (``0 < c < n²``, ``gcd(c, n) = 1``)."""
        nums, n, exponents = native.read_phe(numbers)
        pk = PublicKeyBase.key_class(n, allow_insecure=allow_insecure)
        cs, shape, fields = native.ciphertexts_from_phe(pk, nums, exponents, shape, max_abs)
        return cls._make(pk, object_array(cs, shape), **fields, fresh=False)

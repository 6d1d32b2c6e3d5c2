"""BFV on TenSEAL: exact arithmetic on integer vectors modulo a prime ``t``.

Same shape of API as :mod:`veil.he.lattice.ckks`. Values are integers in ``[-(t-1)/2, (t-1)/2]``
(centred representatives mod ``t``); encryption refuses anything outside instead of wrapping.
Results are exact mod ``t``: a sum or product that leaves the range wraps around, so size
``plain_modulus`` for the largest intermediate value (``BFVParams.for_plain_bits``).

Who sees what: the holder of the secret context decrypts; ``ctx.public()`` (public,
relinearization and Galois keys) lets another party compute. BFV decryption is exact, so it
does not leak the noise the way CKKS does (no flooding needed); decryption checks SEAL's
remaining noise budget and raises :class:`~veil.errors.DepthExhaustedError` rather than
returning garbage. Ciphertext multiplications are also counted against ``params.depth`` and
refused beforehand.

Rotation-free: ``+ - *``, ``square``. Rotations (Galois keys): ``sum``, ``dot``.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from veil.errors import (
    ConfigurationError,
    DepthExhaustedError,
    KeyMismatchError,
    SerializationError,
)
from veil.he import serialize as envelope
from veil.he.lattice.base import SealContext, SealTensor
from veil.he.lattice.native import (
    as_plain_vector,
    chain_primes,
    cpp,
    is_transparent_error,
    new_native_context,
    to_array,
    translate,
)
from veil.he.lattice.sealcheck import check_blob
from veil.he.params import BFVParams, seal_primes

__all__ = ["BFVContext", "BFVTensor"]

KIND_PUBLIC = "bfv.context.public"
KIND_SECRET = "bfv.context.secret"
KIND_TENSOR = "bfv.tensor"


class BFVContext(SealContext):
    """Keys and parameters for BFV. Create with :meth:`generate` or :meth:`load`."""

    __slots__ = ()

    scheme = "BFV"
    kind_public = KIND_PUBLIC
    kind_secret = KIND_SECRET
    _params: BFVParams

    @classmethod
    def generate(cls, params: BFVParams | None = None, *, galois_keys: bool = True) -> BFVContext:
        """Fresh key pair; Galois keys are needed for ``sum`` and ``dot``."""
        params = BFVParams.default() if params is None else params
        if not isinstance(params, BFVParams):
            raise ConfigurationError(f"expected BFVParams, got {type(params).__name__}")
        native = new_native_context("BFV", params, plain_modulus=params.plain_modulus,
                                    galois_keys=galois_keys)
        return cls(native, params, secrets.token_hex(16))

    def __repr__(self) -> str:
        kind = "secret" if self.has_secret_key else "public"
        return (f"BFVContext({kind}, N={self._params.poly_modulus_degree}, "
                f"t={self._params.plain_modulus}, key_id={self._key_id[:8]}…)")

    def encrypt(self, x: Any) -> BFVTensor:
        """Encrypt integers of any shape (flattened, ``slots`` per ciphertext).

        Non-integers, NaN/inf, complex, non-numeric and ``|x| > (t-1)/2`` raise
        :class:`ConfigurationError` naming the first bad element.
        """
        arr, was_torch = to_array(x, integer=True, bound=self._params.max_abs_value, what="BFV")
        flat = arr.ravel()
        ctor = cpp().BFVVector
        slots = self.slots
        with translate("BFV encryption"):
            chunks = [ctor(self._native, flat[i : i + slots].tolist())
                      for i in range(0, flat.size, slots)]
        return BFVTensor(self, chunks, tuple(arr.shape), muls=0, torch=was_torch)

    def decrypt(self, t: BFVTensor) -> Any:
        """Exact decryption to an int64 array of ``t.shape`` (torch if ``t`` came from torch)."""
        import numpy as np

        self._secret_key_for(t, BFVTensor)
        decryptor = self._native.decryptor()
        with translate("BFV decryption"):
            for c in t._chunks:
                if decryptor.invariant_noise_budget(c.ciphertext()[0]) <= 0:
                    raise DepthExhaustedError(
                        f"the ciphertext's noise budget is exhausted after {t._muls} "
                        f"multiplication(s) (or the ciphertext was corrupted); the result would "
                        "be wrong. Use more or larger "
                        "coefficient primes (a larger poly_modulus_degree) or a smaller "
                        "plain_modulus"
                    )
            parts = [c.decrypt(self._sk) for c in t._chunks]
        out = np.fromiter((v for p in parts for v in p), dtype=np.int64, count=t.size)
        return self._user_output(out, t)

    @classmethod
    def params_from(cls, desc: dict[str, Any], what: str) -> BFVParams:
        try:
            if desc.get("scheme") != "bfv" or len(desc) != 4:
                raise ConfigurationError("not a BFV parameter description")
            return BFVParams(desc["poly_modulus_degree"], desc["plain_modulus"],
                             tuple(desc["coeff_mod_bit_sizes"]))
        except (ConfigurationError, KeyError, TypeError) as exc:
            raise SerializationError(f"{what}: invalid parameters ({exc})") from exc

    @classmethod
    def check_native(cls, native: Any, params: BFVParams, *, secret: bool, galois: bool,
                     what: str) -> None:
        p = params
        try:
            sc = native.seal_context()
            key = sc.key_context_data()
            ok = (str(key.parms().scheme()).endswith("BFV")
                  and key.parms().poly_modulus_degree() == p.poly_modulus_degree
                  and key.chain_index() == len(p.coeff_mod_bit_sizes) - 1
                  and chain_primes(native) == list(seal_primes(p.poly_modulus_degree,
                                                               p.coeff_mod_bit_sizes))
                  and native.has_public_key() and native.has_relin_keys()
                  and bool(native.has_galois_keys()) == galois
                  and bool(native.has_secret_key()) == secret)
        except Exception as exc:
            raise SerializationError(f"{what}: TenSEAL could not parse the context ({exc})") \
                from exc
        if not ok:
            raise SerializationError(f"{what}: TenSEAL context does not match its header")

    def load_tensor(self, data: bytes, *,
                    max_bytes: int = envelope.DEFAULT_MAX_BYTES) -> BFVTensor:
        """Load a ``bfv.tensor`` made under this context's parameters and key."""
        what = KIND_TENSOR
        (shape, muls, torch_flag), blobs = self._open_tensor(
            data, KIND_TENSOR, (("shape", list), ("muls", int), ("torch", bool)), max_bytes)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape) \
                or len(shape) > 32 or not 0 <= muls <= self._params.depth:
            raise SerializationError(f"{what}: invalid shape or multiplication count")
        size, slots = math.prod(shape), self.slots
        if len(blobs) != -(-size // slots):  # before sizing anything by the header
            raise SerializationError(f"{what}: {len(blobs)} ciphertexts for {size} values")
        expected = [min(slots, size - i) for i in range(0, size, slots)]
        if len(blobs) != len(expected):
            raise SerializationError(f"{what}: {len(blobs)} ciphertexts for {size} values")
        ctor, chunks = cpp().BFVVector, []
        for blob, n in zip(blobs, expected):
            check_blob(blob, kind="tensor", what=what)  # SEAL aborts on some malformed blobs
            try:
                chunk = ctor(self._native, blob)
                cts = chunk.ciphertext()
                good = (len(cts) == 1 and chunk.size() == n and cts[0].size() == 2
                        and cts[0].poly_modulus_degree() == self._params.poly_modulus_degree
                        and cts[0].coeff_modulus_size() == len(self._params.coeff_mod_bit_sizes)
                        - 1 and not cts[0].is_ntt_form() and not cts[0].is_transparent())
            except Exception as exc:
                raise SerializationError(f"{what}: TenSEAL could not parse a ciphertext "
                                         f"({exc})") from exc
            if not good:
                raise SerializationError(f"{what}: a ciphertext does not match the parameters")
            chunks.append(chunk)
        return BFVTensor(self, chunks, tuple(shape), muls=muls, torch=torch_flag)


class BFVTensor(SealTensor):
    """An encrypted integer tensor (values mod ``t``); create with ``BFVContext.encrypt``."""

    __slots__ = ("_ctx", "_chunks", "_shape", "_size", "_muls", "_torch")
    __array_ufunc__ = None

    def __init__(self, ctx: BFVContext, chunks: list[Any], shape: tuple[int, ...], *,
                 muls: int, torch: bool = False) -> None:
        self._ctx, self._chunks, self._shape = ctx, chunks, shape
        self._size = math.prod(shape)
        self._muls, self._torch = muls, torch

    @property
    def multiplications(self) -> int:
        """Sequential ciphertext multiplications behind this value (``<= params.depth``)."""
        return self._muls

    def __repr__(self) -> str:
        return f"BFVTensor(shape={self._shape}, multiplications={self._muls})"

    def _new(self, chunks: list[Any], shape: tuple[int, ...], muls: int) -> BFVTensor:
        return BFVTensor(self._ctx, chunks, shape, muls=muls, torch=self._torch)

    def _check_same(self, other: BFVTensor, op: str) -> None:
        if other._ctx is not self._ctx and other._ctx.key_id != self._ctx.key_id:
            raise KeyMismatchError(
                f"{op}: operands were encrypted under different keys; encrypt both with the "
                "same BFVContext (or its .public())"
            )
        if other._shape != self._shape:
            raise ConfigurationError(
                f"{op}: shapes {self._shape} and {other._shape} differ (no broadcasting)")

    def _need_depth(self, muls: int, op: str) -> None:
        if muls > self._ctx.params.depth:
            raise DepthExhaustedError(
                f"{op} would be ciphertext multiplication number {muls}, beyond the "
                f"{self._ctx.params.depth} these BFV parameters support; use a larger "
                "poly_modulus_degree (BFVParams.for_plain_bits(bits, poly_modulus_degree=16384))"
                " or a smaller plain_modulus"
            )

    def _zeros(self, n: int) -> Any:
        return cpp().BFVVector(self._ctx._native, [0] * n)

    def _apply(self, fn: str, op: str, operands: list[Any]) -> list[Any]:
        out = []
        with translate(op):
            for c, o in zip(self._chunks, operands):
                try:
                    out.append(getattr(c, fn)(o))
                except RuntimeError as exc:
                    if not is_transparent_error(exc):
                        raise
                    out.append(self._zeros(c.size()))  # exact zero: fresh encryption
        return out

    def _binary(self, other: Any, fn: str, op: str) -> BFVTensor:
        if isinstance(other, BFVTensor):
            self._check_same(other, op)
            muls = max(self._muls, other._muls) + (fn == "mul")
            self._need_depth(muls, op)
            return self._new(self._apply(fn, op, other._chunks), self._shape, muls)
        if isinstance(other, (str, bytes)) or other is None:
            return NotImplemented
        bound = self._ctx.params.plain_modulus
        if isinstance(other, float) and other.is_integer():
            other = int(other)
        if isinstance(other, (int, float)) or (getattr(other, "shape", None) == ()
                                               and getattr(other, "dtype", None) is not None):
            flat = as_plain_vector([other], 1, op, integer=True)
            vals = [int(flat[0]) % bound] * len(self._chunks)
            if fn != "mul_plain":  # add/sub a scalar to every element
                slots = self._ctx.slots
                vals = [[int(flat[0]) % bound] * min(slots, self._size - i)
                        for i in range(0, self._size, slots)]
        else:
            flat = as_plain_vector(other, self._size, op, integer=True) % bound
            slots = self._ctx.slots
            vals = [flat[i : i + slots].tolist() for i in range(0, self._size, slots)]
        return self._new(self._apply(fn, op, vals), self._shape, self._muls)

    def __add__(self, other: Any) -> BFVTensor:
        return self._binary(other, "add" if isinstance(other, BFVTensor) else "add_plain", "add")

    __radd__ = __add__

    def __sub__(self, other: Any) -> BFVTensor:
        return self._binary(other, "sub" if isinstance(other, BFVTensor) else "sub_plain", "sub")

    def __rsub__(self, other: Any) -> BFVTensor:
        return (-self)._binary(other, "add_plain", "sub")

    def __mul__(self, other: Any) -> BFVTensor:
        return self._binary(other, "mul" if isinstance(other, BFVTensor) else "mul_plain", "mul")

    __rmul__ = __mul__

    def __neg__(self) -> BFVTensor:
        """``0 - x`` (TenSEAL's native BFVVector has no negation): one fresh zero encryption
        per ciphertext, which adds only fresh-encryption noise."""
        return self._new(self._apply_rev("sub", "neg"), self._shape, self._muls)

    def _apply_rev(self, fn: str, op: str) -> list[Any]:
        with translate(op):
            return [getattr(self._zeros(c.size()), fn)(c) for c in self._chunks]

    def square(self) -> BFVTensor:
        self._need_depth(self._muls + 1, "square")
        with translate("square"):
            return self._new([c.mul(c) for c in self._chunks], self._shape, self._muls + 1)

    def _need_galois(self, op: str) -> None:
        if not self._ctx.has_galois_keys:
            raise ConfigurationError(
                f"{op} needs Galois keys; create the context with galois_keys=True")

    def _total(self, parts: list[Any]) -> Any:
        acc = parts[0]
        for p in parts[1:]:
            acc = acc.add(p)
        return acc

    def sum(self) -> BFVTensor:
        """Sum of all elements mod t -> 0-d tensor (rotations)."""
        self._need_galois("sum")
        with translate("sum"):
            return self._new([self._total([c.sum() for c in self._chunks])], (), self._muls)

    def dot(self, other: Any) -> BFVTensor:
        """Inner product mod t with an encrypted or plain integer vector (rotations)."""
        self._need_galois("dot")
        if isinstance(other, BFVTensor):
            self._check_same(other, "dot")
            muls = max(self._muls, other._muls) + 1
            self._need_depth(muls, "dot")
            with translate("dot"):
                parts = [a.dot(b) for a, b in zip(self._chunks, other._chunks)]
        else:
            flat = as_plain_vector(other, self._size, "dot", integer=True)
            flat = flat % self._ctx.params.plain_modulus
            slots, pti, muls = self._ctx.slots, cpp().PlainTensorInt64, self._muls
            with translate("dot"):
                parts = [c.dot(pti(flat[i * slots : i * slots + c.size()].tolist()))
                         for i, c in enumerate(self._chunks)]
        with translate("dot"):
            return self._new([self._total(parts)], (), muls)

    def serialize(self) -> bytes:
        header = {"shape": list(self._shape), "muls": self._muls, "torch": self._torch}
        return self._ctx._pack_tensor(KIND_TENSOR, self._chunks, header,
                                      "serializing a BFV tensor")

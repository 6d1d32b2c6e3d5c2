"""CKKS on TenSEAL: contexts that own (or lack) the secret key, and encrypted real tensors.

Who sees what:

* ``CKKSContext.generate`` creates a key pair; that context holds the **secret key** and is the
  only object that can decrypt. ``ctx.public()`` is a copy without it (public, relinearization
  and Galois keys only): hand that to the party that computes. Encryption under the public key
  is IND-CPA secure (RLWE, 128-bit by the HE standard table; see :mod:`veil.he.params`).
* Ciphertexts reveal their shape, remaining levels and a data-independent error bound.
* Decrypted values are approximate. CKKS decryption leaks the ciphertext's noise, which can
  reveal the secret key to whoever sees decryptions of ciphertexts they helped compute
  (Li-Micciancio, Eurocrypt 2021). ``decrypt(t, shared=True)`` floods the result with Gaussian
  noise first; use it for every value given to another party. See docs/security/he-ckks.md.

Serialized forms go through :mod:`veil.he.serialize` envelopes: ``ckks.context.public``,
``ckks.context.secret`` (only with ``include_secret_key=True``) and ``ckks.tensor``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import Any

from veil.errors import ConfigurationError, SerializationError, VeilError
from veil.he import serialize as envelope
from veil.he.lattice.base import SealContext
from veil.he.lattice.native import (
    chain_primes,
    cpp,
    csprng_gaussian,
    is_torch,
    new_native_context,
    to_array,
    translate,
)
from veil.he.lattice.noise import error_constants, key_switch_levels
from veil.he.lattice.sealcheck import check_blob
from veil.he.lattice.tensor import CKKSTensor, polyval_depth
from veil.he.lattice.util import level_of
from veil.he.params import CKKSParams

__all__ = ["CKKSContext", "CKKSTensor", "linear_combination", "polyval_depth",
           "flooding_sigma", "error_constants"]

KIND_PUBLIC = "ckks.context.public"
KIND_SECRET = "ckks.context.secret"
KIND_TENSOR = "ckks.tensor"


def flooding_sigma(error_bound: float, count: int, statistical_security: int = 40) -> float:
    """Standard deviation of the flooding noise: ``2**(lambda/2) * sqrt(count) * error_bound``.

    Adding independent N(0, sigma^2) to each of ``count`` outputs whose decryption error is at
    most ``error_bound`` makes the KL divergence between the distributions for any two error
    vectors at most ``count * B^2 / (2 sigma^2) = 2**-(lambda+1)``; for key recovery (a search
    problem) this gives ``lambda`` bits of security (Micciancio-Walter 2018; Li, Micciancio,
    Schultz, Sorrell 2022).
    """
    return 2.0 ** (statistical_security / 2) * math.sqrt(count) * error_bound


class CKKSContext(SealContext):
    """Keys and parameters for CKKS. Create with :meth:`generate` or :meth:`load`."""

    __slots__ = ("_clean_err", "_rescale_err", "_rel", "_ks")

    scheme = "CKKS"
    kind_public = KIND_PUBLIC
    kind_secret = KIND_SECRET
    _params: CKKSParams

    def __init__(self, native: Any, params: CKKSParams, key_id: str) -> None:
        super().__init__(native, params, key_id)
        self._clean_err, self._rescale_err = error_constants(params)
        self._rel = params.rescale_relative_error
        self._ks = key_switch_levels(params)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def generate(cls, params: CKKSParams | None = None, *, galois_keys: bool = False,
                 n_threads: int | None = None) -> CKKSContext:
        """Fresh key pair (secret, public, relinearization and, if asked, Galois keys).

        Galois keys are needed only for rotations: ``sum``/``dot``/``matmul``/``conv`` and the
        single-sample model layout (a plan says so: ``plan.galois_keys``). They are off by
        default because they dominate the public context: at N=16384 with 7 primes it is
        10.6 MB without them and 247 MB with them (about 35 MB more at N=8192, 3 primes).
        SEAL draws the keys from its own CSPRNG (Blake2-based, seeded from the OS).
        """
        params = CKKSParams.default() if params is None else params
        if not isinstance(params, CKKSParams):
            hint = ("; a plan with these parameters uses the packed single-sample layout: make "
                    "its keys with plan.keygen() (a SlotContext)"
                    if type(params).__name__ == "SlotParams" else "")
            raise ConfigurationError(f"expected CKKSParams, got {type(params).__name__}{hint}")
        native = new_native_context(
            "CKKS", params, galois_keys=galois_keys, n_threads=n_threads,
            hint="; SEAL 4.1 only runs parameter sets within the 128-bit table, so "
                 "allow_insecure=True cannot be used to create a context")
        return cls(native, params, secrets.token_hex(16))

    # -- metadata ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        kind = "secret" if self.has_secret_key else "public"
        return (f"CKKSContext({kind}, N={self._params.poly_modulus_degree}, "
                f"depth={self._params.depth}, key_id={self._key_id[:8]}…)")

    # -- encryption ----------------------------------------------------------------------------
    def encrypt(self, x: Any, *, value_bound: float | None = None) -> CKKSTensor:
        """Encrypt a numpy array / torch tensor / (nested) list of reals of any shape.

        The array is flattened (C order) and packed ``slots`` values per ciphertext. Inputs are
        checked first: NaN, inf, complex, non-numeric and ``|x| >= params.max_abs_value``
        (``2**(q0_bits - scale_bits - 1)``) raise :class:`ConfigurationError` naming the first
        bad element. Works with public or secret contexts.

        ``value_bound`` is a *public* bound on ``|x|`` (e.g. 1.0 for normalised data), checked
        here and used only to track error bounds through multiplications (tighter noise
        flooding for ``decrypt(shared=True)``); it defaults to ``params.max_abs_value``. It is
        metadata of the tensor and travels with it, so never derive it from the data.
        """
        mag = self._params.max_abs_value
        if value_bound is not None:
            vb = float(value_bound)
            if not 0 < vb <= mag:
                raise ConfigurationError(
                    f"value_bound must be in (0, {mag:g}], got {value_bound!r}")
            mag = vb
        arr, was_torch = to_array(x, integer=False, bound=self._params.max_abs_value,
                                  what="CKKS")
        if value_bound is not None:
            over = abs(arr).ravel() > mag
            if over.any():
                i = int(over.argmax())
                raise ConfigurationError(
                    f"element {i} (flat index) = {arr.ravel()[i]!r} exceeds the declared "
                    f"value_bound {mag:g}; pass a larger value_bound or clip the data")
        flat = arr.ravel()
        slots = self.slots
        ctor = cpp().CKKSVector
        with translate("CKKS encryption"):
            chunks = [ctor(self._native, flat[i : i + slots].tolist())
                      for i in range(0, flat.size, slots)]
        return CKKSTensor(self, chunks, tuple(arr.shape), level=self._params.depth,
                          err=self._clean_err, mag=mag, torch=was_torch)

    def encrypt_im2col(self, image: Any, kernel_size: int | tuple[int, int],
                       stride: int = 1) -> tuple[CKKSTensor, int]:
        """Encrypt a 2-D image in im2col layout for :meth:`CKKSTensor.conv2d_im2col`.

        Layout: each of the ``windows`` kernel positions (row-major over the output grid,
        ``((H - kh) // stride + 1) * ((W - kw) // stride + 1)`` of them) is one column; slot
        ``k * windows + w`` holds pixel ``k`` (row-major within the kernel) of window ``w``, so
        one plaintext-times-ciphertext product plus rotations yields all outputs at once.
        Needs ``kh * kw * windows <= slots`` (next power of two of ``windows`` is used).
        Returns ``(tensor, windows)``.
        """
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        arr, _ = to_array(image, integer=False, bound=self._params.max_abs_value, what="CKKS")
        if arr.ndim != 2 or not (0 < kh <= arr.shape[0] and 0 < kw <= arr.shape[1]) or \
                not (isinstance(stride, int) and stride > 0):
            raise ConfigurationError(
                f"encrypt_im2col needs a 2-D image at least as large as the kernel and a "
                f"positive int stride; got image {arr.shape}, kernel ({kh}, {kw}), stride {stride}"
            )
        windows = ((arr.shape[0] - kh) // stride + 1) * ((arr.shape[1] - kw) // stride + 1)
        if kh * kw * (1 << (windows - 1).bit_length()) > self.slots:
            raise ConfigurationError(
                f"im2col needs {kh}x{kw} x {windows} windows (rounded to a power of two) slots, "
                f"more than the {self.slots} available; use a larger poly_modulus_degree"
            )
        with translate("im2col encryption"):
            vec, n = cpp().im2col_encoding(self._native, arr.tolist(), kh, kw, stride)
        return CKKSTensor(self, [vec], (vec.size(),), level=self._params.depth,
                          err=self._clean_err, mag=self._params.max_abs_value), int(n)

    def decrypt(self, t: CKKSTensor, *, shared: bool = False, statistical_security: int = 40,
                error_bound: float | None = None) -> Any:
        """Decrypt to a numpy array of ``t.shape`` (torch tensor if ``t`` came from torch).

        ``shared=True`` (mandatory for values another party will see) adds independent
        Gaussian noise of ``sigma = 2**(statistical_security/2) * sqrt(t.size) * B`` to each
        value, from ``os.urandom``; ``B`` is ``error_bound`` or the tensor's tracked
        ``t.error_bound``. The cost is precision: each value gains noise of std ``sigma`` (about
        ``0.016`` for one fresh value and ``25`` for the sum of 4096 fresh values at N=8192,
        scale 2**40, lambda=40, mostly the Galois keys' noise; see docs/security/he-ckks.md;
        pass a tighter ``error_bound`` when you can bound the error better).
        ``statistical_security`` in [30, 128].
        """
        import numpy as np

        sk = self._secret_key_for(t, CKKSTensor)
        with translate("CKKS decryption"):
            parts = [c.decrypt(sk) for c in t._chunks]
        out = np.fromiter((v for p in parts for v in p), dtype=np.float64, count=t.size)
        if shared:
            if not isinstance(statistical_security, int) or not 30 <= statistical_security <= 128:
                raise ConfigurationError(
                    f"statistical_security must be an int in [30, 128], got "
                    f"{statistical_security!r}"
                )
            bound = t.error_bound if error_bound is None else float(error_bound)
            if error_bound is None and not math.isfinite(bound):
                raise ConfigurationError(
                    "the tensor's tracked error bound overflowed (its public value bounds are "
                    "too large to track); pass error_bound= explicitly, or encrypt with a "
                    "tighter value_bound="
                )
            if not math.isfinite(bound) or bound <= 0:
                raise ConfigurationError(f"error_bound must be a positive float, got {bound!r}")
            out += csprng_gaussian(t.size, flooding_sigma(bound, t.size, statistical_security))
        return self._user_output(out, t)

    # -- serialization ---------------------------------------------------------------------------
    @classmethod
    def params_from(cls, desc: dict[str, Any], what: str) -> CKKSParams:
        try:
            if desc.get("scheme") != "ckks" or set(desc) != {"scheme", "poly_modulus_degree",
                                                             "coeff_mod_bit_sizes", "scale_bits"}:
                raise ConfigurationError("not a CKKS parameter description")
            return CKKSParams(desc["poly_modulus_degree"], tuple(desc["coeff_mod_bit_sizes"]),
                              desc["scale_bits"])
        except (VeilError, TypeError) as exc:
            raise SerializationError(f"{what}: invalid parameters in header ({exc})") from exc

    @classmethod
    def check_native(cls, native: Any, params: CKKSParams, *, secret: bool, galois: bool,
                     what: str) -> None:
        p = params
        try:
            sc = native.seal_context()
            first, key = sc.first_context_data(), sc.key_context_data()
            ok = (str(first.parms().scheme()).endswith("CKKS")
                  and first.parms().poly_modulus_degree() == p.poly_modulus_degree
                  and key.chain_index() == len(p.coeff_mod_bit_sizes) - 1
                  and chain_primes(native) == list(p.primes)
                  and native.global_scale == 2.0**p.scale_bits
                  and native.has_public_key() and native.has_relin_keys()
                  and bool(native.has_galois_keys()) == galois
                  and bool(native.has_secret_key()) == secret)
        except Exception as exc:
            raise SerializationError(f"{what}: inconsistent TenSEAL context ({exc})") from exc
        if not ok:
            raise SerializationError(
                f"{what}: the TenSEAL context does not match its declared parameters/keys "
                f"({p.describe()}, secret={secret}, galois={galois})"
            )

    def load_tensor(self, data: bytes, *,
                    max_bytes: int = envelope.DEFAULT_MAX_BYTES) -> CKKSTensor:
        """Load a ``ckks.tensor`` made under this context's parameters and key.

        Every ciphertext is checked (size, ring degree, level, scale) before use. The error
        bound in the payload is taken as given: when the sender will also see the decryption,
        pass your own ``error_bound`` to ``decrypt(..., shared=True)``.
        """
        return _load_tensor(self, data, max_bytes)

    def _serialize_tensor(self, t: CKKSTensor) -> bytes:
        header = {"shape": list(t.shape), "level": t.levels_left, "err": t._err, "mag": t._mag,
                  "torch": t._torch, "padded": t._padded}
        return self._pack_tensor(KIND_TENSOR, t._chunks, header, "serializing a CKKS tensor")


_TENSOR_FIELDS = (("shape", list), ("level", int), ("err", (int, float)), ("mag", (int, float)),
                  ("torch", bool), ("padded", bool))


def _load_tensor(ctx: CKKSContext, data: bytes, max_bytes: int) -> CKKSTensor:
    what = KIND_TENSOR
    (shape, level, err, mag, torch_flag, padded), blobs = ctx._open_tensor(
        data, KIND_TENSOR, _TENSOR_FIELDS, max_bytes)
    p = ctx.params
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s for s in shape) or \
            len(shape) > 32 or not 0 <= level <= p.depth or \
            not (math.isfinite(err) and math.isfinite(mag) and err >= 0 and mag >= 0):
        raise SerializationError(f"{what}: invalid shape/level/bounds in header")
    size = math.prod(shape)
    slots = ctx.slots
    if len(blobs) != -(-size // slots):  # checked before sizing anything by the header
        raise SerializationError(
            f"{what}: {len(blobs)} ciphertexts for {size} values; expected {-(-size // slots)}"
        )
    expected = [min(slots, size - i) for i in range(0, size, slots)]
    if len(blobs) != len(expected):
        raise SerializationError(
            f"{what}: {len(blobs)} ciphertexts for {size} values; expected {len(expected)}"
        )
    ctor = cpp().CKKSVector
    chunks, levels = [], []
    for blob, n in zip(blobs, expected):
        check_blob(blob, kind="tensor", what=what)  # SEAL aborts on some malformed blobs
        try:
            chunk = ctor(ctx._native, blob)
            cts = chunk.ciphertext()
            ct = cts[0] if len(cts) == 1 else None
            good = (ct is not None and chunk.size() == n and ct.size() == 2
                    and ct.poly_modulus_degree() == p.poly_modulus_degree
                    and 1 <= ct.coeff_modulus_size() <= p.depth + 1
                    and ct.is_ntt_form() and not ct.is_transparent()
                    and ct.scale == 2.0**p.scale_bits)
        except Exception as exc:
            raise SerializationError(f"{what}: TenSEAL could not parse a ciphertext ({exc})") \
                from exc
        if not good:
            raise SerializationError(
                f"{what}: a ciphertext does not match the parameters or declared size {n}"
            )
        chunks.append(chunk)
        levels.append(ct.coeff_modulus_size() - 1)
    if min(levels) != level:
        raise SerializationError(f"{what}: header level {level} != ciphertext level {min(levels)}")
    return CKKSTensor(ctx, chunks, tuple(shape), level=level, err=max(float(err), ctx._clean_err),
                      mag=float(mag), torch=torch_flag, padded=padded)


def linear_combination(tensors: Sequence[CKKSTensor], weights: Any,
                       bias: Any = None) -> CKKSTensor | list[CKKSTensor]:
    """``sum_j w[j] * tensors[j] + bias`` without temporaries beyond one term (rotation-free).

    ``weights`` 1-D (len == len(tensors)) gives one tensor; 2-D ``W[k, j]`` gives a list with
    ``sum_j W[k, j] * tensors[j] + bias[k]`` per row ``k`` (a dense layer over one-tensor-per-
    feature batched inputs). One level; zero weights are skipped; ``bias`` is a scalar (1-D
    case) or a vector of length ``k`` (or None).
    """
    import numpy as np

    ts_list = list(tensors)
    if not ts_list or not all(isinstance(t, CKKSTensor) for t in ts_list):
        raise ConfigurationError("linear_combination needs a non-empty list of CKKSTensor")
    first = ts_list[0]
    for t in ts_list[1:]:
        first._check_same(t, "linear_combination")
    w = np.asarray(weights.detach().cpu().numpy() if is_torch(weights) else weights,
                   dtype=np.float64)
    single = w.ndim == 1
    w2 = w[None, :] if single else w
    if w2.ndim != 2 or w2.shape[1] != len(ts_list) or not np.isfinite(w2).all():
        raise ConfigurationError(
            f"weights of shape {w.shape} do not match {len(ts_list)} tensors; expected "
            f"({len(ts_list)},) or (k, {len(ts_list)}) finite values"
        )
    b = np.zeros(w2.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
    if b.shape != (w2.shape[0],) or not np.isfinite(b).all():
        raise ConfigurationError(f"bias must hold {w2.shape[0]} finite values, got {b.shape}")
    level = min(t.levels_left for t in ts_list)
    first._need_levels(1, "linear_combination", level)
    out = [_combine(ts_list, row, float(bk)) for row, bk in zip(w2, b)]
    return out[0] if single else out


def _combine(ts_list: list[CKKSTensor], row: Any, bias: float) -> CKKSTensor:
    first = ts_list[0]
    idx = [j for j, wj in enumerate(row) if wj != 0.0] or [0]
    with translate("linear_combination"):
        acc = [c.mul_plain(float(row[idx[0]])) for c in ts_list[idx[0]]._chunks]
        for j in idx[1:]:
            wj = float(row[j])
            for i, c in enumerate(ts_list[j]._chunks):
                acc[i].add_(c.mul_plain(wj))  # in place on our own accumulator
        if bias != 0.0:
            for c in acc:
                c.add_plain_(bias)
    mag = sum(abs(row[j]) * ts_list[j]._mag for j in idx) + abs(bias)
    err = math.sqrt(sum((row[j] * ts_list[j]._err) ** 2 for j in idx)) + first._rs(0)
    level = min(level_of(c) for c in acc)
    return first._new(acc, first.shape, level, float(err), float(mag))

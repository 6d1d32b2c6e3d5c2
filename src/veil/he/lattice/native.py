"""The one place Veil imports TenSEAL, plus helpers shared by the CKKS and BFV wrappers.

* :func:`import_tenseal` imports it lazily and turns a missing install into
  :class:`~veil.errors.BackendUnavailableError`.
* :func:`translate` is the boundary: every TenSEAL / SEAL exception (``ValueError("scale out of
  bounds")``, bare ``RuntimeError`` / ``std::exception``, pybind ``TypeError``) becomes a typed
  Veil error with ``raise ... from exc``.
* :func:`to_array` validates user input (shape, dtype, finiteness, range) before anything is
  encoded; the first bad element is named by index and value.
* :func:`csprng_gaussian` draws Gaussian noise from ``os.urandom`` (never numpy's generator).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from typing import Any

from veil.errors import (
    BackendUnavailableError,
    ConfigurationError,
    DepthExhaustedError,
    SerializationError,
    VeilError,
)

_ts: Any = None


def import_tenseal() -> Any:
    """Import and return the ``tenseal`` module (cached)."""
    global _ts
    if _ts is None:
        try:
            import tenseal
        except ImportError as exc:  # pragma: no cover - tenseal is a hard dependency
            raise BackendUnavailableError(
                "CKKS/BFV need TenSEAL, which is not importable here: "
                "`pip install tenseal==0.3.18` (wheels exist for CPython 3.11)"
            ) from exc
        _ts = tenseal
    return _ts


def cpp() -> Any:
    """TenSEAL's native module (``tenseal._ts_cpp``): Veil calls it directly to avoid overhead."""
    return import_tenseal()._ts_cpp


def sealapi() -> Any:
    """SEAL's own binding shipped inside TenSEAL (``tenseal.sealapi``): the evaluator, encoder
    and keys behind :mod:`veil.he.lattice.slots` (rotations by any step, chosen Galois keys)."""
    import_tenseal()
    import tenseal.sealapi

    return tenseal.sealapi


@contextlib.contextmanager
def translate(what: str, *, depth_hint: str = "") -> Iterator[None]:
    """Translate TenSEAL/SEAL exceptions raised inside the block into Veil errors."""
    try:
        yield
    except VeilError:
        raise
    except (ValueError, RuntimeError, TypeError, IndexError, MemoryError, OverflowError) as exc:
        msg = str(exc) or type(exc).__name__
        low = msg.lower()
        if "scale out of bounds" in low or "end of modulus switching chain" in low:
            raise DepthExhaustedError(
                f"{what} failed in TenSEAL ({msg!r}): the ciphertext ran out of levels. "
                f"{depth_hint or 'Use parameters with more depth, e.g. CKKSParams.for_depth(k)'}"
            ) from exc
        raise ConfigurationError(
            f"{what} failed in TenSEAL: {msg}; check the operands' sizes and the context's keys"
        ) from exc


def is_transparent_error(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and "transparent" in str(exc)


# -- input validation -----------------------------------------------------------------------


def is_torch(x: Any) -> bool:
    return type(x).__module__.split(".", 1)[0] == "torch"


def to_array(x: Any, *, integer: bool, bound: float, what: str) -> tuple[Any, bool]:
    """Validate ``x`` and return ``(ndarray, was_torch)``; ``bound`` is the exclusive |x| limit
    (CKKS) or inclusive limit (BFV, ``integer=True``)."""
    import numpy as np

    was_torch = is_torch(x)
    if was_torch:
        x = x.detach().cpu().numpy()
    if isinstance(x, (str, bytes)):
        raise ConfigurationError(f"cannot encrypt {type(x).__name__} {x!r}; pass numbers")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"cannot encrypt {type(x).__name__}: {exc}; pass a numpy array, torch tensor or "
            "(nested) list of numbers of a regular shape"
        ) from exc
    kind = arr.dtype.kind
    if kind == "c":
        bad = np.flatnonzero(np.imag(arr).ravel() != 0)
        idx = _index(arr, int(bad[0])) if bad.size else _index(arr, 0)
        raise ConfigurationError(
            f"cannot encrypt complex values ({what} encrypts reals): element {idx} = "
            f"{arr[idx]!r}; pass the real part explicitly (x.real) if the imaginary part is 0"
        )
    if kind not in "biuf":
        first = arr.ravel()[0] if arr.size else None
        raise ConfigurationError(
            f"cannot encrypt an array of dtype {arr.dtype} (first element {first!r}); pass "
            "numbers (int/float), not strings or objects"
        )
    if arr.size == 0:
        raise ConfigurationError(f"cannot encrypt an empty array (shape {arr.shape})")
    if integer:
        if kind == "f":
            flat = arr.ravel()
            bad = ~np.isfinite(flat) | (flat != np.round(flat))
            if bad.any():
                i = int(np.argmax(bad))
                raise ConfigurationError(
                    f"{what} encrypts integers: element {_index(arr, i)} = {float(flat[i])!r} is "
                    "not an "
                    "integer; round or scale your data first"
                )
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
            too = arr.ravel() > bound
        else:
            arr = arr.astype(np.int64) if kind != "f" else arr
            too = np.abs(arr.ravel()) > bound
        if too.any():
            i = int(np.argmax(too))
            raise ConfigurationError(
                f"element {_index(arr, i)} = {int(arr.ravel()[i])} is outside the plaintext range "
                f"[-{int(bound)}, {int(bound)}] of plain_modulus; it would wrap around. Use a "
                "larger plain_modulus (BFVParams.for_plain_bits) or smaller values"
            )
        return arr.astype(np.int64), was_torch
    arr = arr.astype(np.float64, copy=False)
    flat = arr.ravel()
    finite = np.isfinite(flat)
    if not finite.all():
        i = int(np.argmax(~finite))
        raise ConfigurationError(
            f"cannot encrypt non-finite values: element {_index(arr, i)} = {float(flat[i])!r}; "
            "remove or impute NaN/inf first"
        )
    too = np.abs(flat) >= bound
    if too.any():
        i = int(np.argmax(too))
        raise ConfigurationError(
            f"element {_index(arr, i)} = {float(flat[i])!r} is too large for these CKKS "
            "parameters: "
            f"|x| must stay below {bound:g} = 2^integer_bits (first prime bits - scale bits - 1). "
            "Rescale your data or use CKKSParams.for_depth(d, integer_bits=...) with more "
            "integer bits"
        )
    return arr, was_torch


def _index(arr: Any, flat_index: int) -> Any:
    import numpy as np

    if arr.ndim <= 1:
        return flat_index
    return tuple(int(i) for i in np.unravel_index(flat_index, arr.shape))


def as_plain_vector(x: Any, size: int, what: str, *, integer: bool = False) -> Any:
    """A plaintext operand as a flat finite array of ``size`` values (or a python scalar)."""
    import numpy as np

    if is_torch(x):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ConfigurationError(
            f"{what}: plaintext operand must be numeric, got dtype {arr.dtype}"
        )
    flat = arr.ravel()
    if integer and flat.dtype.kind == "f":
        bad = ~np.isfinite(flat) | (flat != np.round(flat))
        if bad.any():
            i = int(np.argmax(bad))
            raise ConfigurationError(
                f"{what}: plaintext element {i} = {float(flat[i])!r} is not an integer")
    flat = flat.astype(np.int64 if integer else np.float64)
    if not integer and not np.isfinite(flat).all():
        i = int(np.argmax(~np.isfinite(flat)))
        raise ConfigurationError(
            f"{what}: plaintext element {i} = {float(flat[i])!r} is not finite")
    if flat.size != size:
        raise ConfigurationError(
            f"{what}: plaintext operand has {flat.size} elements (shape {arr.shape}) but the "
            f"encrypted tensor has {size}; shapes must match exactly (no broadcasting)"
        )
    return flat


# -- CSPRNG Gaussian ---------------------------------------------------------------------------


def csprng_gaussian(n: int, sigma: float) -> Any:
    """``n`` samples of N(0, sigma^2) by Box-Muller from ``os.urandom`` (53-bit uniforms)."""
    import numpy as np

    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint64).reshape(2, n)
    u1 = ((raw[0] >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53  # (0, 1]
    u2 = (raw[1] >> np.uint64(11)).astype(np.float64) / 2.0**53  # [0, 1)
    return sigma * np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


# -- body framing for serialized contexts / tensors -----------------------------------------

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
MAX_HEADER = 64 * 1024
MAX_CHUNKS = 1 << 16


def frame(header: dict[str, Any], blobs: list[bytes]) -> bytes:
    """``u32 header_len | header JSON | u32 count | (u64 len | blob)*``."""
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    parts = [_U32.pack(len(h)), h, _U32.pack(len(blobs))]
    for b in blobs:
        parts += [_U64.pack(len(b)), b]
    return b"".join(parts)


def unframe(body: bytes, what: str) -> tuple[dict[str, Any], list[bytes]]:
    """Inverse of :func:`frame`; every length is checked before it is used, the header is parsed
    by the bounded :func:`veil.he.serialize.load_json`."""
    from veil.he.serialize import load_json

    mv = memoryview(body)
    try:
        (hlen,) = _U32.unpack_from(mv, 0)
        if hlen > MAX_HEADER or 4 + hlen + 4 > len(mv):
            raise SerializationError(f"{what}: corrupt header length {hlen}")
        header = load_json(mv[4 : 4 + hlen], what=f"{what} header", max_bytes=MAX_HEADER)
        if not isinstance(header, dict):
            raise SerializationError(f"{what}: header is not an object")
        pos = 4 + hlen
        (count,) = _U32.unpack_from(mv, pos)
        pos += 4
        if count > MAX_CHUNKS:
            raise SerializationError(f"{what}: {count} blobs is more than the limit {MAX_CHUNKS}")
        blobs = []
        for _ in range(count):
            (blen,) = _U64.unpack_from(mv, pos)
            pos += 8
            if blen > len(mv) - pos:
                raise SerializationError(f"{what}: blob of {blen} bytes overruns the payload")
            blobs.append(bytes(mv[pos : pos + blen]))
            pos += blen
        if pos != len(mv):
            raise SerializationError(f"{what}: {len(mv) - pos} trailing bytes")
    except struct.error as exc:
        raise SerializationError(f"{what}: malformed body ({exc})") from exc
    return header, blobs


def chain_primes(native: Any, limit: int = 64) -> list[int]:
    """The primes of a native context, in ``coeff_mod_bit_sizes`` order (special prime last).

    SEAL drops one prime per level (the special prime first, then the last data prime), and
    each level exposes the low 64 bits of its modulus ``Q_l``; every ``Q_l`` is odd, so each
    prime (< 2**61) is ``Q_(l+1) / Q_l mod 2**64``, exactly. (Differences of the levels' bit
    counts are not the primes' sizes: a product of primes well below ``2**b`` loses bits.)
    """
    lows = []
    data = native.seal_context().key_context_data()
    while data is not None and len(lows) <= limit:
        lows.append(int(data.total_coeff_modulus()) % 2**64)
        data = data.next_context_data()
    lows.reverse()  # Q_0 = q0, Q_1 = q0 q1, ..., the key level last
    return [lows[0]] + [lows[i + 1] * pow(lows[i], -1, 2**64) % 2**64
                        for i in range(len(lows) - 1)]


def check_header_field(header: dict[str, Any], key: str, typ: type | tuple[type, ...],
                       what: str) -> Any:
    value = header.get(key)
    if not isinstance(value, typ) or isinstance(value, bool) and typ is int:
        raise SerializationError(f"{what}: header field {key!r} is missing or malformed "
                                 f"({value!r})")
    return value


def new_native_context(scheme: str, params: Any, *, plain_modulus: int = 0,
                       galois_keys: bool = True, n_threads: int | None = None,
                       hint: str = "") -> Any:
    """A fresh TenSEAL context (asymmetric keys, relinearization keys, optional Galois keys).

    ``scheme`` is "CKKS" or "BFV"; SEAL draws the keys from its own CSPRNG (seeded from the OS).
    """
    import os

    ts = import_tenseal()
    with translate(f"creating the {scheme} context"):
        try:
            native = ts._ts_cpp.TenSEALContext.new(
                getattr(ts.SCHEME_TYPE, scheme).value, params.poly_modulus_degree, plain_modulus,
                list(params.coeff_mod_bit_sizes), ts.ENCRYPTION_TYPE.ASYMMETRIC.value,
                n_threads if n_threads and n_threads > 0 else (os.cpu_count() or 1))
        except ValueError as exc:
            raise ConfigurationError(f"SEAL rejected {params} ({exc}){hint}") from exc
        if scheme == "CKKS":
            native.global_scale = 2.0**params.scale_bits
        if not native.has_relin_keys():
            native.generate_relin_keys()
        if galois_keys:
            native.generate_galois_keys()
    return native

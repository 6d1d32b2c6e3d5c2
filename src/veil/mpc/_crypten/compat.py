"""Make CrypTen 0.4.1 import and run on current torch without touching site-packages.

CrypTen's ``crypten/nn/onnx_converter.py`` imports ``torch.onnx.symbolic_registry`` and then
``torch.onnx._internal.registration``; both modules are gone from current torch, so a plain
``import crypten`` fails. Veil never uses CrypTen's ONNX path (model conversion is Veil's own, in
``veil.models``), so for the duration of the import we register a stand-in module whose
``registry`` refuses every use with a clear error, and remove it again afterwards so nothing else
in the process ever sees it.

This is the only module of Veil that imports ``crypten``: :func:`load_crypten` imports it bare;
everything else calls :func:`veil.mpc._crypten.import_crypten`, which adds the import-stage
patches of :data:`veil.mpc._crypten.patches.PATCHES` (among them :func:`make_fixed_point_decode`).
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any

from veil.errors import BackendUnavailableError, UnsupportedOperationError

_REGISTRATION = "torch.onnx._internal.registration"
_lock = threading.Lock()
_crypten: Any = None

INSTALL_HINT = (
    "install it without its broken metadata: `pip install --no-deps crypten==0.4.1` "
    "(its run-time needs numpy, pyyaml, omegaconf and onnx come with Veil); "
    "`make test` in a Veil checkout does this for you"
)


class _OnnxRegistryStandIn:
    """Stands in for torch's removed ONNX symbolic registry; any use is an error."""

    def __getattr__(self, name: str) -> Any:
        raise UnsupportedOperationError(
            f"CrypTen's ONNX model import (registry.{name}) does not work on torch "
            f"{_torch_version()}; use veil.models to convert torch models for MPC instead"
        )


def _torch_version() -> str:
    torch = sys.modules.get("torch")
    return getattr(torch, "__version__", "unknown")


def _needs_stand_in() -> bool:
    try:
        importlib.import_module(_REGISTRATION)
    except ImportError:
        return True
    return False


def load_crypten() -> Any:
    """Import and return the bare ``crypten`` module (the ONNX stand-in only while importing).

    Veil's code calls :func:`veil.mpc._crypten.import_crypten` instead, which also applies the
    import-stage patches.

    Raises :class:`BackendUnavailableError` naming the install command when crypten (or one of
    the packages it needs at import time) is missing.
    """
    global _crypten
    if _crypten is not None:
        return _crypten
    with _lock:
        if _crypten is not None:
            return _crypten
        try:
            import torch  # noqa: F401  (crypten needs torch first; report it clearly)
        except ImportError as exc:
            raise BackendUnavailableError(
                "veil.mpc needs torch, which is not installed: run `pip install torch==2.13.0` "
                "(the CPU build on machines without a GPU)"
            ) from exc
        stand_in = None
        if "crypten" not in sys.modules and _needs_stand_in():
            stand_in = types.ModuleType(_REGISTRATION)
            stand_in.registry = _OnnxRegistryStandIn()  # type: ignore[attr-defined]
            sys.modules[_REGISTRATION] = stand_in
        try:
            crypten = importlib.import_module("crypten")
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            raise BackendUnavailableError(
                f"crypten could not be imported (missing module: {missing}); {INSTALL_HINT}"
            ) from exc
        finally:
            if stand_in is not None and sys.modules.get(_REGISTRATION) is stand_in:
                del sys.modules[_REGISTRATION]
        _crypten = crypten
        return crypten


def make_fixed_point_decode(_original: Any) -> Any:
    """The replacement of ``FixedPointEncoder.decode``, which is wrong for negative non-integers.

    CrypTen 0.4.1 floors negative encodings by ``scale - 1`` instead of ``scale``, so e.g.
    ``-7.99999`` (``-524287`` at 16 bits) decodes to ``-8.99998``: every revealed negative value
    that is not a multiple of ``2^-16``·scale is off by up to -1. The replacement floors by the
    scale and adds the (non-negative) remainder: ``floor(t / s) + (t mod s) / s``, exactly
    ``t / s`` for every int64 ``t``.
    """
    from crypten.common.tensor_types import is_int_tensor
    from crypten.encoder import nearest_integer_division

    def decode(self: Any, tensor: Any) -> Any:
        if tensor is None:
            return None
        if not is_int_tensor(tensor):
            raise TypeError(f"FixedPointEncoder.decode needs an integer tensor, got {tensor.dtype}")
        if self._scale > 1:
            quotient = tensor.div(self._scale, rounding_mode="floor")
            remainder = tensor - quotient * self._scale
            return (quotient.float() + remainder.float() / self._scale).data
        return nearest_integer_division(tensor, self._scale).data

    return decode

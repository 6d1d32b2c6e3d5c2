"""Where a party's shares live: ``"auto"`` picks CUDA when a usable GPU is present, else CPU.

Device choice reveals nothing to other parties beyond timing. Shares are moved to the device
after they are drawn (Veil's CSPRNG runs on the CPU, see :mod:`veil.mpc._crypten.rng`).
"""

from __future__ import annotations

import threading
from typing import Any

from veil.errors import ConfigurationError

__all__ = ["resolve", "cuda_usable"]

_lock = threading.Lock()
_usable: dict[str, bool] = {}


def cuda_usable() -> bool:
    """Whether torch sees at least one CUDA GPU *and* can allocate on it (cached per process)."""
    with _lock:
        if "cuda" not in _usable:
            import torch

            ok = False
            try:
                if torch.cuda.is_available() and torch.cuda.device_count() > 0:
                    torch.zeros(1, device="cuda")
                    ok = True
            except (RuntimeError, AssertionError):  # driver present but unusable
                ok = False
            _usable["cuda"] = ok
        return _usable["cuda"]


def resolve(device: Any = "auto", *, rank: int | None = None) -> Any:
    """Turn ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` / a ``torch.device`` into a device.

    ``"auto"`` gives ``cuda`` when a usable GPU is present and ``cpu`` otherwise. With ``rank``
    given, an unindexed CUDA choice spreads parties over the GPUs (``cuda:rank % count``), so
    several local parties do not share one GPU when there are more. ``"cuda"`` without a usable
    GPU, an index beyond the GPUs present or any other device type raises
    :class:`~veil.errors.ConfigurationError`.
    """
    import torch

    if isinstance(device, str):
        text = device.strip().lower()
        if text == "auto":
            if not cuda_usable():
                return torch.device("cpu")
            text = "cuda"
        try:
            dev = torch.device(text)
        except RuntimeError as exc:
            raise ConfigurationError(
                f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
            ) from exc
    elif isinstance(device, torch.device):
        dev = device
    else:
        raise ConfigurationError(
            f"device must be a str or torch.device, got {type(device).__name__} {device!r}; "
            "use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        )
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ConfigurationError(
            f"device {str(dev)!r} is not supported by veil.mpc; use 'auto', 'cpu' or 'cuda'"
        )
    if not cuda_usable():
        raise ConfigurationError(
            f"device {str(dev)!r} was requested but no usable CUDA GPU is present; "
            "use device='auto' (falls back to CPU) or device='cpu'"
        )
    count = torch.cuda.device_count()
    if dev.index is None:
        if rank is None:
            return torch.device("cuda", torch.cuda.current_device())
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ConfigurationError(f"rank must be a non-negative int, got {rank!r}")
        return torch.device("cuda", rank % count)
    if dev.index >= count:
        raise ConfigurationError(
            f"device {str(dev)!r} does not exist: {count} GPU(s) present (cuda:0..cuda:{count - 1})"
        )
    return dev

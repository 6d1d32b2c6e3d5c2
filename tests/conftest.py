"""Shared pytest configuration for Veil's tests."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

# MPC jobs and models defined in test modules are pickled by reference ("tests.models...");
# party processes must be able to import them however pytest was started (`pytest` does not put
# the repository root on sys.path, `python -m pytest` does).
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# Keep hypothesis fast and deterministic in CI; tests opt into more examples where it matters.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "veil", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "veil"))
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none present)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)

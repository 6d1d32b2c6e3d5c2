"""Shared pytest configuration for Veil's tests."""

from __future__ import annotations

import os

import pytest

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

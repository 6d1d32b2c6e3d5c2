"""Fixtures for veil.models tests: a persistent zoo cache so models train once, not per run."""

from __future__ import annotations

import os
import pathlib

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Child processes (MPC parties) inherit the variable; a user-set cache dir is respected.
os.environ.setdefault("VEIL_CACHE_DIR", str(_ROOT / ".pytest_cache" / "veil"))


@pytest.fixture(scope="session")
def zoo():
    from veil.models import zoo

    return zoo

"""What every benchmark record carries: library versions, machine, git revision."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("veil", "torch", "crypten", "tenseal", "phe", "gmpy2", "numpy", "mpyc")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return None


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=cwd or Path(__file__).parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Machine, library versions and git revision, for every benchmark record."""
    return {
        "machine": {
            "cores": os.cpu_count(),
            "cpu": _cpu_model(),
            "gpu": _gpu(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": library_versions(),
        "git_revision": git_revision(),
    }

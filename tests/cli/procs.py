"""Run a CLI command to its end in its own session; kill its whole group if it overstays."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def run_to_end(cmd: Sequence[str], *, env: Mapping[str, str], timeout: float,
               cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """``cmd`` with captured text output, and its pid (= its session id); after ``timeout`` s
    its process group is killed and :class:`subprocess.TimeoutExpired` propagates."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err), proc.pid

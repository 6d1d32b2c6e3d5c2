"""Ctrl-C stops `veil stats` at once: every party is killed, nothing is left, exit code 130.

The reported case: `veil stats ... --stats logit` started from a script (as a background job, so
it inherits SIGINT as *ignored*), `kill -INT` 10 s in: the run went on to print its results.
Here the command runs with SIGINT ignored the same way and gets SIGINT once its parties run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

VEIL = str(Path(sys.executable).with_name("veil"))


def _csvs(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(7)
    paths = []
    for i in range(2):
        x = rng.normal(30, 5, 200)
        y = (x + rng.normal(0, 5, 200) > 30).astype(int)
        p = tmp_path / f"p{i}.csv"
        p.write_text("bmi,y\n" + "".join(f"{a:.3f},{b}\n" for a, b in zip(x, y)))
        paths.append(str(p))
    return paths


def _ignore_sigint() -> None:  # what a shell does for `cmd &` without job control
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("target", ["process", "group"])
def test_sigint_stops_veil_stats_and_every_party(tmp_path, target) -> None:
    a, b = _csvs(tmp_path)
    cmd = [VEIL, "stats", "--data", a, "--data", b, "--columns", "bmi,y", "--stats", "logit",
           "--target", "y", "--iterations", "400"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_ignore_sigint)
    try:
        me = psutil.Process(proc.pid)
        deadline = time.monotonic() + 180
        # forkserver + 2 parties + the dealer: the parties run
        while len(me.children(recursive=True)) < 4:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the parties never started"
            time.sleep(0.1)
        time.sleep(2.0)  # well inside the regression (it runs for tens of seconds)
        tree = [c.pid for c in me.children(recursive=True)]
        if target == "group":  # a terminal's Ctrl-C: the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # the run itself would take far longer
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, (proc.returncode, out[-1000:], err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    assert "coefficient" not in out, "the run went on to print results"
    deadline = time.monotonic() + 10
    left = tree
    while left and time.monotonic() < deadline:
        left = [p for p in tree if _alive(p)]
        time.sleep(0.1)
    assert left == [], "processes left behind"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False

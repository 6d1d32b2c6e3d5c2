"""A party that dies, hangs or loses its launcher: bounded PartyFailure, no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import torch

from veil import mpc
from veil.errors import PartyFailure

TIMEOUT = 4.0


def victim_job(party, victim, signum, where):
    """Party `victim` sends itself `signum` at the start of phase `where`."""

    def maybe_die(phase):
        if phase == where and party.rank == victim:
            os.kill(os.getpid(), signum)
            time.sleep(30)  # SIGSTOP: never reached until SIGCONT; SIGKILL: never reached

    with party.phase("input sharing"):
        maybe_die("input sharing")
        x = party.share(torch.arange(6.0) if party.rank == 0 else None, src=0)
        y = party.share(torch.ones(6) if party.rank == 1 else None, src=1)
    with party.phase("multiplication"):
        maybe_die("multiplication")
        z = x * y
    with party.phase("reveal"):
        maybe_die("reveal")
        return party.reveal(z, to=[0])


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture(scope="module")
def warm() -> None:
    """Start the forkserver once, so that it is part of the 'before' picture."""
    mpc.run(victim_job, parties=2, args=(-1, 0, ""), timeout=20)


@pytest.mark.parametrize(
    ("signum", "where", "victim"),
    [
        (signal.SIGKILL, "input sharing", 1),
        (signal.SIGKILL, "multiplication", 0),
        (signal.SIGKILL, "reveal", 2),
        (signal.SIGSTOP, "input sharing", 2),
        (signal.SIGSTOP, "multiplication", 1),
        (signal.SIGSTOP, "reveal", 0),
    ],
    ids=lambda v: getattr(v, "name", str(v)).replace(" ", "-"),
)
def test_dead_or_stopped_party_is_named_in_bounded_time(warm, signum, where, victim) -> None:
    before = _descendants()
    t0 = time.monotonic()
    with pytest.raises(PartyFailure) as info:
        mpc.run(victim_job, parties=3, args=(victim, signum, where), timeout=TIMEOUT)
    elapsed = time.monotonic() - t0
    err = info.value
    assert err.rank == victim, str(err)
    assert err.phase == where, str(err)
    assert f"party {victim}" in str(err)
    assert elapsed < TIMEOUT + 10, elapsed
    deadline = time.monotonic() + 5
    while _descendants() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _descendants() - before == set(), "party processes left behind"


_LAUNCHER = textwrap.dedent(
    """
    import os, sys, time
    from veil import mpc

    def sleepy_job(party, pidfile):
        with open(pidfile + str(party.rank), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)

    if __name__ == "__main__":
        mpc.run(sleepy_job, parties=2, args=(sys.argv[1],), timeout=60)
    """
)


def test_parties_die_with_their_launcher(tmp_path) -> None:
    script = tmp_path / "launcher.py"
    script.write_text(_LAUNCHER)
    pidfile = str(tmp_path / "pid")
    proc = subprocess.Popen([sys.executable, str(script), pidfile])
    try:
        deadline = time.monotonic() + 60
        while not all(os.path.exists(pidfile + str(r)) for r in range(2)):
            assert proc.poll() is None, "launcher ended early"
            assert time.monotonic() < deadline, "parties never started"
            time.sleep(0.1)
        time.sleep(0.2)
        pids = [int(open(pidfile + str(r)).read()) for r in range(2)]
        assert all(psutil.pid_exists(p) for p in pids)
        proc.kill()  # SIGKILL: the launcher gets no chance to clean up
        proc.wait()
        deadline = time.monotonic() + 10
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [p for p in pids if psutil.pid_exists(p)
                     and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.1)
        assert alive == [], "party processes outlived their launcher"
    finally:
        if proc.poll() is None:
            proc.kill()


def stuck_job(party):
    """Party 1 stays alive (its heartbeats go on) in a long local phase; party 0 waits for it."""
    x = party.share(torch.arange(4.0) if party.rank == 0 else None, src=0)
    if party.rank == 1:
        with party.phase("slow local work"):
            time.sleep(60)
    with party.phase("reveal"):
        return party.reveal(x, to=[0])


def test_alive_but_stuck_party_is_named_with_its_phase(warm) -> None:
    with pytest.raises(PartyFailure) as info:
        mpc.run(stuck_job, parties=2, timeout=TIMEOUT)
    err, text = info.value, str(info.value)
    assert err.rank == 1, text
    assert "party 1 is alive" in text and "'slow local work'" in text, text
    assert "party 0 was in phase 'reveal" in text, text
    assert "unknown party" not in text, text

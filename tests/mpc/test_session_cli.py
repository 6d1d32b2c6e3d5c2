"""``veil party`` on this machine (loopback): one process per party, as on separate hosts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from veil.cli.party import JOB_ALIASES, parse_args, resolve_job
from veil.errors import ConfigurationError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _party(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "veil.cli", "party", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(procs: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str, str]]:
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=timeout)
            out.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return out


def test_two_parties_with_the_dealer_hosted_by_party_0() -> None:
    master = f"127.0.0.1:{_free_port()}"
    common = ["--world-size", "2", "--insecure-plaintext",
              "--master", master, "--timeout", "30", "--job", "selftest",
              "--arg", "length=3"]
    procs = [_party("--rank", "0", *common, "--arg", "value=1.5", "--host-dealer"),
             _party("--rank", "1", *common, "--arg", "value=-4")]
    (rc0, out0, err0), (rc1, out1, err1) = _finish(procs, 120)
    assert rc0 == 0 and rc1 == 0, err0[-2000:] + err1[-2000:]
    r0, r1 = json.loads(out0.splitlines()[-1]), json.loads(out1.splitlines()[-1])
    assert r0["sum"] == r1["sum"] == pytest.approx([-2.5] * 3, abs=1e-3)
    assert r0["above"] == r1["above"] == [0, 0, 0]
    assert r0["product"] == pytest.approx([-6.0] * 3, abs=1e-2) and r1["product"] is None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--rank", "0", "--world-size", "2", "--insecure-plaintext",
          "--master", "nohostport", "--job", "selftest"],
         "HOST:PORT"),
        (["--rank", "0", "--world-size", "2", "--insecure-plaintext",
          "--master", "h:1", "--job", "nope"],
         "--job must be module:function"),
        (["--rank", "0", "--world-size", "2", "--insecure-plaintext",
          "--master", "h:1", "--job", "os:nothing_here"],
         "cannot import"),
        (["--rank", "2", "--world-size", "2", "--insecure-plaintext",
          "--master", "h:1", "--job", "selftest"],
         "rank must be in 0..1"),
        (["--rank", "0", "--world-size", "2", "--insecure-plaintext",
          "--master", "h:1", "--job", "selftest",
          "--provider", "tfp"], "allow_party0_sees_inputs"),
        (["--dealer", "--rank", "0", "--world-size", "2", "--insecure-plaintext",
          "--master", "h:1"], "--dealer takes"),
        (["--world-size", "2", "--insecure-plaintext",
          "--master", "h:1", "--job", "selftest"], "needs --rank"),
        (["--rank", "1", "--world-size", "2", "--insecure-plaintext",
          "--master", "h:1", "--job", "selftest",
          "--host-dealer"], "only for party 0"),
        (["--rank", "0", "--world-size", "2", "--insecure-plaintext",
          "--master", "h:1", "--job", "selftest",
          "--arg", "no-equals"], "key=value"),
    ],
)
def test_bad_command_lines_fail_clearly_without_a_traceback(args, needle) -> None:
    proc = subprocess.run([sys.executable, "-m", "veil.cli", "party", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_job_aliases_resolve_and_args_parse() -> None:
    for alias in JOB_ALIASES:
        assert callable(resolve_job(alias))
    assert parse_args(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(ConfigurationError, match="twice"):
        parse_args(["a=1", "a=2"])
    with pytest.raises(ConfigurationError, match="identifier"):
        parse_args(["1a=2"])


def marker_job(party, marker, pause="3"):
    """Signals (by creating `marker`) when it enters the multiplication, then waits there."""
    import pathlib
    import time

    import torch

    x = party.share(torch.ones(4) if party.rank == 0 else None, src=0, shape=(4,))
    with party.phase("multiplication"):
        pathlib.Path(f"{marker}.{party.rank}").touch()
        time.sleep(float(pause))
        y = x * x
    return party.reveal(y)


@pytest.mark.slow
def test_a_dead_dealer_is_named_by_every_party(tmp_path) -> None:
    master = f"127.0.0.1:{_free_port()}"
    marker = str(tmp_path / "in-mul")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    common = ["--world-size", "2", "--insecure-plaintext", "--master", master, "--timeout", "5"]

    def start(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "veil.cli", "party", *args, *common],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=env)

    job = ["--job", "test_session_cli:marker_job", "--arg", f"marker={marker}"]
    dealer = start("--dealer")
    parties = [start("--rank", str(r), *job) for r in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not all(os.path.exists(f"{marker}.{r}") for r in range(2)):
            assert time.monotonic() < deadline, "parties never reached the multiplication"
            assert all(p.poll() is None for p in parties), [p.communicate() for p in parties]
            time.sleep(0.05)
        os.killpg(dealer.pid, signal.SIGKILL)
        t0 = time.monotonic()
        outs = _finish(parties, 60)
        elapsed = time.monotonic() - t0
    finally:
        _finish([dealer], 10)
    assert elapsed < 3 + 5 + 10, elapsed
    for rc, _out, err in outs:
        assert rc == 1, err
        assert "PartyFailure" in err and "the dealer" in err and "multiplication" in err, err
        assert "Traceback" not in err

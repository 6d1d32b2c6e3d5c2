"""`veil party` on user error: a bounded wait, one line, no traceback (issue 20, item 10), and
`--job stats` charges the ledger of each party (issue 12, item 12)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

VEIL = str(Path(sys.executable).with_name("veil"))


def _veil_party(*args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([VEIL, "party", *args], capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - t0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when we return: nothing listens there


def _one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "frame #" not in stderr
    return lines[0]


def _import_seconds() -> float:
    """What starting a party costs on this machine right now (imports torch and crypten)."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "from veil.mpc._crypten import import_crypten; "
                    "import_crypten()"], check=True, capture_output=True, timeout=300)
    return time.monotonic() - t0


def test_an_unreachable_master_is_reported_within_the_timeout() -> None:
    port = _closed_port()
    start_cost = _import_seconds()
    proc, elapsed = _veil_party("--rank", "1", "--world-size", "2", "--insecure-plaintext",
                                "--master",
                                f"127.0.0.1:{port}", "--job", "selftest", "--timeout", "3")
    assert proc.returncode == 1, proc.stderr
    line = _one_line_error(proc.stderr)
    assert f"could not reach party 0's session store at 127.0.0.1:{port} within 3 s" in line
    # a regression bound, not a benchmark: it used to wait 30 s and more, whatever --timeout
    assert elapsed < 2 * start_cost + 3 + 15, (elapsed, start_cost)


def test_an_unknown_device_is_refused_before_connecting() -> None:
    proc, _ = _veil_party("--rank", "1", "--world-size", "2", "--insecure-plaintext", "--master",
                          f"127.0.0.1:{_closed_port()}", "--job", "selftest", "--device",
                          "quantum", "--timeout", "60")
    assert proc.returncode == 2, proc.stderr
    assert "unknown device 'quantum'" in _one_line_error(proc.stderr)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--arg", "source=NOFILE.csv", "--arg", "columns=a", "--arg", "stats=mean"],
         "nofile.csv: no such file"),
        (["--arg", "data=x.csv"], "missing a required argument: 'source'"),
        (["--arg", "source=A", "--arg", "columns=a", "--arg", "stats=mean",
          "--arg", "bounds=0-1"], "--arg bounds= must be low:high"),
        (["--arg", "source=A", "--arg", "columns=zz", "--arg", "stats=mean"], "no column 'zz'"),
        (["--arg", "source=A", "--arg", "columns=a", "--arg", "stats=mean", "--ledger", "L"],
         "add --arg dataset_name=NAME"),
    ],
    ids=["missing-file", "missing-arg", "bad-bounds", "missing-column", "ledger-no-name"],
)
def test_stats_job_arguments_are_checked_before_joining(tmp_path, args, needle) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text("a\n1\n2\n")
    args = [a.replace("NOFILE", str(tmp_path / "nofile")).replace("=A", f"={csv}")
            .replace("L", str(tmp_path / "ledger.jsonl")) if a != "--ledger" else a
            for a in args]
    # nobody hosts the master: a check that waited for the session would hit the timeout
    proc, _ = _veil_party("--rank", "1", "--world-size", "2", "--insecure-plaintext", "--master",
                          f"127.0.0.1:{_closed_port()}", "--job", "stats", "--timeout", "60",
                          *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in _one_line_error(proc.stderr)


def test_a_dp_release_through_veil_party_charges_each_partys_ledger(tmp_path) -> None:
    port = _closed_port()
    procs = []
    for rank in range(2):
        csv = tmp_path / f"p{rank}.csv"
        csv.write_text("a\n" + "\n".join(str(10 + (i * 7 + rank) % 50) for i in range(40)) + "\n")
        procs.append(subprocess.Popen(
            [VEIL, "party", "--rank", str(rank), "--world-size", "2", "--insecure-plaintext",
                   "--master",
             f"127.0.0.1:{port}", "--job", "stats", "--timeout", "60",
             *(["--host-dealer"] if rank == 0 else []),
             "--arg", f"source={csv}", "--arg", "columns=a", "--arg", "stats=mean",
             "--arg", "epsilon=0.5", "--arg", "bounds=0:100",
             "--ledger", str(tmp_path / f"ledger{rank}.jsonl"),
             "--dataset-name", f"clinic-{rank}", "--audit", str(tmp_path / f"audit{rank}.log")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "mean" in json.loads(out.splitlines()[-1])
    from veil.privacy import BudgetLedger

    for rank in range(2):
        book = BudgetLedger(tmp_path / f"ledger{rank}.jsonl", epsilon=1.0)
        assert book.spent(f"clinic-{rank}") == pytest.approx((0.5, 0.0))
        assert f"clinic-{rank}" in (tmp_path / f"audit{rank}.log").read_text()


def test_ctrl_c_ends_a_waiting_party_at_once() -> None:
    """Party 0 waits in the rendezvous (C++ code) for a party that never comes: SIGINT ends it
    (it used to run on to the end of the rendezvous timeout, a minute later)."""
    import psutil

    port = _closed_port()
    proc = subprocess.Popen([VEIL, "party", "--rank", "0", "--world-size", "2",
                             "--insecure-plaintext", "--master",
                             f"127.0.0.1:{port}", "--job", "selftest", "--host-dealer",
                             "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:  # its session store is up: it is inside the rendezvous
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "party 0 never hosted its store"
            time.sleep(0.1)
        time.sleep(1.0)
        tree = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert _one_line_error(err) == "interrupted"
    assert elapsed < 20, elapsed  # regression bound: it used to take the rendezvous' 30-60 s

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + 10
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in tree if alive(p)], "the dealer was left behind"

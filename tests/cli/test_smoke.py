"""CLI smoke suite: every subcommand of the real ``veil`` script on good and bad input.

Each run checks the exit code, that a failure is one line on stderr, that no traceback is
printed anywhere, and that the command left no process behind (each run gets its own session,
and nothing in that session may outlive it). Heavy paths are covered elsewhere: the server end
to end in tests/serve, multi-host parties in tests/mpc, the demo in tests/test_demo.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from tests.cli.procs import run_to_end

VEIL = Path(sys.executable).with_name("veil")
ENV = {**os.environ, "COLUMNS": "100"}


def _session_members(sid: int) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                out.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def _assert_nothing_left(sid: int) -> None:
    deadline = time.monotonic() + 15  # children may take a moment to notice the parent is gone
    left = _session_members(sid)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _session_members(sid)
    names = [f"{p.pid} {p.name()}" for p in left]
    for p in left:  # do not leave them to the next test
        p.kill()
    assert not names, f"left running: {names}"


def veil(*args: str, cwd: Path, code: int, timeout: float = 180, python_m: bool = False,
         one_line: bool = True) -> subprocess.CompletedProcess:
    """Run ``veil ARGS``; check the exit code, no traceback, one-line errors, no leftovers."""
    cmd = [sys.executable, "-m", "veil", *args] if python_m else [str(VEIL), *args]
    done, pid = run_to_end(cmd, cwd=cwd, env=ENV, timeout=timeout)
    out, err = done.stdout, done.stderr
    _assert_nothing_left(pid)
    assert "Traceback" not in out + err, out + err
    assert done.returncode == code, (done.returncode, out, err)
    if code not in (0, 1) and one_line:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
    return done


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Two small CSVs (a.csv, b.csv), an audit log with its anchor, a key and a short key."""
    from veil.privacy import AuditLog

    root = tmp_path_factory.mktemp("smoke")
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        pd.DataFrame({"age": rng.uniform(20, 80, 20), "bmi": rng.normal(26, 4, 20)}).to_csv(
            root / f"{name}.csv", index=False)
    log = AuditLog(root / "audit.jsonl")
    log.append({"statistic": ["mean"], "rows": 40})
    (root / "short.key").write_bytes(b"abc")
    return root


# --- top level ---------------------------------------------------------------------------------
def test_help_and_version(work: Path) -> None:
    from veil import __version__

    assert "Usage" in veil("--help", cwd=work, code=0).stdout
    assert veil("--version", cwd=work, code=0).stdout.strip() == f"veil {__version__}"
    assert veil("--version", cwd=work, code=0, python_m=True).stdout.strip() == \
        f"veil {__version__}"
    assert "Usage" in veil(cwd=work, code=2, one_line=False).stdout  # `veil` alone: the help


def test_version_matches_the_package_metadata() -> None:
    from importlib.metadata import version

    from veil import __version__

    assert __version__ == version("veil")


@pytest.mark.parametrize("sub", [["demo"], ["party"], ["stats"], ["audit"], ["audit", "verify"],
                                 ["serve"], ["bench"], ["bench", "schemes"], ["bench", "peers"]])
def test_every_subcommand_has_help(work: Path, sub: list[str]) -> None:
    assert "Usage" in veil(*sub, "--help", cwd=work, code=0).stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["--nope"], "No such option"),
    (["nosuchcommand"], "No such command"),
    (["demo", "--parties", "1"], "--parties"),
    (["party", "--rank", "0", "--world-size", "2", "--insecure-plaintext",
      "--master", "nohostport", "--job",
      "selftest"], "HOST:PORT"),
    (["party", "--rank", "0", "--world-size", "2", "--insecure-plaintext",
      "--master", "h:1", "--job", "nope"],
     "--job"),
    (["party", "--world-size", "1", "--insecure-plaintext", "--master", "h:1"], "--world-size"),
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--workers", "-1"], "--workers"),
    (["serve", "--model", "nope:x"], "unknown model"),
])
def test_argument_errors_are_one_line(work: Path, args: list[str], needle: str) -> None:
    assert needle in veil(*args, cwd=work, code=2).stderr


# --- audit ---------------------------------------------------------------------------------------
def test_audit_verify(work: Path) -> None:
    assert "1 entries" in veil("audit", "verify", "audit.jsonl", cwd=work, code=0).stdout
    for args, needle in [
        (["."], "not a regular file"),
        (["missing.jsonl"], "no such file"),
        (["audit.jsonl", "--key-file", "missing"], "--key-file missing: no such file"),
        (["audit.jsonl", "--key-file", "short.key"], "at least 16"),
        (["audit.jsonl", "--key-file", "."], "not a regular file"),
        (["audit.jsonl", "--head", "nothex"], "64 hex digits"),
    ]:
        assert needle in veil("audit", "verify", *args, cwd=work, code=2).stderr
    failed = veil("audit", "verify", "audit.jsonl", "--head", "0" * 64, cwd=work, code=1)
    assert failed.stdout.startswith("FAIL")


# --- stats ---------------------------------------------------------------------------------------
def test_stats_good_input(work: Path) -> None:
    he = veil("stats", "-d", "a.csv", "-d", "b.csv", "-c", "age,bmi", "-s", "count,mean,corr",
              "-b", "ckks", cwd=work, code=0)
    assert "40" in he.stdout and "correlation" in he.stdout
    mpc = veil("stats", "-d", "a.csv", "-d", "b.csv", "-c", "age", "-s", "mean,median",
               "-b", "mpc", cwd=work, code=0)
    assert "median" in mpc.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["-d", "a.csv", "-d", "missing.csv", "-c", "age"], "no such file"),
    (["-d", "a.csv", "-c", "age"], "at least two --data"),
    (["-d", "a.csv", "-d", "b.csv", "-c", "weight", "-b", "ckks"], "'weight'"),
    (["-d", "a.csv", "-d", "b.csv", "-c", "age", "-s", "nope", "-b", "ckks"], "nope"),
    (["-d", "a.csv", "-d", "b.csv", "-c", "age", "--bounds", "x"], "--bounds"),
    (["-d", "a.csv", "-d", "b.csv", "-c", "age", "--min-cohort", "0"], "--min-cohort"),
    (["-d", "a.csv", "-d", "b.csv", "-c", "age", "--audit", "."], "--audit"),
    (["-d", "a.csv", "-d", "b.csv", "-c", "age", "--audit", "x.jsonl", "--audit-key-file",
      "short.key"], "at least 16"),
])
def test_stats_bad_input(work: Path, args: list[str], needle: str) -> None:
    assert needle in veil("stats", *args, cwd=work, code=2).stderr


def test_stats_refusal_by_policy_exits_1(work: Path) -> None:
    err = veil("stats", "-d", "a.csv", "-d", "b.csv", "-c", "age", "-b", "ckks",
               "--min-cohort", "1000", cwd=work, code=1).stderr
    assert "PolicyViolation" in err


# --- bench ---------------------------------------------------------------------------------------
def test_bench_schemes_tiny(work: Path) -> None:
    out = veil("bench", "schemes", "--ops", "add,sum", "--sizes", "8", "--schemes", "plain",
               "--repeats", "1", "--json", "s.json", "--plot", "s.png", cwd=work, code=0)
    assert "plain" in out.stdout and (work / "s.json").stat().st_size > 0
    assert (work / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_schemes_json_on_stdout(work: Path) -> None:
    """``--json -``: stdout is the JSON document alone; the table goes to stderr."""
    out = veil("bench", "schemes", "--ops", "add", "--sizes", "8", "--schemes", "plain,ckks",
               "--repeats", "1", "--json", "-", "--plot", "s2.png", cwd=work, code=0)
    doc = json.loads(out.stdout)
    assert doc["command"] == "schemes" and "environment" in doc
    assert {r["scheme"] for r in doc["records"]} == {"plain", "ckks"}
    assert "veil bench schemes" in out.stderr and not (work / "-").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["schemes", "--sizes", "abc"], "--sizes"),
    (["schemes", "--repeats", "0"], "--repeats"),
    (["schemes", "--ops", "nope", "--sizes", "8", "--schemes", "plain"], "unknown op"),
    (["schemes", "--schemes", "rot13", "--sizes", "8"], "unknown scheme"),
    (["schemes", "--json", "no/such/dir/x.json"], "--json"),
    (["schemes", "--plot", "."], "--plot"),
    (["peers", "--size", "0"], "--size"),
    (["peers", "--json", "no/such/dir/x.json"], "--json"),
    (["peers", "--plot", "."], "--plot"),
])
def test_bench_bad_input(work: Path, args: list[str], needle: str) -> None:
    assert needle in veil("bench", *args, cwd=work, code=2).stderr


# --- Ctrl-C --------------------------------------------------------------------------------------
def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_ctrl_c_exits_130_with_one_line(work: Path) -> None:
    # a CKKS benchmark that would run for minutes; interrupt it once it is inside TenSEAL
    cmd = [str(VEIL), "bench", "schemes", "--ops", "logreg", "--sizes", "1e4", "--schemes",
           "ckks", "--repeats", "100", "--json", "i.json", "--plot", "i.png"]
    proc = subprocess.Popen(cmd, cwd=work, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _loaded(proc.pid, "_tenseal_cpp") and proc.poll() is None:
            assert time.monotonic() < deadline, "the benchmark never reached TenSEAL"
            time.sleep(0.1)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    _assert_nothing_left(proc.pid)
    assert proc.returncode == 130, (out, err)
    assert err.strip() == "interrupted" and "Traceback" not in out + err
    assert not (work / "i.json").exists()


# --- demo ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_once(work: Path) -> None:
    out = veil("demo", "--parties", "2", cwd=work, code=0, timeout=600).stdout
    assert "MPC joint sum (2 parties)" in out and "CKKS encrypted dot product" in out

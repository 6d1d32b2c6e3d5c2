"""``veil serve`` on an address it cannot bind: one line on stderr, a non-zero exit, fast.

The real command runs as a subprocess (its own session, killed in a ``finally``). Veil binds the
socket itself before it loads the model or starts uvicorn, so a bad address is reported before
anything else (even a model that does not exist) and none of uvicorn's log lines appear. A good
address still serves, and prints only Veil's ``serving on URL`` line.
"""

from __future__ import annotations

import errno
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
from tests.cli.procs import run_to_end

VEIL = [sys.executable, "-m", "veil.cli", "serve"]
ENV = {**os.environ, "COLUMNS": "200"}
UVICORN_LINES = ("uvicorn", "Started server process", "Waiting for application", "INFO:",
                 "ERROR:", "Errno", "Traceback")


def _run(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """``veil serve ARGS`` to its end: (exit code, stdout, stderr)."""
    done, _ = run_to_end([*VEIL, *args], env=ENV, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def _assert_one_line_failure(code: int, out: str, err: str, *needles: str) -> str:
    assert code != 0, (out, err)
    assert out == "", out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    for noise in UVICORN_LINES:
        assert noise not in out + err, err
    return lines[0]


@pytest.fixture(params=["listening", "bound"])
def held_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A loopback port this test holds: listening, or only bound (not SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        if request.param == "listening":
            sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_one_line(held_port: int) -> None:
    code, out, err = _run("--model", "linear:digits", "--workers", "1",
                          "--port", str(held_port))
    line = _assert_one_line_failure(code, out, err, f"127.0.0.1:{held_port}", "in use",
                                    "--port")
    assert code == 2, line  # a ConfigurationError, as for other bad options


@pytest.mark.parametrize("model", [["--model", "missing-model.pt"],
                                   ["--model", "missing-model.pt", "--input-shape", "64"]])
def test_the_address_is_checked_before_the_model_loads(held_port: int,
                                                       model: list[str]) -> None:
    code, out, err = _run(*model, "--port", str(held_port))
    line = _assert_one_line_failure(code, out, err, "in use")
    assert "missing-model.pt" not in line


def test_an_address_of_another_host_is_one_line() -> None:
    code, out, err = _run("--model", "linear:digits", "--host", "203.0.113.7", "--port", "8000",
                          "--insecure-plain-http")
    _assert_one_line_failure(code, out, err, "203.0.113.7:8000",
                             "203.0.113.7 is not an address of this host", "127.0.0.1")


def test_an_unknown_host_name_is_one_line() -> None:
    code, out, err = _run("--model", "linear:digits", "--host", "no-such-host.invalid",
                          "--insecure-plain-http")
    _assert_one_line_failure(code, out, err, "no-such-host.invalid",
                             "neither an IP address nor a known host name", "--host")


def _lines(stream) -> queue.Queue:
    """The stream's lines, read in a thread (so the test can wait with a timeout)."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_a_good_address_serves_and_says_only_where() -> None:
    proc = subprocess.Popen([*VEIL, "--model", "linear:digits", "--workers", "1", "--port", "0"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        err = _lines(proc.stderr)
        first = err.get(timeout=240)
        match = re.fullmatch(r"serving on (http://127\.0\.0\.1:(\d+)) \(Ctrl-C to stop\)\n",
                             first or "")
        assert match and int(match[2]) > 0, first
        url = match[1]
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        model = httpx.get(url + "/model", timeout=30)
        assert model.status_code == 200 and model.json()["name"] == "linear:digits"
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        proc.wait(timeout=60)
        rest = "".join(iter(lambda: err.get(timeout=30), None))
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, rest
    assert out == "" and rest == "", (out, rest)  # nothing but the one line


@pytest.mark.parametrize(("code", "port", "needle"), [
    (errno.EACCES, 80, "ports below 1024 need root (or CAP_NET_BIND_SERVICE); choose --port "
                       "1024 or above"),
    (errno.EADDRINUSE, 8000, "the port is already in use"),
    (errno.EADDRNOTAVAIL, 8000, "is not an address of this host"),
    (errno.ENETUNREACH, 8000, "check --host and --port"),
])
def test_each_bind_failure_says_how_to_fix_it(code: int, port: int, needle: str) -> None:
    """The same messages for the cases this host cannot stage (root may bind port 80)."""
    from veil.errors import ConfigurationError
    from veil.serve.runner import _bind_error

    error = _bind_error("::1", port, OSError(code, os.strerror(code)))
    assert isinstance(error, ConfigurationError)
    assert str(error).startswith(f"cannot listen on [::1]:{port}: ") and needle in str(error)

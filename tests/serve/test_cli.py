"""``veil serve`` as a real subprocess: starts, answers, enforces its deadline, stops cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from veil import errors
from veil.serve import Client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_and_enforces_the_deadline(client_ctx) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "veil.cli", "serve", "--model", "linear:digits", "--port",
         str(port), "--workers", "1", "--queue", "0", "--deadline", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "veil serve did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/health").json()["capacity"] == 1
        model = httpx.get(url + "/model").json()
        assert model["name"] == "linear:digits" and model["limits"]["request_deadline_s"] == 0.1
        client = Client(url, context=client_ctx)
        client.upload_context()  # contexts have their own, longer deadline
        # 640 ciphertext-plaintext products cannot finish in 0.1 s: 504, translated
        with pytest.raises(errors.RemoteServiceError, match="504") as info:
            client.predict(np.zeros((1, 64)))
        assert info.value.phase == "prediction"
        assert httpx.get(url + "/health").status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--port", "70000"], "--port"), (["--model", "nope:x"], "unknown model"),
     (["--workers", "-1"], "--workers")],
)
def test_cli_rejects_bad_options(args: list[str], needle: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "veil.cli", "serve", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2, proc
    assert needle in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--store", "/proc/nonexistent/x"], "--store '/proc/nonexistent/x' cannot be used"),
     (["--model", "missing-model.pt"], "cannot read model file 'missing-model.pt'"),
     (["--model", "zoo:digits-logreg", "--domain", "0:1"], "model files only"),
     (["--model", "x.pt", "--domain", "1:0"], "--domain needs LOW < HIGH"),
     (["--model", "x.pt", "--input-shape", "8,a"], "--input-shape must be")],
)
def test_cli_reports_bad_paths_and_values_in_one_line(args: list[str], needle: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "veil.cli", "serve", *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    out = proc.stderr + proc.stdout
    assert proc.returncode == 2, out
    assert needle in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) == 1, out

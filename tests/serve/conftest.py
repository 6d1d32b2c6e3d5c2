"""Fixtures: a real uvicorn server on 127.0.0.1 (random free port) in a background thread."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest


class RunningServer:
    """``app`` served in a thread on a free loopback port; ``tls=(cert, key)`` serves HTTPS."""

    def __init__(self, app, tls: tuple | None = None) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        if tls:
            from veil.serve.runner import uvicorn_config

            config = uvicorn_config(app, host="127.0.0.1", port=0, cfg=app.state.veil.cfg,
                                    log_level="warning", tls_cert=tls[0], tls_key=tls[1])
        else:
            config = uvicorn.Config(app, log_level="warning", lifespan="on",
                                    timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()

    @property
    def state(self):
        return self.app.state.veil

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, content: bytes, headers: dict | None = None,
             **kw) -> httpx.Response:
        h = {"content-type": "application/octet-stream", **(headers or {})}
        return httpx.post(self.url + path, content=content, headers=h, timeout=60, **kw)


@pytest.fixture(scope="session")
def running_server() -> type[RunningServer]:
    """The class: ``with running_server(app) as srv:`` serves ``app`` on a free loopback port."""
    return RunningServer


@pytest.fixture(scope="package")
def digits_server() -> Iterator[RunningServer]:
    """The built-in ``linear:digits`` model, 2 workers, queue 2, tightish limits for the tests."""
    from veil.serve import ServerConfig, create_app
    from veil.serve.config import MiB

    cfg = ServerConfig(workers=2, queue_size=2, max_request_bytes=16 * MiB,
                       max_context_bytes=8 * MiB, body_timeout_s=4.0, request_deadline_s=60.0)
    with RunningServer(create_app("linear:digits", config=cfg)) as srv:
        yield srv


@pytest.fixture(scope="package")
def client_ctx():
    """One secret CKKS context with the digits model's parameters, shared by the tests."""
    from veil import he
    from veil.serve.evaluator import digits_linear

    return he.CKKSContext.generate(digits_linear().info.params, galois_keys=False)


@pytest.fixture(scope="package")
def digits_data():
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.asarray(d.data / 16.0), np.asarray(d.target)


class ServeProcess:
    """``veil serve ARGS`` as a real subprocess on 127.0.0.1 and a free port (context manager).

    On exit it is interrupted (SIGINT, as Ctrl-C) and must stop within 60 s; ``output`` then
    holds what it printed and ``returncode`` its exit status.
    """

    def __init__(self, *args: str, startup_s: float = 300.0) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "veil.cli", "serve", *args, "--port", str(self.port)]
        self.startup_s = startup_s
        self.output = ""
        self.returncode: int | None = None

    def __enter__(self) -> ServeProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        deadline = time.monotonic() + self.startup_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"veil serve exited: {self.proc.communicate()[0]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"veil serve did not come up: {self.output}")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.output = self.proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output = self.proc.communicate()[0]
        self.returncode = self.proc.returncode


@pytest.fixture(scope="session")
def veil_serve() -> type[ServeProcess]:
    """The class: ``with veil_serve("--model", spec) as srv:`` runs the real command."""
    return ServeProcess

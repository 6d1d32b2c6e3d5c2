"""Internal to ``veil.serve``: error answers, admission control, body readers, worker pool.

Used by :mod:`veil.serve.app` (the routes); see its docstring for the limits they enforce.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse

from veil.errors import (
    ConfigurationError,
    DepthExhaustedError,
    KeyMismatchError,
    SerializationError,
    UnsupportedOperationError,
    VeilError,
)
from veil.serve import worker
from veil.serve.config import ServerConfig
from veil.serve.evaluator import Evaluator

__all__ = ["Fail", "error_response", "from_exception", "Admission", "Readers", "Pool"]

log = logging.getLogger("veil.serve")


class Fail(Exception):
    """An HTTP error answer: raised by the server's helpers, answered as JSON by the app."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def error_response(status: int, kind: str, message: str,
                   headers: dict | None = None) -> JSONResponse:
    body = {"error": {"type": kind, "message": message, "status": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def from_exception(exc: BaseException, what: str) -> Fail:
    if isinstance(exc, SerializationError):
        return Fail(400, type(exc).__name__, str(exc))
    if isinstance(exc, (ConfigurationError, KeyMismatchError, UnsupportedOperationError,
                        DepthExhaustedError)):
        return Fail(422, type(exc).__name__, str(exc))
    if isinstance(exc, TimeoutError):
        return Fail(504, "Timeout", f"{what} missed its deadline; retry later")
    if isinstance(exc, cf.process.BrokenProcessPool):
        return Fail(503, "Unavailable", f"a worker process died during {what}; retry",
                     {"Retry-After": "1"})
    if isinstance(exc, VeilError):
        return Fail(422, type(exc).__name__, str(exc))
    log.exception("internal error during %s", what, exc_info=exc)
    return Fail(500, "InternalError", f"internal error during {what}; see the server log")


class Admission:
    """Counts evaluations admitted (running or queued); refuses beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.count -= 1


class Readers:
    """Bodies being received, per client and in all; refuses beyond either cap."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client, self.total = per_client, total
        self._by_client: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._by_client.values())

    @contextlib.contextmanager
    def slot(self, client: str, retry_after: int) -> Iterator[None]:
        with self._lock:
            mine = self._by_client.get(client, 0)
            if mine >= self.per_client:
                raise Fail(429, "TooManyRequests",
                            f"this client is already sending {mine} bodies (at most "
                            f"{self.per_client} at once); finish those first",
                            {"Retry-After": str(retry_after)})
            if sum(self._by_client.values()) >= self.total:
                raise Fail(503, "Overloaded", f"server is receiving {self.total} bodies; retry "
                            f"after {retry_after} s", {"Retry-After": str(retry_after)})
            self._by_client[client] = mine + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._by_client[client] - 1
                if left:
                    self._by_client[client] = left
                else:
                    del self._by_client[client]


class Pool:
    """A spawn-based process pool, rebuilt if a worker dies."""

    def __init__(self, model: Evaluator | str | tuple | Any, store_dir: Path,
                 cfg: ServerConfig) -> None:
        # model: whatever worker.init_worker takes (ServedModel, Evaluator, spec, (spec, layouts))
        self._args = (model, str(store_dir), cfg.contexts_per_worker)
        self._workers = cfg.workers
        self._lock = threading.Lock()
        self._pool = self._new()

    def _new(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self._workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=worker.init_worker, initargs=self._args,
        )

    def warm(self) -> None:
        """Start every worker now (spawned workers import TenSEAL), not on the first request."""
        futures = [self._pool.submit(worker.ping, 0.3) for _ in range(self._workers)]
        for f in futures:
            f.result(timeout=600)

    def submit(self, fn: Callable[..., Any],
               *args: Any) -> tuple[cf.ProcessPoolExecutor, cf.Future]:
        """Submit to the current pool (rebuilt first if broken); returns (pool, future)."""
        pool = self._pool
        try:
            return pool, pool.submit(fn, *args)
        except cf.process.BrokenProcessPool:
            self.rebuild(pool)
            pool = self._pool
            return pool, pool.submit(fn, *args)

    def rebuild(self, broken: cf.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                log.warning("worker pool broken; starting new workers")
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new()

    @property
    def current(self) -> cf.ProcessPoolExecutor:
        return self._pool

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

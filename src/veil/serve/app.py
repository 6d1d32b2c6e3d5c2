"""The encrypted-inference HTTP server (FastAPI; OpenAPI docs at ``/docs``).

Endpoints::

    GET  /health                 liveness and load; answered by the event loop, never queued
    GET  /model                  public model description: shapes, layout, CKKS parameters, limits
    POST /contexts               body: ctx.public().serialize()  -> {"context_id": sha256 hex}
    GET  /contexts/{context_id}  200 if stored (skip the upload), 404 otherwise
    POST /predict                header X-Veil-Context: id; body: models.encrypted -> same kind

What the server sees: the client's *public* context (encryption, relinearization and possibly
Galois keys), ciphertexts, the batch's row count and sizes and timing. It never sees a secret key
(a context containing one is refused with 422 and deleted) nor any plaintext. What the client sees:
the model's outputs for its inputs (as it would from any prediction API) and the public model
description. See ``docs/security/serve.md``.

Robustness: every body is limited by ``Content-Length`` before it is read and by a byte count while
it streams; bodies must arrive within ``body_timeout_s`` (408 after) and a client may send at most
``bodies_per_client`` at once (429 beyond). Only a *complete* body takes an admission slot:
evaluations are admitted up to ``workers + queue_size`` at a time (503 + ``Retry-After`` beyond),
each within ``request_deadline_s`` (504 after), so slow senders cannot hold slots. Contexts must
match the model's plan (parameters, Galois keys present exactly when needed, size bound of
:func:`veil.serve.store.context_size_limit`) and are owned by the client that uploaded them (see
:mod:`veil.serve.store`). Every failure is a JSON ``{"error": {type, message, status}}`` (never a
500 for anything a client sends) and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

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
from veil.serve.evaluator import Evaluator, load_evaluator
from veil.serve.runner import docs_page
from veil.serve.store import ContextStore, Upload, check_context_header, context_size_limit

__all__ = ["create_app"]

log = logging.getLogger("veil.serve")
OCTET = "application/octet-stream"
CONTEXT_HEADER = "X-Veil-Context"


class _Fail(Exception):
    """Internal: an HTTP error answer (never leaves this module)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def _error(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"type": kind, "message": message, "status": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def _from_exception(exc: BaseException, what: str) -> _Fail:
    if isinstance(exc, SerializationError):
        return _Fail(400, type(exc).__name__, str(exc))
    if isinstance(exc, (ConfigurationError, KeyMismatchError, UnsupportedOperationError,
                        DepthExhaustedError)):
        return _Fail(422, type(exc).__name__, str(exc))
    if isinstance(exc, TimeoutError):
        return _Fail(504, "Timeout", f"{what} missed its deadline; retry later")
    if isinstance(exc, cf.process.BrokenProcessPool):
        return _Fail(503, "Unavailable", f"a worker process died during {what}; retry",
                     {"Retry-After": "1"})
    if isinstance(exc, VeilError):
        return _Fail(422, type(exc).__name__, str(exc))
    log.exception("internal error during %s", what, exc_info=exc)
    return _Fail(500, "InternalError", f"internal error during {what}; see the server log")


class _Admission:
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


class _Readers:
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
                raise _Fail(429, "TooManyRequests",
                            f"this client is already sending {mine} bodies (at most "
                            f"{self.per_client} at once); finish those first",
                            {"Retry-After": str(retry_after)})
            if sum(self._by_client.values()) >= self.total:
                raise _Fail(503, "Overloaded", f"server is receiving {self.total} bodies; retry "
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


def _client(request: Request) -> str:
    """The client's identity for quotas and context ownership: its address."""
    return request.client.host if request.client is not None else "unknown"


class _Pool:
    """A spawn-based process pool, rebuilt if a worker dies."""

    def __init__(self, evaluator: Evaluator | str, store_dir: Path, cfg: ServerConfig) -> None:
        self._args = (evaluator, str(store_dir), cfg.contexts_per_worker)
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


class _Server:
    def __init__(self, evaluator: Evaluator, spec: str | None, cfg: ServerConfig) -> None:
        self.evaluator, self.spec, self.cfg = evaluator, spec, cfg
        self.admission = _Admission(cfg.max_in_flight)
        self.readers = _Readers(cfg.bodies_per_client, 4 * cfg.max_in_flight)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.store: ContextStore | None = None
        self.pool: _Pool | None = None

    def start(self) -> None:
        store_dir = self.cfg.store_dir
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="veil-serve-")
            store_dir = Path(self._tmp.name)
        self.store = ContextStore(store_dir, max_contexts=self.cfg.max_contexts,
                                  per_client=self.cfg.contexts_per_client,
                                  idle_s=self.cfg.context_idle_s)
        # workers rebuild a named model themselves (no pickled torch modules); others are pickled
        self.pool = _Pool(self.spec or self.evaluator, store_dir, self.cfg)
        self.pool.warm()

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- request helpers ------------------------------------------------------------------------

    def check_length(self, request: Request, limit: int) -> None:
        ctype = request.headers.get("content-type", OCTET).split(";")[0].strip().lower()
        if ctype != OCTET:
            raise _Fail(415, "UnsupportedMediaType",
                        f"body must be {OCTET}, got content-type {ctype!r}")
        raw = request.headers.get("content-length")
        if raw is None:
            return  # chunked: counted while streaming
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 20:
            raise _Fail(400, "SerializationError", f"invalid Content-Length {raw!r:.40}")
        if int(raw) > limit:
            raise _Fail(413, "SerializationError",
                        f"body of {int(raw)} bytes exceeds the limit of {limit} bytes; nothing "
                        "was read (see GET /model for the limits)")

    async def stream(self, request: Request, limit: int, timeout: float,
                     sink: Callable[[bytes], None]) -> int:
        total = 0
        try:
            async with asyncio.timeout(timeout):
                async for chunk in request.stream():
                    total += len(chunk)
                    if total > limit:
                        raise _Fail(413, "SerializationError",
                                    f"body exceeds the limit of {limit} bytes; reading stopped "
                                    f"at {total} bytes")
                    if chunk:
                        sink(chunk)
        except TimeoutError as exc:
            raise _Fail(408, "Timeout",
                        f"body not received within {timeout:.0f} s ({total} bytes arrived)"
                        ) from exc
        except ClientDisconnect as exc:
            raise _Fail(400, "Disconnected", f"client disconnected after {total} bytes") from exc
        if total == 0:
            raise _Fail(400, "SerializationError", "empty body; send the serialized payload")
        return total

    async def run(self, fn: Callable[..., Any], args: tuple, deadline: float, what: str,
                  on_done: Callable[[], None]) -> Any:
        """Run ``fn(*args)`` in a worker; ``on_done`` fires when the worker is really done."""
        assert self.pool is not None
        try:
            executor, fut = self.pool.submit(fn, *args)
        except Exception as exc:
            on_done()
            raise _from_exception(exc, what) from exc
        fut.add_done_callback(lambda _f: on_done())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut),
                                          max(0.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            fut.cancel()
            raise _Fail(504, "Timeout", f"{what} did not finish within the server's deadline; "
                        "retry with fewer rows or later") from exc
        except cf.process.BrokenProcessPool as exc:
            self.pool.rebuild(executor)  # only if no other request has done so already
            raise _from_exception(exc, what) from exc
        except Exception as exc:
            if isinstance(exc, _Fail):
                raise
            raise _from_exception(exc, what) from exc

    def busy(self) -> _Fail:
        return _Fail(503, "Overloaded",
                     f"server is at capacity ({self.admission.limit} requests in flight); "
                     f"retry after {self.cfg.retry_after_s} s",
                     {"Retry-After": str(self.cfg.retry_after_s)})


_BINARY_BODY = {"requestBody": {"required": True,
                                "content": {OCTET: {"schema": {"type": "string",
                                                               "format": "binary"}}}}}


def create_app(model: str | Evaluator = "linear:digits", *,
               config: ServerConfig | None = None) -> FastAPI:
    """Build the ASGI app serving ``model`` (a spec such as ``"zoo:digits-mlp"`` or an Evaluator).

    Worker processes start with the app (lifespan) and stop with it. Run it with uvicorn, or with
    :func:`veil.serve.serve` / ``veil serve``. Workers are *spawned* processes: a script that
    builds the app must do so under ``if __name__ == "__main__":`` (as for any multiprocessing
    code), and an Evaluator object passed here must be picklable.
    """
    cfg = config if config is not None else ServerConfig()
    evaluator = load_evaluator(model) if isinstance(model, str) else model
    info = evaluator.info
    request_limit = cfg.request_limit(info.plan)
    context_limit = min(cfg.max_context_bytes, context_size_limit(info.plan))
    from veil import __version__

    # zoo models (torch modules) are rebuilt by name in each worker (from the weight cache
    # written by the first load); other evaluators are pickled to the workers as they are
    spec = model if isinstance(model, str) and model.startswith("zoo:") else None
    state = _Server(evaluator, spec, cfg)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(state.start)
        try:
            yield
        finally:
            await asyncio.to_thread(state.stop)

    # no Swagger UI (CDN assets, fails offline): /docs is a local page (runner.docs_page)
    app = FastAPI(title="Veil encrypted inference", version=__version__, lifespan=lifespan,
                  description=__doc__, docs_url=None, redoc_url=None)
    app.state.veil = state

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return Response(docs_page(app.openapi()), media_type="text/html")

    @app.exception_handler(_Fail)
    async def _fail(_r: Request, exc: _Fail) -> JSONResponse:
        return _error(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "HTTPError", str(exc.detail))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and load; never waits for a worker."""
        return {"status": "ok", "in_flight": state.admission.count,
                "receiving": state.readers.count,
                "capacity": state.admission.limit, "workers": cfg.workers,
                "contexts": len(state.store) if state.store else 0}

    model_json = {
        **info.to_json(),
        "limits": {"max_request_bytes": request_limit,
                   "max_context_bytes": context_limit,
                   "max_ciphertexts": cfg.max_ciphertexts,
                   "request_deadline_s": cfg.request_deadline_s},
        "veil_version": __version__,
    }

    @app.get("/model")
    async def describe_model() -> dict[str, Any]:
        """Public description: input/output shapes, layout and the CKKS parameters to use."""
        return model_json

    @app.get("/contexts/{context_id}")
    async def has_context(context_id: str, request: Request) -> dict[str, Any]:
        """Whether this client has this context stored (clients skip the upload when it is)."""
        cid = _parse_id(context_id)
        assert state.store is not None
        size = state.store.size_of(cid, _client(request))
        if size is None:
            raise _Fail(404, "UnknownContext", f"context {cid[:16]}… is not stored for this "
                        "client; upload it with POST /contexts")
        return {"context_id": cid, "bytes": size}

    def no_room(reason: str) -> _Fail:
        return _Fail(507, "ContextStoreFull", f"context not stored: {reason}",
                     {"Retry-After": str(cfg.retry_after_s)})

    @app.post("/contexts", status_code=201, openapi_extra=_BINARY_BODY)
    async def upload_context(request: Request) -> Response:
        """Upload ``ctx.public().serialize()`` made with the model's plan (parameters, Galois
        keys exactly when the plan needs them); its id is its SHA-256; it is owned by the
        uploading client. Secret keys: 422; another plan: 422; full store: 507."""
        assert state.store is not None
        state.check_length(request, context_limit)
        client = _client(request)
        reason = state.store.room_for(client)
        if reason is not None:
            raise no_room(reason)
        upload: Upload = state.store.new_upload()
        try:
            with state.readers.slot(client, cfg.retry_after_s):
                await state.stream(request, context_limit, cfg.body_timeout_s, upload.write)
            cid = upload.finish()
            if state.store.contains(cid):  # validated before: this client becomes an owner
                if not state.store.commit(cid, None, client):
                    raise no_room(state.store.room_for(client, cid) or "retry")
                return JSONResponse({"context_id": cid, "created": False}, status_code=200)
            with upload.path.open("rb") as f:
                prefix = f.read(96 * 1024)
            try:
                check_context_header(prefix, info.plan)
            except VeilError as exc:
                raise _from_exception(exc, "context check") from exc
            if not state.admission.try_enter():  # only a complete, plausible body queues
                raise state.busy()
            deadline = time.monotonic() + cfg.context_deadline_s
            await state.run(worker.check_context,
                            (cid, str(upload.path), context_limit, deadline),
                            deadline, "context check", state.admission.leave)
            if not state.store.commit(cid, upload, client):
                raise no_room(state.store.room_for(client, cid) or "retry")
            return JSONResponse({"context_id": cid, "created": True}, status_code=201)
        finally:
            upload.discard()  # after a commit the file was renamed away: nothing to delete

    @app.post("/predict", openapi_extra={
        **_BINARY_BODY,
        "parameters": [{"name": CONTEXT_HEADER, "in": "header", "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}],
        "responses": {"200": {"content": {OCTET: {"schema": {"type": "string",
                                                             "format": "binary"}}}}}})
    async def predict(request: Request) -> Response:
        """Evaluate the model on a ``models.encrypted`` message (``veil.protocols.inference``:
        one ciphertext frame per feature, or per segment); the answer is the same kind."""
        assert state.store is not None
        raw_id = request.headers.get(CONTEXT_HEADER)
        if raw_id is None:
            raise _Fail(400, "SerializationError",
                        f"missing {CONTEXT_HEADER} header; upload the public context with POST "
                        "/contexts and send its id")
        cid = _parse_id(raw_id)
        state.check_length(request, request_limit)
        client = _client(request)

        def unknown() -> _Fail:
            return _Fail(404, "UnknownContext", f"context {cid[:16]}… is not stored for this "
                         "client; upload it with POST /contexts, then retry")

        if not state.store.contains(cid, client):
            raise unknown()
        pinned = submitted = admitted = False
        upload = state.store.new_upload(digest=False)  # queued bodies wait on disk
        try:
            with state.readers.slot(client, cfg.retry_after_s):
                await state.stream(request, request_limit, cfg.body_timeout_s, upload.write)
            upload.finish()
            if not state.admission.try_enter():  # the slot is taken for a complete body only
                raise state.busy()
            admitted = True
            if not state.store.acquire(cid, client):
                raise unknown()
            pinned = True
            deadline = time.monotonic() + cfg.request_deadline_s
            body_file = upload

            def done() -> None:
                body_file.discard()
                state.store.release(cid)
                state.admission.leave()

            submitted = True
            out = await state.run(worker.evaluate, (cid, str(upload.path), request_limit,
                                                    cfg.max_ciphertexts, deadline),
                                  deadline, "prediction", done)
            return Response(out, media_type=OCTET)
        finally:
            if not submitted:
                upload.discard()
                if pinned:
                    state.store.release(cid)
                if admitted:
                    state.admission.leave()

    return app


def _parse_id(value: str) -> str:
    """A context id is the lower-case hex SHA-256 of the serialized public context."""
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise _Fail(400, "SerializationError",
                    f"context id must be 64 hexadecimal digits (a SHA-256), got {value!r:.80}")
    return value

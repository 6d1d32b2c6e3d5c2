"""The encrypted-inference HTTP server (FastAPI; OpenAPI docs at ``/docs``).

Endpoints::

    GET  /health                 liveness and load; answered by the event loop, never queued
    GET  /model                  public model description: shapes, layout, CKKS parameters, limits
    POST /contexts?layout=L      body: ctx.public().serialize()  -> {"context_id": sha256 hex}
    GET  /contexts/{context_id}  200 if stored (skip the upload; says its layout), 404 otherwise
    POST /predict                headers X-Veil-Context: id, X-Veil-Layout: L;
                                 body: models.encrypted -> same kind

A model may be served in both CKKS layouts (:mod:`veil.serve.layouts`): ``GET /model`` lists
them under ``layouts`` (plan, context kind and keys, limits, cost hint each) and describes the
default one (the first) at its top level, as before. A context is uploaded for one layout
(``?layout=``, default: the default layout) and a prediction runs in its context's layout;
``X-Veil-Layout``, when sent, must name it. An unoffered layout, or a context of the other
layout, is answered 422 (``ConfigurationError``) before the body is read.

What the server sees: the client's *public* context (encryption, relinearization and possibly
Galois keys), ciphertexts, the batch's row count and sizes and timing. It never sees a secret key
(a context containing one is refused with 422 and deleted) nor any plaintext. What the client sees:
the model's outputs for its inputs (as it would from any prediction API) and the public model
description. With ``ServerConfig.token_secret`` every route but ``/health`` and ``/docs`` needs
``Authorization: Bearer <token>`` (401 otherwise) and contexts belong to the token's client name.
See ``docs/security/serve.md``.

Robustness: every body is limited by ``Content-Length`` before it is read and by a byte count while
it streams; bodies must arrive within ``body_timeout_s`` (408 after) and a client may send at most
``bodies_per_client`` at once (429 beyond). Only a *complete* body takes an admission slot:
evaluations are admitted up to ``workers + queue_size`` at a time (503 + ``Retry-After`` beyond),
each within ``request_deadline_s`` (504 after), so slow senders cannot hold slots. Contexts must
match the model's plan (context kind, parameters, Galois keys present exactly when needed and,
for the packed single-sample layout, for exactly the plan's rotation steps; size bound of
:func:`veil.serve.store.context_size_limit`) and are owned by the client that uploaded them (see
:mod:`veil.serve.store`). Every failure is a JSON ``{"error": {type, message, status}}`` (never a
500 for anything a client sends) and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from veil.errors import VeilError
from veil.serve import worker
from veil.serve.auth import verify_token
from veil.serve.config import ServerConfig
from veil.serve.evaluator import Evaluator
from veil.serve.layouts import ServedModel, as_served, layout_json, load_model
from veil.serve.limits import Admission, Fail, Pool, Readers, error_response, from_exception
from veil.serve.store import ContextStore, Upload, check_context_header, context_size_limit

__all__ = ["create_app", "docs_page"]

OCTET = "application/octet-stream"
CONTEXT_HEADER = "X-Veil-Context"
LAYOUT_HEADER = "X-Veil-Layout"


_OPEN_PATHS = frozenset({"/health", "/docs", "/openapi.json"})


def _client(request: Request) -> str:
    """The client's identity for quotas and context ownership: its token's name, else address."""
    name = getattr(request.state, "veil_client", None)
    if name is not None:
        return str(name)
    return request.client.host if request.client is not None else "unknown"


def _authenticator(secret: bytes) -> Callable[[Request], None]:
    """A dependency requiring ``Authorization: Bearer <token>`` (``veil.serve.auth``)."""

    def authenticate(request: Request) -> None:
        if request.url.path in _OPEN_PATHS:
            return
        raw = request.headers.get("authorization", "")
        scheme, _, token = raw.partition(" ")
        if not raw:
            reason = "missing Authorization header; send Authorization: Bearer <token>"
        elif scheme.lower() != "bearer" or not token.strip():
            reason = "the Authorization header must be 'Bearer <token>'"
        else:
            name = verify_token(token.strip(), secret)
            if name is not None:
                request.state.veil_client = name
                return
            reason = "the token is not valid for this server (unknown, altered or revoked)"
        raise Fail(401, "AuthenticationError", reason, {"WWW-Authenticate": "Bearer"})

    return authenticate


class _Server:
    """The app's state: model, limits, admission, readers, context store and worker pool."""

    def __init__(self, model: ServedModel, source: Any, cfg: ServerConfig) -> None:
        self.model, self.source, self.cfg = model, source, cfg
        plans = {lay: ev.info.plan for lay, ev in model.evaluators.items()}
        self.request_limits = {lay: cfg.request_limit(p) for lay, p in plans.items()}
        self.context_limits = {lay: min(cfg.max_context_bytes, context_size_limit(p))
                               for lay, p in plans.items()}
        self.admission = Admission(cfg.max_in_flight)
        self.readers = Readers(cfg.bodies_per_client, 4 * cfg.max_in_flight)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.store: ContextStore | None = None
        self.pool: Pool | None = None

    def start(self) -> None:
        store_dir = self.cfg.store_dir
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="veil-serve-")
            store_dir = Path(self._tmp.name)
        self.store = ContextStore(store_dir, max_contexts=self.cfg.max_contexts,
                                  per_client=self.cfg.contexts_per_client,
                                  idle_s=self.cfg.context_idle_s)
        # workers rebuild a named model themselves (no pickled torch modules); others are pickled
        self.pool = Pool(self.source, store_dir, self.cfg)
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
            raise Fail(415, "UnsupportedMediaType",
                        f"body must be {OCTET}, got content-type {ctype!r}")
        raw = request.headers.get("content-length")
        if raw is None:
            return  # chunked: counted while streaming
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 20:
            raise Fail(400, "SerializationError", f"invalid Content-Length {raw!r:.40}")
        if int(raw) > limit:
            raise Fail(413, "SerializationError",
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
                        raise Fail(413, "SerializationError",
                                    f"body exceeds the limit of {limit} bytes; reading stopped "
                                    f"at {total} bytes")
                    if chunk:
                        sink(chunk)
        except TimeoutError as exc:
            raise Fail(408, "Timeout",
                        f"body not received within {timeout:.0f} s ({total} bytes arrived)"
                        ) from exc
        except ClientDisconnect as exc:
            raise Fail(400, "Disconnected", f"client disconnected after {total} bytes") from exc
        if total == 0:
            raise Fail(400, "SerializationError", "empty body; send the serialized payload")
        return total

    async def run(self, fn: Callable[..., Any], args: tuple, deadline: float, what: str,
                  on_done: Callable[[], None]) -> Any:
        """Run ``fn(*args)`` in a worker; ``on_done`` fires when the worker is really done."""
        assert self.pool is not None
        try:
            executor, fut = self.pool.submit(fn, *args)
        except Exception as exc:
            on_done()
            raise from_exception(exc, what) from exc
        fut.add_done_callback(lambda _f: on_done())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut),
                                          max(0.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            fut.cancel()
            raise Fail(504, "Timeout", f"{what} did not finish within the server's deadline; "
                        "retry with fewer rows or later") from exc
        except cf.process.BrokenProcessPool as exc:
            self.pool.rebuild(executor)  # only if no other request has done so already
            raise from_exception(exc, what) from exc
        except Exception as exc:
            if isinstance(exc, Fail):
                raise
            raise from_exception(exc, what) from exc

    def busy(self) -> Fail:
        return Fail(503, "Overloaded",
                     f"server is at capacity ({self.admission.limit} requests in flight); "
                     f"retry after {self.cfg.retry_after_s} s",
                     {"Retry-After": str(self.cfg.retry_after_s)})

    def no_room(self, reason: str) -> Fail:
        return Fail(507, "ContextStoreFull", f"context not stored: {reason}",
                    {"Retry-After": str(self.cfg.retry_after_s)})

    @property
    def context_limit(self) -> int:
        """The default layout's context size limit."""
        return self.context_limits[self.model.default]

    def limits(self, layout: str) -> dict[str, Any]:
        return {"max_request_bytes": self.request_limits[layout],
                "max_context_bytes": self.context_limits[layout],
                "max_ciphertexts": self.cfg.max_ciphertexts,
                "request_deadline_s": self.cfg.request_deadline_s}

    def model_json(self, version: str) -> dict[str, Any]:
        """The ``GET /model`` answer: the default layout's description and limits at the top
        level (as for one-layout servers), every offered layout under ``layouts``."""
        return {
            **self.model.info.to_json(),
            "limits": self.limits(self.model.default),
            "default_layout": self.model.default,
            "layouts": [layout_json(ev, self.limits(lay))
                        for lay, ev in self.model.evaluators.items()],
            "veil_version": version,
        }

    def layout(self, value: str | None) -> str:
        """A layout a request names (None: the default), 422 unless this model offers it."""
        try:
            return self.model.get(value).info.layout
        except VeilError as exc:
            raise from_exception(exc, "layout") from exc

    def layout_of_request(self, stored: str, named: str | None) -> str:
        """The layout a prediction runs in: its context's; 422 if the request names another."""
        layout = self.layout(stored or named)
        if named is not None and self.layout(named.strip()) != layout:
            raise Fail(422, "ConfigurationError",
                       f"the request names the {named.strip()!r} layout but its context was "
                       f"uploaded for the {layout!r} layout; encrypt under a context of the "
                       f"{named.strip()!r} layout (POST /contexts?layout={named.strip()}) and "
                       "send its id")
        return layout

    # -- the two body-carrying requests ---------------------------------------------------------

    async def upload_context(self, request: Request) -> Response:
        """``POST /contexts``: stream, check the header, validate in a worker, commit."""
        assert self.store is not None
        layout = self.layout(request.query_params.get("layout"))
        cfg, limit = self.cfg, self.context_limits[layout]
        self.check_length(request, limit)
        client = _client(request)
        reason = self.store.room_for(client)
        if reason is not None:
            raise self.no_room(reason)
        upload: Upload = self.store.new_upload()
        try:
            with self.readers.slot(client, cfg.retry_after_s):
                await self.stream(request, limit, cfg.body_timeout_s, upload.write)
            cid = upload.finish()
            stored = self.store.layout_of(cid)
            if stored == layout:  # validated before: this client becomes an owner
                if not self.store.commit(cid, None, client, layout):
                    raise self.no_room(self.store.room_for(client, cid) or "retry")
                return JSONResponse({"context_id": cid, "created": False, "layout": layout},
                                    status_code=200)
            if stored:
                raise Fail(422, "ConfigurationError",
                           f"this context is stored for the {stored!r} layout, not {layout!r}; "
                           f"generate a context for the {layout!r} plan of GET /model")
            with upload.path.open("rb") as f:
                prefix = f.read(96 * 1024)
            try:
                check_context_header(prefix, self.model.get(layout).info.plan)
            except VeilError as exc:
                raise from_exception(exc, "context check") from exc
            if not self.admission.try_enter():  # only a complete, plausible body queues
                raise self.busy()
            deadline = time.monotonic() + cfg.context_deadline_s
            await self.run(worker.check_context, (cid, str(upload.path), limit, deadline, layout),
                           deadline, "context check", self.admission.leave)
            if not self.store.commit(cid, upload, client, layout):
                raise self.no_room(self.store.room_for(client, cid) or "retry")
            return JSONResponse({"context_id": cid, "created": True, "layout": layout},
                                status_code=201)
        finally:
            upload.discard()  # after a commit the file was renamed away: nothing to delete

    async def predict(self, request: Request) -> Response:
        """``POST /predict``: stream to disk, admit, pin the context, evaluate in a worker."""
        assert self.store is not None
        store, cfg = self.store, self.cfg
        raw_id = request.headers.get(CONTEXT_HEADER)
        if raw_id is None:
            raise Fail(400, "SerializationError",
                       f"missing {CONTEXT_HEADER} header; upload the public context with POST "
                       "/contexts and send its id")
        cid = _parse_id(raw_id)
        named = request.headers.get(LAYOUT_HEADER)
        self.check_length(request, max(self.request_limits.values()) if named is None
                          else self.request_limits[self.layout(named.strip())])
        client = _client(request)
        unknown = Fail(404, "UnknownContext", f"context {cid[:16]}… is not stored for this "
                       "client; upload it with POST /contexts, then retry")
        stored = store.layout_of(cid, client)
        if stored is None:
            raise unknown
        layout = self.layout_of_request(stored, named)
        limit = self.request_limits[layout]
        self.check_length(request, limit)  # its own layout's limit (headers only: no body yet)
        pinned = submitted = admitted = False
        upload = store.new_upload(digest=False)  # queued bodies wait on disk
        try:
            with self.readers.slot(client, cfg.retry_after_s):
                await self.stream(request, limit, cfg.body_timeout_s, upload.write)
            upload.finish()
            if not self.admission.try_enter():  # the slot is taken for a complete body only
                raise self.busy()
            admitted = True
            if not store.acquire(cid, client):
                raise unknown
            pinned = True
            deadline = time.monotonic() + cfg.request_deadline_s

            def done() -> None:
                upload.discard()
                store.release(cid)
                self.admission.leave()

            submitted = True
            out = await self.run(worker.evaluate, (cid, str(upload.path), limit,
                                                   cfg.max_ciphertexts, deadline, layout),
                                 deadline, "prediction", done)
            return Response(out, media_type=OCTET, headers={LAYOUT_HEADER: layout})
        finally:
            if not submitted:
                upload.discard()
                if pinned:
                    store.release(cid)
                if admitted:
                    self.admission.leave()


_BINARY_BODY = {"requestBody": {"required": True,
                                "content": {OCTET: {"schema": {"type": "string",
                                                               "format": "binary"}}}}}
_PREDICT_API = {
    **_BINARY_BODY,
    "parameters": [{"name": CONTEXT_HEADER, "in": "header", "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}],
    "responses": {"200": {"content": {OCTET: {"schema": {"type": "string",
                                                         "format": "binary"}}}}}}


def create_app(model: str | Evaluator | ServedModel = "linear:digits", *,
               config: ServerConfig | None = None,
               layouts: str | list[str] | tuple[str, ...] | None = None) -> FastAPI:
    """Build the ASGI app serving ``model`` (a spec such as ``"zoo:digits-mlp"``, an Evaluator
    or a :class:`veil.serve.layouts.ServedModel`).

    A spec is resolved by :func:`veil.serve.layouts.load_model`: ``zoo:NAME`` offers the
    batched and (packed plans) the single layout, ``zoo:NAME:batched`` / ``:single`` one;
    ``layouts`` (e.g. ``"batched,single"``) chooses for a spec without a suffix.

    Worker processes start with the app (lifespan) and stop with it. Run it with uvicorn, or with
    :func:`veil.serve.serve` / ``veil serve``. Workers are *spawned* processes: a script that
    builds the app must do so under ``if __name__ == "__main__":`` (as for any multiprocessing
    code), and an Evaluator object passed here must be picklable.
    """
    from veil import __version__

    cfg = config if config is not None else ServerConfig()
    served = load_model(model, layouts) if isinstance(model, str) else as_served(model)
    # zoo models (torch modules) are rebuilt by name in each worker (from the weight cache
    # written by the first load); other evaluators are pickled to the workers as they are
    source: Any = served
    if isinstance(model, str) and model.startswith("zoo:"):
        source = (model, served.layouts)
    state = _Server(served, source, cfg)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(state.start)
        try:
            yield
        finally:
            await asyncio.to_thread(state.stop)

    # no Swagger UI (CDN assets, fails offline): /docs is a local page (docs_page)
    deps = [] if cfg.token_secret is None else [Depends(_authenticator(cfg.token_secret))]
    app = FastAPI(title="Veil encrypted inference", version=__version__, lifespan=lifespan,
                  description=__doc__, docs_url=None, redoc_url=None, dependencies=deps)
    app.state.veil = state
    _add_plumbing(app)
    _add_read_routes(app, state, state.model_json(__version__))
    _add_body_routes(app, state)
    return app


def _add_plumbing(app: FastAPI) -> None:
    """``/docs`` and the JSON error answers."""

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return Response(docs_page(app.openapi()), media_type="text/html")

    @app.exception_handler(Fail)
    async def _fail(_r: Request, exc: Fail) -> JSONResponse:
        return error_response(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "HTTPError", str(exc.detail))


def _add_read_routes(app: FastAPI, state: _Server, model_json: dict[str, Any]) -> None:
    """The GET routes: answered by the event loop, never queued behind a worker."""

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and load; never waits for a worker."""
        return {"status": "ok", "in_flight": state.admission.count,
                "receiving": state.readers.count,
                "capacity": state.admission.limit, "workers": state.cfg.workers,
                "contexts": len(state.store) if state.store else 0}

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
            raise Fail(404, "UnknownContext", f"context {cid[:16]}… is not stored for this "
                       "client; upload it with POST /contexts")
        return {"context_id": cid, "bytes": size,
                "layout": state.store.layout_of(cid) or state.model.default}


def _add_body_routes(app: FastAPI, state: _Server) -> None:
    """The POST routes: bodies streamed under limits, work admitted to the worker pool."""

    @app.post("/contexts", status_code=201, openapi_extra=_BINARY_BODY)
    async def upload_context(request: Request) -> Response:
        """Upload ``ctx.public().serialize()`` made with the model's plan (a CKKSContext, or
        a SlotContext for the packed layout; parameters, Galois keys exactly when and for the
        rotations the plan needs); its id is its SHA-256; it is owned by the uploading client.
        Secret keys: 422; another plan or context kind: 422; full store: 507."""
        return await state.upload_context(request)

    @app.post("/predict", openapi_extra=_PREDICT_API)
    async def predict(request: Request) -> Response:
        """Evaluate the model on a ``models.encrypted`` message (``veil.protocols.inference``:
        one ciphertext frame per feature, or per segment); the answer is the same kind."""
        return await state.predict(request)


def _parse_id(value: str) -> str:
    """A context id is the lower-case hex SHA-256 of the serialized public context."""
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise Fail(400, "SerializationError",
                   f"context id must be 64 hexadecimal digits (a SHA-256), got {value!r:.80}")
    return value


def docs_page(schema: dict[str, Any]) -> str:
    """A self-contained HTML list of the endpoints (no external URL: works offline)."""
    import html

    rows = "".join(
        f"<tr><td><code>{html.escape(m.upper())}</code></td><td><code>{html.escape(path)}</code>"
        f"</td><td>{html.escape(str(op.get('summary', '')))}: "
        f"{html.escape(str(op.get('description', '')).strip())}</td></tr>"
        for path, ops in schema.get("paths", {}).items() for m, op in ops.items())
    title = html.escape(str(schema.get("info", {}).get("title", "")))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h1>{title}</h1><p>OpenAPI schema: <a href='/openapi.json'>/openapi.json"
            f"</a></p><table border='1' cellpadding='4'>{rows}</table></body></html>")

"""Python client of a Veil inference server: keygen, upload once, encrypt, call, decrypt.

>>> with Client("http://127.0.0.1:8000") as client:          # doctest: +SKIP
...     logits = client.predict(x)                            # x: (rows, features) floats

What is revealed to whom: the server receives the *public* context and ciphertexts; it learns the
batch's row count, request sizes and timing, never the inputs or the predictions. The secret key
never leaves this object (:attr:`Client.context`). The client learns the model's outputs.

Every request has a timeout; HTTP and transport failures become Veil errors: 400/413 →
:class:`~veil.errors.SerializationError`, 422 → the server-side class (ConfigurationError,
KeyMismatchError, ...), an unreachable, failing (5xx) or persistently overloaded (503) server →
:class:`~veil.errors.RemoteServiceError` with ``phase`` naming the step (and ``status``, the HTTP
status). 503 answers are retried after ``Retry-After`` (at most ``retries`` times), and an
evicted context (404) is uploaded again.

Layouts: a server may offer a model in the batched layout (up to ``slots`` rows per request)
and the single-sample one (one row per request, much faster for a few rows); ``GET /model``
lists them with cost hints. With ``layout="auto"`` (the default) each ``predict`` takes the
cheaper for its row count (:func:`veil.serve.layouts.choose_layout`); ``layout="batched"`` or
``"single"`` (constructor or ``predict``) insists. A context is generated and uploaded per
layout, only when that layout is first used; :attr:`Client.stats` counts uploads and requests
per layout and the bytes sent and received (bodies).
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

from veil.errors import (
    AuthenticationError,
    CertificateError,
    ConfigurationError,
    DepthExhaustedError,
    KeyMismatchError,
    RemoteServiceError,
    SerializationError,
    UnsupportedOperationError,
    VeilError,
)
from veil.serve.auth import client_tls_context, is_loopback
from veil.serve.evaluator import check_rows
from veil.serve.layouts import LAYOUTS, choose_layout
from veil.serve.plans import context_kind
from veil.serve.remote import RemoteLayout, fitting_layout, read_layouts

__all__ = ["Client"]

_ERRORS: dict[str, type[VeilError]] = {
    cls.__name__: cls
    for cls in (ConfigurationError, KeyMismatchError, SerializationError,
                UnsupportedOperationError, DepthExhaustedError)
}
_MAX_JSON = 1024 * 1024
_OCTET = "application/octet-stream"


class Client:
    """Encrypted predictions from a Veil server at ``url`` (e.g. ``"http://127.0.0.1:8000"``).

    ``timeout`` bounds every request except the context upload (``upload_timeout``: evaluation
    keys can be tens of MB). ``context`` reuses an existing secret context of the kind the
    model's plan runs on (``veil.he.CKKSContext``; for the packed single-sample layout a
    ``veil.he.lattice.slots.SlotContext`` with exactly the plan's rotations) and the parameters
    the server asks for (else ConfigurationError / KeyMismatchError on first use); otherwise one
    is generated on first use from ``GET /model`` (packed layout: Galois keys for exactly
    ``plan.input_encoding["rotations"]``), its parameters checked by this client's own security
    rules: a server cannot make the client accept parameters below 128-bit unless
    ``allow_insecure=True`` is passed here.

    ``https://`` servers must present a certificate valid for the host, signed by a system CA or
    by ``ca`` (a PEM file: a private CA); otherwise every call raises
    :class:`~veil.errors.CertificateError`. Plain ``http://`` is allowed to loopback only,
    unless ``allow_plain_http=True``. ``token`` (from ``veil serve token new``) is sent as
    ``Authorization: Bearer``; a server refusing it raises
    :class:`~veil.errors.AuthenticationError`.

    ``layout`` (``"auto"``, ``"batched"`` or ``"single"``) is the layout of predictions (see the
    module docstring); ``batch_threshold`` replaces the cost hints of ``"auto"`` by a rule:
    batched from that many rows. A layout the server does not offer is a ConfigurationError.
    A given ``context`` is used for the layout it fits (and pins ``"auto"`` to it).
    """

    def __init__(self, url: str, *, timeout: float = 60.0, upload_timeout: float = 300.0,
                 retries: int = 3, max_response_bytes: int = 256 * 1024 * 1024,
                 context: Any | None = None, allow_insecure: bool = False,
                 token: str | None = None, ca: str | Path | None = None,
                 allow_plain_http: bool = False, layout: str = "auto",
                 batch_threshold: int | None = None) -> None:
        import httpx

        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"server url must start with http:// or https://, got {url!r}")
        host = httpx.URL(url).host
        if url.startswith("http://") and not is_loopback(host) and not allow_plain_http:
            raise ConfigurationError(
                f"refusing plain http:// to {host!r}: the traffic (and any token) could be read "
                "and altered on the way. Use https://, or pass allow_plain_http=True")
        if token is not None and (not isinstance(token, str) or not token.isascii()
                                  or not token.strip() or any(c in token for c in "\r\n ")):
            raise ConfigurationError("token must be the one-line string `veil serve token new` "
                                     "printed")
        for name, value in (("timeout", timeout), ("upload_timeout", upload_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds, got "
                                         f"{value!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be an integer >= 0, got {retries!r}")
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) or \
                max_response_bytes < 1024:
            raise ConfigurationError(
                f"max_response_bytes must be an integer >= 1024, got {max_response_bytes!r}")
        _check_layout(layout, "Client(layout=...)")
        if batch_threshold is not None and (isinstance(batch_threshold, bool) or not isinstance(
                batch_threshold, int) or batch_threshold < 1):
            raise ConfigurationError(
                f"batch_threshold must be a positive number of rows, got {batch_threshold!r}")
        if context is not None and not getattr(context, "has_secret_key", False):
            raise ConfigurationError(
                "Client(context=...) needs the client's own context with its secret key (to "
                "decrypt the predictions); pass the context you generated, not ctx.public()"
            )
        self.url = url.rstrip("/")
        self.timeout, self.upload_timeout = float(timeout), float(upload_timeout)
        self.retries = retries
        self.max_response_bytes = max_response_bytes
        self.allow_insecure = allow_insecure
        auth = {} if token is None else {"authorization": f"Bearer {token}"}
        verify = client_tls_context(ca) if url.startswith("https://") else True
        self._http = httpx.Client(base_url=self.url, timeout=self.timeout, follow_redirects=False,
                                  headers=auth, verify=verify)
        self._lock = threading.RLock()
        self._stats_lock = threading.Lock()  # never held across a request
        self.layout, self.batch_threshold = layout, batch_threshold
        self._given = context
        self._model: dict[str, Any] | None = None
        self._layouts: dict[str, RemoteLayout] = {}
        self._default = ""
        self.last_layout: str | None = None  # the layout of the latest predict
        # context uploads and predict requests per layout; bytes sent and received in all
        self.stats: dict[str, dict[str, int]] = {"uploads": {}, "requests": {},
                                                 "bytes": {"sent": 0, "received": 0}}

    # -- plumbing -------------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections (the context stays usable)."""
        self._http.close()

    def _send(self, method: str, path: str, what: str, *, content: bytes | None = None,
              headers: dict[str, str] | None = None, timeout: float | None = None,
              limit: int = _MAX_JSON, ok: tuple[int, ...] = (200,)) -> tuple[int, bytes]:
        import httpx

        timeout = self.timeout if timeout is None else timeout
        for attempt in range(self.retries + 1):
            # httpx's timeout bounds each read/write; this bounds the whole exchange too
            end = time.monotonic() + timeout
            try:
                with self._http.stream(method, path, content=content, headers=headers,
                                       timeout=timeout) as resp:
                    declared = resp.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise RemoteServiceError(
                            f"server's {what} answer of {declared} bytes exceeds the client's "
                            f"limit of {limit}", phase=what)
                    body = bytearray()
                    for chunk in resp.iter_bytes():
                        body += chunk
                        if len(body) > limit:
                            raise RemoteServiceError(f"server's {what} answer exceeds the client's "
                                               f"limit of {limit} bytes", phase=what)
                        if time.monotonic() > end:
                            raise RemoteServiceError(f"server {self.url} did not complete {what} "
                                               f"within {timeout:g} s", phase=what)
                    status, retry_after = resp.status_code, resp.headers.get("retry-after", "1")
            except httpx.TimeoutException as exc:
                raise RemoteServiceError(f"server {self.url} did not complete {what} within "
                                   f"{timeout:g} s ({type(exc).__name__}); raise the timeout or "
                                   "check the server", phase=what) from exc
            except httpx.HTTPError as exc:
                if _bad_certificate(exc):
                    raise CertificateError(
                        f"server {self.url} presented a TLS certificate this client does not "
                        f"trust ({_bad_certificate(exc)}); pass ca=PATH for a private CA",
                        phase=what) from exc
                raise RemoteServiceError(f"could not reach server {self.url} for {what}: "
                                   f"{type(exc).__name__}: {exc}", phase=what) from exc
            self._count("bytes", "sent", len(content or b""))
            self._count("bytes", "received", len(body))
            if status in ok or status == 404:
                return status, bytes(body)
            if status == 503 and attempt < self.retries:
                wait = float(retry_after) if retry_after.isdigit() else 1.0
                time.sleep(min(wait, 30.0))
                continue
            raise self._translate(status, bytes(body), what)
        raise AssertionError("unreachable")  # pragma: no cover

    def _count(self, group: str, key: str, n: int = 1) -> None:
        with self._stats_lock:
            counts = self.stats[group]
            counts[key] = counts.get(key, 0) + n

    def _translate(self, status: int, body: bytes, what: str) -> VeilError:
        from veil.he.serialize import load_json

        kind, message = "HTTPError", body[:500].decode("utf-8", "replace")
        try:
            err = load_json(body, what="server's error answer", max_bytes=len(body))["error"]
            kind, message = str(err["type"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            pass
        text = f"server refused {what} (HTTP {status} {kind}): {message}"
        if status == 401:
            return AuthenticationError(text + "; pass Client(url, token=...)", status=status,
                                       phase=what)
        if status in (400, 413):
            return SerializationError(text)
        if 400 <= status < 500 and status not in (404, 408):
            return _ERRORS.get(kind, ConfigurationError)(text)
        return RemoteServiceError(text, status=status, phase=what)

    def _json(self, path: str, what: str) -> dict[str, Any]:
        from veil.he.serialize import load_json

        status, body = self._send("GET", path, what)
        if status == 404:
            raise self._translate(status, body, what)
        try:
            data = load_json(body, what=f"server's {what} answer", max_bytes=len(body))
        except ValueError as exc:
            raise SerializationError(f"server's {what} answer is not JSON: {body[:80]!r}") from exc
        if not isinstance(data, dict):
            raise SerializationError(f"server's {what} answer is not a JSON object")
        return data

    # -- public API -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``: server status and load."""
        return self._json("/health", "health")

    def model(self) -> dict[str, Any]:
        """``GET /model`` (cached): the public model description (name, plan, limits and the
        offered ``layouts``)."""
        with self._lock:
            if self._model is None:
                data = self._json("/model", "model description")
                layouts, default = read_layouts(data, self.url, self.allow_insecure)
                if self._given is not None:
                    pick = self.layout if self.layout in layouts else default
                    layouts[fitting_layout(self._given, layouts, pick)].context = self._given
                self._model, self._layouts, self._default = data, layouts, default
            return self._model

    @property
    def layouts(self) -> tuple[str, ...]:
        """The layouts the server offers for its model (its default first)."""
        self.model()
        return tuple(self._layouts)

    def _resolve(self, layout: str | None, rows: int | None = None) -> RemoteLayout:
        """The layout of a call: ``layout``, else the client's; ``"auto"`` chooses for ``rows``
        (None: a given context's layout, the latest predict's, else the server's default)."""
        self.model()
        want = self.layout if layout is None else layout
        if want == "auto" and self._given is not None:
            want = next(k for k, v in self._layouts.items() if v.context is self._given)
        if want == "auto":
            if rows is None:
                want = self.last_layout or self._default
            else:
                want = choose_layout(rows, {k: v.entry() for k, v in self._layouts.items()},
                                     threshold=self.batch_threshold)
        if want not in self._layouts:
            name = self._layouts[self._default].info.name
            raise ConfigurationError(
                f"server's model {name!r} is not offered in the {want!r} layout; it offers "
                f"{list(self._layouts)}. Use layout='auto' or one of those, or ask the operator "
                f"to serve it with --layouts including {want!r}")
        return self._layouts[want]

    @property
    def context(self) -> Any:
        """The client's secret context for its layout (the fixed ``layout``, else the latest
        predict's, else the server's default), generated on first use from the server's plan:
        a ``CKKSContext``, or for the packed layout a ``SlotContext`` with Galois keys for
        exactly the plan's rotations. :meth:`context_for` names the layout."""
        return self.context_for(None)

    def context_for(self, layout: str | None) -> Any:
        """The client's secret context for ``layout`` (generated on first use)."""
        with self._lock:
            lay = self._resolve(layout)
            if lay.context is None:
                lay.context = lay.make_context()
            return lay.context

    def upload_context(self, layout: str | None = None) -> str:
        """Upload the public part of the context for ``layout`` (as :attr:`context` when
        None) unless the server already has it.

        Returns the context id (SHA-256 hex of the serialized public context). A ``Client`` is
        thread-safe: share one between threads so each context is serialized and uploaded once.
        """
        with self._lock:
            lay = self._resolve(layout)
            if lay.context_id is not None:
                return lay.context_id
            return self._upload(lay, force_check=True)

    def _upload(self, lay: RemoteLayout, *, force_check: bool) -> str:
        from veil.he.serialize import load_json

        if lay.public is None:  # serialized once: the id must stay stable for this client
            lay.public = self.context_for(lay.layout).public().serialize()
        public, limit = lay.public, lay.limits["max_context_bytes"]
        cid = hashlib.sha256(public).hexdigest()
        if force_check:
            status, body = self._send("GET", f"/contexts/{cid}", "context lookup")
            if status == 200 and _json_field(body, "layout", lay.layout) == lay.layout:
                lay.context_id = cid
                return cid
        if len(public) > limit:
            how = ("generate it with Galois keys for exactly the plan's rotations "
                   "(GET /model: plan.input_encoding.rotations), or ask the operator to raise "
                   "--max-context-mb" if lay.info.packed else
                   "generate it with galois_keys=False when the model needs no rotations "
                   "(GET /model: plan.galois_keys)")
            raise SerializationError(
                f"public context ({context_kind(lay.info.plan)}) of {len(public)} bytes "
                f"exceeds the server's limit of {limit}; {how}")
        status, body = self._send("POST", f"/contexts?layout={lay.layout}", "context upload",
                                  content=public, headers={"content-type": _OCTET},
                                  timeout=self.upload_timeout, ok=(200, 201))
        if status == 404:
            raise self._translate(status, body, "context upload")
        answer = load_json(body, what="server's context upload answer", max_bytes=len(body))
        got = answer.get("context_id") if isinstance(answer, dict) else None
        if got != cid:
            raise RemoteServiceError(f"server stored the context as {got!r}, expected {cid}; the "
                               "upload was altered in transit", phase="context upload")
        self._count("uploads", lay.layout)
        lay.context_id = cid
        return cid

    def predict(self, x: Any, *, clip: bool = False, layout: str | None = None) -> Any:
        """Encrypt ``x`` (rows of the model's input shape, or one row), have the server
        evaluate it, decrypt. Returns a float64 array of shape ``(rows, outputs)``.

        Inputs outside the model's declared domain (``GET /model``: ``input_domain``) make its
        outputs meaningless, so they are refused with a ConfigurationError by default; with
        ``clip=True`` they are clipped to the domain, with a warning. This check is local: the
        values never leave the client unencrypted.
        ``layout`` overrides the client's (``"auto"``: the cheaper for this many rows); the one
        used is then :attr:`last_layout`. Batched: one request per ``slots`` rows; single: one
        per row.
        """
        import numpy as np

        if layout is not None:
            _check_layout(layout, "predict(layout=...)")
        self.model()
        rows = check_rows(x, self._layouts[self._default].info)
        with self._lock:
            lay = self._resolve(layout, rows.shape[0])
        rows = _in_domain(rows, lay.info.domain, clip)
        ctx = self.context_for(lay.layout)
        cid = self.upload_context(lay.layout)
        parts = []
        for start in range(0, rows.shape[0], lay.rows_per_request):
            frames, header = lay.encrypt(ctx, rows[start : start + lay.rows_per_request])
            outs = self._predict_frames(cid, frames, header, lay)
            parts.append(lay.decrypt(ctx, outs, header["n_samples"]))
        self.last_layout = lay.layout
        return np.concatenate(parts, axis=0)

    def _predict_frames(self, cid: str, frames: list[bytes], header: dict[str, Any],
                        lay: RemoteLayout | None = None) -> list[Any]:
        from veil.protocols.inference import KIND_ENCRYPTED, pack_frames, unpack_frames

        lay = self._resolve(None) if lay is None else lay

        payload = pack_frames(KIND_ENCRYPTED, header, frames)
        if len(payload) > lay.limits["max_request_bytes"]:
            raise SerializationError(
                f"request of {len(payload)} bytes exceeds the server's limit of "
                f"{lay.limits['max_request_bytes']}; send fewer rows per call")
        for _ in range(2):  # a second try after re-uploading an evicted context
            headers = {"content-type": _OCTET, "X-Veil-Context": cid,
                       "X-Veil-Layout": lay.layout}
            status, body = self._send("POST", "/predict", "prediction", content=payload,
                                      headers=headers, limit=self.max_response_bytes)
            if status != 404:
                self._count("requests", lay.layout)
                out_header, out_frames = unpack_frames(
                    body, KIND_ENCRYPTED, max_bytes=self.max_response_bytes, max_frames=1 << 16)
                if out_header.get("count") != len(out_frames) or \
                        out_header.get("n_samples") != header["n_samples"]:
                    raise SerializationError(
                        f"server's answer header {out_header!r:.200} does not match the request")
                ctx = self.context_for(lay.layout)
                return [ctx.load_tensor(f, max_bytes=self.max_response_bytes)
                        for f in out_frames]
            with self._lock:
                lay.context_id = None
                cid = self._upload(lay, force_check=False)
        raise self._translate(status, body, "prediction")


def _check_layout(layout: Any, where: str) -> None:
    if layout != "auto" and layout not in LAYOUTS:
        raise ConfigurationError(
            f"{where} must be 'auto', 'batched' or 'single', got {layout!r:.40}")


def _json_field(body: bytes, key: str, default: Any) -> Any:
    """``key`` of a small JSON object answer (``default`` if absent or not JSON)."""
    from veil.he.serialize import load_json

    try:
        data = load_json(body, what="server's answer", max_bytes=len(body))
    except ValueError:
        return default
    return data.get(key, default) if isinstance(data, dict) else default


def _bad_certificate(exc: BaseException) -> str | None:
    """The verification failure behind an httpx error, if it was one (else ``None``)."""
    import ssl

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _in_domain(rows: Any, domain: tuple[float, float] | None, clip: bool) -> Any:
    """Refuse (default) or clip, with a warning, rows outside the model's declared domain."""
    import warnings

    import numpy as np

    if domain is None or rows.size == 0:
        return rows
    low, high = domain
    lo, hi = float(rows.min()), float(rows.max())
    if low <= lo and hi <= high:
        return rows
    text = (f"input values span [{lo:g}, {hi:g}] but the model's declared input domain is "
            f"[{low:g}, {high:g}]")
    if not clip:
        raise ConfigurationError(
            f"{text}; its outputs would be meaningless. Scale the inputs into the domain (e.g. "
            "digits pixels / 16), or pass clip=True to clip them")
    warnings.warn(f"{text}; clipping to the domain", UserWarning, stacklevel=3)
    return np.clip(rows, low, high)

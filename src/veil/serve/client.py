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
from veil.serve.evaluator import ModelInfo, check_domain, check_rows
from veil.serve.plans import (
    check_context_kind,
    context_kind,
    params_from_description,
    public_plan_from_json,
)

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
    """

    def __init__(self, url: str, *, timeout: float = 60.0, upload_timeout: float = 300.0,
                 retries: int = 3, max_response_bytes: int = 256 * 1024 * 1024,
                 context: Any | None = None, allow_insecure: bool = False,
                 token: str | None = None, ca: str | Path | None = None,
                 allow_plain_http: bool = False) -> None:
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
        self._context = context
        self._context_id: str | None = None
        self._public: bytes | None = None
        self._model: dict[str, Any] | None = None
        self._info: ModelInfo | None = None
        self._params: Any = None

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
            if status in ok or status == 404:
                return status, bytes(body)
            if status == 503 and attempt < self.retries:
                wait = float(retry_after) if retry_after.isdigit() else 1.0
                time.sleep(min(wait, 30.0))
                continue
            raise self._translate(status, bytes(body), what)
        raise AssertionError("unreachable")  # pragma: no cover

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
        """``GET /model`` (cached): the public model description (name, plan, limits)."""
        with self._lock:
            if self._model is None:
                data = self._json("/model", "model description")
                info, params = self._parse_model(data)
                if self._context is not None:
                    _check_given_context(self._context, info, params)
                self._model, self._info, self._params = data, info, params
            return self._model

    def _parse_model(self, data: dict[str, Any]) -> tuple[ModelInfo, Any]:
        """The ModelInfo and context parameters of a ``GET /model`` answer (strictly checked)."""
        try:
            domain = data.get("input_domain")
            choice = data.get("layout_choice") or {}
            error = choice.get("predicted_max_error")
            info = ModelInfo(str(data["name"]), public_plan_from_json(data["plan"]),
                             str(data.get("description", "")),
                             None if domain is None else check_domain(domain),
                             str(choice.get("note", "")), None if error is None else float(error))
            params = params_from_description(info.plan.params,
                                             allow_insecure=self.allow_insecure)
            int(data["limits"]["max_request_bytes"])
            int(data["limits"]["max_context_bytes"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, VeilError):
                raise
            raise SerializationError(
                f"server's model description is malformed ({exc!r}); is {self.url} a "
                "Veil server of the same version?") from exc
        return info, params

    @property
    def context(self) -> Any:
        """The client's secret context, generated on first use from the server's plan: a
        ``CKKSContext``, or for the packed layout a ``SlotContext`` with Galois keys for
        exactly the plan's rotations."""
        with self._lock:
            if self._context is None:
                self.model()
                assert self._info is not None
                if self._info.packed:
                    from veil.he.lattice.slots import SlotContext

                    self._context = SlotContext.generate(self._params, self._info.rotations)
                else:
                    from veil.he import CKKSContext

                    self._context = CKKSContext.generate(self._params,
                                                         galois_keys=self._info.galois_keys)
            return self._context

    def upload_context(self) -> str:
        """Upload the public part of :attr:`context` unless the server already has it.

        Returns the context id (SHA-256 hex of the serialized public context). A ``Client`` is
        thread-safe: share one between threads so the context is serialized and uploaded once.
        """
        with self._lock:
            if self._context_id is not None:
                return self._context_id
            return self._upload(force_check=True)

    def _upload(self, *, force_check: bool) -> str:
        if self._public is None:  # serialized once: the id must stay stable for this client
            self._public = self.context.public().serialize()
        public = self._public
        cid = hashlib.sha256(public).hexdigest()
        limit = int(self.model()["limits"]["max_context_bytes"])
        if force_check:
            status, _ = self._send("GET", f"/contexts/{cid}", "context lookup")
            if status == 200:
                self._context_id = cid
                return cid
        if len(public) > limit:
            assert self._info is not None
            how = ("generate it with Galois keys for exactly the plan's rotations "
                   "(GET /model: plan.input_encoding.rotations), or ask the operator to raise "
                   "--max-context-mb" if self._info.packed else
                   "generate it with galois_keys=False when the model needs no rotations "
                   "(GET /model: plan.galois_keys)")
            raise SerializationError(
                f"public context ({context_kind(self._info.plan)}) of {len(public)} bytes "
                f"exceeds the server's limit of {limit}; {how}")
        status, body = self._send("POST", "/contexts", "context upload", content=public,
                                  headers={"content-type": _OCTET},
                                  timeout=self.upload_timeout, ok=(200, 201))
        if status == 404:
            raise self._translate(status, body, "context upload")
        from veil.he.serialize import load_json

        answer = load_json(body, what="server's context upload answer", max_bytes=len(body))
        got = answer.get("context_id") if isinstance(answer, dict) else None
        if got != cid:
            raise RemoteServiceError(f"server stored the context as {got!r}, expected {cid}; the "
                               "upload was altered in transit", phase="context upload")
        self._context_id = cid
        return cid

    def predict(self, x: Any, *, clip: bool = False) -> Any:
        """Encrypt ``x`` (rows of the model's input shape, or one row), have the server
        evaluate it, decrypt. Returns a float64 array of shape ``(rows, outputs)``.

        Inputs outside the model's declared domain (``GET /model``: ``input_domain``) make its
        outputs meaningless, so they are refused with a ConfigurationError by default; with
        ``clip=True`` they are clipped to the domain, with a warning. This check is local: the
        values never leave the client unencrypted.
        Batched models get one request per ``slots`` rows; single-sample models one per row.
        """
        import numpy as np

        from veil import models

        self.model()
        assert self._info is not None
        info = self._info
        rows = _in_domain(check_rows(x, info), info.domain, clip)
        step = self._params.slots if info.layout == "batched" else 1
        ctx = self.context
        cid = self.upload_context()
        parts = []
        for start in range(0, rows.shape[0], step):
            chunk = rows[start : start + step]
            frames, header = self._encrypt(ctx, chunk)
            outs = self._predict_frames(cid, frames, header)
            if info.layout == "batched" and len(outs) != info.output_size:
                raise SerializationError(
                    f"server answered {len(outs)} output ciphertexts, expected "
                    f"{info.output_size}")
            n = header["n_samples"]
            if info.layout == "batched" and any(t.shape != (n,) for t in outs):
                raise SerializationError("server's answer holds the wrong number of rows")
            if info.layout == "single" and sum(t.size for t in outs) < info.output_size:
                raise SerializationError(
                    f"server's answer holds {sum(t.size for t in outs)} values, expected at "
                    f"least {info.output_size}")
            # the single layout's answer may carry padding (taps layout): keep output_size values
            enc = models.EncryptedValues(info.layout, n, outs, 0,
                                         info.output_size if info.layout == "single" else 0)
            parts.append(models.decrypt_output(ctx, enc))
        return np.concatenate(parts, axis=0)

    def _encrypt(self, ctx: Any, chunk: Any) -> tuple[list[bytes], dict[str, Any]]:
        """Encrypt rows in the model's layout (the ``models.encrypted`` frames and header)."""
        import numpy as np

        assert self._info is not None
        info = self._info
        if info.layout == "batched":
            frames = [ctx.encrypt(np.ascontiguousarray(chunk[:, i])).serialize()
                      for i in range(chunk.shape[1])]
            return frames, {"layout": "batched", "n_samples": chunk.shape[0], "windows": 0,
                            "count": len(frames)}
        from veil import models  # the single layout may need im2col encoding

        enc = models.encrypt_input(ctx, chunk.reshape(1, *info.input_shape), info.plan)
        frames = [t.serialize() for t in enc.tensors]
        return frames, {"layout": "single", "n_samples": 1, "windows": enc.windows,
                        "count": len(frames)}

    def _predict_frames(self, cid: str, frames: list[bytes],
                        header: dict[str, Any]) -> list[Any]:
        from veil.protocols.inference import KIND_ENCRYPTED, pack_frames, unpack_frames

        limits = self.model()["limits"]
        payload = pack_frames(KIND_ENCRYPTED, header, frames)
        if len(payload) > int(limits["max_request_bytes"]):
            raise SerializationError(
                f"request of {len(payload)} bytes exceeds the server's limit of "
                f"{limits['max_request_bytes']}; send fewer rows per call")
        for _ in range(2):  # a second try after re-uploading an evicted context
            headers = {"content-type": _OCTET, "X-Veil-Context": cid}
            status, body = self._send("POST", "/predict", "prediction", content=payload,
                                      headers=headers, limit=self.max_response_bytes)
            if status != 404:
                out_header, out_frames = unpack_frames(
                    body, KIND_ENCRYPTED, max_bytes=self.max_response_bytes, max_frames=1 << 16)
                if out_header.get("count") != len(out_frames) or \
                        out_header.get("n_samples") != header["n_samples"]:
                    raise SerializationError(
                        f"server's answer header {out_header!r:.200} does not match the request")
                return [self.context.load_tensor(f, max_bytes=self.max_response_bytes)
                        for f in out_frames]
            with self._lock:
                self._context_id = None
                cid = self._upload(force_check=False)
        raise self._translate(status, body, "prediction")


def _check_given_context(ctx: Any, info: ModelInfo, params: Any) -> None:
    """A user's ``Client(context=...)`` against the server's plan: kind, parameters, keys."""
    check_context_kind(ctx, info.plan, info.name)
    if ctx.params.describe() != params.describe():
        raise KeyMismatchError(
            f"the given context has parameters {ctx.params.describe()}, the server's model "
            f"needs {params.describe()}; create the context with the server's parameters (or "
            "let the Client generate it)")
    if info.packed and tuple(ctx.rotations) != info.rotations:
        raise KeyMismatchError(
            f"the given context has Galois keys for rotations {list(ctx.rotations)[:12]}, the "
            f"server's model needs exactly {list(info.rotations)}; generate it with "
            "SlotContext.generate(params, rotations) from GET /model (or let the Client do it)")


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

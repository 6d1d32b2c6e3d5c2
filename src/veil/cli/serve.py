"""``veil serve``: run the encrypted-inference HTTP server (FastAPI + uvicorn)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

_TLS_CERT = typer.Option(
    None, "--tls-cert", help="PEM certificate (chain) to serve HTTPS with; needs --tls-key")
_TLS_KEY = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert")
_TOKEN_SECRET = typer.Option(
    None, "--token-secret",
    help="require API tokens (Authorization: Bearer) made with `veil serve token new NAME "
    "--secret-file FILE` under this secret file; contexts then belong to the token's NAME")
_PLAIN = typer.Option(
    False, "--insecure-plain-http",
    help="allow plain HTTP on a non-loopback --host (only behind a TLS-terminating proxy)")
_MODEL = typer.Option(
    "zoo:digits-mlp", "--model", "-m",
    help="model to serve: zoo:NAME (veil.models.zoo: the batched layout and, when its "
    "single-sample plan is packed, the single layout too; clients choose per request), "
    "zoo:NAME:batched or zoo:NAME:single (that layout only; single: one row per request, "
    "usually packed: Galois keys for just its rotations), linear:digits, or "
    "PATH[:single]: your own model saved with veil.models.save(net, PATH, "
    "input_shape=..., domain=...)",
)
_LAYOUTS = typer.Option(
    "", "--layouts",
    help="layouts to offer for a model without a :batched/:single suffix, e.g. batched or "
    "batched,single (default: both for zoo models with a packed single plan; the first is the "
    "default of requests that name none)")
_HOST = typer.Option(
    "127.0.0.1", "--host",
    help="interface to listen on (default loopback; others need --tls-cert/--tls-key or "
    "--insecure-plain-http)")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Serve a model on encrypted inputs (and issue its API tokens).",
                        no_args_is_help=False, invoke_without_command=True)
    tokens = typer.Typer(help="API tokens for clients of `veil serve --token-secret`.",
                         no_args_is_help=True)
    group.add_typer(tokens, name="token")
    app.add_typer(group, name="serve")

    @tokens.command("new")
    def token_new(
        name: str = typer.Argument(..., help="the client's name (letters, digits, - and _)"),
        secret_file: Path = typer.Option(
            ..., "--secret-file", help="the server's 256-bit secret (created 0600 if missing)"),
    ) -> None:
        """Print a new token for client NAME (give it to that client only)."""
        from veil.serve.auth import load_secret, new_token

        typer.echo(new_token(name, load_secret(secret_file, create=True)))

    group.callback()(_serve)


def _serve(
    ctx: typer.Context,
    model: str = _MODEL,
    layouts: str = _LAYOUTS,
    input_shape: str = typer.Option(
        "", "--input-shape",
        help="model files only: the input shape per row, e.g. 64 or 1,8,8 (must match "
        "the file's)",
    ),
    domain: str = typer.Option(
        "", "--domain",
        help="model files only: input range LOW:HIGH (e.g. 0:1), overriding the file's; "
        "clients refuse inputs outside it",
    ),
    host: str = _HOST,
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="TCP port"),
    workers: int = typer.Option(
        0, "--workers", min=0, max=64,
        help="evaluation processes (0: one per CPU core, at most 4)",
    ),
    queue: int = typer.Option(
        32, "--queue", min=0, max=10_000,
        help="requests that may wait for a worker; beyond that the server answers 503",
    ),
    deadline: float = typer.Option(
        120.0, "--deadline", min=0.1, max=3600.0,
        help="seconds from a complete request to its answer (504 after)",
    ),
    max_request_mb: int = typer.Option(
        0, "--max-request-mb", min=0, max=4096,
        help="largest prediction request in MiB (0: one full batch of the model)",
    ),
    max_context_mb: int = typer.Option(
        256, "--max-context-mb", min=1, max=4096, help="largest uploaded context (MiB)",
    ),
    body_timeout: float = typer.Option(
        60.0, "--body-timeout", min=0.1, max=3600.0,
        help="seconds a client may take to send one body (raise it for contexts of "
        "hundreds of MB over slow links)",
    ),
    store: str = typer.Option(
        "", "--store", help="directory for uploaded contexts (default: a temporary one)",
    ),
    tls_cert: Path | None = _TLS_CERT,
    tls_key: Path | None = _TLS_KEY,
    token_secret: Path | None = _TOKEN_SECRET,
    insecure_plain_http: bool = _PLAIN,
) -> None:
    """Serve a model on encrypted inputs: clients upload a public CKKS context, then predict."""
    from veil.serve.auth import load_secret
    from veil.serve.config import MiB, ServerConfig
    from veil.serve.runner import check_store_dir, check_transport
    from veil.serve.runner import serve as run

    if ctx.invoked_subcommand is not None:
        return
    check_transport(host, tls_cert, tls_key, insecure_plain_http)
    wanted = _parse_layouts(layouts)
    if store:
        check_store_dir(store, "--store")
    secret = load_secret(token_secret) if token_secret is not None else None
    kwargs = {} if workers == 0 else {"workers": workers}
    cfg = ServerConfig(
        queue_size=queue, request_deadline_s=deadline, body_timeout_s=body_timeout,
        max_request_bytes=max_request_mb * MiB if max_request_mb else None,
        max_context_bytes=max_context_mb * MiB, token_secret=secret,
        store_dir=Path(store) if store else None, **kwargs,
    )
    # run() binds host:port before it loads the model: a bad address fails at once, one line
    run(_model_source(model, input_shape, domain, wanted), host=host, port=port, config=cfg,
        log_level=_uvicorn_log_level(), tls_cert=tls_cert, tls_key=tls_key,
        insecure_plain_http=insecure_plain_http, layouts=wanted)


def _model_source(model: str, input_shape: str, domain: str,
                  layouts: tuple[str, ...] | None = None) -> str | Callable[[], Any]:
    """The spec, or (with --input-shape/--domain) a loader that run() calls after binding."""
    shape = _parse_shape(input_shape) if input_shape else None
    dom = _parse_domain(domain) if domain else None
    if shape is None and dom is None:
        return model
    from veil.serve.layouts import load_model

    return functools.partial(load_model, model, layouts, input_shape=shape, domain=dom)


def _parse_layouts(text: str) -> tuple[str, ...] | None:
    from veil.serve.layouts import parse_layouts

    return parse_layouts(text)


def _uvicorn_log_level() -> str:
    """uvicorn's own lines (startup, shutdown, access log) only with ``veil -v serve``."""
    return "info" if logging.getLogger("veil").isEnabledFor(logging.INFO) else "warning"


def _parse_shape(text: str) -> tuple[int, ...]:
    from veil.errors import ConfigurationError

    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ConfigurationError(
            f"--input-shape must be positive integers separated by commas (e.g. 64 or 1,8,8), "
            f"got {text!r}")
    return shape


def _parse_domain(text: str) -> tuple[float, float]:
    from veil.errors import ConfigurationError

    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise ConfigurationError(
            f"--domain must be LOW:HIGH (e.g. 0:1), got {text!r}") from None
    if not low < high:
        raise ConfigurationError(f"--domain needs LOW < HIGH, got {text!r}")
    return low, high

"""Run a Veil inference server with uvicorn (what ``veil serve`` calls)."""

from __future__ import annotations

from typing import Any

from veil.errors import ConfigurationError
from veil.serve.config import ServerConfig

__all__ = ["serve", "check_store_dir", "check_transport", "uvicorn_config"]


def check_store_dir(path: Any, name: str = "ServerConfig.store_dir") -> None:
    """Create ``path`` if needed and check it is a writable directory (before the server starts).

    ``name`` is how the caller calls the setting in messages (``--store`` on the CLI).
    """
    import tempfile
    from pathlib import Path

    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"{name} {str(p)!r} cannot be used for uploaded contexts: "
            f"{exc.strerror or exc}; pass a writable directory (it is created if missing)"
        ) from exc


def check_transport(host: str, tls_cert: Any, tls_key: Any, insecure_plain_http: bool) -> None:
    """Refuse plain HTTP off loopback (unless opted out) and a half or missing TLS pair."""
    from pathlib import Path

    from veil.serve.auth import is_loopback

    if (tls_cert is None) != (tls_key is None):
        raise ConfigurationError("--tls-cert and --tls-key go together: pass both PEM files")
    for flag, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not Path(path).is_file():
            raise ConfigurationError(f"{flag} {str(path)!r} is not a file (PEM expected)")
    if tls_cert is None and not is_loopback(host) and not insecure_plain_http:
        raise ConfigurationError(
            f"refusing to serve plain HTTP on {host!r}: anyone on that network could read and "
            "alter the traffic. Pass --tls-cert FILE --tls-key FILE for HTTPS, listen on "
            "127.0.0.1, or pass --insecure-plain-http if a TLS proxy in front does it")


def uvicorn_config(app: Any, *, host: str, port: int, cfg: ServerConfig, log_level: str,
                   tls_cert: Any = None, tls_key: Any = None) -> Any:
    """A loaded ``uvicorn.Config``; with TLS files, HTTPS with TLS 1.2 at least (1.3 preferred)."""
    import ssl

    import uvicorn

    tls = {} if tls_cert is None else {"ssl_certfile": str(tls_cert),
                                       "ssl_keyfile": str(tls_key)}
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level,
        # connection-level backstop above the app's own admission control
        limit_concurrency=cfg.max_in_flight * 4 + 64,
        timeout_keep_alive=5, timeout_graceful_shutdown=10, **tls,
    )
    try:
        config.load()
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            f"cannot load the TLS certificate/key ({tls_cert}, {tls_key}): {exc}") from exc
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    return config


def serve(model: Any = "linear:digits", *, host: str = "127.0.0.1", port: int = 8000,
          config: ServerConfig | None = None, log_level: str = "info",
          tls_cert: Any = None, tls_key: Any = None, insecure_plain_http: bool = False) -> None:
    """Serve ``model`` on ``host:port`` until interrupted (Ctrl-C / SIGTERM).

    ``tls_cert``/``tls_key`` (PEM files) serve HTTPS. Without them only a loopback ``host`` is
    allowed, unless ``insecure_plain_http=True`` (e.g. behind a TLS-terminating proxy). Client
    authentication: ``ServerConfig(token_secret=...)`` (see docs/security/serve.md).
    """
    import uvicorn

    from veil.serve.app import create_app

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"port must be an integer in 0..65535, got {port!r}")
    check_transport(host, tls_cert, tls_key, insecure_plain_http)
    cfg = config if config is not None else ServerConfig()
    if cfg.store_dir is not None:
        check_store_dir(cfg.store_dir)
    app = create_app(model, config=cfg)
    server = uvicorn.Server(uvicorn_config(app, host=host, port=port, cfg=cfg,
                                           log_level=log_level, tls_cert=tls_cert,
                                           tls_key=tls_key))
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl-C is the normal way to stop it (as uvicorn.run does)
        pass
    if not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE (it logged why)

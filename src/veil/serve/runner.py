"""Run a Veil inference server with uvicorn (what ``veil serve`` calls)."""

from __future__ import annotations

from typing import Any

from veil.errors import ConfigurationError
from veil.serve.config import ServerConfig

__all__ = ["serve", "check_store_dir"]


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


def serve(model: Any = "linear:digits", *, host: str = "127.0.0.1", port: int = 8000,
          config: ServerConfig | None = None, log_level: str = "info") -> None:
    """Serve ``model`` on ``host:port`` until interrupted (Ctrl-C / SIGTERM).

    The default host is loopback: listening on another interface exposes the server to that
    network, and the server does no authentication or TLS of its own (put it behind a reverse
    proxy that does, see docs/security/serve.md).
    """
    import uvicorn

    from veil.serve.app import create_app

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"port must be an integer in 0..65535, got {port!r}")
    cfg = config if config is not None else ServerConfig()
    if cfg.store_dir is not None:
        check_store_dir(cfg.store_dir)
    app = create_app(model, config=cfg)
    uvicorn.run(
        app, host=host, port=port, log_level=log_level,
        # connection-level backstop above the app's own admission control
        limit_concurrency=cfg.max_in_flight * 4 + 64,
        timeout_keep_alive=5, timeout_graceful_shutdown=10,
    )

"""Run a Veil inference server with uvicorn (what ``veil serve`` calls).

:func:`serve` binds the listening socket itself (:func:`listen`) before it loads the model or
starts uvicorn, so a busy port, an address of another host or a privileged port fails at once as
one :class:`~veil.errors.ConfigurationError`; uvicorn then serves on that socket. Once the server
answers it prints one line, ``serving on URL (Ctrl-C to stop)``, on stderr. ``model`` may also be
a function (e.g. a ``functools.partial`` of ``load_evaluator``) called after the bind.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from veil.errors import ConfigurationError
from veil.serve.config import ServerConfig

__all__ = ["serve", "check_store_dir", "check_transport", "listen", "uvicorn_config"]


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
          tls_cert: Any = None, tls_key: Any = None, insecure_plain_http: bool = False,
          layouts: str | tuple[str, ...] | None = None) -> None:
    """Serve ``model`` on ``host:port`` until interrupted (Ctrl-C / SIGTERM).

    ``layouts`` (``"batched,single"``, for a spec without a layout suffix) chooses the layouts
    offered (:func:`veil.serve.layouts.load_model`; default: both for a zoo model whose
    single-sample plan is packed).

    ``tls_cert``/``tls_key`` (PEM files) serve HTTPS. Without them only a loopback ``host`` is
    allowed, unless ``insecure_plain_http=True`` (e.g. behind a TLS-terminating proxy). Client
    authentication: ``ServerConfig(token_secret=...)`` (see docs/security/serve.md).
    """
    from veil.serve.app import create_app

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"port must be an integer in 0..65535, got {port!r}")
    check_transport(host, tls_cert, tls_key, insecure_plain_http)
    cfg = config if config is not None else ServerConfig()
    if cfg.store_dir is not None:
        check_store_dir(cfg.store_dir)
    sock = listen(host, port)  # before the model loads: a bad address costs nothing
    try:
        loaded = model() if _is_loader(model) else model
        extra = {"layouts": layouts} if isinstance(loaded, str) else {}
        app = create_app(loaded, config=cfg, **extra)
        bound = sock.getsockname()[1]  # the free port chosen for port 0
        url = f"{'http' if tls_cert is None else 'https'}://{_address(host, bound)}"
        server = _announcing_server(
            uvicorn_config(app, host=host, port=bound, cfg=cfg, log_level=log_level,
                           tls_cert=tls_cert, tls_key=tls_key),
            f"serving on {url} (Ctrl-C to stop)")
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # Ctrl-C is the normal way to stop it (as uvicorn.run does)
            pass
    finally:
        sock.close()
    if not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE (it logged why)


def listen(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening (``port`` 0: a free port).

    ``host`` is an IP address (IPv6 with or without brackets) or a host name; IPv4 is tried
    first, as uvicorn does. Any failure is one :class:`ConfigurationError` that names the
    address, says what is wrong with it and how to fix it.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"port must be an integer in 0..65535, got {port!r}")
    name = host.strip("[]") or None
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigurationError(
            f"cannot listen on {_address(host, port)}: {host!r} is neither an IP address nor a "
            f"known host name ({getattr(exc, 'strerror', None) or exc}); pass an address of "
            "this host with --host, e.g. 127.0.0.1 or 0.0.0.0") from exc
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    failure: OSError | None = None
    for family, kind, proto, _canon, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(backlog)  # a port bound (not listening) elsewhere fails here
        except OSError as exc:
            sock.close()
            failure = failure or exc
            continue
        return sock
    raise _bind_error(host, port, failure) from failure


def _bind_error(host: str, port: int, exc: OSError | None) -> ConfigurationError:
    where = f"cannot listen on {_address(host, port)}"
    code = getattr(exc, "errno", None)
    if code == errno.EADDRINUSE:
        return ConfigurationError(
            f"{where}: the port is already in use (another server?); stop it or choose "
            "another port with --port")
    if code == errno.EADDRNOTAVAIL:
        return ConfigurationError(
            f"{where}: {host} is not an address of this host; use 127.0.0.1 (this machine "
            "only), 0.0.0.0 (all interfaces) or one of this host's addresses with --host")
    if code in (errno.EACCES, errno.EPERM) and 0 < port < 1024:
        return ConfigurationError(
            f"{where}: permission denied: ports below 1024 need root (or "
            "CAP_NET_BIND_SERVICE); choose --port 1024 or above, e.g. 8000")
    reason = (exc.strerror or str(exc)) if exc is not None else "no address to bind"
    return ConfigurationError(f"{where}: {reason}; check --host and --port")


def _address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    bare = host.strip("[]")
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def _is_loader(model: Any) -> bool:
    """Whether ``model`` is a function that makes the model (not an Evaluator object)."""
    import functools
    import inspect

    return isinstance(model, functools.partial) or inspect.isfunction(model) or \
        inspect.ismethod(model)


def _announcing_server(config: Any, line: str) -> Any:
    """A ``uvicorn.Server`` that prints ``line`` on stderr once it has started."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(line, file=sys.stderr, flush=True)

    return _Server(config)

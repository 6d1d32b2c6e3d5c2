"""``veil serve``: run the encrypted-inference HTTP server (FastAPI + uvicorn)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        model: str = typer.Option(
            "zoo:digits-mlp", "--model", "-m",
            help="model to serve: zoo:NAME (veil.models.zoo, batched layout), zoo:NAME:single "
            "(one row per request, needs Galois keys) or linear:digits",
        ),
        host: str = typer.Option(
            "127.0.0.1", "--host",
            help="interface to listen on (default loopback; the server has no TLS or auth)",
        ),
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
        store: str = typer.Option(
            "", "--store", help="directory for uploaded contexts (default: a temporary one)",
        ),
    ) -> None:
        """Serve a model on encrypted inputs: clients upload a public CKKS context, then predict."""
        from pathlib import Path

        from veil.serve.config import MiB, ServerConfig
        from veil.serve.runner import serve as run

        kwargs = {} if workers == 0 else {"workers": workers}
        cfg = ServerConfig(
            queue_size=queue, request_deadline_s=deadline,
            max_request_bytes=max_request_mb * MiB if max_request_mb else None,
            max_context_bytes=max_context_mb * MiB,
            store_dir=Path(store) if store else None, **kwargs,
        )
        run(model, host=host, port=port, config=cfg)

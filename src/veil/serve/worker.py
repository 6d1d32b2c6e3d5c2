"""Code that runs inside the server's worker processes (TenSEAL holds the GIL, so processes).

Each worker receives the model once (initializer): a :class:`~veil.serve.layouts.ServedModel`
with one :class:`~veil.serve.evaluator.Evaluator` per layout it offers. It loads uploaded public
contexts from the content-addressed store on first use and keeps the ``cache_size`` most
recently used ones, with the model compiled for each (keyed by layout and context id: a context
is loaded and compiled only for the layout it was uploaded for). Only VeilErrors and
TimeoutError leave these functions; any other failure is translated, so the parent can map every
outcome to an HTTP status without parsing tracebacks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from veil.errors import ConfigurationError, SerializationError, VeilError

__all__ = ["init_worker", "check_context", "evaluate", "ping"]

_state: dict[str, Any] = {}


def init_worker(model: Any, store_dir: str, cache_size: int) -> None:
    """Process initializer: the model (a ServedModel, an Evaluator, a spec or ``(spec,
    layouts)`` loaded here) and the store."""
    from veil.serve.layouts import as_served

    _state["model"] = as_served(model)
    _state["store"] = Path(store_dir)
    _state["cache"] = OrderedDict()
    _state["cache_size"] = cache_size
    # pay TenSEAL's (and the slot layer's SEAL) import cost at start, not per request
    from veil.he.lattice import ckks, slots  # noqa: F401


def ping(seconds: float = 0.0) -> int:
    """Used to start and warm the pool; returns this worker's pid."""
    import os

    if seconds:
        time.sleep(seconds)
    return os.getpid()


def _evaluator(layout: str | None) -> Any:
    return _state["model"].get(layout)


def _load_context(data: bytes, max_bytes: int, plan: Any) -> Any:
    """The uploaded public context, of the kind the model's plan runs on (packed layout: a
    ``SlotContext``, else a ``CKKSContext``), loaded under ``max_bytes``."""
    from veil.he import CKKSContext
    from veil.he.lattice.slots import SlotContext
    from veil.serve.plans import context_kind, is_packed

    kind = SlotContext if is_packed(plan) else CKKSContext
    try:
        ctx = kind.load(data, max_bytes=max_bytes)
    except VeilError:
        raise
    except Exception as exc:  # SEAL's / TenSEAL's own errors on malformed bytes
        raise SerializationError(
            f"could not load the uploaded context ({type(exc).__name__}: {exc}); send "
            f"ctx.public().serialize() of a {context_kind(plan)} made for the plan of GET /model"
        ) from exc
    if ctx.has_secret_key:
        raise ConfigurationError(
            "the uploaded context contains a SECRET KEY; the server refuses and did not store "
            "it. Upload ctx.public().serialize() instead (and consider this key exposed)"
        )
    return ctx


def _bound(context_id: str, path: Path | None, max_bytes: int,
           layout: str | None = None) -> tuple[Any, Any]:
    cache: OrderedDict = _state["cache"]
    evaluator = _evaluator(layout)
    key = (evaluator.info.layout, context_id)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    if path is None:
        path = _state["store"] / f"{context_id}.ctx"
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SerializationError(
            f"context {context_id[:16]}… is no longer stored on the server; upload it again"
        ) from exc
    ctx = _load_context(data, max_bytes, evaluator.info.plan)
    del data
    model = evaluator.bind(ctx)
    cache[key] = (ctx, model)
    while len(cache) > _state["cache_size"]:
        cache.popitem(last=False)
    return ctx, model


def check_context(context_id: str, tmp_path: str, max_bytes: int, deadline: float,
                  layout: str | None = None) -> dict:
    """Validate an uploaded context for ``layout`` (None: the default; public, right
    parameters, model compiles) and cache it.

    Nothing is cached if any check fails; the parent deletes the file then.
    """
    if time.monotonic() > deadline:
        raise TimeoutError("context check started after its deadline")
    _state["cache"].pop((_evaluator(layout).info.layout, context_id), None)
    _bound(context_id, Path(tmp_path), max_bytes, layout)
    return {"context_id": context_id}


def evaluate(context_id: str, body_path: str, max_bytes: int, max_ciphertexts: int,
             deadline: float, layout: str | None = None) -> bytes:
    """Open a ``models.encrypted`` request, run the model's ``layout`` (None: the default) for
    its context, return the result.

    Checks, in order: envelope (size, kind, length, digest) and frame count (one pass), header
    (layout of this model, sample count, windows, count), then each ciphertext under the
    context (parameter hash, key id, level, scale); only then the model runs.
    """
    from veil.protocols.inference import KIND_ENCRYPTED, pack_frames, unpack_frames

    if time.monotonic() > deadline:
        raise TimeoutError("request started after its deadline (server overloaded)")
    path = Path(body_path)
    if path.stat().st_size > max_bytes:  # the parent counted already; never read past a limit
        raise SerializationError(f"request exceeds the limit of {max_bytes} bytes")
    payload = path.read_bytes()
    header, frames = unpack_frames(payload, KIND_ENCRYPTED, max_bytes=max_bytes,
                                   max_frames=max_ciphertexts)
    del payload
    info = _evaluator(layout).info
    wanted, layout = layout, header.get("layout")
    n, windows = header.get("n_samples"), header.get("windows", 0)
    if layout != info.layout:
        raise ConfigurationError(
            f"request body is encrypted in layout {layout!r:.40} but its context was uploaded "
            f"for layout {info.layout!r} of model {info.name!r}; send it with a context of its "
            "own layout (POST /contexts?layout=...) and X-Veil-Layout, as GET /model describes"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or isinstance(windows, bool) or \
            not isinstance(windows, int) or windows < 0 or header.get("count") != len(frames) \
            or not frames:
        raise SerializationError(
            f"invalid models.encrypted header {header!r:.200}: needs n_samples >= 1, windows >= "
            "0 and count equal to the number of ciphertext frames (at least one)"
        )
    if layout == "single" and n != 1:
        raise ConfigurationError(f"the single layout carries one sample per request, got {n}")
    # a stored context passed the upload check (under at most this bound): reload it under the
    # plan's context bound, never under the much smaller prediction-request limit
    from veil.serve.store import context_size_limit

    ctx, model = _bound(context_id, None, context_size_limit(info.plan), wanted)
    tensors = [ctx.load_tensor(f, max_bytes=max_bytes) for f in frames]
    del frames
    for t in tensors:
        if len(t.shape) != 1 or (layout == "batched" and t.shape != (n,)):
            raise SerializationError(
                f"ciphertext of shape {t.shape} does not fit layout {layout!r} with {n} samples"
            )
    try:
        outs = model(tensors, n, windows)
    except VeilError:
        raise
    except Exception as exc:  # anything TenSEAL lets through on mismatched ciphertexts
        raise SerializationError(
            f"evaluation failed on the supplied ciphertexts ({type(exc).__name__}: {exc}); "
            "encrypt fresh ciphertexts under the uploaded context"
        ) from exc
    out_header = {"layout": layout, "n_samples": n, "windows": 0, "count": len(outs)}
    return pack_frames(KIND_ENCRYPTED, out_header, [t.serialize() for t in outs])

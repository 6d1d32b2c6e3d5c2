"""Encrypted inference over HTTP: a FastAPI server holding a model, a client holding the key.

The client generates a CKKS context with the parameters the server publishes (``GET /model``),
uploads only its *public* part once (content-addressed by SHA-256), then sends ciphertexts and
decrypts the encrypted predictions. The server never sees a secret key or a plaintext. Models
served in the packed single-sample layout (``zoo:NAME:single``, usually) take a
``veil.he.lattice.slots.SlotContext`` with Galois keys for exactly the plan's rotations instead;
``Client`` makes the right kind (``GET /model``: ``layout_choice``). ``zoo:NAME`` serves both
layouts when its single-sample plan is packed (:func:`load_model`, :class:`ServedModel`;
``GET /model``: ``layouts``, with cost hints); ``Client`` then picks per ``predict`` call (one
row: single, a large batch: batched; ``layout=`` overrides) and uploads one context per layout
it uses.

>>> from veil.serve import Client                    # doctest: +SKIP
>>> Client("http://127.0.0.1:8000").predict(x)       # `veil serve --model zoo:digits-mlp`

Server side in Python: ``create_app(model, config=ServerConfig(...))`` (an ASGI app) or
``serve(model, host=..., port=...)``; ``model`` is a spec (``"linear:digits"``,
``"zoo:NAME[:single]"``, or the path of your own model saved with ``veil.models.save``) or an
:class:`Evaluator` such as ``CompiledEvaluator(name, net, input_shape, domain=(0, 1))``.
``Client.predict`` refuses inputs outside the model's declared domain (``clip=True`` clips them).
Transport: ``serve(..., tls_cert=, tls_key=)`` / ``veil serve --tls-cert --tls-key`` serve HTTPS;
``Client`` verifies the certificate (system CAs or ``ca=PATH``). API tokens (``veil serve token
new NAME``, :mod:`veil.serve.auth`) authenticate clients and own their contexts.
Security notes: ``docs/security/serve.md``.

Names are imported lazily (``import veil.serve`` does not load FastAPI, numpy or TenSEAL).
"""

from __future__ import annotations

from veil._lazy import lazy_face

# module -> the public names it defines
_EXPORTS: dict[str, tuple[str, ...]] = {
    "client": ("Client",),
    "app": ("create_app",),
    "runner": ("serve",),
    "auth": ("new_token", "load_secret"),
    "config": ("ServerConfig",),
    "layouts": ("ServedModel", "load_model"),
    "evaluator": ("Evaluator", "LinearEvaluator", "CompiledEvaluator", "ModelInfo",
                  "load_evaluator"),
}

__all__ = sorted(name for names in _EXPORTS.values() for name in names)


__getattr__, __dir__ = lazy_face(__name__, globals(), _EXPORTS, listed=__all__)

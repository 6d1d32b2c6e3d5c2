"""Encrypted inference of PyTorch models: secret sharing (MPC) and CKKS; a small model zoo.

MPC (weights shared by the model owner, input by the data owner, logits revealed to the data
owner only)::

    logits = models.mpc_inference(net, x, model_owner=0, data_owner=1, parties=2)
    # or inside your own mpc.run job: models.mpc_forward(party, net_or_None, x_or_None, ...)

CKKS (the client holds the secret key; the server the model and a public context)::

    net_he = models.fix(net, relu="poly", domain=(-6, 6))      # copy; net_he.veil_changes
    plan = models.plan(net_he, input_shape=(64,))              # depth, slots, parameters
    ctx = he.CKKSContext.generate(plan.params, galois_keys=False)           # client
    enc = models.compile(net_he, ctx.public())                 # server: public context only
    y = models.decrypt_output(ctx, enc(models.encrypt_input(ctx, x, plan)))  # (n, classes)

Your own model for ``veil serve --model model.pt``: ``models.save(net, "model.pt",
input_shape=(64,), domain=(0, 1))`` (architecture JSON + weights; read back with
``torch.load(weights_only=True)`` by ``models.load_saved``, so loading runs no code).

Conversion walks the ``torch.fx`` graph with a per-layer registry (never ONNX):
``models.validate(net, scheme="mpc"|"ckks")`` lists unsupported layers with position and fix.
Names are imported lazily: ``import veil.models`` loads neither torch nor any crypto library.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "validate": "convert",
    "to_program": "convert",
    "Issue": "convert",
    "register_module": "convert",
    "fix": "ckks.fix",
    "activation_ranges": "ckks.fix",
    "approximate": "approx",
    "PolyApprox": "approx",
    "PolyActivation": "approx",
    "plan": "ckks.plan",
    "Plan": "ckks.plan",
    "compile": "ckks.infer",
    "CompiledModel": "ckks.infer",
    "EncryptedValues": "ckks.infer",
    "encrypt_input": "ckks.infer",
    "decrypt_output": "ckks.infer",
    "mpc_inference": "mpc_infer",
    "mpc_forward": "mpc_infer",
    "architecture": "mpc_infer",
    "Program": "ir",
    "save": "zoo",
    "load_saved": "zoo",
}
_SUBMODULES = ("zoo", "approx", "convert", "ckks", "mpc_infer",
               "ir")

__all__ = sorted([*_EXPORTS, "zoo"])


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"veil.models.{name}")
        globals()[name] = module
        return module
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'veil.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"veil.models.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

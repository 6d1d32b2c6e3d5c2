"""Encrypted inference of PyTorch models: secret sharing (MPC) and CKKS; a small model zoo.

MPC (weights shared by the model owner, input by the data owner, logits revealed to the data
owner only)::

    logits = models.mpc_inference(net, x, model_owner=0, data_owner=1, parties=2)
    # or inside your own mpc.run job: models.mpc_forward(party, net_or_None, x_or_None, ...)

CKKS (the client holds the secret key; the server the model and a public context)::

    net_he = models.fix(net, relu="poly", domain=(-6, 6))      # copy; net_he.veil_changes
    plan = models.plan(net_he, input_shape=(64,))              # depth, slots, parameters
    ctx = he.CKKSContext.generate(plan.params, galois_keys=False)           # client
    enc = models.compile(net_he, ctx.public(), plan)           # server: public context only
    y = models.decrypt_output(ctx, enc(models.encrypt_input(ctx, x, plan)))  # (n, classes)

``plan.public()`` is the :class:`PublicPlan` a server publishes (typed, versioned JSON via
``to_dict``/``from_dict``); a client encrypts with it as with the plan.

Your own model for ``veil serve --model model.pt``: ``models.save(net, "model.pt",
input_shape=(64,), domain=(0, 1))`` (architecture JSON + weights; read back with
``torch.load(weights_only=True)`` by ``models.load_saved``, so loading runs no code).

Conversion walks the ``torch.fx`` graph with a per-layer registry (never ONNX):
``models.validate(net, scheme="mpc"|"ckks")`` lists unsupported layers with position and fix.
Names are imported lazily: ``import veil.models`` loads neither torch nor any crypto library.
"""

from __future__ import annotations

from veil._lazy import lazy_face

# module -> the public names it defines
_EXPORTS: dict[str, tuple[str, ...]] = {
    "convert": ("validate", "to_program", "Issue", "register_module"),
    "ckks.fix": ("fix", "activation_ranges"),
    "approx": ("approximate", "PolyApprox", "PolyActivation"),
    "ckks.plan": ("plan", "Plan", "PublicPlan"),
    "ckks.infer": ("compile", "CompiledModel", "EncryptedValues", "encrypt_input",
                   "decrypt_output"),
    "mpc_infer": ("mpc_inference", "mpc_forward", "architecture"),
    "ir": ("Program",),
    "zoo": ("save", "load_saved"),
}
_SUBMODULES = ("zoo", "approx", "convert", "ckks", "mpc_infer",
               "ir")

__all__ = sorted([*(name for names in _EXPORTS.values() for name in names), "zoo"])


__getattr__, __dir__ = lazy_face(__name__, globals(), _EXPORTS, submodules=_SUBMODULES,
                                   listed=__all__)

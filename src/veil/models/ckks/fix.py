"""``models.fix``: make a torch model HE-friendly (a copy), reporting every change.

Replacements (each listed in the returned model's ``veil_changes``):

* ReLU / Sigmoid / Tanh / GELU (modules, ``torch.relu``-style functions and tensor methods) →
  :class:`~veil.models.approx.PolyActivation` fitted on ``domain`` with ``degree``; the change
  record states the polynomial's max error on the domain. Inputs outside the domain get no
  guarantee: pick the domain from the activation ranges on real data (``activation_ranges``).
* MaxPool2d → AvgPool2d with the same window (a different function: retrain or fine-tune).
* a final Softmax → removed (argmax is unchanged; apply softmax to the decrypted logits).
* Dropout → removed; BatchNorm → folded into the previous layer at conversion (reported).

The original model is never modified.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from veil.errors import ConfigurationError
from veil.models.approx import PolyActivation, approximate

__all__ = ["Change", "fix", "activation_ranges"]

_ACT_MODULES = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.GELU: "gelu"}
_ACT_FUNCS = {F.relu: "relu", torch.relu: "relu", torch.sigmoid: "sigmoid",
              F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh", F.gelu: "gelu"}
_ACT_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}


@dataclass(frozen=True)
class Change:
    """One modification made by :func:`fix`."""

    position: int
    name: str
    before: str
    after: str
    note: str

    def __str__(self) -> str:
        return f"#{self.position} {self.name}: {self.before} -> {self.after} ({self.note})"


def _act_kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str | None:
    if node.op == "call_module":
        return _ACT_MODULES.get(type(modules[node.target]))
    if node.op == "call_function":
        return _ACT_FUNCS.get(node.target)
    if node.op == "call_method":
        return _ACT_METHODS.get(node.target)
    return None


def fix(net: nn.Module, *, relu: str = "poly", sigmoid: str = "poly", tanh: str = "poly",
        gelu: str = "poly", domain: Any = (-6.0, 6.0), degree: int = 4,
        maxpool: str = "avg", softmax: str = "drop") -> nn.Module:
    """Return an HE-friendly copy of ``net`` (a ``torch.fx.GraphModule``); see module doc.

    ``relu``/``sigmoid``/``tanh``/``gelu``: ``"poly"`` to replace, ``"keep"`` to leave.
    ``maxpool``: ``"avg"`` or ``"keep"``; ``softmax``: ``"drop"`` or ``"keep"``.
    The changes are in ``result.veil_changes`` (a list of :class:`Change`).
    """
    from veil.models.convert import Tracer

    choice = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh, "gelu": gelu}
    for key, val in [*choice.items(), ("maxpool", maxpool), ("softmax", softmax)]:
        allowed = {"maxpool": ("avg", "keep"), "softmax": ("drop", "keep")}.get(key,
                                                                                ("poly", "keep"))
        if val not in allowed:
            raise ConfigurationError(f"{key} must be one of {allowed}, got {val!r}")
    fits = {k: approximate(k, domain, degree) for k, v in choice.items() if v == "poly"}
    base = copy.deepcopy(net).eval()
    try:
        graph = Tracer().trace(base)
    except Exception as exc:
        raise ConfigurationError(
            f"models.fix could not trace {type(net).__name__} with torch.fx ({exc}); remove "
            "data-dependent control flow from forward()"
        ) from exc
    gm = torch.fx.GraphModule(base, graph)
    modules = dict(gm.named_modules())
    changes: list[Change] = []
    position = 0
    counter = 0
    output = next(n for n in gm.graph.nodes if n.op == "output")
    for node in list(gm.graph.nodes):
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        position += 1
        name = str(node.target) if node.op == "call_module" else node.name
        mod = modules.get(node.target) if node.op == "call_module" else None
        kind = _act_kind(node, modules)
        if kind in fits:
            fit = fits[kind]
            poly = PolyActivation.from_approx(fit)
            if node.op == "call_module":
                gm.set_submodule(node.target, poly)
            else:
                counter += 1
                target = f"veil_poly_{counter}"
                gm.add_submodule(target, poly)
                with gm.graph.inserting_after(node):
                    new = gm.graph.call_module(target, (node.args[0],))
                node.replace_all_uses_with(new)
                gm.graph.erase_node(node)
            changes.append(Change(position, name, kind, f"degree-{fit.degree} polynomial",
                                  fit.describe()))
        elif isinstance(mod, nn.MaxPool2d) and maxpool == "avg":
            if mod.dilation not in (1, (1, 1)) or mod.return_indices:
                continue  # validate() will report it
            gm.set_submodule(node.target, nn.AvgPool2d(mod.kernel_size, mod.stride, mod.padding,
                                                       ceil_mode=mod.ceil_mode))
            changes.append(Change(position, name, "MaxPool2d", "AvgPool2d",
                                  "a different function: retrain or fine-tune for accuracy"))
        elif softmax == "drop" and _is_softmax(node, mod) and output.args[0] is node:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            changes.append(Change(position, name, "Softmax", "removed",
                                  "argmax unchanged; apply softmax to the decrypted logits"))
        elif isinstance(mod, (nn.Dropout, nn.Dropout1d, nn.Dropout2d)):
            changes.append(Change(position, name, type(mod).__name__, "identity",
                                  "dropout is the identity at inference"))
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            changes.append(Change(position, name, type(mod).__name__, "folded",
                                  "folded into the previous layer at conversion (exact)"))
    gm.graph.lint()
    gm.recompile()
    gm.eval()
    gm.veil_changes = changes
    return gm


def _is_softmax(node: torch.fx.Node, mod: nn.Module | None) -> bool:
    return isinstance(mod, nn.Softmax) or (node.op == "call_function" and node.target in
                                           (F.softmax, torch.softmax))


def activation_ranges(net: nn.Module, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Min and max of the input of every activation layer of ``net`` on data ``x`` (plaintext).

    Use it to choose the ``domain`` of :func:`fix` (add a margin).
    """
    from veil.models.convert import Tracer

    gm = torch.fx.GraphModule(net, Tracer().trace(net))
    modules = dict(gm.named_modules())
    acts = [n for n in gm.graph.nodes if _act_kind(n, modules) is not None or (
        n.op == "call_module" and isinstance(modules[n.target], PolyActivation))]
    seen: dict[str, tuple[float, float]] = {}
    from torch.fx.interpreter import Interpreter

    class _Spy(Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            if n in acts:
                v = self.env[n.args[0]]
                seen[n.name] = (float(v.min()), float(v.max()))
            return super().run_node(n)

    with torch.no_grad():
        _Spy(gm).run(x)
    return seen

"""Small reference models trained at first use on scikit-learn's digits (nothing is downloaded).

``load_digits`` ships inside scikit-learn: 1797 8×8 grey images, pixels 0..16, which we scale to
``[0, 1]``. A fixed split (seeded ``torch.Generator``, 80/20) gives 1437 training and 360 test
images. Training is deterministic (a local generator seeds init and shuffling; torch's global seed
is never touched) and takes seconds; the weights are cached as a ``state_dict`` under
``$VEIL_CACHE_DIR/zoo`` (default ``~/.cache/veil/zoo``) and read back with
``torch.load(..., weights_only=True)``, so a tampered cache file cannot run code. A cache file
that does not fit the architecture is ignored and the model retrained.

Models (``names()``):

``digits-logreg``    Linear(64, 10)
``digits-mlp``       64 → 32 → ReLU → 10
``digits-cnn``       Conv(1→4, 3×3) → ReLU → MaxPool 2 → Conv(4→8, 3×3) → ReLU → AvgPool 2 → 32 → 10
``digits-mlp-poly``  the MLP with a fixed quadratic activation (HE-friendly, trained as such)
``digits-cnn-poly``  the CNN with quadratic activations and average pooling (HE-friendly)
``digits-cnn-fast``  Conv(1→4, 3×3) → x² act → Conv(4→4, 1×1) → x² act → 144 → 10: a CNN shaped
                     for low-latency single-sample CKKS (the taps layout, depth 5, N = 8192)

28×28 models (MNIST-sized inputs: the 8×8 digits upscaled bilinearly, ``digits((1, 28, 28))``),
with the square activation ``x**2`` (:data:`SQUARE`), trained with a small penalty on the
squared logits so that no value grows large under CKKS (``|logits|`` below about 12):

``digits28-cnn``     Conv(1→4, 7×7, stride 3) → x² → 256 → 64 → x² → 10 (the MNIST CNN of
                     TenSEAL's tutorial)
``digits28-cnn5``    Conv(1→8, 5×5, stride 2, padding 1) → x² → AvgPool 2 → 288 → 64 → x² → 10
``digits28-mlp``     784 → 256 → x² → 128 → x² → 10

The ``-poly``, ``-fast`` and ``digits28-`` models *are* polynomial networks, so CKKS evaluates
exactly what was trained. Every zoo model takes pixels in ``[0, 1]`` (``ZooEntry.domain``).
"""

from __future__ import annotations

import math
import os
import pathlib
import pickle
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from veil.errors import ConfigurationError
from veil.models.approx import PolyActivation, check_domain

__all__ = ["ZooEntry", "names", "load", "digits", "cache_dir", "POLY_ACT", "SQUARE", "DOMAIN",
           "SavedModel", "save", "load_saved"]

_VERSION = 1
_SEED = 20261122
# The HE-friendly activation: least-squares fit of ReLU on [-4, 4] (0.427 + 0.5x + 0.106x²),
# rounded. Fixed, not trained; CKKS evaluates it exactly.
POLY_ACT = (0.43, 0.5, 0.11)
SQUARE = (0.0, 0.0, 1.0)  # x**2: the activation of the digits28 models
DOMAIN = (0.0, 1.0)  # the input domain of every zoo model (pixels)


@dataclass
class ZooEntry:
    """A trained zoo model with its held-out digits test set.

    ``x_test`` is float32 of shape ``(n, *input_shape)``, pixels in ``[0, 1]``; ``y_test`` the
    labels; ``domain`` the declared input range. Unpacks as
    ``model, x_test, y_test = zoo.load(name)``.
    """

    name: str
    model: nn.Module
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    accuracy: float
    domain: tuple[float, float] = DOMAIN

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.x_test, self.y_test))


def _act(poly: bool) -> nn.Module:
    return PolyActivation(POLY_ACT) if poly else nn.ReLU()


def _mlp(poly: bool) -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), _act(poly), nn.Linear(32, 10))


def _cnn(poly: bool) -> nn.Module:
    pool = nn.AvgPool2d(2) if poly else nn.MaxPool2d(2)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), _act(poly), pool,
        nn.Conv2d(4, 8, 3, padding=1), _act(poly), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32, 10),
    )


def _cnn_fast() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), _act(True), nn.Conv2d(4, 4, 1), _act(True),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 10),
    )


def _square() -> nn.Module:
    return PolyActivation(SQUARE)


def _cnn28() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 7, stride=3), _square(), nn.Flatten(), nn.Linear(4 * 8 * 8, 64),
        _square(), nn.Linear(64, 10),
    )


def _cnn28_5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2, padding=1), _square(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 64), _square(), nn.Linear(64, 10),
    )


def _mlp28() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), _square(), nn.Linear(256, 128), _square(),
        nn.Linear(128, 10),
    )


@dataclass(frozen=True)
class _Recipe:
    """How a zoo model is built and trained (``logit_penalty`` weighs ``mean(logits**2)``)."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    epochs: int
    lr: float
    logit_penalty: float = 0.0


_IMAGE28 = (1, 28, 28)
_MODELS: dict[str, _Recipe] = {
    "digits-logreg": _Recipe(lambda: nn.Sequential(nn.Linear(64, 10)), (64,), 60, 0.05),
    "digits-mlp": _Recipe(lambda: _mlp(False), (64,), 60, 0.01),
    "digits-mlp-poly": _Recipe(lambda: _mlp(True), (64,), 60, 0.005),
    "digits-cnn": _Recipe(lambda: _cnn(False), (1, 8, 8), 40, 0.01),
    "digits-cnn-poly": _Recipe(lambda: _cnn(True), (1, 8, 8), 40, 0.005),
    "digits-cnn-fast": _Recipe(_cnn_fast, (1, 8, 8), 40, 0.005),
    "digits28-cnn": _Recipe(_cnn28, _IMAGE28, 30, 0.001, 0.03),
    "digits28-cnn5": _Recipe(_cnn28_5, _IMAGE28, 30, 0.001, 0.03),
    "digits28-mlp": _Recipe(_mlp28, _IMAGE28, 30, 0.001, 0.03),
}


def names() -> list[str]:
    """Names of the zoo models."""
    return sorted(_MODELS)


def cache_dir() -> pathlib.Path:
    """Where trained weights are cached: ``$VEIL_CACHE_DIR/zoo`` or ``~/.cache/veil/zoo``."""
    root = os.environ.get("VEIL_CACHE_DIR")
    base = pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "veil"
    return base / "zoo"


def digits(input_shape: tuple[int, ...] = (64,)) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)`` of sklearn's digits, scaled to [0, 1].

    ``input_shape`` of 64 values gives the 8×8 images as they are; of 784 values (e.g.
    ``(1, 28, 28)``), the images upscaled to 28×28 (bilinear, still in [0, 1]).
    """
    from sklearn.datasets import load_digits

    size = math.prod(input_shape)
    if size not in (64, 784):
        raise ConfigurationError(
            f"digits come as 8x8 or 28x28 images (64 or 784 values), not {tuple(input_shape)}")
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(_SEED))
    x, y = x[perm], y[perm]
    if size == 784:
        x = torch.nn.functional.interpolate(x.reshape(-1, 1, 8, 8), size=(28, 28),
                                            mode="bilinear", align_corners=False).clamp(0, 1)
    x = x.reshape(len(x), *input_shape)
    n_test = 360
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def _train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: _Recipe) -> None:
    gen = torch.Generator().manual_seed(_SEED + 1)
    with torch.no_grad():  # deterministic init from the local generator
        for p in net.parameters():
            bound = 1.0 / max(1, p.shape[-1] if p.ndim == 1 else p[0].numel()) ** 0.5
            p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for _ in range(recipe.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            logits = net(x[idx])
            loss = loss_fn(logits, y[idx])
            if recipe.logit_penalty:  # keeps x**2 networks' values small (CKKS precision)
                loss = loss + recipe.logit_penalty * logits.pow(2).mean()
            loss.backward()
            opt.step()
    net.eval()


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def load(name: str, *, retrain: bool = False) -> ZooEntry:
    """Load zoo model ``name`` (training and caching it on first use) with its test set."""
    if name not in _MODELS:
        raise ConfigurationError(f"no zoo model {name!r}; available: {', '.join(names())}")
    recipe = _MODELS[name]
    shape = recipe.input_shape
    net = recipe.build()
    x_train, y_train, x_test, y_test = digits(shape)
    path = cache_dir() / f"{name}-v{_VERSION}.pt"
    loaded = False
    if path.is_file() and not retrain:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
            loaded = True
        except (RuntimeError, OSError, ValueError, KeyError, TypeError, EOFError,
                pickle.UnpicklingError):
            loaded = False  # corrupt or foreign cache file: retrain below
    if not loaded:
        _train(net, x_train, y_train, recipe)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(net.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: concurrent loaders never see a half-written file
    net.eval()
    return ZooEntry(name, net, x_test, y_test, shape, _accuracy(net, x_test, y_test))


# -- your own models: a safe file format for serving ---------------------------------------------

SAVED_FORMAT = "veil.model/1"
MAX_SAVED_BYTES = 1 << 30  # 1 GiB: far above any model CKKS inference can run


@dataclass
class SavedModel:
    """A model read by :func:`load_saved`: a ``veil.models`` program with its weights.

    ``program`` can be passed wherever a torch model is accepted by ``models.plan`` /
    ``models.compile`` (and to ``veil.serve.CompiledEvaluator``); ``domain`` is the declared
    input range or None.
    """

    program: Any
    input_shape: tuple[int, ...]
    domain: tuple[float, float] | None


def save(net: nn.Module, path: str | os.PathLike, *, input_shape: Any,
         domain: tuple[float, float] | None = None) -> pathlib.Path:
    """Save ``net`` for ``veil serve --model PATH`` (and :func:`load_saved`).

    >>> models.zoo.save(net, "model.pt", input_shape=(64,), domain=(0, 1))   # doctest: +SKIP

    The file is ``torch.save`` of plain data only: the architecture as JSON (the converted
    ``veil.models`` program, no code), the weights as tensors, the input shape and the input
    domain; it is read back with ``torch.load(weights_only=True)``, so loading it runs no code.
    ``net`` must be convertible for CKKS: apply ``models.fix(net)`` first to replace ReLU and
    max-pooling by HE-friendly layers.
    """
    from veil.models.ckks.stages import as_program
    from veil.models.mpc_infer import program_to_json

    if not isinstance(net, nn.Module):
        raise ConfigurationError(f"save needs a torch nn.Module, got {type(net).__name__}")
    prog = as_program(net, input_shape)  # UnsupportedLayerError names layers to models.fix
    weights = {f"{op.name}.{k}": v.detach().cpu().contiguous()
               for op in prog.ops for k, v in (op.params or {}).items()}
    doc = {"format": SAVED_FORMAT, "architecture": program_to_json(prog.public()).decode(),
           "weights": weights, "input_shape": list(prog.input_shape),
           "domain": None if domain is None else list(check_domain(domain))}
    target = pathlib.Path(path)
    torch.save(doc, target)
    return target


def load_saved(path: str | os.PathLike) -> SavedModel:
    """Read a file written by :func:`save` (``torch.load(weights_only=True)``: runs no code).

    Checks the size (at most 1 GiB) before reading, then the format tag, the architecture and
    that every weight has the shape the architecture declares.
    """
    from veil.models.mpc_infer import program_from_json

    p = pathlib.Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ConfigurationError(f"cannot read model file {str(p)!r}: {exc.strerror}") from exc
    if not p.is_file() or size > MAX_SAVED_BYTES:
        raise ConfigurationError(
            f"model file {str(p)!r} is not a regular file of at most {MAX_SAVED_BYTES} bytes")
    hint = "write it with veil.models.zoo.save(net, path, input_shape=..., domain=...)"
    try:
        doc = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ConfigurationError(
            f"{str(p)!r} is not a Veil model file ({type(exc).__name__}); {hint}") from exc
    if not isinstance(doc, dict) or doc.get("format") != SAVED_FORMAT or \
            not isinstance(doc.get("architecture"), str) or \
            not isinstance(doc.get("weights"), dict):
        raise ConfigurationError(f"{str(p)!r} is not a {SAVED_FORMAT} file; {hint}")
    prog = program_from_json(doc["architecture"].encode())
    weights = doc["weights"]
    used = set()
    for op in prog.ops:
        params = {}
        for k, shape in op.param_shapes.items():
            t = weights.get(f"{op.name}.{k}")
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape) or \
                    not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise ConfigurationError(
                    f"{str(p)!r}: weight {op.name}.{k} is missing, not finite or not of shape "
                    f"{tuple(shape)}; {hint}")
            params[k] = t
            used.add(f"{op.name}.{k}")
        op.params = params
    if set(weights) != used:
        extra = sorted(set(weights) - used)[:5]
        raise ConfigurationError(f"{str(p)!r}: weights {extra} are not in the architecture")
    try:
        shape = tuple(int(v) for v in doc["input_shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"{str(p)!r}: malformed input_shape; {hint}") from exc
    if shape != tuple(prog.input_shape):
        raise ConfigurationError(f"{str(p)!r}: input_shape {shape} differs from the "
                                 f"architecture's {tuple(prog.input_shape)}")
    domain = doc.get("domain")
    return SavedModel(prog, shape, None if domain is None else check_domain(domain))

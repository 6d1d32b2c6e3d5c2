"""Conversion: every supported layer against torch (plaintext oracle), validate(), errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from veil import models
from veil.errors import ConfigurationError, UnsupportedLayerError
from veil.models.approx import PolyActivation
from veil.models.convert import SCHEMES, to_program
from veil.models.mpc_infer import architecture, program_from_json, program_to_json


def _bn(n, dims=2):
    bn = nn.BatchNorm2d(n) if dims == 2 else nn.BatchNorm1d(n)
    g = torch.Generator().manual_seed(n)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(n, generator=g))
    return bn


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.act = PolyActivation([0.1, 0.5, 0.2])

    def forward(self, x):
        y = self.conv(x) + x
        return torch.cat([y, self.act(x)], dim=1).flatten(1)


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = torch.relu(self.fc(x)) + torch.sigmoid(self.fc(x))
        y = F.gelu(y) + y.tanh()
        return F.softmax(y.view(y.size(0), -1), dim=-1)


# (model, input_shape, schemes that support it)
LAYERS = {
    "linear": (lambda: nn.Sequential(nn.Linear(6, 4)), (6,), ("mpc", "ckks")),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(2, 3, 3, stride=2, padding=1)), (2, 9),
               ("mpc", "ckks")),
    "conv2d": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=(1, 2))), (2, 6, 6),
               ("mpc", "ckks")),
    "bn1d": (lambda: nn.Sequential(nn.Linear(6, 4), _bn(4, 1)), (6,), ("mpc", "ckks")),
    "bn2d": (lambda: nn.Sequential(nn.Conv2d(1, 3, 3), _bn(3)), (1, 5, 5), ("mpc", "ckks")),
    "bn_alone": (lambda: nn.Sequential(_bn(2)), (2, 3, 3), ("mpc", "ckks")),
    "relu": (lambda: nn.Sequential(nn.Linear(6, 4), nn.ReLU()), (6,), ("mpc",)),
    "sigmoid": (lambda: nn.Sequential(nn.Linear(6, 4), nn.Sigmoid()), (6,), ("mpc",)),
    "tanh": (lambda: nn.Sequential(nn.Linear(6, 4), nn.Tanh()), (6,), ("mpc",)),
    "gelu": (lambda: nn.Sequential(nn.Linear(6, 4), nn.GELU()), (6,), ("mpc",)),
    "softmax": (lambda: nn.Sequential(nn.Linear(6, 4), nn.Softmax(dim=1)), (6,), ("mpc",)),
    "maxpool": (lambda: nn.Sequential(nn.MaxPool2d(2)), (1, 4, 4), ("mpc",)),
    "avgpool": (lambda: nn.Sequential(nn.AvgPool2d(2, stride=1)), (2, 4, 4), ("mpc", "ckks")),
    "adaptive": (lambda: nn.Sequential(nn.AdaptiveAvgPool2d((2, 2))), (2, 4, 4),
                 ("mpc", "ckks")),
    "layernorm": (lambda: nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4)), (6,), ("mpc",)),
    "flatten_dropout": (lambda: nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 3)),
                        (2, 2, 2), ("mpc", "ckks")),
    "poly": (lambda: nn.Sequential(nn.Linear(6, 4), PolyActivation([0.2, 0.5, 0.1])), (6,),
             ("mpc", "ckks")),
    "residual_cat": (Residual, (2, 3, 3), ("mpc", "ckks")),
    "functional": (Functional, (6,), ("mpc",)),
}


def _model(name):
    torch.manual_seed(0)  # test-only determinism of layer init
    build, shape, schemes = LAYERS[name]
    return build().eval(), shape, schemes


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("scheme", ["mpc", "ckks"])
def test_layer_converts_and_matches_torch(name, scheme):
    net, shape, schemes = _model(name)
    x = torch.randn(5, *shape)
    if scheme not in schemes:
        assert models.validate(net, scheme, shape), f"{name} should be rejected under {scheme}"
        with pytest.raises(UnsupportedLayerError):
            to_program(net, shape, scheme)
        return
    assert models.validate(net, scheme, shape) == []
    prog = to_program(net, shape, scheme)
    with torch.no_grad():
        want = net(x).double()
    got = prog.run_plain(x.double())
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_batchnorm_is_folded_into_the_previous_layer():
    net, shape, _ = _model("bn2d")
    prog = to_program(net, shape, "mpc")
    assert [op.kind for op in prog.ops] == ["conv"]
    assert "folded" in prog.ops[0].source


def test_validate_lists_every_unsupported_layer_with_position_and_fix():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8, 2), nn.Softmax(dim=-1))
    issues = models.validate(net, "ckks", (1, 6, 6))
    assert [(i.position, i.name, i.layer) for i in issues] == [
        (2, "1", "ReLU"), (3, "2", "MaxPool2d"), (6, "5", "Softmax")]
    assert "models.fix" in issues[0].fix and "AvgPool2d" in issues[1].fix
    assert models.validate(net, "mpc", (1, 6, 6)) == []
    with pytest.raises(UnsupportedLayerError) as err:
        to_program(net, (1, 6, 6), "ckks")
    for issue in issues:
        assert str(issue) in str(err.value)


def test_unknown_layer_and_unsupported_configuration():
    net = nn.Sequential(nn.Linear(4, 4), nn.ELU(), nn.Conv1d(1, 1, 3, padding_mode="circular",
                                                               padding=1))
    issues = models.validate(net, "mpc")
    assert [i.layer for i in issues] == ["ELU", "Conv1d"]
    assert "register" in issues[0].fix and "padding" in issues[1].reason


def test_untraceable_model_is_reported():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    (issue,) = models.validate(Branchy(), "mpc", (3,))
    assert "traced" in issue.reason


def test_bad_arguments():
    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ConfigurationError, match="scheme"):
        models.validate(net, "bfv")
    with pytest.raises(ConfigurationError, match="input_shape"):
        to_program(net, (0,), "mpc")
    with pytest.raises(ConfigurationError, match="input_shape"):
        to_program(net, (4,), "mpc")  # wrong feature count: torch fails, we explain
    with pytest.raises(ConfigurationError):
        to_program("not a model", (3,), "mpc")
    assert set(SCHEMES["ckks"]) < set(SCHEMES["mpc"])


def test_architecture_roundtrip_has_no_weights():
    net, shape, _ = _model("residual_cat")
    arch = architecture(net, shape)
    assert not arch.has_params and all(op.params is None for op in arch.ops)
    blob = program_to_json(arch)
    assert program_to_json(program_from_json(blob)) == blob
    for op in to_program(net, shape, "mpc").ops:  # no weight value leaks into the JSON
        for t in op.params.values():
            assert f"{float(t.flatten()[0]):.6f}" not in blob.decode()
    with pytest.raises(ConfigurationError):
        arch.run_plain(torch.zeros(1, *shape))
    for bad in (b"{", b'{"veil": "x"}', blob.replace(b'"conv"', b'"evil"'), b"x" * (2 << 20)):
        with pytest.raises(ConfigurationError):
            program_from_json(bad)

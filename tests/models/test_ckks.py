"""CKKS inference: planning, depth errors, batched and single layouts vs plaintext, public ctx."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from veil import he, models
from veil.errors import ConfigurationError, DepthExhaustedError, SerializationError
from veil.models.approx import PolyActivation
from veil.models.ckks.plan import max_secure_depth

FAST = {"precision_bits": 30, "integer_bits": 9}  # depth 4 fits N=8192 at 128 bits


def _run(net, ctx_params, x, layout, input_shape, *, galois=False):
    extra = {"single_layout": "generic"} if layout == "single" else {}  # TenSEAL's own path
    plan = models.plan(net, input_shape, layout=layout, **FAST, **extra)
    ctx = he.CKKSContext.generate(ctx_params or plan.params, galois_keys=galois)
    server_ctx = ctx.public()
    assert not server_ctx.has_secret_key
    compiled = models.compile(net, server_ctx, plan)
    enc = models.encrypt_input(ctx, x, compiled.public())
    return models.decrypt_output(ctx, compiled(enc)), ctx, compiled, enc


def test_logreg_batched_secure_defaults_agree_with_plaintext(zoo):
    entry = zoo.load("digits-logreg")
    plan = models.plan(entry.model, (64,))
    assert plan.depth == 1 and plan.params.security_bits >= 128 and not plan.galois_keys
    ctx = he.CKKSContext.generate(plan.params, galois_keys=False)
    compiled = models.compile(entry.model, ctx.public(), plan)
    x = entry.x_test
    y = models.decrypt_output(ctx, compiled(models.encrypt_input(ctx, x, plan)))
    want = entry.model(x).detach().numpy()
    assert y.shape == want.shape == (360, 10)
    assert np.abs(y - want).max() < 1e-3
    assert (y.argmax(1) == want.argmax(1)).mean() == 1.0


def test_mlp_poly_batched_and_serialization(zoo):
    entry = zoo.load("digits-mlp-poly")
    x = entry.x_test[:50]
    y, ctx, compiled, enc = _run(entry.model, None, x, "batched", (64,))
    want = entry.model(x).detach().numpy()
    assert np.abs(y - want).max() < 0.05
    assert (y.argmax(1) == want.argmax(1)).mean() >= 0.98
    # wire format round trip on the server's public context; tampering is detected
    blob = enc.serialize()
    back = models.EncryptedValues.load(compiled._ctx, blob)
    assert back.n_samples == 50 and back.size == 64
    out = compiled(back)
    assert np.abs(models.decrypt_output(ctx, out) - y).max() < 1e-2
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(SerializationError):
        models.EncryptedValues.load(compiled._ctx, bytes(bad))


def test_single_sample_layout_mlp(zoo):
    entry = zoo.load("digits-mlp-poly")
    x = entry.x_test[3]
    y, *_ = _run(entry.model, None, x, "single", (64,), galois=True)
    want = entry.model(x[None]).detach().numpy()
    assert y.shape == (1, 10)
    assert np.abs(y - want).max() < 0.05




def test_every_ckks_layer_batched_matches_torch():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2),
                        PolyActivation([0.1, 0.5, 0.25]), nn.AvgPool2d(2),
                        nn.Identity(), nn.AdaptiveAvgPool2d((1, 1)),
                        nn.Flatten(), nn.Dropout(0.1), nn.Linear(2, 3))
    with torch.no_grad():
        net[1].running_mean.fill_(0.2)
        net[1].running_var.fill_(1.5)
    net.eval()
    x = torch.rand(7, 1, 4, 4)
    y, *_ = _run(net, None, x, "batched", (1, 4, 4))
    assert np.abs(y - net(x).detach().numpy()).max() < 1e-2


def test_residual_and_concat_batched_match_torch():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 4)
            self.act = PolyActivation([0.0, 0.5, 0.2])
            self.fc2 = nn.Linear(8, 2)

        def forward(self, x):
            h = self.act(self.fc1(x)) + x
            return self.fc2(torch.cat([h, x], dim=1))

    torch.manual_seed(2)  # test-only determinism of layer init
    net = Res().eval()
    x = torch.rand(9, 4)
    y, *_ = _run(net, None, x, "batched", (4,))
    assert np.abs(y - net(x).detach().numpy()).max() < 1e-2


@pytest.mark.slow
def test_cnn_poly_single_sample_im2col_and_second_conv(zoo):
    entry = zoo.load("digits-cnn-poly")
    plan = models.plan(entry.model, (1, 8, 8), layout="single", single_layout="generic")
    assert plan.input_encoding["kind"] == "im2col"
    assert [s.kind for s in plan.stages] == ["im2col", "poly", "affine", "poly", "affine"]
    ctx = he.CKKSContext.generate(plan.params, galois_keys=True)
    compiled = models.compile(entry.model, ctx.public(), plan)
    for i in range(1):
        x = entry.x_test[i]
        y = models.decrypt_output(ctx, compiled(models.encrypt_input(ctx, x, plan)))
        want = entry.model(x[None]).detach().numpy()
        assert np.abs(y - want).max() < 0.1


def test_plan_depth_table_and_parameters(zoo):
    plan = models.plan(zoo.load("digits-cnn-poly").model, (1, 8, 8))
    assert [s.kind for s in plan.stages] == ["affine", "poly", "affine", "poly", "affine"]
    assert [s.depth for s in plan.stages] == [1, 2, 1, 2, 1] and plan.depth == 7
    assert plan.params.depth >= 7 and plan.params.security_bits >= 128
    assert "AvgPool2d" in plan.table() and plan.public().depth == 7


def test_too_deep_model_names_the_layer():
    layers = []
    for _ in range(8):
        layers += [nn.Linear(4, 4), PolyActivation([0.0, 0.5, 0.1, 0.01])]  # depth 1 + 2
    net = nn.Sequential(*layers).eval()
    limit = max_secure_depth(40)
    with pytest.raises(DepthExhaustedError) as err:
        models.plan(net, (4,))
    # cumulative depth 3 per block: the budget runs out in block limit // 3
    block = limit // 3
    assert f"#{2 * block + 1} " in str(err.value) or f"#{2 * block + 2} " in str(err.value)
    assert "fix:" in str(err.value)
    plan = models.plan(net, (4,), allow_insecure=True)  # opt-out by name only
    assert plan.depth == 24


def test_compile_checks_context_before_running(zoo):
    net = zoo.load("digits-mlp-poly").model
    small = he.CKKSContext.generate(he.CKKSParams.default(), galois_keys=False)
    with pytest.raises(DepthExhaustedError, match=r"runs out at #2 1 \(PolyActivation\)"):
        models.compile(net, small.public(), models.plan(net, (64,)))
    logreg = zoo.load("digits-logreg").model
    with pytest.raises(ConfigurationError, match="Galois"):
        models.compile(logreg, small.public(), models.plan(logreg, (64,), layout="single",
                                                           single_layout="generic"))
    with pytest.raises(ConfigurationError, match="SlotContext"):
        models.compile(logreg, small.public(), models.plan(logreg, (64,), layout="single"))
    with pytest.raises(ConfigurationError, match="layout"):
        models.plan(net, (64,), layout="diagonal")
    with pytest.raises(ConfigurationError, match="input_shape"):
        models.plan(nn.Sequential(nn.Conv2d(1, 1, 3)))


def test_fix_replaces_and_reports_without_touching_the_original():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(2, 3)
            self.sm = nn.Softmax(dim=-1)

        def forward(self, x):
            y = self.pool(torch.relu(self.c(x))).flatten(1)
            return self.sm(torch.tanh(self.fc(y)))

    torch.manual_seed(3)  # test-only determinism of layer init
    net = Net().eval()
    assert models.validate(net, "ckks", (1, 4, 4))
    fixed = models.fix(net, domain=(-4, 4), degree=4)
    kinds = [(c.before, c.after.split()[0]) for c in fixed.veil_changes]
    assert kinds == [("relu", "degree-4"), ("MaxPool2d", "AvgPool2d"), ("tanh", "degree-4"),
                     ("Softmax", "removed")]
    assert "max error" in fixed.veil_changes[0].note
    assert models.validate(fixed, "ckks", (1, 4, 4)) == []
    assert isinstance(net.pool, nn.MaxPool2d)  # original untouched
    x = torch.rand(4, 1, 4, 4)
    ranges = models.activation_ranges(net, x)
    assert set(ranges) == {"relu", "tanh"}
    y, *_ = _run(fixed, None, x, "batched", (1, 4, 4))
    assert np.abs(y - fixed(x).detach().numpy()).max() < 1e-2

"""models.compile uses the Plan it is given; PublicPlan is the strict client/server agreement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from veil import he, models
from veil.errors import ConfigurationError, DepthExhaustedError, SerializationError
from veil.models.approx import PolyActivation
from veil.protocols.inference import PLAN_VERSION, PublicPlan

FAST = {"precision_bits": 30, "integer_bits": 9}


def _mlp(hidden: int = 8, inputs: int = 6) -> nn.Module:
    torch.manual_seed(0)  # test-only determinism of layer init
    return nn.Sequential(nn.Linear(inputs, hidden), PolyActivation([0.0, 0.5, 0.25]),
                         nn.Linear(hidden, 3)).eval()


@pytest.fixture(scope="module")
def setup():
    net = _mlp()
    plan = models.plan(net, (6,), **FAST)
    ctx = he.CKKSContext.generate(plan.params, galois_keys=False)
    return net, plan, ctx


def test_compile_uses_the_given_plan(setup):
    net, plan, ctx = setup
    compiled = models.compile(net, ctx.public(), plan)
    assert compiled.public() == plan.public()
    x = torch.rand(5, 6)
    y = models.decrypt_output(ctx, compiled(models.encrypt_input(ctx, x, plan)))
    assert abs(y - net(x).detach().numpy()).max() < 1e-2


def test_plan_that_does_not_fit_the_net_is_a_clear_error(setup):
    net, plan, ctx = setup
    with pytest.raises(ConfigurationError, match=r"does not fit this net.*models\.plan\(net"):
        models.compile(_mlp(hidden=5), ctx.public(), plan)  # other stages
    with pytest.raises(ConfigurationError, match="does not fit this net"):
        models.compile(_mlp(inputs=7), ctx.public(), plan)  # other input shape
    with pytest.raises(ConfigurationError, match="models.Plan"):
        models.compile(net, ctx.public(), plan.public())  # the public part has no weights


def test_plan_that_does_not_fit_the_context_is_a_clear_error(setup):
    net, plan, _ = setup
    other = he.CKKSContext.generate(models.plan(net, (6,)).params, galois_keys=False)
    with pytest.raises(ConfigurationError, match=r"CKKSContext.generate\(plan.params"):
        models.compile(net, other.public(), plan)  # parameters the context was not made with
    deep_net = nn.Sequential(nn.Linear(6, 6), PolyActivation([0, 0.5, 0.1, 0.01, 0.001]),
                             nn.Linear(6, 3)).eval()
    deep = models.plan(deep_net, (6,), **FAST)
    shallow = he.CKKSContext.generate(he.CKKSParams.for_depth(1, **FAST), galois_keys=False)
    with pytest.raises(DepthExhaustedError, match="runs out at"):  # too few levels
        models.compile(deep_net, shallow.public(), deep)


def test_public_plan_round_trip_and_strict_validation(setup):
    _, plan, _ = setup
    pub = plan.public()
    d = pub.to_dict()
    assert d["version"] == PLAN_VERSION and list(d)[0] == "version"
    assert PublicPlan.from_dict(d) == pub
    assert PublicPlan.load(pub.serialize()) == pub
    with pytest.raises(AttributeError):
        pub.depth = 3  # frozen
    d["input_shape"].append(1)  # to_dict returns fresh objects
    assert pub.input_shape == (6,)
    bad = [
        {k: v for k, v in pub.to_dict().items() if k != "stages"},  # missing key
        {**pub.to_dict(), "extra": 1},  # unknown key
        {**pub.to_dict(), "version": PLAN_VERSION + 1},  # other version
        {**pub.to_dict(), "version": True},
        {**pub.to_dict(), "layout": "diagonal"},
        {**pub.to_dict(), "input_shape": [0]},
        {**pub.to_dict(), "depth": "1"},
        {**pub.to_dict(), "galois_keys": 0},
        {**pub.to_dict(), "params": {**pub.params, "extra": 1}},
        {**pub.to_dict(), "input_encoding": {"kind": "features", "taps": 3}},
        {**pub.to_dict(), "input_encoding": {"kind": ["features"]}},
        {**pub.to_dict(), "stages": [["affine", "x", 1, 2]]},
        [],
    ]
    for data in bad:
        with pytest.raises(SerializationError):
            PublicPlan.from_dict(data)


def test_encrypt_input_takes_a_typed_plan_only(setup):
    _, plan, ctx = setup
    with pytest.raises(ConfigurationError, match="PublicPlan"):
        models.encrypt_input(ctx, torch.rand(2, 6), plan.public().to_dict())

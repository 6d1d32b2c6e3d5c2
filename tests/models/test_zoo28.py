"""The 28x28 zoo models (digits upscaled to MNIST size, x**2 activations): data, layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from veil.errors import ConfigurationError
from veil.models.approx import PolyActivation

NAMES = ("digits28-cnn", "digits28-cnn5", "digits28-mlp")


def test_digits_upscaled_to_28x28(zoo):
    x_train, y_train, x_test, y_test = zoo.digits((1, 28, 28))
    assert x_train.shape == (1437, 1, 28, 28) and x_test.shape == (360, 1, 28, 28)
    assert x_train.dtype == torch.float32
    assert 0.0 <= float(x_train.min()) and float(x_train.max()) <= 1.0
    small = zoo.digits((1, 8, 8))
    assert torch.equal(y_test, small[3]) and torch.equal(y_train, small[1])  # same split
    flat = zoo.digits((784,))
    assert torch.equal(flat[2], x_test.reshape(360, 784))
    # bilinear upscaling of the 8x8 images, not another data set
    up = torch.nn.functional.interpolate(small[2], size=(28, 28), mode="bilinear")
    assert torch.equal(x_test, up.clamp(0, 1))
    with pytest.raises(ConfigurationError, match="28x28"):
        zoo.digits((1, 10, 10))


@pytest.mark.parametrize("name", NAMES)
def test_model_shape_accuracy_and_range(zoo, name):
    entry = zoo.load(name)
    assert entry.input_shape == (1, 28, 28) and entry.domain == (0.0, 1.0)
    assert entry.x_test.shape == (360, 1, 28, 28)
    assert entry.accuracy > 0.9, entry.accuracy
    assert not entry.model.training
    acts = [m for m in entry.model if isinstance(m, PolyActivation)]
    assert len(acts) == 2 and all(a.coeffs.tolist() == [0.0, 0.0, 1.0] for a in acts)
    with torch.no_grad():
        out = entry.model(entry.x_test)
    assert out.shape == (360, 10)
    assert float(out.abs().max()) < 32  # the logit penalty keeps CKKS values small


def test_layers_are_as_specified(zoo):
    def kinds(name):
        return [type(m).__name__ for m in zoo.load(name).model]

    assert kinds("digits28-cnn") == ["Conv2d", "PolyActivation", "Flatten", "Linear",
                                     "PolyActivation", "Linear"]
    conv = zoo.load("digits28-cnn").model[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == \
        (1, 4, (7, 7), (3, 3))
    assert zoo.load("digits28-cnn").model[3].in_features == 256
    assert kinds("digits28-cnn5") == ["Conv2d", "PolyActivation", "AvgPool2d", "Flatten",
                                      "Linear", "PolyActivation", "Linear"]
    conv5 = zoo.load("digits28-cnn5").model[0]
    assert (conv5.out_channels, conv5.kernel_size, conv5.stride, conv5.padding) == \
        (8, (5, 5), (2, 2), (1, 1))
    mlp = zoo.load("digits28-mlp").model
    assert [(m.in_features, m.out_features) for m in mlp if isinstance(m, nn.Linear)] == \
        [(784, 256), (256, 128), (128, 10)]


def test_training_is_deterministic(zoo, tmp_path, monkeypatch):
    cached = zoo.load("digits28-cnn").model.state_dict()
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path))
    fresh = zoo.load("digits28-cnn")
    assert (tmp_path / "zoo" / "digits28-cnn-v1.pt").is_file()
    again = zoo.load("digits28-cnn", retrain=True)
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
        assert torch.equal(v, cached[k]), k


@pytest.mark.parametrize("name", NAMES)
def test_models_plan_for_ckks(zoo, name):
    from veil import models

    entry = zoo.load(name)
    assert models.validate(entry.model, scheme="ckks", input_shape=entry.input_shape) == []
    plan = models.plan(entry.model, entry.input_shape)
    assert plan.output_size == 10

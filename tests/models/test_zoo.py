"""Model zoo: trained once, cached as a state_dict, loaded with weights_only, deterministic."""

from __future__ import annotations

import pytest
import torch

from veil.errors import ConfigurationError


def test_names_and_accuracy(zoo):
    assert zoo.names() == ["digits-cnn", "digits-cnn-fast", "digits-cnn-poly", "digits-logreg",
                           "digits-mlp", "digits-mlp-poly", "digits28-cnn", "digits28-cnn5",
                           "digits28-mlp"]
    for name in zoo.names():
        entry = zoo.load(name)
        assert entry.accuracy > 0.9, (name, entry.accuracy)
        model, x, y = entry
        assert x.shape == (360, *entry.input_shape) and y.shape == (360,)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert not model.training


def test_cache_round_trip_and_corrupt_cache(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path))
    first = zoo.load("digits-logreg")
    path = tmp_path / "zoo" / "digits-logreg-v1.pt"
    assert path.is_file()
    state = torch.load(path, weights_only=True)
    again = zoo.load("digits-logreg")
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, state[k])
    path.write_bytes(b"not a checkpoint")  # ignored: retrained, deterministically
    retrained = zoo.load("digits-logreg")
    for k, v in retrained.model.state_dict().items():
        assert torch.equal(v, first.model.state_dict()[k])
    assert torch.load(path, weights_only=True).keys() == state.keys()


def test_unknown_model(zoo):
    with pytest.raises(ConfigurationError, match="digits-mlp"):
        zoo.load("imagenet-resnet")

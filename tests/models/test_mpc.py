"""MPC inference in real multi-process sessions: zoo models vs plaintext, every layer, roles."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from veil import models, mpc
from veil.errors import ConfigurationError, UnsupportedLayerError
from veil.models.approx import PolyActivation


class LayersNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2, stride=1)
        self.ad = nn.AdaptiveAvgPool2d((2, 2))
        self.fc = nn.Linear(24, 8)
        self.ln = nn.LayerNorm(8)
        self.act = PolyActivation([0.1, 0.5, 0.2])
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.pool(torch.relu(self.bn(self.c1(x))))          # 3x3x3
        y = torch.cat([self.ad(y), self.avg(y)], dim=1)         # 6x2x2
        h = self.ln(self.fc(y.flatten(1)))
        h = torch.sigmoid(h) + torch.tanh(h) + nn.functional.gelu(h) + self.act(h)
        return torch.softmax(self.head(h), dim=-1)


def _layers_net():
    torch.manual_seed(4)  # test-only determinism of layer init
    net = LayersNet()
    with torch.no_grad():
        net.bn.running_mean.fill_(0.1)
        net.bn.running_var.fill_(2.0)
    return net.eval()


def _conv1d_net():
    torch.manual_seed(5)  # test-only determinism of layer init
    return nn.Sequential(nn.Conv1d(2, 3, 3, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(12, 2)).eval()


def _job(party, cases, model_owner, data_owner):
    out = []
    for net, x, shape in cases:  # one session, several inferences
        mine = net if party.rank == model_owner else None
        xs = x if party.rank == data_owner else None
        out.append(models.mpc_forward(party, mine, xs, model_owner=model_owner,
                                      data_owner=data_owner, input_shape=shape))
    return out, party.comm_stats()


@pytest.mark.timeout(900)  # a loaded 2-core CI box; about a minute when idle
def test_zoo_models_and_every_layer_in_one_two_party_session(zoo):
    mlp, cnn = zoo.load("digits-mlp"), zoo.load("digits-cnn")
    layers, conv1d = _layers_net(), _conv1d_net()
    xl, xc = torch.rand(6, 1, 6, 6), torch.randn(3, 2, 9)
    n = 100
    cases = [(mlp.model, mlp.x_test[:n], (64,)), (cnn.model, cnn.x_test[:n], (1, 8, 8)),
             (layers, xl, (1, 6, 6)), (conv1d, xc, (2, 9))]
    results = mpc.run(_job, parties=2, args=(cases, 0, 1), timeout=600)
    (owner_out, stats0), (data_out, stats1) = results
    assert owner_out == [None] * 4  # the model owner learns no output
    assert stats0["bytes_sent"] > 0 and stats1["bytes_sent"] > 0
    with torch.no_grad():
        for (net, x, _), got in zip(cases[:2], data_out[:2]):
            want = net(x)
            agree = (got.argmax(1) == want.argmax(1)).float().mean().item()
            assert agree >= 0.99, agree
            assert (got - want).abs().max() < 0.05
        assert (data_out[2] - layers(xl)).abs().max() < 0.05   # approximations: sigmoid, ...
        assert (data_out[3] - conv1d(xc)).abs().max() < 0.01


def test_three_parties_label_only(zoo):
    entry = zoo.load("digits-mlp")
    x = entry.x_test[:40]
    labels = models.mpc_inference(entry.model, x, parties=3, model_owner=2, data_owner=0,
                                  output="label", timeout=300)
    want = entry.model(x).argmax(1)
    assert labels.shape == (40,)
    assert (labels == want).float().mean() >= 0.97


def test_bad_roles_and_layers_fail_before_any_process_starts():
    net = nn.Sequential(nn.Linear(4, 2))
    x = torch.zeros(2, 4)
    with pytest.raises(ConfigurationError, match="both rank 0"):
        models.mpc_inference(net, x, model_owner=0, data_owner=0)
    with pytest.raises(ConfigurationError, match="data_owner"):
        models.mpc_inference(net, x, data_owner=5)
    with pytest.raises(ConfigurationError, match="input_shape"):
        models.mpc_inference(net, torch.zeros(2, 5))
    with pytest.raises(ConfigurationError, match="NaN"):
        models.mpc_inference(net, torch.full((2, 4), float("nan")))
    with pytest.raises(UnsupportedLayerError, match="ELU"):
        models.mpc_inference(nn.Sequential(nn.Linear(4, 2), nn.ELU()), x)

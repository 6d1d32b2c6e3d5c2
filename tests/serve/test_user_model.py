"""Serving your own torch model: ``models.save`` then ``veil serve --model model.pt``.

The file holds plain data only (architecture JSON, weight tensors, input shape, domain) and is
read with ``torch.load(weights_only=True)``: a file carrying a pickled object is refused without
running anything.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from veil import errors, models


def _net() -> nn.Module:
    gen = torch.Generator().manual_seed(7)  # test-only determinism of the plaintext weights
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
    return net.eval()


def _x(rows: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, rows * 8).reshape(rows, 8)


def test_save_and_load_round_trip(tmp_path) -> None:
    fixed = models.fix(_net())  # ReLU -> polynomial: what CKKS can evaluate
    path = models.save(fixed, tmp_path / "m.pt", input_shape=(8,), domain=(0, 1))
    saved = models.load_saved(path)
    assert saved.input_shape == (8,) and saved.domain == (0.0, 1.0)
    x = torch.tensor(_x(3), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(saved.program.run_plain(x.double()), fixed(x).double(),
                                   atol=1e-5, rtol=1e-5)


def test_save_asks_for_models_fix_on_relu(tmp_path) -> None:
    with pytest.raises(errors.UnsupportedOperationError, match="(?i)relu"):
        models.save(_net(), tmp_path / "m.pt", input_shape=(8,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_refuses_pickled_objects_without_running_them(tmp_path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "veil.model/1", "payload": Evil()}, path)
    with pytest.raises(errors.ConfigurationError, match="not a Veil model file"):
        models.load_saved(path)
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(errors.ConfigurationError, match="not a Veil model file"):
        models.load_saved(path)
    assert not marker.exists()


def test_load_refuses_weights_that_do_not_fit(tmp_path) -> None:
    path = models.save(models.fix(_net()), tmp_path / "m.pt", input_shape=(8,))
    doc = torch.load(path, weights_only=True)
    key = next(iter(doc["weights"]))
    doc["weights"][key] = torch.zeros(2, 2)
    torch.save(doc, path)
    with pytest.raises(errors.ConfigurationError, match="not of shape"):
        models.load_saved(path)


def test_cli_refuses_a_different_input_shape(tmp_path) -> None:
    path = models.save(models.fix(_net()), tmp_path / "m.pt", input_shape=(8,))
    proc = subprocess.run([sys.executable, "-m", "veil.cli", "serve", "--model", str(path),
                           "--input-shape", "1,8"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2 and "differs from the shape (8,)" in proc.stderr, proc
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.timeout(900)
def test_user_model_served_end_to_end(tmp_path, veil_serve) -> None:
    from veil.serve import Client

    fixed = models.fix(_net())
    path = models.save(fixed, tmp_path / "model.pt", input_shape=(8,), domain=(0, 2))
    x = _x(4)
    with torch.no_grad():
        want = fixed(torch.tensor(x, dtype=torch.float32)).double().numpy()
    with veil_serve("--model", str(path), "--domain", "0:1", "--workers", "1",
                    "--deadline", "600") as srv, Client(srv.url, timeout=600) as client:
        described = client.model()
        got = client.predict(x)
        with pytest.raises(errors.ConfigurationError, match=r"\[0, 1\]"):
            client.predict(x * 1.5)  # --domain 0:1 overrides the file's (0, 2)
    assert described["name"] == "model.pt" and described["input_domain"] == [0.0, 1.0]
    assert srv.returncode == 0 and "Traceback" not in srv.output, srv.output
    np.testing.assert_allclose(got, want, atol=1e-3)

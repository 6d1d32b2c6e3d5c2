"""Serving ``veil.models`` networks: a compiled torch model in process, and a zoo model (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from veil import errors


def _tiny_net():
    import torch
    from torch import nn

    torch.manual_seed(0)  # test-only determinism of the plaintext weights
    net = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3))
    return net.eval()


def test_compiled_evaluator_matches_torch_in_process() -> None:
    import torch

    from veil import he
    from veil.serve.evaluator import CompiledEvaluator

    net = _tiny_net()
    ev = CompiledEvaluator("tiny", net, (6,))
    info = ev.info
    assert info.layout == "batched" and info.input_shape == (6,) and info.output_size == 3
    ctx = he.CKKSContext.generate(info.params, galois_keys=info.galois_keys)
    public = he.CKKSContext.load(ctx.public().serialize())
    run = ev.bind(public)
    x = np.linspace(-1, 1, 5 * 6).reshape(5, 6)
    cts = [public.load_tensor(ctx.encrypt(np.ascontiguousarray(x[:, i])).serialize())
           for i in range(6)]
    outs = run(cts, 5, 0)
    got = np.stack([ctx.decrypt(ctx.load_tensor(o.serialize())) for o in outs], axis=1)
    with torch.no_grad():
        want = net(torch.tensor(x, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_compiled_evaluator_refuses_a_context_with_other_parameters() -> None:
    from veil import he
    from veil.serve.evaluator import CompiledEvaluator

    ev = CompiledEvaluator("tiny", _tiny_net(), (6,))
    other = he.CKKSContext.generate(he.CKKSParams.for_depth(1, precision_bits=30),
                                    galois_keys=False)
    with pytest.raises(errors.KeyMismatchError, match="differ"):
        ev.bind(other.public())


def test_server_with_a_compiled_torch_model(tmp_path, running_server) -> None:
    """A CompiledEvaluator object (pickled to the workers) behind a real server and Client."""
    import torch

    from veil.serve import Client, ServerConfig, create_app
    from veil.serve.evaluator import CompiledEvaluator

    net = _tiny_net()
    app = create_app(CompiledEvaluator("tiny", net, (6,)),
                     config=ServerConfig(workers=1, queue_size=1, store_dir=tmp_path))
    x = np.linspace(-2, 2, 7 * 6).reshape(7, 6)
    with running_server(app) as srv, Client(srv.url) as client:
        got = client.predict(x)
        assert client.model()["name"] == "tiny"
    with torch.no_grad():
        want = net(torch.tensor(x, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert len(list(tmp_path.glob("*.ctx"))) == 1  # the persistent store keeps the context


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_zoo_model_served_end_to_end(running_server) -> None:
    """``zoo:digits-mlp-poly`` (depth 4, N=16384): encrypted logits equal the plaintext model's."""
    import torch

    from veil.models import zoo
    from veil.serve import Client, ServerConfig, create_app

    entry = zoo.load("digits-mlp-poly")
    x = entry.x_test[:16].double().numpy().reshape(16, -1)
    app = create_app("zoo:digits-mlp-poly", config=ServerConfig(workers=1, queue_size=2,
                                                                request_deadline_s=600))
    with running_server(app) as srv, Client(srv.url, timeout=600) as client:
        got = client.predict(x)
    with torch.no_grad():
        want = entry.model(entry.x_test[:16]).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-2)
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_single_sample_layout_with_galois_keys(tmp_path, running_server) -> None:
    """``layout="single"``: one row per request, rotations, a context with Galois keys."""
    import torch

    from veil.serve import Client, ServerConfig, create_app
    from veil.serve.evaluator import CompiledEvaluator

    net = _tiny_net()
    ev = CompiledEvaluator("tiny-single", net, (6,), layout="single", domain=(-2.0, 2.0))
    assert ev.info.galois_keys
    app = create_app(ev, config=ServerConfig(workers=1, queue_size=1, store_dir=tmp_path,
                                             request_deadline_s=600))
    x = np.linspace(-2, 2, 2 * 6).reshape(2, 6)
    with running_server(app) as srv, Client(srv.url, timeout=600) as client:
        got = client.predict(x)
        assert client.context.has_galois_keys
    with torch.no_grad():
        want = net(torch.tensor(x, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)

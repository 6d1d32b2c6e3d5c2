"""``veil serve --model SPEC`` (real subprocess) + ``Client(url).predict(x)``: every model, layout.

The encrypted predictions must match the plaintext of the served function (for ReLU zoo models,
the ``models.fix``-ed network the server describes). Fast combinations run by default (the small
batched models and two single-sample ones, which the planner now puts in the packed layout on a
``SlotContext``, plus the packed ``digits-mlp-poly`` and ``digits28-cnn`` checked against the
plan's predicted error); the others are slow.
"""

from __future__ import annotations

import numpy as np
import pytest

from veil.models import zoo

# N = 16384+ rings, dozens of ciphertexts or contexts of hundreds of MB: minutes on a laptop
_SLOW = {"zoo:digits-mlp", "zoo:digits-mlp-poly", "zoo:digits-cnn", "zoo:digits-cnn-poly",
         "zoo:digits-cnn-fast", "zoo:digits-mlp:single", "zoo:digits-mlp-poly:single",
         "zoo:digits-cnn:single", "zoo:digits-cnn-poly:single"}
_SLOW |= {f"zoo:{n}{lay}" for n in zoo.names() if n.startswith("digits28-")
          for lay in ("", ":single")}  # 28x28: batched requests of 784 ciphertexts, 1.3 GB
_SPECS = ["linear:digits"] + [f"zoo:{n}{lay}" for n in zoo.names() for lay in ("", ":single")]
# CNNs in the generic single layout need Galois keys in big rings: contexts above the default
# 256 MiB limit (digits-cnn-poly: N = 16384, 9 primes; digits-cnn: N = 32768, about 1.5 GB)
_EXTRA = {"zoo:digits-cnn-poly:single": ["--max-context-mb", "1024"],
          "zoo:digits-cnn:single": ["--max-context-mb", "4096", "--body-timeout", "1800"]}


def _served_function(spec: str):
    """The plaintext function the server evaluates, as numpy rows -> outputs."""
    import torch

    from veil.serve.evaluator import load_evaluator

    ev = load_evaluator(spec)
    if spec == "linear:digits":
        return lambda x: x @ ev.weight + ev.bias, ev.info.input_shape

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.tensor(x, dtype=torch.float32).reshape(len(x), *ev.input_shape)
            return ev.net(t).double().numpy()

    return run, ev.info.input_shape


@pytest.mark.timeout(3600)
@pytest.mark.parametrize(
    "spec", [pytest.param(s, marks=pytest.mark.slow) if s in _SLOW else s for s in _SPECS])
def test_served_model_predicts_like_plaintext(spec: str, veil_serve) -> None:
    from veil.serve import Client

    fn, shape = _served_function(spec)
    single = spec.endswith(":single")
    n = 2 if single else 5
    x = zoo.digits(tuple(shape))[2][:n].reshape(n, -1).double().numpy()  # test images in [0, 1]
    want = fn(x)
    with veil_serve("--model", spec, "--workers", "1", "--deadline", "1800",
                    *_EXTRA.get(spec, [])) as srv, \
            Client(srv.url, timeout=1800, upload_timeout=1800) as client:
        got = client.predict(x.reshape(len(x), *shape))
        assert client.model()["plan"]["layout"] == ("single" if single else "batched")
    assert srv.returncode == 0 and "Traceback" not in srv.output, srv.output
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, atol=0.05 * max(1.0, float(np.abs(want).max())))


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("spec", ["zoo:digits-mlp-poly:single", "zoo:digits28-cnn:single"])
def test_packed_single_layout_within_the_predicted_error(spec: str, veil_serve) -> None:
    """``zoo:NAME:single`` serves the packed plan: the client makes a SlotContext with exactly
    the plan's rotations, and the logits are within the plan's predicted error of the float64
    plaintext model (``GET /model`` says which layout was chosen, why, and that error)."""
    import copy

    import torch

    from veil.he.lattice.slots import SlotContext
    from veil.serve import Client
    from veil.serve.evaluator import load_evaluator

    ev = load_evaluator(spec)
    assert ev.plan.packed is not None and ev.plan.predicted_error is not None
    shape = ev.info.input_shape
    x = zoo.digits(tuple(shape))[2][:2].reshape(2, -1).double().numpy()
    with torch.no_grad():
        want = copy.deepcopy(ev.net).double()(torch.as_tensor(x).reshape(2, *shape)).numpy()
    with veil_serve("--model", spec, "--workers", "1") as srv, \
            Client(srv.url, timeout=600, upload_timeout=600) as client:
        got = client.predict(x.reshape(2, *shape))
        described, ctx = client.model(), client.context
    assert srv.returncode == 0 and "Traceback" not in srv.output, srv.output
    choice = described["layout_choice"]
    assert (choice["layout"], choice["encoding"], choice["context"]) == (
        "single", "packed", "SlotContext")
    assert choice["note"] == ev.plan.note and "packed" in choice["note"]
    assert choice["predicted_max_error"] == pytest.approx(ev.plan.predicted_error)
    assert isinstance(ctx, SlotContext) and ctx.rotations == ev.info.rotations
    assert got.shape == want.shape == (2, 10)
    assert float(np.abs(got - want).max()) <= ev.plan.predicted_error
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def test_client_refuses_or_clips_inputs_outside_the_domain(digits_server, digits_data) -> None:
    """Raw digits pixels (0..16) into a model declared on [0, 1] gave silent garbage."""
    from veil import errors
    from veil.serve import Client

    x = digits_data[0][:4] * 16.0  # raw sklearn digits: 0..16
    with Client(digits_server.url) as client:
        assert client.model()["input_domain"] == [0.0, 1.0]
        with pytest.raises(errors.ConfigurationError, match=r"\[0, 16\].*\[0, 1\]"):
            client.predict(x)
        with pytest.warns(UserWarning, match="clipping"):
            clipped = client.predict(x, clip=True)
        np.testing.assert_allclose(clipped, client.predict(np.clip(x, 0, 1)), atol=1e-3)
        with pytest.raises(errors.ConfigurationError, match="no rows"):
            client.predict(np.zeros((0, 64)))


def test_docs_page_works_offline(digits_server) -> None:
    page = digits_server.get("/docs")
    assert page.status_code == 200 and "/predict" in page.text and "/openapi.json" in page.text
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text
    assert "/predict" in digits_server.get("/openapi.json").json()["paths"]
    assert digits_server.get("/redoc").status_code == 404

"""The packed single-sample layout behind the server: a ``SlotContext`` with the plan's rotations.

A tiny net (6 -> 4 -> x**2 -> 3, N = 8192, about 14 MB of public context) served in process; the
zoo models through the real ``veil serve`` command are in ``test_end_to_end.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from veil import errors


def _net():
    import torch
    from torch import nn

    from veil.models.approx import PolyActivation

    torch.manual_seed(0)  # test-only determinism of the plaintext weights
    return nn.Sequential(nn.Linear(6, 4), PolyActivation((0.0, 0.0, 1.0)),
                         nn.Linear(4, 3)).eval()


@pytest.fixture(scope="module")
def packed_model():
    from veil.serve.evaluator import CompiledEvaluator

    ev = CompiledEvaluator("tiny-packed", _net(), (6,), layout="single", domain=(-1.0, 1.0))
    assert ev.plan.packed is not None and ev.info.packed
    return ev


@pytest.fixture(scope="module")
def packed_server(packed_model, running_server, tmp_path_factory):
    from veil.serve import ServerConfig, create_app

    cfg = ServerConfig(workers=1, queue_size=2, store_dir=tmp_path_factory.mktemp("store"))
    with running_server(create_app(packed_model, config=cfg)) as srv:
        yield srv


def _reference(x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return copy.deepcopy(_net()).double()(torch.as_tensor(x)).numpy()


def test_packed_plan_served_in_process(packed_model, packed_server) -> None:
    from veil.he.lattice.slots import SlotContext
    from veil.serve import Client

    x = np.linspace(-1, 1, 3 * 6).reshape(3, 6)
    with Client(packed_server.url) as client:
        got = client.predict(x)
        described = client.model()
        ctx = client.context
    info = packed_model.info
    assert isinstance(ctx, SlotContext) and ctx.rotations == info.rotations
    assert described["input_domain"] == [-1.0, 1.0]
    assert described["plan"]["params"]["scheme"] == "ckks-slots"
    choice = described["layout_choice"]
    assert choice["layout"] == "single" and choice["encoding"] == "packed"
    assert choice["context"] == "SlotContext" and choice["note"] == packed_model.plan.note
    assert choice["predicted_max_error"] == packed_model.plan.predicted_error
    assert got.shape == (3, 3)
    assert np.abs(got - _reference(x)).max() <= packed_model.plan.predicted_error
    stored = list(packed_server.state.store.directory.glob("*.ctx"))
    assert len(stored) == 1 and stored[0].stat().st_size <= packed_server.state.context_limit


def test_client_refuses_a_context_of_the_wrong_kind(packed_model, packed_server,
                                                    digits_server, client_ctx) -> None:
    from veil.he.lattice.slots import SlotContext
    from veil.serve import Client

    with Client(packed_server.url, context=client_ctx) as client, \
            pytest.raises(errors.ConfigurationError, match=r"packed.*SlotContext.*CKKSContext"):
        client.predict(np.zeros((1, 6)))
    slot_ctx = SlotContext.generate(packed_model.info.params, packed_model.info.rotations)
    with Client(digits_server.url, context=slot_ctx) as client, \
            pytest.raises(errors.ConfigurationError, match=r"CKKSContext.*SlotContext"):
        client.model()
    fewer = SlotContext.generate(packed_model.info.params, packed_model.info.rotations[1:])
    with Client(packed_server.url, context=fewer) as client, \
            pytest.raises(errors.KeyMismatchError, match="rotations"):
        client.model()


def test_server_checks_uploads_against_the_packed_plan(packed_model, packed_server,
                                                       client_ctx) -> None:
    from veil.he.lattice.slots import SlotContext

    info = packed_model.info
    other = SlotContext.generate(info.params, info.rotations[:-1])
    secret = SlotContext.generate(info.params, info.rotations)
    cases = [(client_ctx.public().serialize(), "SlotContext"),
             (other.public().serialize(), "exactly"),
             (secret.serialize(include_secret_key=True, expose_secret=True), "SECRET KEY")]
    for blob, message in cases:
        resp = packed_server.post("/contexts", blob)
        assert resp.status_code == 422, resp.text
        assert message in resp.json()["error"]["message"]
    assert packed_server.post("/contexts", secret.public().serialize()).status_code == 201


def test_public_plan_round_trips_and_rejects_a_malformed_packed_encoding(packed_model) -> None:
    from veil.serve.plans import public_plan_from_json

    plan = packed_model.info.plan
    data = plan.to_dict()
    assert public_plan_from_json(data) == plan
    enc = data["input_encoding"]
    bad_encodings = [{**enc, "rotations": ["1"]}, {**enc, "rotations": [True]},
                     {**enc, "slots": 2048}, {**enc, "domain": [1.0, 0.0]},
                     {**enc, "extra": 1}, {**enc, "gather": [[0, "x"]]},
                     {**enc, "ciphertexts": 0}]
    # a gather table is required in the gather modes and refused in the client-baby mode
    bad_encodings.append({k: v for k, v in enc.items() if k != "gather"}
                         if "gather" in enc else {**enc, "gather": [[0]]})
    for bad in bad_encodings:
        with pytest.raises(errors.SerializationError, match="packed"):
            public_plan_from_json({**data, "input_encoding": bad})
    for bad in ({**data, "layout": "batched"},
                {**data, "params": {**data["params"], "scheme": "ckks"}},
                {**data, "input_encoding": {"kind": "vector"}}):
        with pytest.raises(errors.SerializationError):
            public_plan_from_json(bad)
    with pytest.raises(errors.SerializationError, match="version"):
        public_plan_from_json({**data, "version": 99})


def test_slot_params_from_a_server_cannot_lower_security() -> None:
    from veil.he.lattice.slotparams import SlotParams
    from veil.serve.evaluator import params_from_description

    good = {"scheme": "ckks-slots", "poly_modulus_degree": 8192,
            "coeff_mod_bit_sizes": [53, 45, 45, 45, 30], "scale_bits": 45,
            "output_scale_bits": 41}
    assert params_from_description(good) == SlotParams(8192, (53, 45, 45, 45, 30), 45, 41)
    weak = {**good, "poly_modulus_degree": 4096}
    with pytest.raises(errors.InsecureParametersError):
        params_from_description(weak)
    assert params_from_description(weak, allow_insecure=True).allow_insecure
    for bad in ({**good, "allow_insecure": True}, {**good, "scale_bits": "45"},
                {k: v for k, v in good.items() if k != "output_scale_bits"},
                {**good, "output_scale_bits": True}):
        with pytest.raises(errors.SerializationError):
            params_from_description(bad)


def test_a_model_file_with_single_plans_the_packed_layout_for_its_domain(tmp_path) -> None:
    """``veil serve --model PATH:single``: the packed plan's error bound holds for the file's
    declared domain, which GET /model publishes (and clients enforce)."""
    from veil.models import zoo
    from veil.serve.evaluator import load_evaluator

    path = zoo.save(_net(), tmp_path / "tiny.pt", input_shape=(6,), domain=(-2.0, 2.0))
    ev = load_evaluator(f"{path}:single")
    assert ev.info.packed and ev.info.domain == (-2.0, 2.0)
    assert ev.plan.input_encoding["domain"] == [-2.0, 2.0]
    assert ev.info.to_json()["layout_choice"]["encoding"] == "packed"
    assert not load_evaluator(str(path)).info.packed  # the batched layout by default

"""veil.mpc.device.resolve: cuda when usable, else cpu; the same job on both devices."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

from veil.errors import ConfigurationError
from veil.mpc import device

_spec = importlib.util.spec_from_file_location(
    "_rng_harness", pathlib.Path(__file__).with_name("_rng_harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

HAS_GPU = device.cuda_usable()


def test_auto_matches_the_machine() -> None:
    expected = "cuda" if HAS_GPU else "cpu"
    assert device.resolve().type == expected
    assert device.resolve("auto").type == expected
    assert device.resolve(" AUTO ").type == expected


@pytest.mark.parametrize("spec", ["cpu", "CPU", torch.device("cpu")])
def test_cpu_always_resolves(spec) -> None:
    assert device.resolve(spec) == torch.device("cpu")


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU error")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_gpu_is_a_configuration_error(spec) -> None:
    with pytest.raises(ConfigurationError, match="no usable CUDA GPU.*device='auto'"):
        device.resolve(spec)


@pytest.mark.parametrize("spec", ["GPU", "", "cuda:x", "mps", "meta", 0, None, 1.5])
def test_bad_specs_are_configuration_errors(spec) -> None:
    with pytest.raises(ConfigurationError):
        device.resolve(spec)


# ------------------------------------------------------------------------ on a GPU machine


@pytest.mark.gpu
def test_gpu_auto_and_indices() -> None:
    count = torch.cuda.device_count()
    assert device.resolve("auto").type == "cuda"
    assert device.resolve("cuda", rank=count + 1) == torch.device("cuda", (count + 1) % count)
    with pytest.raises(ConfigurationError, match="does not exist"):
        device.resolve(f"cuda:{count}")


def _same_job(crypten, rank, spec):
    from veil.mpc import device as dev

    d = dev.resolve(spec, rank=rank)
    g = torch.Generator().manual_seed(7)  # test data only, identical in every party
    a = torch.randn(64, 64, generator=g)
    b = torch.randn(64, 64, generator=g)
    x = crypten.cryptensor(a, src=0, device=d)
    y = crypten.cryptensor(b, src=1, device=d)
    out = {"device": str(x.device), "mul": (x * y).get_plain_text().cpu(),
           "matmul": (x @ y).get_plain_text().cpu(), "relu": x.relu().get_plain_text().cpu()}
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["TTP", "TFP"])
def test_same_job_runs_on_cpu_and_gpu(provider: str) -> None:
    cpu = harness.run_parties(_same_job, 2, args=("cpu",), provider=provider)
    gpu = harness.run_parties(_same_job, 2, args=("cuda",), provider=provider)
    assert cpu[0]["device"] == "cpu" and gpu[0]["device"].startswith("cuda")
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
    for res in (cpu[0], gpu[0]):
        torch.testing.assert_close(res["mul"], a * b, atol=0.02, rtol=0.01)
        torch.testing.assert_close(res["matmul"], a @ b, atol=0.1, rtol=0.01)
        torch.testing.assert_close(res["relu"], a.relu(), atol=0.01, rtol=0)

"""veil.mpc._crypten.PATCHES: one ordered table of every patch, each applied once, none skipped."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from veil.errors import BackendUnavailableError
from veil.mpc._crypten import PATCHES, install
from veil.mpc._crypten.patches import STAGES, resolve

# The patches run in a fresh interpreter: installing them here would patch the CrypTen that the
# other tests fork their (sometimes deliberately unpatched) parties from.
_TWICE = """
import json
from veil.mpc._crypten import PATCHES, applied, import_crypten, install
from veil.mpc._crypten.patches import resolve
import inspect
crypten = import_crypten()
install(crypten)
install(crypten)
out = {}
for p in PATCHES:
    if p.stage == "scoped":
        continue
    count, value = applied()[p.name]
    owner, attr = resolve(crypten, p.target)
    out[p.name] = [count, inspect.getattr_static(owner, attr) is value]
print(json.dumps(out))
"""

_MISSING = """
import json
from veil.errors import BackendUnavailableError
from veil.mpc._crypten import applied, import_crypten, install
crypten = import_crypten()
del crypten.mpc.provider.ttp_provider.TTPServer._setup_generators
try:
    install(crypten)
except BackendUnavailableError as exc:
    print(json.dumps({"error": str(exc), "counts": {k: v[0] for k, v in applied().items()}}))
"""


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_table_lists_every_patch_point_once_in_order() -> None:
    names = [p.name for p in PATCHES]
    assert len(names) == len(set(names))
    assert {p.stage for p in PATCHES} <= set(STAGES)
    for p in PATCHES:
        assert p.target and p.replaces and p.why, p
        assert (p.make is None) == (p.stage == "scoped"), p
    targets = {p.target for p in PATCHES}
    for expected in (
        "crypten.encoder.FixedPointEncoder.decode",
        "crypten.communicator.DistributedCommunicator.send_obj",
        "crypten.common.serial.restricted_loads",
        "crypten.common.rng.generate_random_ring_element",
        "crypten.mpc.provider.ttp_provider.generate_kbit_random_tensor",
        "crypten.mpc.provider.ttp_provider.TTPServer._setup_generators",
        "crypten._setup_prng",
        "crypten.manual_seed",
        "crypten.communicator.DistributedCommunicator.send",
        "crypten.mpc.MPCTensor.mul",
        "crypten.mpc.MPCTensor.__mul__",
        "torch.distributed.init_process_group",
        "multiprocessing.spawn.get_preparation_data",
    ):
        assert expected in targets, expected
    # the order the party processes always used: messages, then the CSPRNG, then accounting
    first = {}
    for i, p in enumerate(PATCHES):
        first.setdefault(p.name.split(".")[0], i)
    assert first["fixed-point-decode"] < first["messages"] < first["rng"] < first["accounting"]


def test_two_installs_apply_each_patch_point_exactly_once() -> None:
    out = _run(_TWICE)
    expected = {p.name for p in PATCHES if p.stage != "scoped"}
    assert set(out) == expected
    assert {name: tuple(v) for name, v in out.items()} == {name: (1, True) for name in expected}


def test_a_missing_target_is_an_error_and_nothing_is_patched() -> None:
    out = _run(_MISSING)
    assert "TTPServer._setup_generators" in out["error"], out
    session = {p.name for p in PATCHES if p.stage == "session"}
    assert all(out["counts"][name] == 0 for name in session), out["counts"]


def test_a_crypten_without_the_patched_parts_is_refused() -> None:
    with pytest.raises(BackendUnavailableError, match="FixedPointEncoder.decode is missing"):
        install(types.SimpleNamespace())
    with pytest.raises(BackendUnavailableError, match="cannot be imported"):
        resolve(None, "no_such_module_of_veil.thing")

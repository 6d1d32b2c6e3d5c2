"""veil.bench: workloads against numpy, records, table/JSON/PNG output, CLI validation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from veil.bench import peers, report
from veil.bench import workloads as wl
from veil.bench.schemes import run_schemes
from veil.errors import ConfigurationError


@pytest.mark.parametrize("op", wl.OPS)
def test_workload_oracles(op: str) -> None:
    w = wl.make(op, 17)
    x = w.x
    expected = {
        "add": lambda: x + w.y, "mul": lambda: x * w.y, "sum": lambda: np.sum(x),
        "mean": lambda: np.mean(x), "dot": lambda: float(np.dot(x, w.w)),
        "vecmat": lambda: np.einsum("i,ij->j", x, w.W),
        "logreg": lambda: np.einsum("sf,kf->sk", x, w.W) + w.b,
    }[op]()
    np.testing.assert_allclose(w.plain(), expected, rtol=1e-12, atol=1e-12)
    assert wl.make(op, 17).x.tobytes() == x.tobytes()   # same inputs for every scheme


def test_schemes_agree_with_plaintext_and_report(tmp_path) -> None:
    records = run_schemes(["add", "sum", "dot"], [64], ["plain", "ckks", "bfv"], repeats=2)
    assert {(r.scheme, r.op) for r in records} == {
        (s, o) for s in ("plain", "ckks", "bfv") for o in ("add", "sum", "dot")}
    for r in records:
        assert len(r.times_s) == 2 and r.median_s > 0
        assert r.max_error < (1e-3 if r.scheme == "ckks" else 1e-9), r
        if r.scheme != "plain":
            assert r.security_bits == 128 and r.bytes > 10_000    # ciphertexts are large
    report.write_json(records, tmp_path / "out.json", command="schemes")
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["environment"]["machine"]["cores"] >= 1
    assert doc["environment"]["versions"]["tenseal"]
    assert len(doc["records"]) == len(records)
    report.plot(records, tmp_path / "out.png", "t")
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown op"):
        run_schemes(["nope"], [10], ["plain"])
    with pytest.raises(ConfigurationError, match="unknown scheme"):
        run_schemes(["add"], [10], ["rot13"])
    with pytest.raises(ConfigurationError, match="sizes"):
        run_schemes(["add"], [0], ["plain"])


def test_peer_rows_plot(tmp_path) -> None:
    rows = [peers.PeerRow("t", "p", 10, 0.5, 1.0), peers.PeerRow("u", "q", 10, 2.0, 1.0)]
    assert [r.ratio for r in rows] == [2.0, 0.5]
    peers.plot(rows, tmp_path / "p.png")
    peers.write_json(rows, tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())["median_ratio"] == 1.25


@pytest.mark.parametrize("args", [["--sizes", "abc"], ["--sizes", "0"], ["--repeats", "0"],
                                  ["--sizes", "inf"], ["--sizes", "nan"], ["--ops", ","]])
def test_cli_rejects_bad_flags(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "veil.cli", "bench", "schemes", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["schemes", "peers"])
@pytest.mark.parametrize(("flag", "where", "needle"), [
    ("--json", "MISSING/x.json", "does not exist"),
    ("--plot", "MISSING/x.png", "does not exist"),
    ("--json", "DIR", "is a directory"),
])
def test_output_paths_are_checked_before_the_run(tmp_path, command: str, flag: str,
                                                 where: str, needle: str) -> None:
    where = str(tmp_path) if where == "DIR" else where.replace("MISSING", str(tmp_path / "no"))
    # sizes big enough that a run would take minutes: the refusal must come first
    size = ["--sizes", "1e6", "--schemes", "paillier"] if command == "schemes" else [
        "--size", "1e6"]
    proc = subprocess.run([sys.executable, "-m", "veil.cli", "bench", command, *size, flag,
                           where], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and flag in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1


def test_raw_crypten_peer_does_not_warn_about_double_initialisation() -> None:
    code = ("from veil.bench import peers\n"
            "print(sorted(peers._raw_crypten_times(4, 1, 2)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "['lt', 'mul']" in proc.stdout
    assert "already initialized" not in proc.stderr

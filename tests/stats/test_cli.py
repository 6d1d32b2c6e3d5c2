"""``veil stats`` and ``veil audit verify`` end to end (subprocesses, like a user)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def _veil(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "veil.cli", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})


def _csvs(tmp_path: Path, parties: int = 3) -> list[str]:
    rng = np.random.default_rng(5)
    paths = []
    for i in range(parties):
        frame = pd.DataFrame({"age": rng.uniform(20, 80, 30), "bmi": rng.normal(26, 4, 30),
                              "site": [i] * 30})
        path = tmp_path / f"site{i}.csv"
        frame.to_csv(path, index=False)
        paths.append(str(path))
    return paths


def _expected(paths: list[str]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p) for p in paths])


@pytest.mark.parametrize("backend", ["ckks", pytest.param("mpc", marks=pytest.mark.slow)])
def test_stats_command_prints_the_joint_answer(tmp_path: Path, backend: str) -> None:
    paths = _csvs(tmp_path)
    args = [a for p in paths for a in ("--data", p)]
    audit = tmp_path / "audit.jsonl"
    proc = _veil("stats", *args, "--columns", "age,bmi", "--stats", "count,mean,corr",
                 "--backend", backend, "--audit", str(audit))
    assert proc.returncode == 0, proc.stderr
    allx = _expected(paths)
    assert "90" in proc.stdout
    assert f"{allx['age'].mean():.6g}"[:5] in proc.stdout
    assert "correlation" in proc.stdout
    entry = json.loads(audit.read_text().splitlines()[0])
    assert entry["backend"] == backend and entry["rows"] == 90 and entry["parties"] == 3


def test_stats_command_reports_bad_input_cleanly(tmp_path: Path) -> None:
    paths = _csvs(tmp_path, 2)
    proc = _veil("stats", "--data", paths[0], "--data", paths[1], "--columns", "age,weight",
                 "--backend", "ckks")
    assert proc.returncode == 2
    assert "party 0" in proc.stderr and "'weight'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _veil("stats", "--data", paths[0], "--data", paths[1], "--columns", "age",
                 "--stats", "median", "--backend", "paillier")
    assert proc.returncode == 1 and "backend='mpc'" in proc.stderr


def test_audit_verify_command_detects_an_edit(tmp_path: Path) -> None:
    from veil.privacy import AuditLog

    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(3):
        log.append({"statistic": ["mean"], "rows": 100 + i, "backend": "mpc", "parties": 3,
                    "epsilon": None})
    ok = _veil("audit", "verify", str(path))
    assert ok.returncode == 0 and "3 entries" in ok.stdout
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"rows":101', '"rows":11')
    path.write_text("\n".join(lines) + "\n")
    bad = _veil("audit", "verify", str(path))
    assert bad.returncode == 1 and "line 2" in bad.stdout

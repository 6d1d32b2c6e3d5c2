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
    assert proc.returncode == 1 and "--backend mpc" in proc.stderr  # the flag, not the API


def test_messages_name_the_flags_not_the_api_parameters(tmp_path: Path) -> None:
    paths = _csvs(tmp_path, 2)
    base = ("stats", "--data", paths[0], "--data", paths[1], "--columns", "age")
    proc = _veil(*base, "--stats", "mean", "--epsilon", "1")
    assert proc.returncode == 2 and "--bounds LOW:HIGH" in proc.stderr
    proc = _veil(*base, "--stats", "mean", "--min-cohort", "61")
    assert proc.returncode == 1 and "lower --min-cohort" in proc.stderr
    for api in ("bounds=", "min_cohort", "backend="):
        assert api not in proc.stderr


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


def test_stats_help_lists_every_statistic_and_alias() -> None:
    from veil.cli.stats import ALIASES, LINEAR_STATS, ORDER_STATS
    from veil.protocols.stats.spec import SUPPORT

    assert set(LINEAR_STATS + ORDER_STATS) == set(SUPPORT)
    assert set(ALIASES.values()) <= set(SUPPORT)
    proc = subprocess.run([sys.executable, "-m", "veil.cli", "stats", "--help"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    words = set(proc.stdout.replace(",", " ").replace("(", " ").replace(")", " ")
                .replace(".", " ").split())
    assert set(SUPPORT) <= words and set(ALIASES) <= words
    for flag in ("--quantiles", "--paillier-bits", "--delimiter", "--iterations",
                 "--dataset-name", "--audit-key-file"):
        assert flag in proc.stdout


def _result(values: dict, columns=("age", "bmi"), epsilon=None):
    from veil.stats.joint import JointResult

    return JointResult(values, "mpc", 3, tuple(columns), 1.5, 1234, epsilon=epsilon)


def _render(result, **kw) -> str:
    import io

    from rich.console import Console

    from veil.cli.stats import render

    out = io.StringIO()
    render(result, Console(file=out, width=120, force_terminal=False), **kw)
    return out.getvalue()


def test_render_prints_the_title_on_one_line_and_no_empty_table() -> None:
    text = _render(_result({"quantiles": np.array([[30.0, 45.0, 60.0], [22.0, 25.0, 28.0]])},
                           epsilon=1.0))
    assert "Veil joint statistics — 3 parties, backend mpc, ε = 1" in text.splitlines()[0]
    assert "┃ statistic" not in text  # no empty main table for a quantile-only run
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "%" in line}
    assert list(rows) == ["25%", "50%", "75%"]
    assert "45" in rows["50%"] and "25" in rows["50%"]


def test_render_labels_histogram_rows_by_their_edges() -> None:
    counts = np.array([[0.0, 69.0, 21.0], [2.0, 88.0, 0.0]])
    text = _render(_result({"histogram": counts}), bins=[0.0, 18.0, 65.0, 120.0])
    labels = [line.split("│")[1].strip() for line in text.splitlines()
              if line.startswith("│ [")]
    assert labels == ["[0, 18)", "[18, 65)", "[65, 120]"]
    assert "bin1" not in text


def test_stats_options_reach_the_api(tmp_path: Path, monkeypatch, capsys) -> None:
    from veil import stats as vstats
    from veil.cli import main

    paths = _csvs(tmp_path, 2)
    semi = []
    for p in paths:
        semi.append(tmp_path / (Path(p).stem + ".semi.csv"))
        pd.read_csv(p).to_csv(semi[-1], sep=";", index=False)
    seen: dict = {}

    def fake_joint(datasets, stats, **kwargs):
        seen.update(kwargs, datasets=datasets, stats=stats)
        return _result({"count": 60})

    monkeypatch.setattr(vstats, "joint", fake_joint)
    code = main(["stats", "--data", str(semi[0]), "--data", str(semi[1]), "--columns", "age",
                 "--stats", "logit,quartiles", "--iterations", "100", "--quantiles", "10",
                 "--paillier-bits", "2048", "--allow-insecure", "--delimiter", ";",
                 "--dataset-name", "north", "--dataset-name", "south"])
    assert code == 0, capsys.readouterr()
    assert seen["stats"] == ["logistic_regression", "quantiles"]
    assert seen["iterations"] == 100 and seen["quantiles_n"] == 10
    assert seen["paillier_bits"] == 2048 and seen["allow_insecure"] is True
    assert seen["dataset_names"] == ["north", "south"]
    assert [list(d.columns) for d in seen["datasets"]] == [["age", "bmi", "site"]] * 2


@pytest.mark.parametrize(("extra", "needle"), [
    (["--dataset-name", "only-one"], "one --dataset-name per --data"),
    (["--dataset-name", "a", "--dataset-name", "a"], "distinct"),
    (["--audit-key-file", "k"], "--audit-key-file needs --audit"),
    (["--delimiter", ";;"], "one character"),
    (["--bins", "0,x"], "--bins"),
    (["--audit", "MISSING/a.jsonl"], "does not exist"),
    (["--ledger", "MISSING/l.jsonl", "--dataset-name", "a", "--dataset-name", "b"],
     "does not exist"),
    (["--ledger", "ledger.jsonl", "--epsilon", "1", "--bounds", "0:100"], "--dataset-name"),
])
def test_stats_refuses_bad_options_before_running(tmp_path: Path, extra, needle) -> None:
    paths = _csvs(tmp_path, 2)
    extra = [a.replace("MISSING", str(tmp_path / "no")) for a in extra]
    extra = [str(tmp_path / a) if a == "ledger.jsonl" else a for a in extra]
    proc = _veil("stats", "--data", paths[0], "--data", paths[1], "--columns", "age",
                 "--backend", "ckks", *extra)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_stats_with_a_delimiter_and_a_small_paillier_key(tmp_path: Path) -> None:
    paths = _csvs(tmp_path, 2)
    semi = []
    for p in paths:
        semi.append(str(tmp_path / (Path(p).stem + ".semi.csv")))
        pd.read_csv(p).to_csv(semi[-1], sep=";", index=False)
    proc = _veil("stats", "--data", semi[0], "--data", semi[1], "--columns", "age",
                 "--stats", "mean", "--backend", "paillier", "--paillier-bits", "1024",
                 "--allow-insecure", "--delimiter", ";")
    assert proc.returncode == 0, proc.stderr
    assert f"{_expected(paths)['age'].mean():.6g}"[:5] in proc.stdout
    refused = _veil("stats", "--data", semi[0], "--data", semi[1], "--columns", "age",
                    "--stats", "mean", "--backend", "paillier", "--paillier-bits", "1024",
                    "--delimiter", ";")
    assert refused.returncode == 2 and "--allow-insecure" in refused.stderr
    assert "--paillier-bits 3072" in refused.stderr  # the flags, not the API's names


def test_keyed_audit_from_the_command_line(tmp_path: Path) -> None:
    paths = _csvs(tmp_path, 2)
    key, log = tmp_path / "audit.key", tmp_path / "audit.jsonl"
    key.write_bytes(os.urandom(32))
    for _ in range(2):
        proc = _veil("stats", "--data", paths[0], "--data", paths[1], "--columns", "age",
                     "--backend", "ckks", "--audit", str(log), "--audit-key-file", str(key))
        assert proc.returncode == 0, proc.stderr
    ok = _veil("audit", "verify", str(log), "--key-file", str(key))
    assert ok.returncode == 0 and "2 entries" in ok.stdout and "HMAC-keyed" in ok.stdout
    unkeyed = _veil("audit", "verify", str(log))
    assert unkeyed.returncode == 1 and "--key-file" in unkeyed.stdout
    # cut the last entry and delete the anchor: must fail with the key (it passed before)
    log.write_text(log.read_text().splitlines(keepends=True)[0])
    log.with_name(log.name + ".head").unlink()
    bad = _veil("audit", "verify", str(log), "--key-file", str(key))
    assert bad.returncode == 1 and "anchor" in bad.stdout
    # and the next release refuses the log before computing anything
    again = _veil("stats", "--data", paths[0], "--data", paths[1], "--columns", "age",
                  "--backend", "ckks", "--audit", str(log), "--audit-key-file", str(key))
    assert again.returncode == 2 and "nothing was appended" in again.stderr
    assert len(log.read_text().splitlines()) == 1


def test_unkeyed_audit_verify_says_what_it_proves(tmp_path: Path) -> None:
    from veil.privacy import AuditLog

    path = tmp_path / "audit.jsonl"
    AuditLog(path).append({"statistic": ["mean"], "rows": 100})
    ok = _veil("audit", "verify", str(path))
    assert ok.returncode == 0 and "internally consistent" in ok.stdout
    assert len(ok.stdout.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "needle"), [
    (["audit", "verify", "."], "not a regular file"),
    (["audit", "verify", "LOG", "--key-file", "missing"], "--key-file missing: no such file"),
    (["audit", "verify", "LOG", "--key-file", "SHORTKEY"], "at least 16"),
    (["audit", "verify", "LOG", "--head", "xyz"], "64 hex digits"),
])
def test_audit_verify_user_errors_are_one_line(tmp_path: Path, args, needle) -> None:
    from veil.privacy import AuditLog

    log = tmp_path / "a.jsonl"
    AuditLog(log).append({"rows": 1})
    (tmp_path / "short.key").write_bytes(b"abc")
    args = [str(log) if a == "LOG" else str(tmp_path / "short.key") if a == "SHORTKEY" else a
            for a in args]
    proc = subprocess.run([sys.executable, "-m", "veil.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1


def test_render_reports_a_logistic_fit_that_did_not_converge() -> None:
    from veil.protocols.stats.spec import Regression

    fit = Regression(np.array([0.43]), -10.8, ("bmi",), iterations=30, converged=False)
    text = _render(_result({"logistic_regression": fit}, columns=("bmi", "sick")))
    assert "(converged)" in text and "False" in text
    assert "did not converge in 30 iterations; raise --iterations" in text


def test_the_ledger_charges_the_declared_names_whatever_the_path_spelling(
        tmp_path: Path) -> None:
    paths = _csvs(tmp_path, 2)
    ledger = tmp_path / "ledger.jsonl"
    common = ["--columns", "age", "--stats", "mean", "--backend", "ckks", "--epsilon", "1",
              "--bounds", "0:100", "--ledger", str(ledger), "--budget", "1.5",
              "--dataset-name", "north", "--dataset-name", "south"]
    first = subprocess.run([sys.executable, "-m", "veil.cli", "stats", "--data",
                            Path(paths[0]).name, "--data", Path(paths[1]).name, *common],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = _veil("stats", "--data", paths[0], "--data", paths[1], *common)  # absolute paths
    assert again.returncode == 1 and "PrivacyBudgetExceeded" in again.stderr
    assert "north" in again.stderr or "south" in again.stderr


def test_stats_command_writes_files_and_json(tmp_path: Path) -> None:
    """Parquet in; --out .csv/.parquet/.json and --json out; the numbers are the pooled ones."""
    paths = _csvs(tmp_path, 2)
    pq = tmp_path / "site1.parquet"
    pd.read_csv(paths[1]).to_parquet(pq, index=False)
    outs = [tmp_path / "r.csv", tmp_path / "r.parquet", tmp_path / "r.json"]
    proc = _veil("stats", "--data", paths[0], "--data", str(pq), "--columns", "age,bmi",
                 "--stats", "count,mean,corr", "--backend", "ckks", "--json",
                 *[a for p in outs for a in ("--out", str(p))])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # stdout is the JSON document and nothing else
    pooled = _expected(paths)
    assert doc["statistics"]["count"] == 60 and doc["columns"] == ["age", "bmi"]
    assert doc["statistics"]["mean"]["age"] == pytest.approx(pooled["age"].mean(), rel=1e-4)
    assert doc["statistics"]["correlation"]["age"]["bmi"] == pytest.approx(
        pooled[["age", "bmi"]].corr().loc["age", "bmi"], abs=1e-3)
    assert "wrote" in proc.stderr and str(outs[0]) in proc.stderr
    tidy = pd.read_csv(outs[0])
    assert tidy.equals(pd.read_parquet(outs[1]).astype(tidy.dtypes.to_dict()))
    mean = tidy[tidy["statistic"] == "mean"].set_index("column")["value"]
    assert mean["bmi"] == pytest.approx(pooled["bmi"].mean(), rel=1e-4)
    saved = json.loads(outs[2].read_text())
    assert saved["statistics"]["mean"] == pytest.approx(doc["statistics"]["mean"])


def test_stats_command_refuses_a_bad_out_path_before_running(tmp_path: Path) -> None:
    paths = _csvs(tmp_path, 2)
    for bad, words in ((tmp_path / "r.xlsx", "unknown file type '.xlsx'"),
                       (tmp_path / "no" / "r.csv", "does not exist")):
        proc = _veil("stats", "--data", paths[0], "--data", paths[1], "--columns", "age",
                     "--backend", "ckks", "--out", str(bad))
        assert proc.returncode == 2, proc.stderr
        assert "--out" in proc.stderr and words in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""

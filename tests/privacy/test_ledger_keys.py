"""The privacy ledger is keyed by declared dataset names and content fingerprints (issue 20,
item 4), and the same data cannot be passed twice to one release (item 9).

Bypasses that used to work: the ledger was keyed by the path string, so ``$PWD/a.csv`` got a
fresh budget once ``a.csv``'s was spent; in-memory datasets were keyed ``party0``, ``party1``
by position, so swapping them (or any new list) started from zero.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from veil import stats
from veil.errors import ConfigurationError, PrivacyBudgetExceeded
from veil.privacy import BudgetLedger

HE = {"backend": "paillier", "paillier_bits": 1024, "allow_insecure": True}
DP = {"epsilon": 1.0, "bounds": (0.0, 100.0)}
RNG = np.random.default_rng(9)


def _csvs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame({"age": RNG.uniform(20, 80, 300), "bmi": RNG.uniform(18, 35, 300)}).to_csv(
        a, index=False)
    pd.DataFrame({"age": RNG.uniform(20, 80, 250), "bmi": RNG.uniform(18, 35, 250)}).to_csv(
        b, index=False)
    return a, b


def test_a_ledger_needs_declared_names(tmp_path: Path) -> None:
    a, b = _csvs(tmp_path)
    ledger = BudgetLedger(epsilon=1.0)
    with pytest.raises(ConfigurationError, match=r"declared dataset names.*dataset_names="):
        stats.joint([a, b], ["mean"], ledger=ledger, **DP, **HE)
    with pytest.raises(ConfigurationError, match="dataset='...'"):
        stats.mean(RNG.uniform(0, 1, 50), ledger=ledger, **DP)
    with pytest.raises(ConfigurationError, match="distinct"):
        stats.joint([a, b], ["mean"], ledger=ledger, dataset_names=["x", "x"], **DP, **HE)
    assert ledger.spent("x") == (0.0, 0.0)


def test_path_spelling_does_not_reset_the_budget(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _csvs(tmp_path)
    ledger = BudgetLedger(tmp_path / "ledger.jsonl", epsilon=1.0)
    monkeypatch.chdir(tmp_path)
    stats.joint(["a.csv", "b.csv"], ["mean"], ledger=ledger, dataset_names=["site-a", "site-b"],
                **DP, **HE)
    # the same files by absolute path: same names, same budget
    with pytest.raises(PrivacyBudgetExceeded, match="site-a"):
        stats.joint([str(a), str(b)], ["mean"], ledger=ledger,
                    dataset_names=["site-a", "site-b"], **DP, **HE)
    # new names do not help either: the content is recognised
    again = BudgetLedger(tmp_path / "ledger.jsonl", epsilon=1.0)
    with pytest.raises(PrivacyBudgetExceeded):
        stats.joint([os.path.join(os.getcwd(), "a.csv"), b], ["mean"], ledger=again,
                    dataset_names=["fresh-a", "fresh-b"], **DP, **HE)
    # a copy, shuffled and with the columns swapped, is the same content
    from veil.stats._data import fingerprint

    frame = pd.read_csv(a).sample(frac=1.0, random_state=1)[["bmi", "age"]]
    frame.to_csv(tmp_path / "copy.csv", index=False)
    assert fingerprint(tmp_path / "copy.csv") == fingerprint(a) == fingerprint(pd.read_csv(a))
    with pytest.raises(PrivacyBudgetExceeded):
        stats.mean(tmp_path / "copy.csv", columns=["age"], ledger=again, dataset="copy", **DP)
    lines = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()[1:]]
    assert {x["dataset"] for x in lines} == {"site-a", "site-b"}
    assert all(len(x["fingerprint"]) == 64 for x in lines)


def test_in_memory_datasets_are_not_keyed_by_position() -> None:
    x, y = RNG.uniform(0, 100, size=(200, 2)), RNG.uniform(0, 100, size=(180, 2))
    ledger = BudgetLedger(epsilon=1.0)
    stats.joint([x, y], ["mean"], ledger=ledger, dataset_names=["x", "y"], **DP, **HE)
    assert ledger.spent("x") == pytest.approx((1.0, 0.0))
    for order, names in (([y, x], ["y", "x"]), ([y, x], ["p0", "p1"]), ([x, y], ["u", "v"])):
        with pytest.raises(PrivacyBudgetExceeded):
            stats.joint(order, ["mean"], ledger=ledger, dataset_names=names, **DP, **HE)
    # the same array in another row order is the same content
    with pytest.raises(PrivacyBudgetExceeded):
        stats.mean(x[::-1], ledger=ledger, dataset="reversed", **DP)
    # genuinely new data has its own budget
    stats.mean(RNG.uniform(0, 100, size=(200, 2)), ledger=ledger, dataset="new", **DP)


def test_old_ledger_files_still_open(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"budget_epsilon": 1.0, "budget_delta": 0.0}) + "\n"
                    + json.dumps({"dataset": "d", "epsilon": 0.75, "delta": 0.0,
                                  "statistic": "mean", "time": 0.0}) + "\n")
    ledger = BudgetLedger(path, epsilon=1.0)
    assert ledger.remaining("d") == pytest.approx((0.25, 0.0))
    assert ledger.exact_releases("d") == 0


# -- the same data twice --------------------------------------------------------------------

def test_the_same_file_twice_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _csvs(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=r"datasets 0 and 2 are the same file"):
        stats.joint(["a.csv", "b.csv", str(a)], ["mean"], **HE)
    (tmp_path / "a_copy.csv").write_bytes(a.read_bytes())
    with pytest.raises(ConfigurationError, match=r"datasets 0 and 1 have identical content"):
        stats.joint([a, tmp_path / "a_copy.csv"], ["mean"], **HE)
    x = RNG.normal(size=(20, 2))
    with pytest.raises(ConfigurationError, match="counted twice"):
        stats.joint([x, x.copy()], ["mean"], backend="mpc")

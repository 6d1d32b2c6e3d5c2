"""Errors that cross to other parties carry a category and the rank only (issue 12, item 3).

Party 1 holds a sentinel (a data value, a column name, a file path) and fails each stats
preflight check in turn. The sentinel must appear in no other process's output, exception,
failure report, nor anywhere in the session store; party 1's own exception keeps the detail.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from pathlib import Path

import pytest

from veil import mpc
from veil.errors import ConfigurationError, PartyFailure
from veil.mpc._runtime import launch as _launch
from veil.mpc._runtime.monitor import CATEGORIES, error_category
from veil.stats import describe

SENTINEL = "98765"  # part of every planted value / name / path


def leak_job(party, paths, columns, out_dir):
    """Each party's stdout/stderr go to its own files; its exception is written down too."""
    for fd, name in ((1, "out"), (2, "err")):
        f = os.open(os.path.join(out_dir, f"{name}.{party.rank}"),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(f, fd)
    try:
        return describe(paths[party.rank], ["mean"], party=party, columns=columns[party.rank])
    except BaseException:
        Path(out_dir, f"exc.{party.rank}").write_text(traceback.format_exc())
        if party.rank == 0:
            with open(os.path.join(out_dir, "exc.0"), "a") as f:
                f.write(_what_party_0_reads(party))
        raise


def _what_party_0_reads(party) -> str:
    """Everything party 1 published about itself in the store, as party 0 can read it."""
    monitor = party._state.monitor
    monitor.fail_fast = None  # stay alive to read
    store = monitor._store
    deadline = time.monotonic() + 5
    while not store.check(["err/1"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    seen = []
    for key in ("err/1", "ph/1", "gone/1"):
        if store.check([key]):
            seen.append(f"{key}={bytes(store.get(key)).decode(errors='replace')}")
    return "\nstore: " + " ".join(seen)


def _csv(path: Path, header: str, rows: list[str]) -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


CASES = {
    # a value beyond the MPC range: the message used to print it to every party
    "range": lambda d: ([_csv(d / "a0.csv", "a,b", ["1,2", "3,4"]),
                         _csv(d / "a1.csv", "a,b", ["1,2", f"{SENTINEL}.5,4"])], None),
    "non-finite": lambda d: ([_csv(d / "a0.csv", "a,b", ["1,2", "3,4"]),
                              _csv(d / "a1.csv", f"a,b{SENTINEL}", ["1,nan", f"{SENTINEL},4"])],
                             [["a", "b"], ["a", f"b{SENTINEL}"]]),
    "missing-column": lambda d: ([_csv(d / "a0.csv", "a,b", ["1,2", "3,4"]),
                                  _csv(d / "a1.csv", f"a,c{SENTINEL}", ["1,2", "3,4"])], None),
    "other-columns": lambda d: ([_csv(d / "a0.csv", "a,b", ["1,2", "3,4"]),
                                 _csv(d / "a1.csv", f"a,b{SENTINEL}", ["1,2", "3,4"])],
                                [["a", "b"], ["a", f"b{SENTINEL}"]]),
    "missing-file": lambda d: ([_csv(d / "a0.csv", "a,b", ["1,2", "3,4"]),
                                str(d / f"no{SENTINEL}" / "x.csv")], None),
    "not-numeric": lambda d: ([_csv(d / "a0.csv", "a,b", ["1,2", "3,4"]),
                               _csv(d / f"p{SENTINEL}.csv", "a,b", ["1,2", f"x{SENTINEL},4"])],
                              None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_failing_partys_details_reach_no_other_party(case, tmp_path, monkeypatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    paths, columns = CASES[case](data)
    columns = columns or [["a", "b"], ["a", "b"]]
    reports: dict[int, str] = {}
    choose = _launch._choose_failure

    def record(failures, *args, **kwargs):
        reports.update({r: f"{f} {f.phase}" for r, f in failures.items()})
        return choose(failures, *args, **kwargs)

    store_copy = tmp_path / "store"
    remove = _launch._remove_store

    def keep(store_dir):
        for name in os.listdir(store_dir):  # the store file (not the mesh's Unix sockets)
            if os.path.isfile(os.path.join(store_dir, name)):
                shutil.copy(os.path.join(store_dir, name), store_copy)
        remove(store_dir)

    monkeypatch.setattr(_launch, "_OWN_GRACE", 3.0)  # party 0 has time to read the store
    monkeypatch.setattr(_launch, "_choose_failure", record)
    monkeypatch.setattr(_launch, "_remove_store", keep)
    with pytest.raises(PartyFailure):
        mpc.run(leak_job, parties=2, args=(paths, columns, str(out)), timeout=20)
    # party 1's own exception says what is wrong, with its detail
    mine = (out / "exc.1").read_text() if (out / "exc.1").exists() else reports.get(1, "")
    assert SENTINEL in mine, (case, mine, reports)
    # nothing party 0 printed, raised or reported, and nothing in the store, holds it
    assert "store: err/1=" in (out / "exc.0").read_text(), "party 0 read nothing"
    for name in ("out.0", "err.0", "exc.0"):
        if (out / name).exists():
            assert SENTINEL not in (out / name).read_text(), (case, name)
    assert SENTINEL not in reports.get(0, ""), (case, reports[0])
    assert store_copy.exists(), "the session store was not found"
    assert SENTINEL.encode() not in store_copy.read_bytes(), case


class Leaky(ConfigurationError):
    pass


class Custom(Exception):
    pass


def test_only_a_fixed_category_is_published_for_an_error() -> None:
    assert error_category(ConfigurationError(f"values up to {SENTINEL}")) == "ConfigurationError"
    assert error_category(Leaky("x")) == "ConfigurationError"  # user subclasses: nearest known
    assert error_category(FileNotFoundError(SENTINEL)) == "FileNotFoundError"
    assert error_category(Custom(SENTINEL)) == "Exception"
    assert all(SENTINEL not in c for c in CATEGORIES)

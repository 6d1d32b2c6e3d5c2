"""Minimum cohort in the MPC kernels: counted on shares, per recipient, before any value.

Party 0 holds 9 rows, party 1 one row. A recipient must see at least ``min_cohort`` rows of the
*other* parties: party 0 sees 1 row of others, party 1 sees 9.
"""

from __future__ import annotations

import numpy as np
import pytest

from veil import mpc
from veil.errors import PartyFailure, PolicyViolation
from veil.protocols.stats import secret as stats_mpc
from veil.protocols.stats import spec as st
from veil.protocols.stats.options import Options

ROWS = [9, 1, 5]


def _job(party, k, to):
    x = np.arange(ROWS[party.rank], dtype=np.float64).reshape(-1, 1) + 10.0 * party.rank
    spec = st.make_spec(["mean"], ["x"], Options(to=to, min_cohort=k))
    charged: list[bool] = []
    log: list = []
    try:
        out = stats_mpc.run_release(party, x, spec, transcript=log,
                                    before_release=lambda: charged.append(True))
    except PolicyViolation as exc:
        return {"refused": str(exc), "charged": charged, "opened": len(log)}
    return {"refused": None, "mean": None if out is None else float(out["mean"][0]),
            "charged": charged}


def _run(parties, k, to):
    return mpc.run(_job, parties=parties, per_party_args=[(k, to)] * parties, timeout=240)


@pytest.mark.parametrize(
    ("parties", "k", "to", "passes"),
    [
        (2, 10, [0], False),  # party 0 would learn party 1's single row exactly
        (2, 10, [1], False),  # party 1 sees only 9 rows of others
        (2, 9, [1], True),    # 9 rows of party 0 are enough for party 1 ...
        (2, 9, [0], False),   # ... but not 1 row for party 0
        (2, 9, None, False),  # to everyone: every party is a recipient
        (2, 1, [0], True),    # the rule switched off
        (3, 6, None, True),   # 3 parties: 6, 14 and 10 rows of others
        (3, 7, [1, 2], True),
        (3, 7, [0], False),   # party 0 sees 1 + 5 = 6 rows of others
    ],
)
def test_cohort_counts_only_rows_of_other_parties(parties, k, to, passes) -> None:
    res = _run(parties, k, to)
    n = sum(ROWS[:parties])
    want = sum(float(np.arange(ROWS[r]).sum() + 10.0 * r * ROWS[r]) for r in range(parties)) / n
    for rank, out in enumerate(res):
        if passes:
            assert out["refused"] is None and out["charged"] == [True]
            if to is None or rank in to:
                assert out["mean"] == pytest.approx(want, abs=1e-4)
            else:
                assert out["mean"] is None
        else:  # every party refuses, before the budget is charged and before any value
            assert "min_cohort" in out["refused"] and out["charged"] == []
            assert out["opened"] == 2  # the preflight and the pass/fail bit only
            for count in {str(c) for c in ROWS[:parties]} | {str(n)}:  # no counts in the text
                assert f" {count} rows" not in out["refused"]


def test_bad_min_cohort_is_a_typed_error() -> None:
    with pytest.raises(PartyFailure, match="min_cohort must be an integer"):
        _run(2, 0, None)

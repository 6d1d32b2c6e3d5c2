"""What each party receives: order statistics reveal nothing beyond the output (and N).

Real multi-process runs. Every value opened to a party is recorded (its transcript); two
different datasets with the same output must give byte-identical transcripts. (The raw bytes
each non-recipient receives, for every statistic, are compared in ``tests/leakage/``.)
The minimum cohort is off here (``min_cohort=1``): its pass bit would be one more opening.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from veil import mpc, stats
from veil.errors import PartyFailure
from veil.protocols.stats.options import Options
from veil.protocols.stats.spec import make_spec
from veil.stats._party import party_release
from veil.stats._release import Release


def _release(names: list[str], **kw: object):
    opts = dict(backend="mpc", bins=None, quantiles_n=4, method="exclusive", target=None,
                iterations=5, learning_rate=1.0, bounds=None, epsilon=None, delta=0.0,
                mechanism="laplace", min_cohort=1, ledger=None, audit=None)
    opts.update(kw)
    return Release(make_spec(names, ("x",), Options(**opts)))


def _transcript_job(party, x, names, to):
    log: list[np.ndarray] = []
    out = party_release(party, np.asarray(x).reshape(-1, 1),
                        _release(names, dataset="d", to=to), transcript=log)
    return out, [v.tolist() for v in log]


def _run(datasets, names, to=None):
    return mpc.run(_transcript_job, parties=len(datasets),
                   per_party_args=[(d, names, to) for d in datasets], timeout=240)


# same N = 15 and same low median (5.25); every other value differs
# (7 values below, 7 above, split differently over the parties)
A3 = [[1.0, 2.0, 9.0, 30.0, 5.25], [0.5, 7.0, 8.0, 1.5, 3.0], [-3.0, 4.0, 6.0, 12.0, 40.0]]
B3 = [[4.5, 5.0, 6.5, 7.5, 5.25], [-20.0, 0.0, 9.5, 10.0, 100.0], [3.0, 5.1, 6.0, 200.0, 1.0]]
A2 = [A3[0] + A3[1][:2], A3[1][2:] + A3[2]]
B2 = [B3[0][:3], B3[0][3:] + B3[1] + B3[2]]


@pytest.mark.parametrize(
    ("a", "b"), [(A2, B2), pytest.param(A3, B3, marks=pytest.mark.slow)], ids=["2p", "3p"])
def test_public_search_transcript_depends_only_on_the_output(a, b) -> None:
    for data in (a, b):
        assert statistics.median_low(sum(data, [])) == 5.25
    ra, rb = _run(a, ["median_low"]), _run(b, ["median_low"])
    for rank in range(len(a)):
        out_a, log_a = ra[rank]
        out_b, log_b = rb[rank]
        assert out_a["median_low"][0] == pytest.approx(5.25, abs=2**-15)
        assert len(log_a) > 2
        assert log_a == log_b  # identical views: the search leaks nothing else


@pytest.mark.slow
def test_transcript_changes_when_the_output_changes() -> None:
    """Negative control for the test above: the recorded views do depend on the output."""
    c = [row[:] for row in A2]
    c[0][4] = 5.3
    assert _run(c, ["median_low"])[0][1] != _run(A2, ["median_low"])[0][1]


def test_oblivious_median_reveals_only_the_result_to_the_chosen_party() -> None:
    data = [[1.0, 2.0, 9.0, 30.0, 5.0, 6.5], [0.5, 7.0, 8.0, 11.0, 4.0, 3.0]]  # N = 12, even
    res = _run(data, ["median"], to=[0])
    want = statistics.median(sum(data, []))
    out0, log0 = res[0]
    out1, log1 = res[1]
    assert out0["median"][0] == pytest.approx(want, abs=1e-3)
    assert out1 is None
    # party 1 sees only the preflight opening (status codes, column digests, N = 12)
    assert len(log1) == 1 and log1[0][-1] == 12
    assert len(log0) == 2 and log0[1] == pytest.approx([want], abs=1e-3)


def _nan_job(party):
    x = np.array([1.0, 2.0, np.nan] if party.rank == 1 else [1.0, 2.0, 3.0])
    return stats.describe(x, ["mean"], party=party, min_cohort=1)


def test_bad_input_in_one_party_stops_every_party_before_any_value_is_shared() -> None:
    with pytest.raises(PartyFailure, match=r"party 1.*'x'.*non-finite|party 1 cannot take part"):
        mpc.run(_nan_job, parties=2, timeout=120)

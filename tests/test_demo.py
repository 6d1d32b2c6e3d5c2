"""`veil demo` end to end: a real multi-process MPC run and a CKKS dot product."""

from __future__ import annotations

import io

from rich.console import Console

from veil.cli.demo import run_demo


def test_demo_results_match_plaintext() -> None:
    out = io.StringIO()
    errors = run_demo(3, Console(file=out, width=160))
    assert errors["sum"] < 1e-2
    assert errors["mean"] < 1e-3
    assert errors["dot"] < 1e-3
    assert errors["hospitals"] < 1e-2
    assert errors["prediction"] < 1e-3
    text = out.getvalue()
    assert "MPC joint sum (3 parties)" in text
    assert "CKKS encrypted dot product" in text
    assert "3 hospitals: corr(age, bmi)" in text
    assert "CKKS encrypted digit prediction" in text

"""``veil stats``: joint statistics over CSV files, one party per file, run locally.

    veil stats --data a.csv --data b.csv --data c.csv --columns age,bmi \\
        --stats mean,stdev,corr --backend mpc --min-cohort 10

With ``--backend mpc`` every file is read only by its own party process. The table shows what
was revealed; see ``docs/security/stats.md`` for who learns what.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

ALIASES = {"corr": "correlation", "cov": "covariance", "std": "stdev", "var": "variance",
           "sd": "stdev", "n": "count", "quartiles": "quantiles", "ols": "linear_regression",
           "logit": "logistic_regression"}


def parse_stats(text: str) -> list[str]:
    return [ALIASES.get(s.strip(), s.strip()) for s in text.split(",") if s.strip()]


def parse_bounds(text: str | None) -> Any:
    """``"0:120"`` (every column) or ``"age=0:120,bmi=10:60"``."""
    from veil.errors import ConfigurationError

    if not text:
        return None
    try:
        if "=" not in text:
            lo, hi = text.split(":")
            return (float(lo), float(hi))
        out = {}
        for part in text.split(","):
            name, rng = part.split("=")
            lo, hi = rng.split(":")
            out[name.strip()] = (float(lo), float(hi))
        return out
    except ValueError as exc:
        raise ConfigurationError(
            f"--bounds must look like 0:120 or age=0:120,bmi=10:60, got {text!r}") from exc


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def render(result: Any, console: Any) -> None:
    """Print a JointResult as rich tables."""
    import numpy as np
    from rich.table import Table

    from veil.protocols.statistics import Regression

    cols = list(result.columns)
    title = (f"Veil joint statistics — {result.parties} parties, backend {result.backend}"
             + (f", ε = {result.epsilon:g}" if result.epsilon is not None else ""))
    table = Table(title=title)
    table.add_column("statistic")
    for c in cols:
        table.add_column(c, justify="right")
    extra: list[Any] = []
    for name, value in result.values.items():
        if isinstance(value, Regression):
            t = Table(title=f"{name}")
            t.add_column("term")
            t.add_column("coefficient", justify="right")
            for f, c in zip(value.features, value.coef):
                t.add_row(f, _fmt(float(c)))
            t.add_row("intercept", _fmt(value.intercept))
            extra.append(t)
        elif name in ("covariance", "correlation", "histogram", "quantiles"):
            arr = np.atleast_2d(np.asarray(value, dtype=float))
            t = Table(title=name)
            t.add_column("")
            heads = cols if name in ("covariance", "correlation") else [
                f"{'bin' if name == 'histogram' else 'q'}{i + 1}" for i in range(arr.shape[1])]
            for h in heads:
                t.add_column(h, justify="right")
            for c, row in zip(cols, arr):
                t.add_row(c, *(_fmt(float(v)) for v in row))
            extra.append(t)
        elif name == "count":
            table.add_row(name, *([_fmt(value)] + [""] * (len(cols) - 1)))
        else:
            arr = np.atleast_1d(np.asarray(value, dtype=float))
            table.add_row(name, *(_fmt(float(v)) for v in arr))
    console.print(table)
    for t in extra:
        console.print(t)
    console.print(f"{result.seconds:.2f} s, {result.bytes_sent:,} bytes sent in total")


def register(app: typer.Typer) -> None:
    @app.command("stats")
    def stats_cmd(
        data: Annotated[list[Path], typer.Option("--data", "-d",
                                                 help="one CSV per party (≥ 2)")],
        columns: str = typer.Option(..., "--columns", "-c", help="comma-separated columns"),
        stats: str = typer.Option("count,mean,stdev", "--stats", "-s",
                                  help="comma-separated: count,sum,mean,variance,stdev,corr,"
                                       "cov,histogram,median,quantiles,min,max,ols,logit,..."),
        backend: str = typer.Option("mpc", "--backend", "-b", help="mpc | paillier | ckks"),
        min_cohort: int = typer.Option(10, "--min-cohort", min=1,
                                       help="refuse aggregates over fewer rows"),
        epsilon: float | None = typer.Option(None, "--epsilon", help="DP release with this ε"),
        delta: float = typer.Option(0.0, "--delta", help="δ for --mechanism gaussian"),
        mechanism: str = typer.Option("laplace", "--mechanism", help="laplace | gaussian"),
        bounds: str | None = typer.Option(None, "--bounds",
                                          help="clip bounds: 0:120 or age=0:120,bmi=10:60"),
        bins: str | None = typer.Option(None, "--bins", help="histogram edges, e.g. 0,18,65,120"),
        target: str | None = typer.Option(None, "--target", help="regression target column"),
        ledger: Annotated[Path | None, typer.Option(
            "--ledger", help="privacy budget ledger file")] = None,
        budget: float = typer.Option(1.0, "--budget", help="ε budget per dataset (--ledger)"),
        budget_delta: float = typer.Option(1e-5, "--budget-delta",
                                           help="δ budget per dataset (--ledger)"),
        audit: Annotated[Path | None, typer.Option(
            "--audit", help="append a record to this log")] = None,
        timeout: float = typer.Option(300.0, "--timeout", help="seconds before giving up"),
    ) -> None:
        """Joint statistics over one CSV per party; prints what was revealed."""
        from rich.console import Console

        from veil import stats as vstats
        from veil.errors import ConfigurationError
        from veil.privacy import AuditLog, BudgetLedger

        edges = None
        if bins:
            try:
                edges = [float(b) for b in bins.split(",")]
            except ValueError as exc:
                raise ConfigurationError(f"--bins must be numbers, got {bins!r}") from exc
        result = vstats.joint(
            [str(p) for p in data], parse_stats(stats), backend=backend,
            columns=[c.strip() for c in columns.split(",") if c.strip()], bins=edges,
            target=target, bounds=parse_bounds(bounds), epsilon=epsilon, delta=delta,
            mechanism=mechanism, min_cohort=min_cohort,
            ledger=BudgetLedger(ledger, epsilon=budget, delta=budget_delta) if ledger else None,
            audit=AuditLog(audit) if audit else None, timeout=timeout)
        render(result, Console())

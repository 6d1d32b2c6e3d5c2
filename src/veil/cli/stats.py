"""``veil stats``: joint statistics over CSV files, one party per file, run locally.

    veil stats --data a.csv --data b.csv --data c.csv --columns age,bmi \\
        --stats mean,stdev,corr --backend mpc --min-cohort 10

With ``--backend mpc`` each party process computes on its own file only. The tables show what
was revealed; see ``docs/security/stats.md`` for who learns what.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from veil.cli.audit import PASSPHRASE_ENV_OPTION, PASSPHRASE_FILE_OPTION, SEAL_KEY_FILE_OPTION
from veil.errors import ConfigurationError, VeilError

# Every statistic of veil.protocols.stats.spec.SUPPORT (a test keeps the two in step), listed
# here so that `veil stats --help` needs no numpy import.
LINEAR_STATS = ("count", "sum", "mean", "variance", "pvariance", "stdev", "pstdev",
                "covariance", "correlation", "histogram", "linear_regression")
ORDER_STATS = ("median", "median_low", "median_high", "quantiles", "min", "max",
               "logistic_regression")
ALIASES = {"corr": "correlation", "cov": "covariance", "std": "stdev", "var": "variance",
           "sd": "stdev", "n": "count", "quartiles": "quantiles", "ols": "linear_regression",
           "logit": "logistic_regression", "hist": "histogram"}

COMMAND_HELP = (
    "Joint statistics over one CSV or Parquet file per party; prints what was revealed "
    "(--json: as JSON; --out: to .csv, .parquet or .json files).\n\n"
    "Statistics (--stats), any backend: " + ", ".join(LINEAR_STATS) + ".\n\n"
    "--backend mpc only: " + ", ".join(ORDER_STATS) + ".\n\n"
    "Aliases: " + ", ".join(f"{a} ({s})" for a, s in ALIASES.items()) + ".\n\n"
    "histogram needs --bins; regressions use --target (default: the last column).")


def parse_stats(text: str) -> list[str]:
    return [ALIASES.get(s.strip(), s.strip()) for s in text.split(",") if s.strip()]


def parse_bounds(text: str | None) -> Any:
    """``"0:120"`` (every column) or ``"age=0:120,bmi=10:60"``."""
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


# API spellings in the library's messages -> the flags a command-line user types
_CLI_TERMS = (
    ("bounds=(low, high) or bounds={column: (low, high)}",
     "--bounds LOW:HIGH or --bounds COLUMN=LOW:HIGH,..."),
    ("bounds={column: (low, high), ...}", "--bounds COLUMN=LOW:HIGH,..."),
    ("bounds=(low, high)", "--bounds LOW:HIGH"),
    ("bounds=...", "--bounds LOW:HIGH"),
    ("epsilon=...", "--epsilon E"),
    ("dataset_names=[...]", "--dataset-name NAME (one per --data)"),
    ("dataset_names=", "--dataset-name"),
    ("min_cohort", "--min-cohort"),
    ("quantiles_n", "--quantiles"),
    ("paillier_bits", "--paillier-bits"),
    ("allow_insecure=True", "--allow-insecure"),
    ("use bits=", "use --paillier-bits "),
)


def in_cli_terms(text: str) -> str:
    """A library message with its parameter spellings replaced by this command's flags."""
    for api, flag in _CLI_TERMS:
        text = text.replace(api, flag)
    return re.sub(r"\bbackend='(\w+)'", r"--backend \1", text)


def parse_bins(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(b) for b in text.split(",")]
    except ValueError as exc:
        raise ConfigurationError(f"--bins must be comma-separated numbers (edges), e.g. "
                                 f"0,18,65,120; got {text!r}") from exc


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _bin_labels(edges: list[float] | None, k: int) -> list[str]:
    """``[0, 18)``, ``[18, 65)``, ``[65, 120]`` (numpy.histogram: the last bin is closed)."""
    if edges is None or len(edges) != k + 1:
        return [f"bin {i + 1}" for i in range(k)]
    return [f"[{_fmt(float(lo))}, {_fmt(float(hi))}" + ("]" if i == k - 1 else ")")
            for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]


def _quantile_labels(k: int) -> list[str]:
    n = k + 1
    return [f"{100 * (i + 1) / n:.4g}%" for i in range(k)]


def _regression_table(name: str, value: Any) -> Any:
    from rich.table import Table

    t = Table(title=name, title_justify="left")
    t.add_column("term")
    t.add_column("coefficient", justify="right")
    for f, c in zip(value.features, value.coef):
        t.add_row(str(f), _fmt(float(c)))
    t.add_row("intercept", _fmt(float(value.intercept)))
    for attr in ("iterations", "converged"):  # reported when the kernel provides them
        if getattr(value, attr, None) is not None:
            t.add_row(f"({attr})", str(getattr(value, attr)))
    return t


def render(result: Any, console: Any, *, bins: list[float] | None = None) -> None:
    """Print a JointResult: a one-line title, then a table per kind of statistic."""
    import numpy as np
    from rich.table import Table

    from veil.protocols.stats.spec import Regression

    cols = [str(c) for c in result.columns]
    console.print(f"[bold]Veil joint statistics[/bold] — {result.parties} parties, backend "
                  f"{result.backend}"
                  + (f", ε = {result.epsilon:g}" if result.epsilon is not None else ""),
                  soft_wrap=True, highlight=False)
    table = Table()
    table.add_column("statistic")
    for c in cols:
        table.add_column(c, justify="right")
    extra: list[Any] = []
    for name, value in result.values.items():
        if isinstance(value, Regression):
            extra.append(_regression_table(name, value))
        elif name in ("covariance", "correlation", "histogram", "quantiles"):
            arr = np.atleast_2d(np.asarray(value, dtype=float))  # one row per data column
            t = Table(title=name, title_justify="left")
            t.add_column("")
            for c in cols:
                t.add_column(c, justify="right")
            if name in ("covariance", "correlation"):
                labels, rows = cols, arr
            else:  # one row per bin / cut point, one column per data column
                k = arr.shape[1]
                labels = _bin_labels(bins, k) if name == "histogram" else _quantile_labels(k)
                rows = arr.T
            for label, row in zip(labels, rows):
                t.add_row(label, *(_fmt(float(v)) for v in row))
            extra.append(t)
        elif name == "count":
            table.add_row(name, *([_fmt(value)] + [""] * (len(cols) - 1)))
        else:
            arr = np.atleast_1d(np.asarray(value, dtype=float))
            table.add_row(name, *(_fmt(float(v)) for v in arr))
    for t in ([table] if table.row_count else []) + extra:
        console.print(t)
    for name, value in result.values.items():
        if isinstance(value, Regression) and getattr(value, "converged", None) is False:
            steps = getattr(value, "iterations", "?")
            console.print(f"[yellow]warning:[/yellow] {name} did not converge in {steps} "
                          "iterations; raise --iterations", soft_wrap=True, highlight=False)
    console.print(f"{result.seconds:.2f} s, {result.bytes_sent:,} bytes sent in total",
                  highlight=False)


def _sources(paths: list[Path], delimiter: str) -> list[Any]:
    """What ``stats.joint`` reads: the paths themselves, or frames read here (``--delimiter``)."""
    return [str(p) for p in paths] if delimiter == "," else _read_csvs(paths, delimiter)


def _read_csvs(paths: list[Path], delimiter: str) -> list[Any]:
    """Read CSVs with a non-default delimiter here (the API reads comma-separated files);
    Parquet files stay paths."""
    import pandas as pd

    from veil.stats import MAX_CSV_BYTES

    frames: list[Any] = []
    for i, path in enumerate(paths):
        if path.suffix.lower() in (".parquet", ".pq"):
            frames.append(str(path))
            continue
        if path.stat().st_size > MAX_CSV_BYTES:
            raise ConfigurationError(f"--data {path}: over the {MAX_CSV_BYTES}-byte limit")
        try:
            frames.append(pd.read_csv(path, sep=delimiter))
        except (ValueError, OSError) as exc:
            raise ConfigurationError(f"--data {path} (party {i}): cannot read it as CSV with "
                                     f"--delimiter {delimiter!r} ({exc})") from exc
    return frames


def _check_paths(data: list[Path], names: list[str], ledger: Path | None,
                 audit: Path | None) -> None:
    if len(data) < 2:
        raise ConfigurationError(f"give at least two --data files (one per party), got "
                                 f"{len(data)}")
    for path in data:
        if not path.is_file():
            raise ConfigurationError(f"--data {path}: no such file" if not path.exists() else
                                     f"--data {path}: not a regular file")
    if ledger is not None and not names:
        raise ConfigurationError("--ledger charges declared dataset names, never paths: give "
                                 f"one --dataset-name per --data ({len(data)}), in the same "
                                 "order")
    if names and len(names) != len(data):
        raise ConfigurationError(f"give one --dataset-name per --data ({len(data)}), got "
                                 f"{len(names)}")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"--dataset-name values must be distinct, got {names}")
    for flag, path in (("--ledger", ledger), ("--audit", audit)):
        if path is not None and path.exists() and not path.is_file():
            raise ConfigurationError(f"{flag} {path}: not a regular file")
        if path is not None and not path.parent.is_dir():
            raise ConfigurationError(f"{flag} {path}: directory {path.parent} does not exist")


def _delimiter(text: str) -> str:
    delimiter = "\t" if text == "\\t" else text
    if len(delimiter) != 1:
        raise ConfigurationError(f"--delimiter must be one character, got {delimiter!r}")
    return delimiter


def _open_audit(audit: Path | None, key_file: Path | None, passphrase_env: str | None = None,
                passphrase_file: Path | None = None, seal_key_file: Path | None = None) -> Any:
    """The audit log of ``--audit`` (keyed by ``--audit-key-file``: a sealed file, opened with
    --passphrase-env / --passphrase-file / --seal-key-file or the environment, or a legacy
    plain one), checked before the release, not after it; ``None`` without ``--audit``."""
    from veil.cli.audit import check_unused_sources, read_key_file
    from veil.privacy import AuditLog

    if key_file is not None and audit is None:
        raise ConfigurationError("--audit-key-file needs --audit")
    if key_file is None:
        check_unused_sources("--audit-key-file", passphrase_env, passphrase_file, seal_key_file)
    if audit is None:
        return None
    key = read_key_file(key_file, "--audit-key-file", passphrase_env=passphrase_env,
                        passphrase_file=passphrase_file,
                        seal_key_file=seal_key_file) if key_file else None
    log = AuditLog(audit, key=key)
    log.check()
    return log


_AUDIT_KEY_FILE = typer.Option(
    None, "--audit-key-file", metavar="FILE",
    help="HMAC key for --audit: a sealed file from `veil audit key new FILE` (a legacy plain "
         "file of ≥ 16 random bytes is read with a warning)")


_DATA = typer.Option("--data", "-d", help="one CSV or Parquet (.parquet) file per party (≥ 2)")
_OUT = typer.Option(
    "--out", "-o", help="also write the results to FILE: .csv or .parquet (tidy long form) or "
                        ".json; repeat for several")
_JSON = typer.Option(False, "--json", help="print the results as JSON on stdout, no tables")
_TIMEOUT = typer.Option(300.0, "--timeout", min=1.0, help="seconds before giving up")
_DATASET_NAME = typer.Option(
    "--dataset-name", help="name of each --data file in the ledger and audit log, in the same "
                           "order (repeat once per --data)")


def _emit(result: Any, outs: list[Path], as_json: bool, edges: list[float] | None) -> None:
    """Write the ``--out`` files, then print the tables (or the JSON document alone)."""
    from rich.console import Console

    for path in outs:
        result.write(path)
    if as_json:
        typer.echo(result.to_json(indent=2))
    else:
        render(result, Console(), bins=edges)
    if outs:
        Console(stderr=as_json).print("wrote " + ", ".join(str(p) for p in outs),
                                      highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("stats", help=COMMAND_HELP)
    def stats_cmd(
        data: Annotated[list[Path], _DATA],
        columns: str = typer.Option(..., "--columns", "-c", help="comma-separated columns"),
        stats: str = typer.Option(
            "count,mean,stdev", "--stats", "-s",
            help="comma-separated statistics or aliases (all listed above), e.g. mean,stdev,corr"),
        backend: str = typer.Option("mpc", "--backend", "-b", help="mpc | paillier | ckks"),
        min_cohort: int = typer.Option(10, "--min-cohort", min=1,
                                       help="refuse aggregates over fewer rows"),
        epsilon: float | None = typer.Option(None, "--epsilon", help="DP release with this ε"),
        delta: float = typer.Option(0.0, "--delta", help="δ for --mechanism gaussian"),
        mechanism: str = typer.Option("laplace", "--mechanism", help="laplace | gaussian"),
        bounds: str | None = typer.Option(None, "--bounds",
                                          help="clip bounds: 0:120 or age=0:120,bmi=10:60"),
        bins: str | None = typer.Option(None, "--bins", help="histogram edges, e.g. 0,18,65,120"),
        quantiles_n: int = typer.Option(4, "--quantiles", min=1, max=1000,
                                        help="quantiles: number of equal groups (4: quartiles, "
                                             "10: deciles)"),
        target: str | None = typer.Option(None, "--target", help="regression target column"),
        iterations: int | None = typer.Option(
            None, "--iterations", min=1, max=10_000,
            help="logistic regression: gradient steps (default: the library's)"),
        paillier_bits: int = typer.Option(3072, "--paillier-bits", min=512, max=8192,
                                          help="Paillier key size (below 3072: "
                                               "--allow-insecure)"),
        allow_insecure: bool = typer.Option(False, "--allow-insecure",
                                            help="accept parameters below 128-bit security"),
        delimiter: str = typer.Option(",", "--delimiter",
                                      help="CSV field separator, e.g. ';' or '\\t'"),
        ledger: Annotated[Path | None, typer.Option(
            "--ledger", help="privacy budget ledger file")] = None,
        dataset_name: Annotated[list[str] | None, _DATASET_NAME] = None,
        budget: float = typer.Option(1.0, "--budget", help="ε budget per dataset (--ledger)"),
        budget_delta: float = typer.Option(1e-5, "--budget-delta",
                                           help="δ budget per dataset (--ledger)"),
        audit: Annotated[Path | None, typer.Option(
            "--audit", help="append a record to this log")] = None,
        audit_key_file: Path | None = _AUDIT_KEY_FILE,
        passphrase_env: str | None = PASSPHRASE_ENV_OPTION,
        passphrase_file: Path | None = PASSPHRASE_FILE_OPTION,
        seal_key_file: Path | None = SEAL_KEY_FILE_OPTION,
        timeout: float = _TIMEOUT,
        out: Annotated[list[Path] | None, _OUT] = None,
        as_json: bool = _JSON,
    ) -> None:
        from rich.console import Console

        from veil import stats as vstats
        from veil.cli.logs import phase_progress
        from veil.privacy import BudgetLedger
        from veil.stats import frames

        names = [n.strip() for n in dataset_name or []]
        _check_paths(data, names, ledger, audit)
        outs = [frames.check_output_path(p, "--out") for p in out or []]
        delimiter = _delimiter(delimiter)
        audit_log = _open_audit(audit, audit_key_file, passphrase_env, passphrase_file,
                                seal_key_file)
        edges = parse_bins(bins)
        sources = _sources(data, delimiter)
        kwargs: dict[str, Any] = {} if iterations is None else {"iterations": iterations}
        try:
            with phase_progress(Console(stderr=True), "joint statistics",
                                enabled=backend == "mpc"):
                result = vstats.joint(
                    sources, parse_stats(stats), backend=backend,
                    columns=[c.strip() for c in columns.split(",") if c.strip()], bins=edges,
                    quantiles_n=quantiles_n, target=target, bounds=parse_bounds(bounds),
                    epsilon=epsilon, delta=delta, mechanism=mechanism, min_cohort=min_cohort,
                    ledger=(BudgetLedger(ledger, epsilon=budget, delta=budget_delta)
                            if ledger else None),
                    dataset_names=names or None, audit=audit_log, timeout=timeout,
                    paillier_bits=paillier_bits, allow_insecure=allow_insecure, **kwargs)
        except VeilError as exc:  # the library names its parameters; say the flags instead
            exc.args = (in_cli_terms(str(exc)), *exc.args[1:])
            raise
        _emit(result, outs, as_json, edges)

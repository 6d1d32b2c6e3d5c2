"""``veil bench schemes | peers``: which scheme, at what cost, on this machine."""

from __future__ import annotations

import math
from pathlib import Path

import typer

SCHEMES_JSON = Path("bench-schemes.json")
SCHEMES_PNG = Path("bench-schemes.png")
PEERS_JSON = Path("bench-peers.json")
PEERS_PNG = Path("bench-peers.png")

bench_app = typer.Typer(help="Benchmark schemes side by side, and Veil against peer libraries.",
                        no_args_is_help=True)


def _list(value: str, what: str, flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise typer.BadParameter(f"give at least one {what}, comma-separated", param_hint=flag)
    return items


def _sizes(value: str, flag: str = "--sizes") -> list[int]:
    out = []
    for item in _list(value, "size", flag):
        try:
            size = float(item)
        except ValueError as exc:
            raise typer.BadParameter(f"size {item!r} is not a number (e.g. 1e3)",
                                     param_hint=flag) from exc
        if not math.isfinite(size) or size != int(size) or not 1 <= size <= 1e7:
            raise typer.BadParameter(f"size {item!r} must be a whole number in 1..1e7",
                                     param_hint=flag)
        out.append(int(size))
    return out


def check_output(path: Path, flag: str) -> None:
    """Refuse an output path that cannot be written, before a run whose results it would hold."""
    import os

    from veil.errors import ConfigurationError

    if path.is_dir():
        raise ConfigurationError(f"{flag} {path}: is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigurationError(f"{flag} {path}: directory {parent} does not exist; create it "
                                 "or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists()
                                                    and not os.access(path, os.W_OK)):
        raise ConfigurationError(f"{flag} {path}: not writable")


def is_stdout(path: Path) -> bool:
    """``--json -``: the JSON goes to stdout (tables and messages to stderr)."""
    return str(path) == "-"


def _progress_runner(total: int):  # pragma: no cover - terminal UI
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                        transient=True, console=Console(stderr=True))
    task = progress.add_task("benchmarking", total=total)

    def step(msg: str) -> None:
        progress.update(task, advance=1, description=msg)

    return progress, step


@bench_app.command("schemes")
def schemes(
    ops: str = typer.Option("add,mul,sum,mean,dot,vecmat,logreg", help="comma-separated jobs"),
    sizes: str = typer.Option("1e2,1e3", help="comma-separated input sizes (Paillier encrypts "
                              "every element: 1e4 takes minutes on 2 cores)"),
    schemes: str = typer.Option("plain,ckks,bfv,paillier,mpc2,mpc3", help="schemes to compare"),
    repeats: int = typer.Option(3, min=1, max=100, help="timed repeats per measurement"),
    json_out: Path = typer.Option(SCHEMES_JSON, "--json",
                                  help="JSON output file ('-': print it on stdout)"),
    plot: Path = typer.Option(SCHEMES_PNG, "--plot", help="PNG plot output"),
) -> None:
    """The same jobs under plaintext, CKKS, BFV, Paillier and MPC: time, bytes, error."""
    from rich.console import Console

    from veil.bench import report
    from veil.bench.schemes import run_schemes

    op_list, size_list = _list(ops, "op", "--ops"), _sizes(sizes)
    scheme_list = _list(schemes, "scheme", "--schemes")
    to_stdout = is_stdout(json_out)
    if not to_stdout:
        check_output(json_out, "--json")
    check_output(plot, "--plot")
    progress, step = _progress_runner(len(op_list) * len(size_list) * len(scheme_list))
    with progress:
        records = run_schemes(op_list, size_list, scheme_list, repeats=repeats, progress=step)
    console = Console(stderr=to_stdout)
    console.print(report.table(records, "veil bench schemes"))
    if to_stdout:
        typer.echo(report.json_text(records, command="schemes"))
    else:
        report.write_json(records, json_out, command="schemes")
    report.plot(records, plot, "Veil: time and bytes per scheme")
    console.print(f"wrote {plot}" if to_stdout else f"wrote {json_out} and {plot}")


@bench_app.command("peers")
def peers(
    size: str = typer.Option("1e3", help="vector length for the element-wise comparisons"),
    repeats: int = typer.Option(3, min=1, max=100, help="timed repeats per measurement"),
    json_out: Path = typer.Option(PEERS_JSON, "--json",
                                  help="JSON output file ('-': print it on stdout)"),
    plot: Path = typer.Option(PEERS_PNG, "--plot", help="PNG plot output"),
) -> None:
    """Veil against raw TenSEAL, phe+gmpy2, raw CrypTen and MPyC on this machine, as ratios."""
    from rich.console import Console

    from veil.bench import peers as peer_bench

    n = _sizes(size, "--size")[0]
    to_stdout = is_stdout(json_out)
    if not to_stdout:
        check_output(json_out, "--json")
    check_output(plot, "--plot")
    progress, step = _progress_runner(len(peer_bench.COMPARISONS))
    with progress:
        rows = peer_bench.run_peers(n, repeats=repeats, progress=step)
    console = Console(stderr=to_stdout)
    console.print(peer_bench.table(rows))
    if to_stdout:
        typer.echo(peer_bench.json_text(rows))
    else:
        peer_bench.write_json(rows, json_out)
    peer_bench.plot(rows, plot)
    console.print(f"wrote {plot}" if to_stdout else f"wrote {json_out} and {plot}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")

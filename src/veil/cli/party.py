"""``veil party``: run one party (or the dealer) of a multi-host MPC session.

On each of N hosts (party 0's address and a free port as ``--master``)::

    veil party --rank 0 --world-size 3 --master 10.0.0.1:29500 --job demo --host-dealer
    veil party --rank 1 --world-size 3 --master 10.0.0.1:29500 --job demo
    veil party --rank 2 --world-size 3 --master 10.0.0.1:29500 --job demo

or, to keep the dealer away from every party, drop ``--host-dealer`` and run
``veil party --dealer --world-size 3 --master 10.0.0.1:29500`` on a fourth host.

The job is ``module:function`` or a short alias from :data:`JOB_ALIASES`; ``--arg key=value``
(repeatable) passes ``key="value"`` (a string) to the job as a keyword argument. The job's result
is printed as JSON on stdout (tensors as nested lists).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import sys
from typing import Any

import typer

from veil.errors import ConfigurationError

# Short names for jobs shipped with Veil; extend as subsystems add party jobs.
JOB_ALIASES: dict[str, str] = {
    "demo": "veil.cli.demo:_joint_sum_mean_job",
    "selftest": "veil.mpc._selftest:job",
    "stats": "veil.stats._party:job",
}
_JOB_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_KEY_RE = re.compile(r"^[A-Za-z_]\w*$")


def resolve_job(spec: str) -> Any:
    """``alias`` or ``module:function`` -> the function; ConfigurationError otherwise."""
    target = JOB_ALIASES.get(spec, spec)
    if not _JOB_RE.match(target):
        raise ConfigurationError(
            f"--job must be module:function or one of {sorted(JOB_ALIASES)}, got {spec!r}")
    module_name, _, qualname = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"--job {spec!r}: cannot import {target} ({type(exc).__name__}: {exc}); check the "
            "name and that the module is installed on this host") from exc
    if not callable(obj):
        raise ConfigurationError(f"--job {spec!r}: {target} is not a function")
    return obj


def parse_args(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``; ConfigurationError on malformed or repeated keys."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _KEY_RE.match(key):
            raise ConfigurationError(f"--arg must be key=value with an identifier key, got "
                                     f"{pair!r}")
        if key in out:
            raise ConfigurationError(f"--arg {key} given twice")
        out[key] = value
    return out


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _exit_now(code: int) -> None:
    """End the process without running C++ destructors of torch.distributed's background threads
    (at interpreter shutdown they can abort with "terminate called without an active exception")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def register(app: typer.Typer) -> None:
    @app.command()
    def party(
        rank: int = typer.Option(None, "--rank", "-r", min=0, help="this party's rank, 0..N-1"),
        world_size: int = typer.Option(..., "--world-size", "-n", min=2, max=64,
                                       help="number of parties N (the dealer not counted)"),
        master: str = typer.Option(..., "--master", "-m",
                                   help="HOST:PORT of party 0 (it hosts the session store)"),
        job: str = typer.Option(None, "--job", "-j",
                                help=f"module:function or an alias: {', '.join(JOB_ALIASES)}"),
        arg: list[str] = typer.Option([], "--arg", "-a",
                                      help="key=value passed to the job (repeatable)"),
        timeout: float = typer.Option(60.0, "--timeout", min=0.5,
                                      help="seconds any wait may take before PartyFailure"),
        dealer: bool = typer.Option(False, "--dealer",
                                    help="run the dealer (TTP) instead of a party"),
        host_dealer: bool = typer.Option(False, "--host-dealer",
                                         help="party 0 only: also start the dealer here"),
        provider: str = typer.Option("dealer", "--provider", help="dealer (default) or tfp"),
        allow_party0_sees_inputs: bool = typer.Option(
            False, "--allow-party0-sees-inputs", help="required with --provider tfp"),
        precision_bits: int = typer.Option(16, "--precision-bits", min=0, max=32),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]"),
    ) -> None:
        """Run one party (or the dealer) of a multi-host MPC session over TCP."""
        from veil.mpc._cluster import run_dealer, run_party
        from veil.mpc._party import print_failure_and_exit

        if dealer:
            if rank is not None or job is not None or host_dealer:
                raise ConfigurationError("--dealer takes no --rank, --job or --host-dealer")
            run_dealer(world_size=world_size, master=master, timeout=timeout,
                       _fail_fast=print_failure_and_exit)
            _exit_now(0)
        if rank is None or job is None:
            raise ConfigurationError("a party needs --rank and --job (or pass --dealer)")
        fn = resolve_job(job)
        result = run_party(
            fn, rank=rank, world_size=world_size, master=master, kwargs=parse_args(arg),
            timeout=timeout, provider=provider,
            allow_party0_sees_inputs=allow_party0_sees_inputs, device=device,
            precision_bits=precision_bits, host_dealer=host_dealer,
            _fail_fast=functools.partial(print_failure_and_exit, hosts_store=rank == 0))
        typer.echo(json.dumps(_jsonable(result)))
        _exit_now(0)

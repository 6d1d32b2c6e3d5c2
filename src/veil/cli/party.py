"""``veil party``: run one member (a party or the dealer) of a multi-host MPC session.

With a session manifest (``docs/examples/session.toml``; every member gets the same file and
its own identity from ``veil identity new NAME``), on each host::

    veil party --manifest session.toml --as hospital-a --job demo
    veil party --manifest session.toml --as hospital-b --job demo
    veil party --manifest session.toml --as dealer

Every byte between the members, and to party 0's session store, then travels over mutually
authenticated TLS 1.3, each member pinned to the certificate the manifest lists; a host whose
certificate is not listed cannot join, read or inject anything. The identity's key is sealed
at rest: its passphrase comes from ``--passphrase-env``/``--passphrase-file`` (or
``VEIL_PASSPHRASE``), or ``--key-file``.

The older form, ``veil party --rank R --world-size N --master HOST:PORT`` (party 0 hosts a
store at ``HOST:PORT``; ``--host-dealer`` or ``--dealer``), runs over gloo's plaintext,
unauthenticated TCP and needs ``--insecure-plaintext`` by name.

The job is ``module:function`` or a short alias from :data:`JOB_ALIASES`; ``--arg key=value``
(repeatable) passes ``key="value"`` (a string) to the job as a keyword argument. The arguments
are checked against the job's signature (and its ``preflight``, if it has one: the stats job
checks its CSV) before the party joins, so a mistake is reported at once. ``--ledger``,
``--dataset-name`` and ``--audit`` are passed to the stats job the same way. The job's result
is printed as JSON on stdout (tensors as nested lists).
"""
from __future__ import annotations

import functools
import importlib
import inspect
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
    "selftest": "veil.mpc.selftest:job",
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


def check_job_args(spec: str, fn: Any, kwargs: dict[str, str]) -> None:
    """Before joining the session: the job takes these ``--arg``s (and its own ``preflight``
    accepts them: e.g. the stats job's data file exists); ConfigurationError otherwise."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins: nothing to check here
        return
    try:
        sig.bind(None, **kwargs)
    except TypeError as exc:
        params = [p for p in list(sig.parameters.values())[1:]
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        need = [p.name for p in params if p.default is p.empty]
        opt = [p.name for p in params if p.default is not p.empty]
        raise ConfigurationError(
            f"--job {spec}: {exc}; it takes --arg " + ", ".join(f"{n}=..." for n in need)
            + (f" and optionally {', '.join(opt)}" if opt else "")) from None
    preflight = getattr(fn, "preflight", None)
    if callable(preflight):
        preflight(**kwargs)


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
        manifest: str = typer.Option(None, "--manifest", help="session manifest (TOML/JSON): "
                                     "the members, their addresses and certificates"),
        as_: str = typer.Option(None, "--as", help="--manifest: which member this is"),
        identity: str = typer.Option(None, "--identity", help="--manifest: this member's "
                                     "sealed key (default: NAME.key beside the manifest)"),
        passphrase_env: str = typer.Option(None, "--passphrase-env", metavar="VAR",
                                           help="the identity's passphrase is in env VAR"),
        passphrase_file: str = typer.Option(None, "--passphrase-file", metavar="FILE",
                                            help="the identity's passphrase is in FILE"),
        key_file: str = typer.Option(None, "--key-file", metavar="FILE",
                                     help="the identity is sealed under this key file"),
        listen: str = typer.Option(None, "--listen", help="--manifest: HOST:PORT to listen "
                                   "on, if not the manifest's address (NAT)"),
        rank: int = typer.Option(None, "--rank", "-r", min=0, help="this party's rank, 0..N-1"),
        world_size: int = typer.Option(None, "--world-size", "-n", min=2, max=64,
                                       help="number of parties N (the dealer not counted)"),
        master: str = typer.Option(None, "--master", "-m",
                                   help="HOST:PORT of party 0 (it hosts the session store)"),
        insecure_plaintext: bool = typer.Option(
            False, "--insecure-plaintext", help="--master: accept gloo's plaintext, "
            "unauthenticated TCP (anyone on the network can read shares or join)"),
        job: str = typer.Option(None, "--job", "-j",
                                help=f"module:function or an alias: {', '.join(JOB_ALIASES)}"),
        arg: list[str] = typer.Option([], "--arg", "-a",
                                      help="key=value passed to the job (repeatable)"),
        timeout: float = typer.Option(None, "--timeout", min=0.5,
                                      help="seconds any wait may take before PartyFailure "
                                      "(default: the manifest's, else 60)"),
        dealer: bool = typer.Option(False, "--dealer",
                                    help="run the dealer (TTP) instead of a party"),
        host_dealer: bool = typer.Option(False, "--host-dealer",
                                         help="party 0 only: also start the dealer here"),
        provider: str = typer.Option("dealer", "--provider", help="dealer (default) or tfp"),
        allow_party0_sees_inputs: bool = typer.Option(
            False, "--allow-party0-sees-inputs", help="required with --provider tfp"),
        precision_bits: int = typer.Option(16, "--precision-bits", min=0, max=32),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]"),
        ledger: str = typer.Option(None, "--ledger",
                                   help="--job stats: charge releases to this budget ledger"),
        dataset_name: str = typer.Option(None, "--dataset-name",
                                         help="--job stats: this party's dataset in the ledger"),
        audit: str = typer.Option(None, "--audit",
                                  help="--job stats: append a record to this audit log"),
    ) -> None:
        """Run one member of a multi-host MPC session: over mutually authenticated TLS with
        --manifest (recommended), or over plaintext gloo with --master --insecure-plaintext."""
        # torch's C++ logs (a warning per connection retry, with stack frames) would bury the
        # one-line report; our messages carry the causes. Set before torch is imported.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
        from veil.mpc.host import exit_on_interrupt

        exit_on_interrupt(130)  # Ctrl-C ends the party at once, even inside a C++ wait
        common = dict(timeout=timeout, provider=provider,
                      allow_party0_sees_inputs=allow_party0_sees_inputs, device=device,
                      precision_bits=precision_bits)
        extra = {"ledger": ledger, "dataset_name": dataset_name, "audit": audit}
        if manifest is not None:
            if master is not None or rank is not None or world_size is not None or dealer \
                    or host_dealer:
                raise ConfigurationError(
                    "--manifest names every member: drop --master, --rank, --world-size, "
                    "--dealer and --host-dealer (use --as NAME)")
            secret = dict(passphrase_env=passphrase_env, passphrase_file=passphrase_file,
                          key_file=key_file)
            _run_manifest(manifest, as_, identity, secret, listen, job, arg, extra, common)
        else:
            _run_master(rank, world_size, master, insecure_plaintext, dealer, host_dealer,
                        job, arg, extra, common)


def _job_and_kwargs(job: str | None, arg: list[str], extra: dict[str, Any]
                    ) -> tuple[Any, dict[str, str]]:
    if job is None:
        raise ConfigurationError("a party needs --job (module:function or an alias: "
                                 f"{', '.join(JOB_ALIASES)})")
    fn = resolve_job(job)
    kwargs = parse_args(arg)
    for key, value in extra.items():
        if value is not None:
            if key in kwargs:
                raise ConfigurationError(f"--{key.replace('_', '-')} and --arg {key}= "
                                         "given both; keep one")
            kwargs[key] = value
    check_job_args(job, fn, kwargs)
    return fn, kwargs


def _run_manifest(path: str, name: str | None, identity_path: str | None,
                  secret_opts: dict[str, Any], listen: str | None, job: str | None,
                  arg: list[str], extra: dict[str, Any], common: dict[str, Any]) -> None:
    from pathlib import Path

    from veil.mpc.host import parse_master, print_failure_and_exit, run_member
    from veil.trust.identity import Identity
    from veil.trust.manifest import load_manifest
    from veil.trust.seal import Secret

    if not name:
        raise ConfigurationError("--manifest needs --as NAME: which member of it this is")
    session = load_manifest(path)
    member = session.member(name)
    key_path = Path(identity_path) if identity_path else Path(path).parent / f"{name}.key"
    ident = Identity.load(key_path, Secret.resolve(**secret_opts))
    if ident.fingerprint != member.fingerprint:
        raise ConfigurationError(
            f"the identity {key_path} ({ident.fingerprint}) is not {name!r}'s: the manifest "
            f"lists {member.fingerprint} for it; use {name}'s key or update the manifest")
    fn, kwargs = (None, {}) if member.is_dealer else _job_and_kwargs(job, arg, extra)
    bind = parse_master(listen) if listen else None
    result = run_member(fn, manifest=session, identity=ident, kwargs=kwargs, bind=bind,
                        _fail_fast=functools.partial(print_failure_and_exit,
                                                     hosts_store=member.rank == 0),
                        **common)
    typer.echo(json.dumps(_jsonable(result)))
    _exit_now(0)


def _run_master(rank: int | None, world_size: int | None, master: str | None,
                insecure: bool, dealer: bool, host_dealer: bool, job: str | None,
                arg: list[str], extra: dict[str, Any], common: dict[str, Any]) -> None:
    from veil.mpc.host import print_failure_and_exit, run_dealer, run_party

    if master is None or world_size is None:
        raise ConfigurationError(
            "give --manifest FILE --as NAME (authenticated TLS), or --master HOST:PORT and "
            "--world-size N with --insecure-plaintext")
    if not insecure:
        raise ConfigurationError(
            "--master runs the session over gloo's plaintext, unauthenticated TCP: anyone on "
            "the network can read the shares or join as a party. Use --manifest FILE --as "
            "NAME (mutually authenticated TLS), or pass --insecure-plaintext to accept that")
    common["timeout"] = common["timeout"] or 60.0
    if dealer:
        if rank is not None or job is not None or host_dealer:
            raise ConfigurationError("--dealer takes no --rank, --job or --host-dealer")
        run_dealer(world_size=world_size, master=master, timeout=common["timeout"],
                   _fail_fast=print_failure_and_exit)
        _exit_now(0)
    if rank is None:
        raise ConfigurationError("a party needs --rank and --job (or pass --dealer)")
    fn, kwargs = _job_and_kwargs(job, arg, extra)
    result = run_party(
        fn, rank=rank, world_size=world_size, master=master, kwargs=kwargs,
        host_dealer=host_dealer,
        _fail_fast=functools.partial(print_failure_and_exit, hosts_store=rank == 0), **common)
    typer.echo(json.dumps(_jsonable(result)))
    _exit_now(0)

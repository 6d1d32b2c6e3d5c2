"""One member (party or dealer) of a session that spans several hosts.

``veil party --manifest FILE --as NAME`` calls :func:`run_member`: the manifest names every
member, its address and its certificate; every byte between members and to party 0's session
store goes over mutually authenticated TLS 1.3 (:mod:`veil.mpc._runtime.wiring`). The dealer,
if the manifest lists one, is one more member (rank N) on a host of its own.

The older plaintext form, ``veil party --rank R --world-size N --master HOST:PORT
--insecure-plaintext``, calls :func:`run_party` / :func:`run_dealer`: party 0 hosts a TCPStore
at ``HOST:PORT`` and gloo connects every pair of processes, unencrypted and unauthenticated.
``--host-dealer`` makes party 0 fork the dealer on its own host (whoever controls party 0's host
can then read the dealer's memory, which gives it every input, as ``provider="tfp"`` would).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from veil.errors import ConfigurationError
from veil.mpc.providers import DEFAULT_TIMEOUT, make_config

__all__ = ["run_party", "run_dealer", "run_member"]


def run_party(
    job: Callable[..., Any],
    *,
    rank: int,
    world_size: int,
    master: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    provider: str = "dealer",
    allow_party0_sees_inputs: bool = False,
    device: str = "auto",
    precision_bits: int = 16,
    host_dealer: bool = False,
    _fail_fast: Callable[[Any], None] | None = None,
) -> Any:
    """Run party ``rank`` of a multi-host session in this process; returns the job's result.

    Raises :class:`~veil.errors.PartyFailure` naming the rank and phase if this or another
    process fails (within ``timeout`` seconds plus a few for the diagnosis).
    """
    from veil.mpc._runtime.party import parse_master, run_process

    config = make_config(world_size=world_size, provider=provider, timeout=timeout,
                         allow_party0_sees_inputs=allow_party0_sees_inputs,
                         precision_bits=precision_bits, device=device)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigurationError(
            f"rank must be in 0..{world_size - 1} for --world-size {world_size}, got {rank!r}")
    parse_master(master)
    from veil.mpc.device import resolve

    resolve(config.device, rank=rank)  # an unknown device is refused before any connection
    if host_dealer and (rank != 0 or not config.has_dealer):
        raise ConfigurationError(
            "host_dealer (--host-dealer) is only for party 0 with provider='dealer'; got "
            f"rank={rank}, provider={provider!r}")
    dealer = _start_local_dealer(master, config) if host_dealer else None
    try:
        return run_process(job, rank=rank, master=master, config=config, args=tuple(args),
                           kwargs=kwargs, fail_fast=_fail_fast)
    finally:
        if dealer is not None:
            from veil.mpc._runtime.launch import kill_all

            proc, conns = dealer
            kill_all([proc], graceful=True)
            for c in conns:
                c.close()


def run_dealer(
    *,
    world_size: int,
    master: str,
    timeout: float = DEFAULT_TIMEOUT,
    _fail_fast: Callable[[Any], None] | None = None,
) -> None:
    """Run the dealer (CrypTen's TTP) of a multi-host session until party 0 ends it.

    The dealer holds no inputs; it hands out correlated randomness and learns nothing about the
    inputs unless it colludes with a party.
    """
    from veil.mpc._runtime.party import parse_master, run_process

    config = make_config(world_size=world_size, provider="dealer", timeout=timeout)
    parse_master(master)
    run_process(None, rank=world_size, master=master, config=config, fail_fast=_fail_fast)


def run_member(
    job: Callable[..., Any] | None,
    *,
    manifest: Any,
    identity: Any,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    timeout: float | None = None,
    provider: str = "dealer",
    allow_party0_sees_inputs: bool = False,
    device: str = "auto",
    precision_bits: int = 16,
    bind: tuple[str, int] | None = None,
    _fail_fast: Callable[[Any], None] | None = None,
) -> Any:
    """Run the member of ``manifest`` that ``identity`` is (a party, or the dealer).

    Every byte to the other members (and to party 0's session store) goes over mutually
    authenticated TLS 1.3, pinned to the certificates the manifest lists; see
    :mod:`veil.mpc._runtime.wiring`. ``job`` is ignored for the dealer. ``timeout`` defaults
    to the manifest's, then to 60 s. ``bind``: listen there instead of on our manifest address
    (behind NAT). Returns the job's result (``None`` for the dealer).
    """
    from veil.mpc._runtime.party import run_process
    from veil.mpc._runtime.wiring import manifest_wiring

    wiring = manifest_wiring(manifest, identity, bind=bind)
    me = manifest.by_fingerprint(identity.fingerprint)
    if manifest.dealer is None and provider == "dealer":
        raise ConfigurationError(
            f"the manifest {manifest.source or ''} lists no [dealer], and provider='dealer' "
            "needs one; add the dealer's entry, or pass provider='tfp' (party 0 then sees "
            "every input) with allow_party0_sees_inputs=True")
    if manifest.dealer is not None and provider != "dealer":
        raise ConfigurationError(
            f"the manifest lists a dealer but provider={provider!r}; drop the [dealer] entry "
            "or use provider='dealer'")
    config = make_config(world_size=manifest.world_size, provider=provider,
                         timeout=timeout or manifest.timeout or DEFAULT_TIMEOUT,
                         allow_party0_sees_inputs=allow_party0_sees_inputs,
                         precision_bits=precision_bits, device=device)
    if not me.is_dealer:
        from veil.mpc.device import resolve

        resolve(config.device, rank=me.rank)
    first = manifest.by_rank(0)
    return run_process(None if me.is_dealer else job, rank=me.rank,
                       master=first.address, config=config, args=tuple(args), kwargs=kwargs,
                       fail_fast=_fail_fast, wiring=wiring)


def _start_local_dealer(master: str, config: Any) -> tuple[Any, list[Any]]:
    """Fork the dealer from this party process before it opens any socket or thread pool.

    torch and crypten are already imported here, so a fork starts the dealer at once (a
    forkserver would import them a second time). The child dies with this process.
    """
    import multiprocessing

    from veil.mpc._crypten import import_crypten
    from veil.mpc._runtime.launch import child_main

    import_crypten()
    ctx = multiprocessing.get_context("fork")
    out_r, out_w = ctx.Pipe(duplex=False)
    life_r, life_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_main, daemon=True, name="veil-mpc-dealer",
                       args=(config.world_size, master, config, None, (), out_w, life_r))
    proc.start()
    out_w.close()
    life_r.close()
    return proc, [out_r, life_w]

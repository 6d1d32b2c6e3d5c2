"""Where Beaver triples and other correlated randomness come from.

``"dealer"`` (the default) is CrypTen's trusted third party (TTP): a separate process, rank
``world_size``, that holds no inputs. It shares a PRG seed with every party and sends party 0 the
correction term of each triple. It learns no input and no intermediate value *as long as it does not
collude with any party*: with the seeds it can compute every party's triple shares, so together with
the values that the parties open during multiplication (held by every party) it could recover the
inputs. Run it on a host that none of the parties controls when that matters (see
``docs/security/mpc.md``).

``"tfp"`` is CrypTen's trusted first party: party 0 generates every triple, so party 0 can learn
every input. It needs the explicit opt-in ``allow_party0_sees_inputs=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

from veil.errors import ConfigurationError

__all__ = ["PROVIDERS", "SessionConfig", "make_config"]

PROVIDERS = ("dealer", "tfp")
_CRYPTEN_NAME = {"dealer": "TTP", "tfp": "TFP"}
MIN_PRECISION_BITS, MAX_PRECISION_BITS = 0, 32
MAX_PARTIES = 64
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class SessionConfig:
    """Settings shared by every process of one session (parties and dealer).

    ``timeout`` bounds every wait (each communication, the final barrier), in seconds; the
    rendezvous waits ``max(timeout, 30)`` seconds (process start-up can be slow on a busy host).
    """

    world_size: int
    provider: str = "dealer"
    timeout: float = DEFAULT_TIMEOUT
    precision_bits: int = 16
    device: str = "auto"

    @property
    def crypten_provider(self) -> str:
        return _CRYPTEN_NAME[self.provider]

    @property
    def has_dealer(self) -> bool:
        return self.provider == "dealer"

    @property
    def dealer_rank(self) -> int:
        return self.world_size


def make_config(
    *,
    world_size: int,
    provider: str = "dealer",
    allow_party0_sees_inputs: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    precision_bits: int = 16,
    device: str = "auto",
) -> SessionConfig:
    """Validate session settings; raises :class:`ConfigurationError` naming the bad value."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or not (
        2 <= world_size <= MAX_PARTIES
    ):
        raise ConfigurationError(
            f"parties must be an int in 2..{MAX_PARTIES}, got {world_size!r}; secret sharing "
            "needs at least two parties"
        )
    if provider not in PROVIDERS:
        raise ConfigurationError(
            f"provider must be one of {PROVIDERS}, got {provider!r}; use 'dealer' (a separate "
            "process that holds no inputs) unless you know you want 'tfp'"
        )
    if provider == "tfp" and allow_party0_sees_inputs is not True:
        raise ConfigurationError(
            "provider='tfp' lets party 0 generate every Beaver triple and therefore learn every "
            "input; pass allow_party0_sees_inputs=True by name to accept that, or use the default "
            "provider='dealer'"
        )
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
        0.5 <= float(timeout) <= 86400.0
    ):
        raise ConfigurationError(
            f"timeout must be a number of seconds in 0.5..86400, got {timeout!r}"
        )
    if isinstance(precision_bits, bool) or not isinstance(precision_bits, int) or not (
        MIN_PRECISION_BITS <= precision_bits <= MAX_PRECISION_BITS
    ):
        raise ConfigurationError(
            f"precision_bits must be an int in {MIN_PRECISION_BITS}..{MAX_PRECISION_BITS} "
            f"(fractional bits of the fixed-point encoding), got {precision_bits!r}"
        )
    dev = str(device)
    if not dev or len(dev) > 32:
        raise ConfigurationError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}")
    return SessionConfig(
        world_size=world_size,
        provider=provider,
        timeout=float(timeout),
        precision_bits=precision_bits,
        device=dev,
    )

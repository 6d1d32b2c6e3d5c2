"""The lock-step order of a two-party preprocessing protocol's calls (shared by its parties)."""

from __future__ import annotations

from veil.errors import ConfigurationError

__all__ = ["check_step"]


def check_step(steps: tuple[str, ...], done: int, step: str, owner: str = "TripleParty") -> None:
    """Refuse ``step`` unless it is ``steps[done]``. Callers move ``done`` only after a step
    succeeds, so a rejected message can be retried with the right bytes."""
    if done == len(steps):
        raise ConfigurationError(f"{owner}.{step}(): this party has finished; create a new "
                                 f"{owner} for more triples")
    if steps[done] != step:
        raise ConfigurationError(f"{owner}.{step}() called out of order; the next step is "
                                 f"{steps[done]}() (use a fresh party to restart)")

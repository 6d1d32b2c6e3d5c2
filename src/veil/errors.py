"""The one exception hierarchy of Veil.

Every error Veil raises is a :class:`VeilError` and also an instance of the matching builtin, so
``except ValueError`` keeps working for callers that do not know Veil. Messages say what failed,
show the offending value and say how to fix it. Foundation exceptions (TenSEAL, phe, CrypTen,
torch.distributed) are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "VeilError",
    "ConfigurationError",
    "InsecureParametersError",
    "BackendUnavailableError",
    "UnsupportedOperationError",
    "UnsupportedLayerError",
    "KeyMismatchError",
    "DepthExhaustedError",
    "SerializationError",
    "UnsealError",
    "PartyFailure",
    "PrivacyBudgetExceeded",
    "PolicyViolation",
    "AggregationAborted",
    "RemoteServiceError",
    "AuthenticationError",
    "CertificateError",
]


class VeilError(Exception):
    """Base class of every error raised by Veil."""


class ConfigurationError(VeilError, ValueError):
    """Bad parameters or bad input values (NaN, wrong shape, out of range, ...)."""


class InsecureParametersError(ConfigurationError):
    """Parameters below 128-bit security; pass ``allow_insecure=True`` by name to opt out."""


class BackendUnavailableError(VeilError, ImportError):
    """A foundation library (crypten, tenseal, phe, ...) is missing or cannot be imported.

    The message names the missing package and the command that installs it.
    """


class UnsupportedOperationError(VeilError, TypeError):
    """The operation is not supported by this backend / scheme / type."""


class UnsupportedLayerError(UnsupportedOperationError):
    """A model layer cannot be converted for the requested scheme."""


class KeyMismatchError(VeilError, ValueError):
    """Operands come from different contexts or keys."""


class DepthExhaustedError(VeilError, ArithmeticError):
    """A computation needs more multiplicative depth than the parameters provide."""


class SerializationError(VeilError, ValueError):
    """A payload is malformed, truncated, oversized, of the wrong kind or for other parameters."""


class UnsealError(VeilError, ValueError):
    """A sealed secret could not be opened: wrong passphrase or key, altered or truncated file.

    Raised by :mod:`veil.trust.seal` when authenticated decryption fails; the message never
    shows the secret or the plaintext.
    """


class PartyFailure(VeilError, RuntimeError):
    """A party of a multi-party session died, hung or disconnected.

    ``rank`` is the failed party (``None`` when unknown) and ``phase`` what the session was doing.
    """

    def __init__(self, message: str, *, rank: int | None = None, phase: str | None = None) -> None:
        super().__init__(message)
        self.rank = rank
        self.phase = phase

    def __reduce__(self):  # keep rank/phase across process boundaries
        return (_rebuild_party_failure, (str(self), self.rank, self.phase))


def _rebuild_party_failure(message: str, rank: int | None, phase: str | None) -> PartyFailure:
    return PartyFailure(message, rank=rank, phase=phase)


class PrivacyBudgetExceeded(VeilError, RuntimeError):
    """A release would spend more differential-privacy budget than is left."""


class PolicyViolation(VeilError, PermissionError):
    """A release breaks a release policy (for example a cohort smaller than the minimum)."""


class AggregationAborted(VeilError, RuntimeError):
    """A secure-aggregation round cannot finish (for example fewer survivors than the threshold)."""


class RemoteServiceError(VeilError, ConnectionError):
    """A remote Veil service (e.g. the inference server) was unreachable, timed out or failed.

    ``status`` is the HTTP status when there was one, ``phase`` the step that failed.
    """

    def __init__(self, message: str, *, status: int | None = None,
                 phase: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.phase = phase

    def __reduce__(self):
        return (_rebuild_remote_error, (type(self), str(self), self.status, self.phase))


class AuthenticationError(RemoteServiceError):
    """The server refused the client's credentials (HTTP 401): missing, unknown or bad token."""


class CertificateError(RemoteServiceError):
    """The server's TLS certificate could not be verified (unknown CA, wrong host, expired)."""


def _rebuild_remote_error(cls: type[RemoteServiceError], message: str, status: int | None,
                          phase: str | None) -> RemoteServiceError:
    return cls(message, status=status, phase=phase)

"""Every change Veil makes to CrypTen, torch and the standard library, in one ordered table.

:data:`PATCHES` lists each patch point (name, target, what it replaces, why) in the order it is
applied. Stages:

* ``"import"``: applied by :func:`import_crypten`, i.e. wherever Veil uses CrypTen;
* ``"session"``: applied by :func:`install` in every party and dealer process (the local launcher,
  ``veil party``, the dealer and the test harness all call it), before or right after
  ``crypten.init()``; it applies the import stage first;
* ``"scoped"``: applied only for the duration of one block by the function named in
  ``applied_by`` and undone afterwards (listed here so that the table is complete).

Each stage is applied once per process (guarded by a lock; a second call is a no-op). Before
anything is changed every target of the stage is looked up: a missing module or attribute (a
CrypTen or torch that moved something) raises :class:`~veil.errors.BackendUnavailableError`
naming it, so a patch is never skipped silently.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from veil.errors import BackendUnavailableError
from veil.mpc import accounting
from veil.mpc._crypten import compat, messages, rng

__all__ = ["PatchPoint", "PATCHES", "STAGES", "import_crypten", "install", "applied", "resolve"]

STAGES = ("import", "session", "scoped")


@dataclass(frozen=True)
class PatchPoint:
    """One place where Veil replaces something of CrypTen, torch or the standard library.

    ``target`` is the dotted path of the attribute that is replaced (``crypten.…`` is looked up
    on the ``crypten`` module being patched). ``make(original)`` returns the replacement
    (``None`` for scoped patches, which ``applied_by`` applies for one block).
    """

    name: str
    stage: str
    target: str
    replaces: str
    why: str
    make: Callable[[Any], Any] | None = None
    applied_by: str = "veil.mpc._crypten.patches.install"


def _same(value: Any) -> Callable[[Any], Any]:
    return lambda _original: value


def _rng_copies() -> tuple[PatchPoint, ...]:
    modules = (
        ("crypten.common.rng", ("generate_random_ring_element", "generate_kbit_random_tensor")),
        ("crypten.mpc.primitives.arithmetic", ("generate_random_ring_element",)),
        ("crypten.mpc.primitives.binary", ("generate_kbit_random_tensor",)),
        ("crypten.mpc.provider.tfp_provider",
         ("generate_random_ring_element", "generate_kbit_random_tensor")),
        ("crypten.mpc.provider.ttp_provider",
         ("generate_random_ring_element", "generate_kbit_random_tensor")),
    )
    return tuple(
        PatchPoint(f"rng.{module.removeprefix('crypten.')}.{fn}", "session", f"{module}.{fn}",
                   "torch.randint / torch.Generator (MT19937, 64-bit seeds)",
                   "every share, mask and triple comes from ChaCha20 keyed from os.urandom "
                   "(functions imported by name are replaced in each importing module)",
                   _same(getattr(rng, fn)))
        for module, fns in modules for fn in fns)


def _accounting_points() -> tuple[PatchPoint, ...]:
    comm = "crypten.communicator.DistributedCommunicator"
    calls = tuple(
        PatchPoint(f"accounting.call.{name}", "session", f"{comm}.{name}",
                   f"{name} without byte counts (CrypTen counts only in verbose mode)",
                   "always-on, exact byte and round counts (veil.mpc.accounting)",
                   lambda fn, name=name: accounting.wrap_call(name, fn))
        for name in accounting.TENSOR_CALLS)
    ops = tuple(
        PatchPoint(f"accounting.op.{attr}", "session", f"crypten.mpc.MPCTensor.{attr}",
                   f"MPCTensor.{attr} unattributed",
                   f"communication inside it is attributed to {op!r}",
                   lambda fn, op=op: accounting.wrap_op(op, fn))
        for attr, op in (*((n, n) for n in accounting.TRACKED_OPS),
                         *accounting.OPERATORS.items()))
    return calls + ops


_COMM = "crypten.communicator.DistributedCommunicator"
_SERIAL = "crypten.common.serial"
_TTP = "crypten.mpc.provider.ttp_provider"

PATCHES: tuple[PatchPoint, ...] = (
    PatchPoint("onnx-registration-stand-in", "scoped", "sys.modules",
               "the entry torch.onnx._internal.registration, gone from current torch",
               "crypten/nn/onnx_converter.py imports it, so `import crypten` fails without it; "
               "the stand-in refuses every use and is removed after the import",
               applied_by="veil.mpc._crypten.compat.load_crypten"),
    PatchPoint("fixed-point-decode", "import", "crypten.encoder.FixedPointEncoder.decode",
               "CrypTen's decode, which floors negative encodings by scale - 1",
               "revealed negative non-integers were off by up to -1",
               compat.make_fixed_point_decode),
    PatchPoint("messages.send_obj", "session", f"{_COMM}.send_obj", "pickle-based send_obj",
               "no pickle crosses a process boundary", _same(messages.send_obj)),
    PatchPoint("messages.recv_obj", "session", f"{_COMM}.recv_obj",
               "recv_obj: RestrictedUnpickler, peer-chosen buffer size",
               "size checked before allocation, nothing unpickled", _same(messages.recv_obj)),
    PatchPoint("messages.broadcast_obj", "session", f"{_COMM}.broadcast_obj",
               "pickle-based broadcast_obj", "receivers check size and format, never unpickle",
               _same(messages.broadcast_obj)),
    PatchPoint("messages.restricted_loads", "session", f"{_SERIAL}.restricted_loads",
               "CrypTen's restricted unpickler", "any other unpickling of peer bytes is an error",
               _same(messages.refuse_pickle)),
    PatchPoint("messages.register_safe_class", "session", f"{_SERIAL}.register_safe_class",
               "growing the unpickler's allowlist at run time", "the allowlist cannot grow",
               _same(messages.refuse_register)),
    *_rng_copies(),
    PatchPoint("rng.ttp-client-setup", "session",
               f"{_TTP}.TTPClient._TTPClient__TTPClient._setup_generators",
               "a 64-bit seed from the dealer for torch generators",
               "the dealer sends a 256-bit ChaCha20 key", _same(rng.client_setup)),
    PatchPoint("rng.ttp-server-setup", "session", f"{_TTP}.TTPServer._setup_generators",
               "the dealer's seeds from torch's global generator",
               "one fresh 256-bit key per party, sent to that party only",
               _same(rng.server_setup)),
    PatchPoint("rng.setup-prng", "session", "crypten._setup_prng",
               "PRSS generators seeded with 64 bits", "pairwise 256-bit keys agreed at init",
               _same(rng.setup_prng)),
    PatchPoint("rng.manual-seed", "session", "crypten.manual_seed", "seeding of the generators",
               "shares cannot be seeded: refused", _same(rng.refuse_manual_seed)),
    *_accounting_points(),
    PatchPoint("process-group-store", "scoped", "torch.distributed.init_process_group",
               "CrypTen's rendezvous (init_method, gloo's 30-minute default timeout)",
               "the session store and the session's timeout",
               applied_by="veil.mpc._runtime.party.run_process (during crypten.init)"),
    PatchPoint("process-group-timeout", "scoped", "torch.distributed.new_group",
               "groups with gloo's 30-minute default timeout", "the session's timeout",
               applied_by="veil.mpc._runtime.party.run_process (during crypten.init)"),
    PatchPoint("spawn-preparation", "scoped", "multiprocessing.spawn.get_preparation_data",
               "re-running the __main__ script in every party",
               "jobs from importable modules start without it",
               applied_by="veil.mpc._runtime.launch.run (while starting the parties)"),
)

_lock = threading.RLock()
_done: dict[str, Any] = {}  # stage -> the crypten module it was applied to
_counts: dict[str, int] = {p.name: 0 for p in PATCHES}
_values: dict[str, Any] = {}  # name -> the replacement that was installed


def resolve(crypten: Any, path: str) -> tuple[Any, str]:
    """(owner, attribute) of the dotted ``path``; BackendUnavailableError if anything is missing.

    ``crypten…`` paths are looked up on ``crypten``; others are imported.
    """
    parts = path.split(".")
    if parts[0] == "crypten":
        owner, rest = crypten, parts[1:-1]
    else:
        for i in range(len(parts) - 1, 0, -1):
            try:
                owner = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            rest = parts[i:-1]
            break
        else:
            raise BackendUnavailableError(f"Veil's patch target {path} cannot be imported")
    try:
        for part in rest:
            owner = getattr(owner, part)
        inspect.getattr_static(owner, parts[-1])
    except AttributeError as exc:
        raise BackendUnavailableError(
            f"Veil's patch target {path} is missing ({exc}); this CrypTen/torch build differs "
            f"from the one Veil supports (crypten 0.4.1): {compat.INSTALL_HINT}") from exc
    return owner, parts[-1]


def _apply(crypten: Any, stage: str) -> None:
    if _done.get(stage) is crypten:
        return
    points = [p for p in PATCHES if p.stage == stage]
    targets = [resolve(crypten, p.target) for p in points]  # every target, before any change
    for point, (owner, attr) in zip(points, targets, strict=True):
        make = point.make
        if make is None:  # pragma: no cover - every non-scoped point has one (see the test)
            raise BackendUnavailableError(f"patch point {point.name} has nothing to install")
        value = make(inspect.getattr_static(owner, attr))
        setattr(owner, attr, value)
        _values[point.name] = value
        _counts[point.name] += 1
    _done[stage] = crypten


def import_crypten() -> Any:
    """Import and return ``crypten`` with the import-stage patches (the decoder fix) applied.

    Raises :class:`BackendUnavailableError` naming the install command when crypten (or one of
    the packages it needs at import time) is missing.
    """
    crypten = compat.load_crypten()
    if _done.get("import") is not crypten:
        with _lock:
            _apply(crypten, "import")
    return crypten


def install(crypten: Any) -> None:
    """Apply every import- and session-stage patch point to ``crypten``, once per process.

    Idempotent and thread-safe. Each scoped target is checked too. If ``crypten`` is already
    initialized in a party process and its keys are still CrypTen's 64-bit ones, fresh 256-bit
    keys are agreed now (:func:`veil.mpc._crypten.rng.rekey_if_initialized`): every party (and,
    for the dealer provider, the dealer's patched set-up) must take part.
    """
    with _lock:
        if _done.get("session") is not crypten:
            for point in PATCHES:
                if point.stage == "scoped":
                    resolve(crypten, point.target)
            _apply(crypten, "import")
            rng.bind(crypten)
            _apply(crypten, "session")
            crypten._veil_rng_installed = True
            crypten.communicator.DistributedCommunicator._veil_safe_messages = True
            crypten.communicator.DistributedCommunicator._veil_accounting = True
    rng.rekey_if_initialized(crypten)


def applied() -> dict[str, tuple[int, Any]]:
    """Patch point name -> (times applied in this process, the value installed)."""
    with _lock:
        return {name: (_counts[name], _values.get(name)) for name in _counts}

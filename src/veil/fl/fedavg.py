"""Federated averaging over simulated clients with secure aggregation (and optional DP).

Each client is a separate process (``processes=True``, the default) holding its own shard of
scikit-learn's digits data set (:mod:`veil.fl.digits`); only wire bytes cross the process
boundary (no pickle of messages). Every round the server sends the global model, each sampled
client trains locally and sends its model *delta* through secure aggregation
(:mod:`veil.protocols.secagg`), and the server adds the mean delta to the global model.

What is revealed to whom: the server learns, per round, the sum of the surviving clients'
(clipped, quantized, optionally noised) deltas, the total clip count, and who dropped; clients
learn only the global models. With ``dp`` (a :class:`~veil.privacy.FederatedDP`) set, every
client clips its delta to L2 norm ``l2_clip`` and adds Gaussian noise of standard deviation
``noise_multiplier * l2_clip / sqrt(t - 1)`` (t = the SecAgg threshold), so in any aggregate of
at least t survivors the *other* clients' noise alone has standard deviation at least
``noise_multiplier * l2_clip`` (against the server; colluding clients can subtract their own
noise, which lowers the effective multiplier proportionally): client-level
(epsilon, delta)-DP for the released models, accounted with RDP (:mod:`veil.privacy.accountant`).
Poisson client sampling (``sample_rate < 1``) uses ``secrets``; amplification by sampling assumes
the server cannot see who was sampled beyond the aggregate (see docs/security/aggregation.md).

Clients do not trust the server: each takes its SecAgg threshold, clip range, ring size and DP
parameters from its own :class:`FedAvgConfig` (given at process start), never from the server's
per-round header, which carries only the round number, the round id, the server's key and the
sampled participants. Each client also gets its long-term Ed25519 identity key and the identity
directory of all clients at process start (here the launching process plays the role of the
out-of-band PKI), so SecAgg's consistency round holds against a lying server.

Model initialisation and local shuffling use locally seeded ``torch.Generator`` objects (not key
material); torch's global generator is never seeded.
"""

from __future__ import annotations

import json
import secrets
import struct
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from veil.errors import AggregationAborted, ConfigurationError, PartyFailure, SerializationError
from veil.fl.digits import accuracy, load_digits_split, make_model
from veil.fl.rounds import client_participants, identities, round_params
from veil.privacy import FederatedDP, sample_gaussian
from veil.protocols.secagg import (
    PHASES,
    IdentityDirectory,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    drive_round,
)

__all__ = ["FedAvgConfig", "RoundRecord", "FedAvgResult", "train_fedavg"]

_OK, _ERR = 0, 1
_OP_TRAIN, _OP_SHARE, _OP_MASKED, _OP_UNMASK, _OP_STOP, _OP_CONSISTENCY = 1, 2, 3, 4, 5, 6
_PHASE_OF_OP = {_OP_TRAIN: "advertise", _OP_SHARE: "share", _OP_MASKED: "masked",
                _OP_CONSISTENCY: "consistency", _OP_UNMASK: "unmask"}
_OP_OF_PHASE = {phase: op for op, phase in _PHASE_OF_OP.items()}
_U32 = struct.Struct(">I")
_MAX_FRAME = 64 * 1024 * 1024


@dataclass(frozen=True)
class FedAvgConfig:
    """Training and aggregation settings. ``aggregation`` is ``"masking"`` or ``"plain"`` (the
    insecure baseline: the server sees every update). ``clip`` is SecAgg's per-coordinate
    quantization range; with DP it is widened automatically to cover the noise."""

    num_clients: int = 5
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.3
    hidden: int = 32
    aggregation: str = "masking"
    clip: float = 1.0
    threshold: int = 0
    ring_bits: int = 32
    dp: FederatedDP | None = None
    seed: int = 0
    processes: bool = True
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.aggregation not in ("masking", "plain"):
            raise ConfigurationError(f"aggregation must be 'masking' or 'plain', got "
                                     f"{self.aggregation!r}")
        if not 2 <= self.num_clients <= 64 or self.rounds < 1 or self.local_epochs < 1:
            raise ConfigurationError(f"need 2..64 clients and at least one round and epoch; got "
                                     f"{self.num_clients}, {self.rounds}, {self.local_epochs}")
        if not (self.lr > 0 and self.batch_size >= 1 and self.timeout_s > 0):
            raise ConfigurationError("lr, batch_size and timeout_s must be positive")


@dataclass(frozen=True)
class RoundRecord:
    """One round: who was sampled, whose delta is in the aggregate, the total clip count, the
    global model's test accuracy after the round and the DP epsilon spent so far (or None)."""

    round: int
    participants: tuple[int, ...]
    survivors: tuple[int, ...]
    clipped: int
    accuracy: float
    epsilon: float | None


@dataclass(frozen=True)
class FedAvgResult:
    """The trained global model, its final test accuracy, every round's record and, with DP,
    the total (epsilon, delta)."""

    model: Any
    accuracy: float
    history: list[RoundRecord] = field(default_factory=list)
    epsilon: float | None = None
    delta: float | None = None


class _ClientWorker:
    """One client's logic; runs in its own process or in-process (``processes=False``)."""

    def __init__(self, cid: int, cfg: FedAvgConfig, identity: bytes,
                 directory: Mapping[int, bytes]) -> None:
        import torch
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        torch.set_num_threads(1)
        self.cid, self.cfg = cid, cfg
        self.identity = Ed25519PrivateKey.from_private_bytes(identity)
        self.directory = IdentityDirectory(directory)
        shards, _, _ = load_digits_split(cfg.num_clients, cfg.seed)
        self.x, self.y = shards[cid]
        self.model = make_model(cfg.hidden, cfg.seed)
        self.secagg: Any = None
        self.delta: Any = None

    def handle(self, op: int, payload: bytes) -> bytes:
        if op == _OP_TRAIN:
            return self._train(payload)
        if self.secagg is None:
            raise ConfigurationError(f"op {op} before training in this round")
        if op == _OP_SHARE:
            return self.secagg.share_keys(payload)
        if op == _OP_MASKED:
            return self.secagg.masked_input(self.delta, payload)
        if op == _OP_CONSISTENCY:
            return self.secagg.consistency(payload)
        if op == _OP_UNMASK:
            out = self.secagg.unmask(payload)
            self.secagg = None
            return out
        raise SerializationError(f"unknown operation {op}")

    def _train(self, payload: bytes) -> bytes:
        import numpy as np
        import torch
        from torch.nn.utils import parameters_to_vector, vector_to_parameters

        head_len = _U32.unpack_from(payload)[0]
        if head_len > 4096:
            raise SerializationError("train header too long")
        try:
            head = json.loads(payload[4 : 4 + head_len])
            rnd = int(head["round"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise SerializationError("malformed train header") from exc
        self.secagg = None
        participants = client_participants(self.cfg, self.cid, head["participants"]
                                           if "participants" in head else None)
        # From this client's own configuration only, whatever the header says.
        threshold, clip = round_params(self.cfg, len(participants))
        size = sum(p.numel() for p in self.model.parameters())
        raw = payload[4 + head_len :]
        if len(raw) != 4 * size:
            raise SerializationError(f"global model has {len(raw)} bytes, expected {4 * size}")
        start = torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy())
        vector_to_parameters(start.clone(), self.model.parameters())
        gen = torch.Generator().manual_seed(
            self.cfg.seed * 1_000_003 + rnd * 1009 + self.cid)
        opt = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr)
        for _ in range(self.cfg.local_epochs):
            order = torch.randperm(len(self.y), generator=gen)
            for batch in order.split(self.cfg.batch_size):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(self.model(self.x[batch]), self.y[batch])
                loss.backward()
                opt.step()
        with torch.no_grad():
            delta = (parameters_to_vector(self.model.parameters()) - start).double().numpy()
        dp = self.cfg.dp
        if dp is not None:
            norm = float(np.linalg.norm(delta))
            delta = delta * min(1.0, dp.l2_clip / max(norm, 1e-12))
            # t - 1 others always survive with the target client: their noise alone suffices
            delta = delta + sample_gaussian(delta.size, std=dp.noise_std(threshold))
        self.delta = delta
        if self.cfg.aggregation == "plain":
            return delta.astype("<f4").tobytes()
        config = SecAggConfig(len(participants), size, clip, threshold, self.cfg.ring_bits)
        try:
            round_id = bytes.fromhex(head["round_id"])
            server_key = bytes.fromhex(head["server_key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SerializationError("malformed round id or server key in the header") from exc
        self.secagg = SecAggClient(participants.index(self.cid), config, round_id=round_id,
                                   server_public_key=server_key, identity_key=self.identity,
                                   directory=self.directory.subset(participants))
        return self.secagg.advertise()


def _frame(op: int, payload: bytes) -> bytes:
    return bytes([op]) + payload


def _client_main(cid: int, cfg_dict: dict[str, Any], conn: Any, identity: bytes,
                 directory: dict[int, bytes]) -> None:  # pragma: no cover
    """Entry point of a client process: answer framed requests until told to stop.
    ``cfg_dict``, ``identity`` and ``directory`` are its configuration, set at start."""
    cfg_dict = dict(cfg_dict)
    if cfg_dict.get("dp") is not None:
        cfg_dict["dp"] = FederatedDP(**cfg_dict["dp"])
    worker = None
    try:
        worker = _ClientWorker(cid, FedAvgConfig(**cfg_dict), identity, directory)
        while True:
            if not conn.poll(cfg_dict["timeout_s"] * 4):
                return  # the server vanished
            data = conn.recv_bytes(_MAX_FRAME)
            if not data or data[0] == _OP_STOP:
                return
            try:
                conn.send_bytes(_frame(_OK, worker.handle(data[0], data[1:])))
            except Exception as exc:  # report to the server, keep serving
                conn.send_bytes(_frame(_ERR, f"{type(exc).__name__}: {exc}".encode()))
    except (EOFError, OSError):
        return
    finally:
        conn.close()


class _Endpoint:
    """The server's handle on one client (a process or an in-process worker)."""

    def __init__(self, cid: int, cfg: FedAvgConfig, ctx: Any, identity: bytes,
                 directory: Mapping[int, bytes]) -> None:
        self.cid, self.cfg = cid, cfg
        self.proc = self.conn = self.worker = None
        if ctx is None:
            self.worker = _ClientWorker(cid, cfg, identity, directory)
            return
        parent, child = ctx.Pipe()
        cfg_dict = asdict(cfg)
        self.proc = ctx.Process(target=_client_main,
                                args=(cid, cfg_dict, child, identity, dict(directory)),
                                daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def request(self, op: int, payload: bytes) -> bytes:
        phase = _PHASE_OF_OP.get(op, "request")
        if self.worker is not None:
            return self.worker.handle(op, payload)
        try:
            self.conn.send_bytes(_frame(op, payload))
            if not self.conn.poll(self.cfg.timeout_s):
                raise PartyFailure(f"client {self.cid} did not answer within "
                                   f"{self.cfg.timeout_s} s", rank=self.cid, phase=phase)
            data = self.conn.recv_bytes(_MAX_FRAME)
        except (EOFError, OSError) as exc:
            raise PartyFailure(f"client {self.cid} disconnected", rank=self.cid,
                               phase=phase) from exc
        if not data:
            raise PartyFailure(f"client {self.cid} sent an empty frame", rank=self.cid,
                               phase=phase)
        if data[0] == _ERR:
            text = data[1:].decode("utf-8", "replace")[:2000]
            if text.startswith("AggregationAborted"):
                raise AggregationAborted(f"client {self.cid}: {text}")
            raise PartyFailure(f"client {self.cid} failed: {text}", rank=self.cid, phase=phase)
        return data[1:]

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send_bytes(_frame(_OP_STOP, b""))
            except (OSError, ValueError):
                pass
            self.proc.join(timeout=10)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(timeout=5)
            self.conn.close()


def train_fedavg(config: FedAvgConfig, *,
                 dropouts: Mapping[int, Mapping[str, Collection[int]]] | None = None
                 ) -> FedAvgResult:
    """Train the digits MLP with federated averaging; see the module docstring.

    ``dropouts`` maps a round number to ``{phase: client ids}`` (phases of
    :data:`veil.protocols.secagg.PHASES`); a listed client goes silent from that phase on in that
    round. A round that loses more clients than the threshold allows raises
    :class:`~veil.errors.AggregationAborted`.
    """
    import multiprocessing

    import numpy as np
    import torch
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    cfg = config
    for rnd, spec in (dropouts or {}).items():
        if not 0 <= rnd < cfg.rounds or not set(spec) <= set(PHASES):
            raise ConfigurationError(f"bad dropout entry for round {rnd}: {dict(spec)}; rounds "
                                     f"are 0..{cfg.rounds - 1}, phases {PHASES}")
    _, x_test, y_test = load_digits_split(cfg.num_clients, cfg.seed)
    model = make_model(cfg.hidden, cfg.seed)
    size = sum(p.numel() for p in model.parameters())
    dp = cfg.dp
    accountant = dp.accountant() if dp else None
    ctx = None
    if cfg.processes:
        # forkserver: torch is imported once in the (single-threaded) server process and each
        # client is a fresh fork of it, instead of a spawn that re-imports torch per client.
        # The forkserver is shared by the whole process (veil.mpc uses it too): set the preload
        # list only if nobody has started it yet.
        from multiprocessing import forkserver

        ctx = multiprocessing.get_context("forkserver")
        if getattr(forkserver._forkserver, "_forkserver_pid", None) is None:
            ctx.set_forkserver_preload(["torch", "sklearn.datasets", "veil.fl.fedavg"])
    endpoints: list[_Endpoint] = []
    history: list[RoundRecord] = []
    try:
        keys, directory = identities(cfg.num_clients)
        for cid in range(cfg.num_clients):
            endpoints.append(_Endpoint(cid, cfg, ctx, keys[cid], directory))
        for rnd in range(cfg.rounds):
            if dp is not None and dp.sample_rate < 1:
                scale = 1 << 53
                participants = [c for c in range(cfg.num_clients)
                                if secrets.randbelow(scale) < dp.sample_rate * scale]
            else:
                participants = list(range(cfg.num_clients))
            m = len(participants)
            drops = {p: set((dropouts or {}).get(rnd, {}).get(p, ())) for p in PHASES}
            total, survivors, clipped = _run_round(cfg, rnd, model, size, participants, drops,
                                                   endpoints)
            if survivors:
                with torch.no_grad():
                    vec = parameters_to_vector(model.parameters()).double()
                    vec += torch.from_numpy(np.asarray(total) / len(survivors))
                    vector_to_parameters(vec.float(), model.parameters())
            if accountant is not None:
                accountant.step()
            eps = accountant.epsilon(dp.delta) if accountant is not None else None
            history.append(RoundRecord(rnd, tuple(participants[:m]), survivors, clipped,
                                       accuracy(model, x_test, y_test), eps))
    finally:
        for ep in endpoints:
            ep.close()
    return FedAvgResult(model, history[-1].accuracy, history,
                        history[-1].epsilon, dp.delta if dp else None)


def _run_round(cfg: FedAvgConfig, rnd: int, model: Any, size: int, participants: list[int],
               drops: dict[str, set[int]], endpoints: list[_Endpoint]
               ) -> tuple[Any, tuple[int, ...], int]:
    """One aggregation round; returns (sum of deltas, survivors, clip count)."""
    import numpy as np
    from torch.nn.utils import parameters_to_vector

    m = len(participants)
    if m == 0:
        return None, (), 0
    params = parameters_to_vector(model.parameters()).detach().numpy().astype("<f4").tobytes()
    threshold, clip = round_params(cfg, m)
    if m < max(2, threshold):
        raise AggregationAborted(f"round {rnd}: only {m} clients sampled, below the threshold "
                                 f"{max(2, threshold)}; nothing was aggregated")
    server = None
    # The header carries no parameter a client enforces (threshold, clip, DP): clients compute
    # those from their own configuration.
    head: dict[str, Any] = {"round": rnd, "participants": list(participants)}
    if cfg.aggregation == "masking":
        server = SecAggServer(SecAggConfig(m, size, clip, threshold, cfg.ring_bits))
        head.update(round_id=server.round_id.hex(), server_key=server.public_key.hex())
    hb = json.dumps(head).encode()
    alive = [c for c in participants if c not in drops["advertise"]]
    replies = {}
    for c in alive:
        replies[c] = endpoints[c].request(_OP_TRAIN, _U32.pack(len(hb)) + hb + params)
    if cfg.aggregation == "plain":
        alive = [c for c in alive if c not in drops["masked"]]
        if len(alive) < threshold:
            raise AggregationAborted(f"round {rnd}: {len(alive)} updates, below {threshold}")
        total = np.zeros(size)
        for c in alive:
            if len(replies[c]) != 4 * size:
                raise SerializationError(f"client {c} sent {len(replies[c])} bytes")
            total += np.frombuffer(replies[c], dtype="<f4")
        return total, tuple(alive), 0

    def send(c: int, phase: str, payload: Any) -> bytes:
        if phase == "advertise":
            return replies[c]
        return endpoints[c].request(_OP_OF_PHASE[phase], payload)

    res = drive_round(server, alive, send, dropouts=drops, index=participants.index)
    return res.total, tuple(participants[i] for i in res.survivors), res.clipped

"""Cryptographically secure randomness for every share, mask, PRSS stream and dealer triple.

CrypTen 0.4.1 draws all of its secret randomness from torch's MT19937 generators seeded with
64 bits (``crypten.generators["prev" | "next" | "local" | "global"]``, the dealer's per-party
generators in ``crypten/mpc/provider/ttp_provider.py``, whose seeds come from torch's *global*
generator). MT19937 is not a CSPRNG: 624 consecutive outputs reveal its state, and a 64-bit seed
can be searched. ``veil.mpc._crypten.install`` replaces all of it with this module's functions,
from Veil's side (site-packages is never edited):

* ``crypten.common.rng.generate_random_ring_element`` / ``generate_kbit_random_tensor`` (and the
  copies imported by name into the arithmetic, binary, TTP and TFP modules) draw from a
  :class:`SecureStream`: ChaCha20 (OpenSSL, via ``cryptography``) with a 256-bit key from
  ``os.urandom``; draw number *i* of a stream uses nonce *i*, so two holders of the same key stay
  synchronized as long as they make the same sequence of draws (which SPMD code does).
* Pairwise PRSS streams: every party draws a fresh 256-bit key, sends it to the next party and
  receives the previous party's key (``prev``/``next``). Party *i* and party *i+1* hold the same
  key and nobody else does. ``local`` is a per-process key that never leaves the process (and is
  re-drawn after ``fork``).
* Dealer (TTP) streams: the dealer draws one 256-bit key per party and sends it to that party
  only; party *i*'s triple shares are the keystream of that key, the dealer computes party 0's
  correcting share. The dealer therefore knows every triple (as in CrypTen) but no input.
* ``global`` (used by CrypTen only for public dropout masks known to every party) stays a torch
  generator, seeded from a 256-bit key agreed by all parties; it never touches shares.
* Any request for secret randomness from a torch ``Generator`` raises instead of silently using
  MT19937; ``crypten.manual_seed`` is refused.

Who learns what: the ``next`` key is learned by the next party, the dealer keys by the dealer,
the global key by all parties; no key is ever logged, pickled or shown in ``repr``.

Wiring: ``veil.mpc._crypten.install(crypten)`` must run in **every** party process and in the
dealer process. In the dealer it must run before ``TTPServer()`` starts (its key hand-out is
patched in). In the parties it may run before ``crypten.init()`` (keys are then agreed inside
``init``) or right after it (keys are then agreed inside ``install`` by
:func:`rekey_if_initialized`; every party calls it at the same point).
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

from veil.errors import ConfigurationError, UnsupportedOperationError

__all__ = [
    "KEY_BYTES", "SecureStream", "chacha20_torch", "local_stream", "generate_random_ring_element",
    "generate_kbit_random_tensor", "client_setup", "server_setup", "setup_prng",
    "refuse_manual_seed", "bind", "rekey_if_initialized",
]

KEY_BYTES = 32
_ZEROS = bytes(1 << 20)  # keystream = ChaCha20(zeros); processed in 1 MiB chunks
_ON_DEVICE = 1 << 20  # draws of at least this many int64 on a GPU are generated on the GPU
_MAX_DRAW_BYTES = 1 << 36  # 64 GiB per draw, far below ChaCha20's 2^32-block counter limit
_lock = threading.Lock()
_local: dict[str, Any] = {"pid": None, "stream": None}


class SecureStream:
    """A deterministic ChaCha20 keystream: the same key gives the same sequence of draws.

    Draw number ``i`` (counted per stream) is the keystream of ``ChaCha20(key, nonce=i)``; a
    stream never reuses a nonce. Keys are 32 bytes, normally from ``os.urandom``.
    """

    __slots__ = ("_key", "_counter", "name", "__weakref__")

    def __init__(self, key: bytes, *, name: str = "stream") -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            got = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
            raise ConfigurationError(
                f"a SecureStream key must be {KEY_BYTES} bytes, got {got}; "
                f"use SecureStream.fresh() or os.urandom({KEY_BYTES})"
            )
        self._key = bytes(key)
        self._counter = 0
        self.name = name

    @classmethod
    def fresh(cls, *, name: str = "stream") -> SecureStream:
        """A stream keyed from ``os.urandom``."""
        return cls(os.urandom(KEY_BYTES), name=name)

    @property
    def draws(self) -> int:
        """How many draws were made so far (the next nonce)."""
        return self._counter

    def __repr__(self) -> str:  # never show the key
        return f"SecureStream(name={self.name!r}, draws={self._counter})"

    def __reduce__(self) -> Any:
        raise UnsupportedOperationError(
            f"{self!r} holds a secret key and cannot be pickled; create streams in the process "
            "that uses them"
        )

    def on(self, device: Any) -> _StreamView:
        """This stream, presented as a generator for ``device`` (shares the draw counter)."""
        return _StreamView(self, device)

    def fill(self, buf: memoryview) -> None:
        """Overwrite the writable byte buffer ``buf`` with the next draw's keystream."""
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        n = buf.nbytes
        if n > _MAX_DRAW_BYTES:
            raise ConfigurationError(
                f"one random draw of {n} bytes exceeds the {_MAX_DRAW_BYTES}-byte limit; "
                "draw in smaller pieces"
            )
        nonce = b"\x00\x00\x00\x00" + self._counter.to_bytes(12, "little")
        self._counter += 1
        enc = Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()
        buf = buf.cast("B")
        chunk = len(_ZEROS)
        for off in range(0, n, chunk):
            k = min(chunk, n - off)
            enc.update_into(_ZEROS if k == chunk else memoryview(_ZEROS)[:k], buf[off : off + k])

    def random_bytes(self, n: int) -> bytes:
        """The next draw as ``n`` bytes."""
        out = bytearray(n)
        if n:
            self.fill(memoryview(out))
        return bytes(out)

    def int64(self, shape: Any, device: Any = None) -> Any:
        """The next draw as an int64 tensor of ``shape``, uniform over all 2^64 values.

        The keystream comes from OpenSSL on the CPU; for large draws on another device the
        same ChaCha20 keystream is computed there with torch operations (:func:`chacha20_torch`)
        instead of being copied from the host. A draw has the same value on every device.
        """
        import torch

        shape = _as_shape(shape)
        numel = 1
        for s in shape:
            numel *= s
        if device is not None and torch.device(device).type != "cpu" and numel >= _ON_DEVICE:
            index = self._counter
            self._counter += 1
            return chacha20_torch(self._key, index, numel, torch.device(device)).reshape(shape)
        out = torch.empty(shape, dtype=torch.int64)
        if out.numel():
            self.fill(memoryview(out.numpy()).cast("B"))
        return out


_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"


def chacha20_torch(key: bytes, nonce_index: int, numel: int, device: Any) -> Any:
    """``numel`` int64 of the ChaCha20 keystream for ``key``, block counter 0 and the 96-bit
    little-endian nonce ``nonce_index`` (RFC 8439 layout, as :meth:`SecureStream.fill`),
    computed with torch operations on ``device`` (32-bit words held in int64)."""
    import torch

    m = 0xFFFFFFFF
    blocks = (numel + 7) // 8  # a 64-byte block gives 8 int64
    words = [*_SIGMA, *(int.from_bytes(key[i : i + 4], "little") for i in range(0, 32, 4))]
    words += [0, *((nonce_index >> (32 * i)) & m for i in range(3))]
    init = torch.tensor(words, dtype=torch.int64, device=device)[:, None].repeat(1, blocks)
    init[12] += torch.arange(blocks, dtype=torch.int64, device=device)  # block counter
    a, b, c, d = (init[i : i + 4].clone() for i in range(0, 16, 4))  # (4, blocks) each

    def rounds(a: Any, b: Any, c: Any, d: Any) -> tuple[Any, Any, Any, Any]:
        # the four quarter rounds of a column (or, rows rotated, diagonal) round at once
        a = (a + b) & m
        d = d ^ a
        d = ((d << 16) | (d >> 16)) & m
        c = (c + d) & m
        b = b ^ c
        b = ((b << 12) | (b >> 20)) & m
        a = (a + b) & m
        d = d ^ a
        d = ((d << 8) | (d >> 24)) & m
        c = (c + d) & m
        b = b ^ c
        b = ((b << 7) | (b >> 25)) & m
        return a, b, c, d

    for _ in range(10):
        a, b, c, d = rounds(a, b, c, d)
        a, b, c, d = rounds(a, b.roll(-1, 0), c.roll(-2, 0), d.roll(-3, 0))
        b, c, d = b.roll(1, 0), c.roll(2, 0), d.roll(3, 0)
    out = ((torch.cat([a, b, c, d]) + init) & m).t()  # (blocks, 16)
    out = out.reshape(blocks * 8, 2)  # little-endian word pairs
    hi = out[:, 1] - ((out[:, 1] >> 31) << 32)  # as signed 32-bit, so hi * 2^32 cannot overflow
    return (hi * (1 << 32) + out[:, 0])[:numel]


class _StreamView:
    """A :class:`SecureStream` where CrypTen expects a torch generator (it reads ``.device``)."""

    __slots__ = ("stream", "device")

    def __init__(self, stream: SecureStream, device: Any) -> None:
        import torch

        self.stream = stream
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return f"{self.stream!r}.on({str(self.device)!r})"


def _as_shape(size: Any) -> tuple[int, ...]:
    if isinstance(size, int):
        return (size,)
    try:
        shape = tuple(int(s) for s in size)
    except TypeError as exc:
        raise ConfigurationError(f"a random tensor's size must be ints, got {size!r}") from exc
    if any(s < 0 for s in shape):
        raise ConfigurationError(f"a random tensor's size must be non-negative, got {shape}")
    return shape


def local_stream() -> SecureStream:
    """This process's private stream (fresh key per process, re-drawn after ``fork``)."""
    pid = os.getpid()
    if _local["pid"] != pid:
        with _lock:
            if _local["pid"] != pid:
                _local["stream"] = SecureStream.fresh(name="local")
                _local["pid"] = pid
    return _local["stream"]


def _stream_for(generator: Any) -> SecureStream:
    if generator is None:
        return local_stream()
    if isinstance(generator, _StreamView):
        return generator.stream
    if isinstance(generator, SecureStream):
        return generator
    raise UnsupportedOperationError(
        f"CrypTen asked for secret randomness from {type(generator).__name__} (torch's MT19937, "
        "not a CSPRNG); Veil replaces every such generator in veil.mpc._crypten.install(), "
        "so this code path is not covered yet: pass a SecureStream or generator=None"
    )


def _place(tensor: Any, device: Any) -> Any:
    import torch

    if device is None:
        return tensor
    device = torch.device(device)
    if device.type == "cpu":
        return tensor
    tensor = tensor.to(device)  # already there when drawn on the device
    if device.type == "cuda":
        return _crypten_module().cuda.CUDALongTensor(tensor)
    return tensor


def _check_kwargs(kwargs: dict[str, Any]) -> Any:
    extra = set(kwargs) - {"device"}
    if extra:
        raise UnsupportedOperationError(
            f"Veil's secure random tensors accept only device=, got {sorted(extra)}"
        )
    return kwargs.get("device")


def generate_random_ring_element(
    size: Any, ring_size: int = 2**64, generator: Any = None, **kwargs: Any
) -> Any:
    """Uniform elements of the signed ring Z_{ring_size} (drop-in for CrypTen's function)."""
    device = _check_kwargs(kwargs)
    t = _stream_for(generator).int64(size, device)
    if ring_size != 2**64:
        if ring_size <= 1 or ring_size > 2**64 or ring_size & (ring_size - 1):
            raise UnsupportedOperationError(
                f"ring_size must be a power of two in [2, 2**64], got {ring_size}"
            )
        half = ring_size // 2
        t = (t & (ring_size - 1)) - half
    return _place(t, device)


def generate_kbit_random_tensor(
    size: Any, bitlength: int | None = None, generator: Any = None, **kwargs: Any
) -> Any:
    """Uniform non-negative ``bitlength``-bit values (64: the whole ring), like CrypTen's."""
    if bitlength is None or bitlength == 64:
        return generate_random_ring_element(size, generator=generator, **kwargs)
    if not isinstance(bitlength, int) or not 1 <= bitlength < 64:
        raise ConfigurationError(f"bitlength must be an int in 1..64, got {bitlength!r}")
    device = _check_kwargs(kwargs)
    t = _stream_for(generator).int64(size, device) & ((1 << bitlength) - 1)
    return _place(t, device)


# --------------------------------------------------------------------------- key agreement


def _key_tensor(key: bytes) -> Any:
    import torch

    return torch.frombuffer(bytearray(key), dtype=torch.int64).clone()


def _tensor_key(t: Any) -> bytes:
    return t.contiguous().numpy().tobytes()


def _devices(crypten: Any) -> list[Any]:
    import torch

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        devices += [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    return devices


def _public_generator(key: bytes, device: Any) -> Any:
    """A torch generator for *public* randomness (CrypTen's dropout masks), from a 256-bit key."""
    import torch

    seed = int.from_bytes(hashlib.sha256(b"veil.mpc.rng/global\x00" + key).digest()[:8],
                          "little")  # domain label predates the move to _crypten/
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _agree_prss_keys(crypten: Any) -> None:
    """Agree fresh 256-bit pairwise and global keys among the parties (not the dealer)."""
    import torch
    import torch.distributed as dist

    comm = crypten.communicator.get()
    rank, world = comm.get_rank(), comm.get_world_size()
    next_key, global_key = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
    if world >= 2:
        group = comm.main_group
        prev_buf = torch.zeros(KEY_BYTES // 8, dtype=torch.int64)
        reqs = [
            dist.isend(_key_tensor(next_key), (rank + 1) % world, group=group),
            dist.irecv(prev_buf, (rank - 1) % world, group=group),
        ]
        for req in reqs:
            req.wait()
        prev_key = _tensor_key(prev_buf)
        g = _key_tensor(global_key)
        dist.broadcast(g, 0, group=group)
        global_key = _tensor_key(g)
    else:
        prev_key = next_key
    prev = SecureStream(prev_key, name=f"prss prev (shared with party {(rank - 1) % world})")
    nxt = SecureStream(next_key, name=f"prss next (shared with party {(rank + 1) % world})")
    local = local_stream()
    for device in _devices(crypten):
        crypten.generators["prev"][device] = prev.on(device)
        crypten.generators["next"][device] = nxt.on(device)
        crypten.generators["local"][device] = local.on(device)
        crypten.generators["global"][device] = _public_generator(global_key, device)


def _install_client_streams(client: Any, key: bytes) -> None:
    import torch

    stream = SecureStream(key, name="dealer stream")
    client.generator = stream.on("cpu")
    client.generator_cuda = stream.on("cuda") if torch.cuda.is_available() else None
    client._veil_keyed = True


def _receive_dealer_key(crypten: Any, client: Any) -> None:
    import torch
    import torch.distributed as dist

    comm = crypten.communicator.get()
    buf = torch.zeros(KEY_BYTES // 8, dtype=torch.int64)
    dist.irecv(buf, src=comm.get_ttp_rank(), group=client.ttp_group).wait()
    _install_client_streams(client, _tensor_key(buf))


def client_setup(self: Any) -> None:
    """Party side of the dealer hand-shake: CrypTen's (unused) seed, then Veil's 256-bit key."""
    import torch
    import torch.distributed as dist

    crypten = _crypten_module()
    comm = crypten.communicator.get()
    legacy = torch.empty(size=(), dtype=torch.long)
    dist.irecv(tensor=legacy, src=comm.get_ttp_rank(), group=self.ttp_group).wait()
    dist.barrier(group=self.ttp_group)
    _receive_dealer_key(crypten, self)


def server_setup(self: Any) -> None:
    """Dealer side: CrypTen's seed message (kept for the hand-shake, unused), then one fresh
    256-bit key per party, each sent to that party only."""
    import torch
    import torch.distributed as dist

    crypten = _crypten_module()
    world = crypten.communicator.get().get_world_size()
    legacy = [torch.zeros((), dtype=torch.long) for _ in range(world)]
    reqs = [dist.isend(tensor=legacy[i], dst=i, group=self.ttp_group) for i in range(world)]
    for req in reqs:
        req.wait()
    dist.barrier(group=self.ttp_group)
    keys = [os.urandom(KEY_BYTES) for _ in range(world)]
    tensors = [_key_tensor(k) for k in keys]
    reqs = [dist.isend(tensor=tensors[i], dst=i, group=self.ttp_group) for i in range(world)]
    streams = [SecureStream(k, name=f"dealer stream of party {i}") for i, k in enumerate(keys)]
    self.generators = [s.on("cpu") for s in streams]
    cuda = torch.cuda.is_available()
    self.generators_cuda = [s.on("cuda") if cuda else None for s in streams]
    for req in reqs:
        req.wait()


def refuse_manual_seed(*_args: Any, **_kwargs: Any) -> None:
    """Replaces ``crypten.manual_seed``: shares cannot be seeded."""
    raise UnsupportedOperationError(
        "crypten.manual_seed is disabled by Veil: shares and masks come from a CSPRNG keyed "
        "from os.urandom and cannot be seeded; compare revealed results instead of shares"
    )


def setup_prng() -> None:
    """Replaces ``crypten._setup_prng`` (run by ``crypten.init``): agree 256-bit keys."""
    _agree_prss_keys(_crypten_module())


_state: dict[str, Any] = {"crypten": None}


def _crypten_module() -> Any:
    crypten = _state["crypten"]
    if crypten is None:  # pragma: no cover - only reachable if install() was bypassed
        from veil.mpc._crypten.compat import load_crypten

        crypten = load_crypten()
    return crypten


def bind(crypten: Any) -> None:
    """The ``crypten`` module the replacements above work on (set by the installer)."""
    _state["crypten"] = crypten


def rekey_if_initialized(crypten: Any) -> None:
    """In a party whose ``crypten.init()`` already ran with CrypTen's 64-bit keys: agree fresh
    256-bit keys now (every party, and the dealer's patched set-up, take part)."""
    import torch

    if not crypten.communicator.is_initialized():
        return
    comm = crypten.communicator.get()
    if comm.get_rank() >= comm.get_world_size():
        return  # the dealer: its keys are handed out in the (patched) TTPServer set-up
    if not isinstance(crypten.generators["prev"].get(torch.device("cpu")), _StreamView):
        _agree_prss_keys(crypten)
    if crypten.mpc.ttp_required():
        ttp = crypten.mpc.provider.ttp_provider
        client = ttp.TTPClient._TTPClient__instance
        if client is not None and not getattr(client, "_veil_keyed", False):
            _receive_dealer_key(crypten, client)

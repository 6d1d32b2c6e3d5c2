"""Session manifests: who takes part in a multi-host session, where, and with which certificate.

A manifest is a TOML file (or JSON, chosen by the ``.json`` suffix) that every member of a
session holds a copy of::

    [session]
    name = "cardio-2026"            # [A-Za-z0-9_.-]{1,64}
    timeout = 60.0                  # optional, seconds, > 0 and <= 3600

    [[party]]                       # one table per party; ranks are exactly 0..n-1
    name = "hospital-a"
    rank = 0
    address = "10.0.0.1:29500"      # HOST:PORT this party listens on ([v6]:port for IPv6)
    certificate = "hospital-a.crt"  # relative to the manifest's folder, or inline PEM text
    fingerprint = "sha256:..."      # SHA-256 of the certificate's DER form

    [dealer]                        # optional trusted dealer (Beaver triples); takes rank n
    name = "dealer"
    address = "10.0.0.9:29500"
    certificate = "dealer.crt"
    fingerprint = "sha256:..."

Everything is checked when the manifest is read: unknown keys (typos such as ``adress``),
missing keys, wrong types, ranks, addresses, the certificates and that each certificate has the
fingerprint written next to it (which catches a swapped certificate file). Every problem is a
:class:`~veil.errors.ConfigurationError` naming the file, the member and the field.

The JSON form has the same shape: ``{"session": {...}, "party": [{...}, ...], "dealer": {...}}``.
:meth:`Manifest.digest` is the same on every member that runs the same session and is how
members check that they agree before any data moves.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from veil.errors import ConfigurationError
from veil.trust._manifest_fields import (
    FINGERPRINT_PREFIX,
    MAX_CERTIFICATE_BYTES,
    MAX_TIMEOUT,
    Where,
    check_keys,
    integer,
    pinned_certificate,
    read_certificate,
    show,
    split_address,
    text_field,
    timeout_seconds,
    valid_host,
    valid_name,
    valid_port,
)

__all__ = ["Member", "Manifest", "load_manifest", "parse_manifest", "MAX_MANIFEST_BYTES",
           "MAX_CERTIFICATE_BYTES", "MIN_PARTIES", "MAX_PARTIES", "MAX_TIMEOUT"]

MAX_MANIFEST_BYTES = 1 << 20
MIN_PARTIES = 2
MAX_PARTIES = 64

_TOP_KEYS = ("session", "party", "dealer")
_SESSION_KEYS = ("name", "timeout")
_PARTY_KEYS = ("name", "rank", "address", "certificate", "fingerprint")
_DEALER_KEYS = ("name", "address", "certificate", "fingerprint")
_DIGEST_FORMAT = "veil.manifest/1"


@dataclass(frozen=True)
class Member:
    """One member of a session: a party (ranks ``0..n-1``) or the dealer (rank ``n``).

    ``host`` holds an IPv6 address without brackets; :attr:`address` adds them back.
    ``certificate_pem`` is the member's self-signed certificate and ``fingerprint``
    ``"sha256:"`` + 64 lowercase hex digits of its DER form.
    """

    name: str
    rank: int
    host: str
    port: int
    certificate_pem: bytes = field(repr=False)
    fingerprint: str
    is_dealer: bool = False

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port`` for an IPv6 host), as written in a manifest."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Manifest:
    """A checked session manifest; build one with :func:`load_manifest` or :meth:`build`.

    ``members`` lists the parties by rank, then the dealer (rank ``world_size``) if there is
    one. Constructing a ``Manifest`` checks it exactly as reading one does, and brings the
    members into that order. ``source`` (the file it was read from) only serves messages and
    takes no part in equality.
    """

    session: str
    members: tuple[Member, ...]
    timeout: float | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        session, members, timeout = _settle(self.session, self.members, self.timeout,
                                            self.source)
        object.__setattr__(self, "session", session)
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "timeout", timeout)

    @classmethod
    def build(cls, session: str, members: Sequence[Member],
              timeout: float | None = None) -> Manifest:
        """A manifest from members in any order, checked like :func:`load_manifest`."""
        return cls(session=session, members=tuple(members), timeout=timeout)

    @property
    def world_size(self) -> int:
        """The number of parties (the dealer does not count)."""
        return len(self.parties)

    @property
    def dealer(self) -> Member | None:
        """The trusted dealer, or ``None`` when the session has none."""
        last = self.members[-1]
        return last if last.is_dealer else None

    @property
    def parties(self) -> tuple[Member, ...]:
        """The parties by rank, without the dealer."""
        return tuple(m for m in self.members if not m.is_dealer)

    def member(self, name: str) -> Member:
        """The member called ``name``; an unknown name lists the known ones."""
        for m in self.members:
            if m.name == name:
                return m
        known = ", ".join(repr(m.name) for m in self.members)
        raise ConfigurationError(
            f"{self._where()}: no member is called {name!r}; the members are {known} "
            "(pass one of these names, or add the member to the manifest)")

    def by_rank(self, rank: int) -> Member:
        """The member of rank ``rank`` (the dealer has rank ``world_size``)."""
        for m in self.members:
            if m.rank == rank and not isinstance(rank, bool):
                return m
        raise ConfigurationError(
            f"{self._where()}: no member has rank {rank!r}; ranks run from 0 to "
            f"{len(self.members) - 1}" + (" (the last one is the dealer)" if self.dealer else ""))

    def by_fingerprint(self, fingerprint: str) -> Member | None:
        """The member whose certificate has ``fingerprint`` (any case), or ``None``."""
        wanted = fingerprint.strip().lower() if isinstance(fingerprint, str) else None
        return next((m for m in self.members if m.fingerprint == wanted), None)

    def trust_pem(self) -> bytes:
        """Every member's certificate, concatenated (``cadata`` for an ``ssl`` context)."""
        return b"".join(m.certificate_pem for m in self.members)

    def digest(self) -> str:
        """``sha256:<hex>`` over a canonical JSON of the session and its members.

        It covers the session name and each member's name, rank, address, fingerprint and role
        (not the timeout, nor where the certificates came from), so members holding the same
        session in differently ordered or formatted files compute the same value.
        """
        body = {"format": _DIGEST_FORMAT, "session": self.session,
                "members": [{"name": m.name, "rank": m.rank, "address": m.address,
                             "fingerprint": m.fingerprint, "is_dealer": m.is_dealer}
                            for m in self.members]}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return FINGERPRINT_PREFIX + hashlib.sha256(text.encode("ascii")).hexdigest()

    def to_toml(self) -> str:
        """The manifest as TOML with the certificates inline; it parses back to an equal one."""
        lines = ["# Veil session manifest; certificates inline.", "", "[session]",
                 f"name = {json.dumps(self.session)}"]
        if self.timeout is not None:
            lines.append(f"timeout = {self.timeout!r}")
        for m in self.members:
            lines += ["", "[dealer]" if m.is_dealer else "[[party]]",
                      f"name = {json.dumps(m.name)}"]
            if not m.is_dealer:
                lines.append(f"rank = {m.rank}")
            lines += [f"address = {json.dumps(m.address)}",
                      f"certificate = '''\n{m.certificate_pem.decode('ascii')}'''",
                      f"fingerprint = {json.dumps(m.fingerprint)}"]
        return "\n".join(lines) + "\n"

    def _where(self) -> str:
        return self.source or f"session manifest {self.session!r}"


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read and check the manifest at ``path`` (JSON if it ends in ``.json``, else TOML).

    Relative certificate paths are taken from the manifest's folder. A file larger than
    :data:`MAX_MANIFEST_BYTES` is refused before it is read.
    """
    p = Path(path)
    try:
        info = p.stat()
        if not p.is_file():
            raise ConfigurationError(f"session manifest {p} is not a regular file; pass the "
                                     "path of the manifest's .toml (or .json) file")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise ConfigurationError(_too_big(str(p), info.st_size))
        with p.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigurationError(f"there is no session manifest at {p}; check the path (the "
                                 "session's organiser hands out the manifest)") from exc
    except OSError as exc:
        raise ConfigurationError(f"could not read session manifest {p} ({exc.strerror or exc})"
                                 "; check its permissions") from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ConfigurationError(_too_big(str(p), len(raw)))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"session manifest {p} is not UTF-8 text ({exc}); save it as "
                                 "UTF-8") from exc
    fmt = "json" if p.suffix.lower() == ".json" else "toml"
    return parse_manifest(text, fmt=fmt, base_dir=p.parent, source=str(p))


def parse_manifest(text: str, *, fmt: str = "toml", base_dir: str | os.PathLike | None = None,
                   source: str | None = None) -> Manifest:
    """Check a manifest given as text (``fmt`` is ``"toml"`` or ``"json"``).

    Relative certificate paths are taken from ``base_dir`` (the current folder when ``None``);
    ``source`` names the manifest in messages.
    """
    where = source or "session manifest"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_MANIFEST_BYTES:
        raise ConfigurationError(_too_big(where, size))
    data = _decode(text, fmt, where)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return _from_data(data, base, source)


# --- reading the document --------------------------------------------------------------------


def _too_big(where: str, size: int) -> str:
    return (f"{where} is {size} bytes, more than the {MAX_MANIFEST_BYTES} a session manifest may "
            "have; it is not a manifest (certificates belong in files next to it)")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a manifest may hold")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _decode(text: str, fmt: str, where: str) -> dict[str, Any]:
    if fmt == "toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{where} is not valid TOML ({exc}); fix the line it "
                                     "names") from exc
    elif fmt == "json":
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates,
                              parse_constant=_refuse_constant)
        except ValueError as exc:
            raise ConfigurationError(f"{where} is not valid JSON ({exc}); fix the place it "
                                     "names") from exc
    else:
        raise ConfigurationError(f"unknown manifest format {fmt!r}; pass fmt='toml' or "
                                 "fmt='json'")
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where} must hold one object with 'session' and 'party' "
                                 f"keys, not {type(data).__name__}")
    return data


# --- members and the roster ------------------------------------------------------------------


def _member_from_table(table: Any, rank: int | None, base: Path, where: Where) -> Member:
    is_dealer = rank is not None
    keys = _DEALER_KEYS if is_dealer else _PARTY_KEYS
    hint = "write the dealer as one [dealer] table" if is_dealer else ""
    if isinstance(table, dict) and isinstance(table.get("name"), str):
        where.what = f"{'dealer' if is_dealer else 'party'} {show(table['name'])}"
    check_keys(table, keys, keys, where, hint)
    name = valid_name(table["name"], "name", where)
    if rank is None:
        rank = integer(table["rank"], "rank", where)
    host, port = split_address(text_field(table, "address", where), where)
    raw, label = read_certificate(text_field(table, "certificate", where), base, where)
    pem, fingerprint = pinned_certificate(raw, label, name, table["fingerprint"], where)
    return Member(name=name, rank=rank, host=host, port=port, certificate_pem=pem,
                  fingerprint=fingerprint, is_dealer=is_dealer)


def _party_tables(data: Mapping[str, Any], where: Where) -> list[Any]:
    tables = data["party"]
    if not isinstance(tables, list):
        raise where.error("party", "expected one [[party]] table per party, got "
                          f"{type(tables).__name__}", "write each party as a [[party]] table "
                          "(double brackets; in JSON a list of objects)")
    _count(len(tables), where)
    return tables


def _count(n: int, where: Where) -> None:
    if n < MIN_PARTIES:
        raise where.error("party", f"the session lists {n} part{'y' if n == 1 else 'ies'}",
                          f"a session needs at least {MIN_PARTIES} parties: add [[party]] "
                          "tables")
    if n > MAX_PARTIES:
        raise where.error("party", f"the session lists {n} parties",
                          f"a session may have at most {MAX_PARTIES} parties")


def _from_data(data: Mapping[str, Any], base: Path, source: str | None) -> Manifest:
    top = Where(source, "the manifest")
    check_keys(data, _TOP_KEYS, ("session", "party"), top)
    session_where = Where(source, "[session]")
    check_keys(data["session"], _SESSION_KEYS, ("name",), session_where)
    session = valid_name(data["session"]["name"], "name", session_where)
    timeout = timeout_seconds(data["session"].get("timeout"), session_where)
    tables = _party_tables(data, top)
    members = [_member_from_table(t, None, base, Where(source, f"[[party]] number {i + 1}"))
               for i, t in enumerate(tables)]
    if "dealer" in data:
        members.append(_member_from_table(data["dealer"], len(tables), base,
                                          Where(source, "[dealer]")))
    return Manifest(session=session, members=tuple(members), timeout=timeout, source=source)


def _checked_member(m: Any, source: str | None) -> Member:
    """A member as built in code, checked and normalised like one read from a file."""
    if not isinstance(m, Member):
        raise ConfigurationError(f"{source or 'session manifest'}: members must be Member "
                                 f"objects, got {type(m).__name__}; build them with Member(...)")
    label = getattr(m, "name", "?")
    where = Where(source, f"{'dealer' if m.is_dealer is True else 'party'} {label!r}")
    name = valid_name(m.name, "name", where)
    rank = integer(m.rank, "rank", where)
    if not isinstance(m.is_dealer, bool):
        raise where.error("is_dealer", f"expected True or False, got {show(m.is_dealer)}",
                          "pass a bool")
    host, port = valid_host(m.host, where, "host"), valid_port(m.port, where, "port")
    if not isinstance(m.certificate_pem, bytes):
        raise where.error("certificate_pem", f"expected bytes, got "
                          f"{type(m.certificate_pem).__name__}", "pass the PEM as bytes")
    pem, fingerprint = pinned_certificate(m.certificate_pem, "(certificate_pem)", name,
                                          m.fingerprint, where)
    return replace(m, name=name, rank=rank, host=host, port=port, certificate_pem=pem,
                   fingerprint=fingerprint)


def _settle(session: Any, members: Any, timeout: Any,
            source: str | None) -> tuple[str, tuple[Member, ...], float | None]:
    """Check a whole manifest; return it normalised, parties by rank then the dealer."""
    top = Where(source, "[session]")
    session = valid_name(session, "name", top)
    timeout = timeout_seconds(timeout, top)
    if not isinstance(members, tuple | list):
        raise top.error(None, f"members must be a sequence of Member, got "
                        f"{type(members).__name__}", "pass a tuple of Member")
    checked = [_checked_member(m, source) for m in members]
    parties = sorted((m for m in checked if not m.is_dealer), key=lambda m: m.rank)
    dealers = [m for m in checked if m.is_dealer]
    roster = Where(source, "the manifest")
    _count(len(parties), roster)
    _check_ranks(parties, dealers, roster)
    _check_unique(checked, roster)
    return session, tuple(parties + dealers), timeout


def _check_ranks(parties: list[Member], dealers: list[Member], where: Where) -> None:
    n = len(parties)
    fix = f"give the parties the ranks 0 to {n - 1}, each exactly once"
    missing = sorted(set(range(n)) - {p.rank for p in parties})
    for p in parties:
        if not 0 <= p.rank < n:
            raise where.error("rank", f"party {p.name!r} has rank {p.rank}, outside 0 to "
                              f"{n - 1} (missing: {', '.join(map(str, missing))})", fix)
    for a, b in zip(parties, parties[1:]):
        if a.rank == b.rank:
            raise where.error("rank", f"parties {a.name!r} and {b.name!r} both have rank "
                              f"{a.rank} (missing: {', '.join(map(str, missing))})", fix)
    if len(dealers) > 1:
        raise where.error("dealer", f"{len(dealers)} members are dealers",
                          "a session has at most one dealer")
    if dealers and dealers[0].rank != n:
        raise where.error("rank", f"dealer {dealers[0].name!r} has rank {dealers[0].rank}",
                          f"the dealer takes rank {n}, the number of parties")


def _check_unique(members: list[Member], where: Where) -> None:
    for label, key in (("name", lambda m: m.name),
                       ("address", lambda m: (m.host.lower(), m.port)),
                       ("certificate", lambda m: m.fingerprint)):
        seen: dict[Any, Member] = {}
        for m in members:
            other = seen.setdefault(key(m), m)
            if other is m:
                continue
            if label == "certificate":
                raise where.error("certificate", f"{other.name!r} and {m.name!r} list the same "
                                  f"certificate ({m.fingerprint})", "identities must be "
                                  "distinct: each member makes its own identity")
            if label == "name":
                raise where.error("name", f"two members are called {m.name!r} (ranks "
                                  f"{other.rank} and {m.rank})", "give every member its own name")
            raise where.error(label, f"{other.name!r} and {m.name!r} share the {label} "
                              f"{m.address!r}", f"give every member its own {label}")

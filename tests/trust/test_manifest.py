"""Session manifests: loading, every validation error, lookups, digest and the TOML round trip."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import json
import pathlib
import re
import ssl
import tomllib
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from veil.errors import ConfigurationError
from veil.trust.manifest import (
    MAX_CERTIFICATE_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_PARTIES,
    Manifest,
    Member,
    load_manifest,
    parse_manifest,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "session.toml"
NAMES = ("hospital-a", "hospital-b", "hospital-c", "dealer")


# --- helpers ---------------------------------------------------------------------------------


def make_identity(name: str) -> tuple[bytes, bytes]:
    """A P-256 key and a self-signed certificate with CN=name, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def fingerprint(pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {_literal(v)}" for k, v in value.items()) + " }"


def dump_toml(data: dict[str, Any]) -> str:
    """Just enough TOML for these tests: scalars, [tables] and [[arrays of tables]]."""
    lines: list[str] = []
    tables = []
    for key, value in data.items():
        if isinstance(value, dict) or (isinstance(value, list) and value
                                       and all(isinstance(v, dict) for v in value)):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_literal(value)}")
    for key, value in tables:
        for table in ([value] if isinstance(value, dict) else value):
            lines += ["", f"[{key}]" if isinstance(value, dict) else f"[[{key}]]"]
            lines += [f"{k} = {_literal(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def write(folder: pathlib.Path, data: dict[str, Any], fmt: str = "toml") -> pathlib.Path:
    path = folder / f"session.{fmt}"
    path.write_text(dump_toml(data) if fmt == "toml" else json.dumps(data, indent=2))
    return path


@pytest.fixture(scope="module")
def identities() -> dict[str, tuple[bytes, bytes]]:
    return {name: make_identity(name) for name in NAMES}


@pytest.fixture
def certs(identities) -> dict[str, bytes]:
    return {name: pem for name, (pem, _) in identities.items()}


@pytest.fixture
def site(tmp_path: pathlib.Path, certs) -> dict[str, Any]:
    """Certificate files in tmp_path and the data of a good manifest naming them."""
    for name, pem in certs.items():
        (tmp_path / f"{name}.crt").write_bytes(pem)

    def entry(name: str, address: str) -> dict[str, Any]:
        return {"name": name, "address": address, "certificate": f"{name}.crt",
                "fingerprint": fingerprint(certs[name])}

    parties = [dict(entry(n, f"10.0.0.{i + 1}:29500"), rank=i)
               for i, n in enumerate(NAMES[:3])]
    return {"session": {"name": "cardio-2026", "timeout": 60.0}, "party": parties,
            "dealer": entry("dealer", "10.0.0.9:29500")}


# --- good manifests --------------------------------------------------------------------------


def test_a_good_toml_manifest_loads(tmp_path, site, certs) -> None:
    path = write(tmp_path, site)
    m = load_manifest(path)
    assert m.session == "cardio-2026" and m.timeout == 60.0 and m.source == str(path)
    assert m.world_size == 3 and [p.name for p in m.parties] == list(NAMES[:3])
    assert [x.rank for x in m.members] == [0, 1, 2, 3]
    assert m.dealer is not None and m.dealer.name == "dealer" and m.dealer.is_dealer
    assert m.dealer.rank == m.world_size
    b = m.member("hospital-b")
    assert (b.host, b.port, b.address) == ("10.0.0.2", 29500, "10.0.0.2:29500")
    assert b.fingerprint == fingerprint(certs["hospital-b"])
    assert b.certificate_pem == certs["hospital-b"]
    assert "BEGIN" not in repr(b)  # the PEM stays out of messages


def test_json_manifest_loads_and_equals_the_toml_one(tmp_path, site) -> None:
    from_toml = load_manifest(write(tmp_path, site, "toml"))
    from_json = load_manifest(write(tmp_path, site, "json"))
    assert from_json == from_toml and from_json.digest() == from_toml.digest()


def test_the_dealer_is_optional_and_the_timeout_too(tmp_path, site) -> None:
    del site["dealer"], site["session"]["timeout"]
    m = load_manifest(write(tmp_path, site))
    assert m.dealer is None and m.timeout is None and m.members == m.parties


def test_trust_pem_is_cadata_for_ssl(tmp_path, site, certs) -> None:
    m = load_manifest(write(tmp_path, site))
    assert m.trust_pem() == b"".join(certs[n] for n in NAMES)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=m.trust_pem().decode("ascii"))
    assert ctx.cert_store_stats()["x509"] == 4


@pytest.mark.parametrize("spelling", [str.upper, lambda f: "SHA256:" + f[7:].upper(),
                                      lambda f: "sha256:" + ":".join(re.findall("..", f[7:]))])
def test_fingerprints_in_any_case_are_normalised(tmp_path, site, spelling) -> None:
    want = site["party"][0]["fingerprint"]
    site["party"][0]["fingerprint"] = spelling(want)
    m = load_manifest(write(tmp_path, site))
    assert m.by_rank(0).fingerprint == want


def test_relative_certificate_paths_start_at_the_manifests_folder(tmp_path, site, monkeypatch,
                                                                   certs) -> None:
    conf = tmp_path / "conf"
    (conf / "certs").mkdir(parents=True)
    for member in [*site["party"], site["dealer"]]:
        (tmp_path / member["certificate"]).rename(conf / "certs" / member["certificate"])
        member["certificate"] = "certs/" + member["certificate"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    m = load_manifest(write(conf, site))
    assert m.member("dealer").certificate_pem == certs["dealer"]
    text = dump_toml(site)
    assert parse_manifest(text, base_dir=conf) == m
    with pytest.raises(ConfigurationError, match="not found"):
        parse_manifest(text)  # no base_dir: relative to the current folder, which lacks them
    monkeypatch.chdir(conf)
    assert parse_manifest(text) == m


def test_absolute_paths_and_inline_pem_work(tmp_path, site, certs) -> None:
    site["party"][0]["certificate"] = str(tmp_path / "hospital-a.crt")
    site["party"][1]["certificate"] = certs["hospital-b"].decode("ascii")
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    (tmp_path / "hospital-b.crt").unlink()
    m = load_manifest(write(tmp_path, site))
    assert m.by_rank(0).certificate_pem == certs["hospital-a"]
    assert m.by_rank(1).certificate_pem == certs["hospital-b"]


def test_ipv6_and_host_names(tmp_path, site) -> None:
    site["party"][0]["address"] = "[2001:DB8:0:0::1]:29500"
    site["party"][1]["address"] = "Party-B.Example.org:443"
    m = load_manifest(write(tmp_path, site))
    a, b = m.by_rank(0), m.by_rank(1)
    assert (a.host, a.port, a.address) == ("2001:db8::1", 29500, "[2001:db8::1]:29500")
    assert b.address == "party-b.example.org:443"


# --- the errors ------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any], pathlib.Path, dict[str, bytes]], object]


def _party(i: int, **changes: Any) -> Mutation:
    return lambda d, folder, certs: d["party"][i].update(changes)


def _drop(*keys: str) -> Mutation:
    def go(d, folder, certs):
        table = d
        for key in keys[:-1]:
            table = table[int(key)] if isinstance(table, list) else table[key]
        del table[keys[-1]]
    return go


def _cert_file(content: Callable[[dict[str, bytes]], bytes]) -> Mutation:
    def go(d, folder, certs):
        (folder / "hospital-a.crt").write_bytes(content(certs))
    return go


def _with_fingerprint_of(i: int, other: str, certificate: str | None = None) -> Mutation:
    def go(d, folder, certs):
        d["party"][i]["fingerprint"] = fingerprint(certs[other])
        if certificate:
            d["party"][i]["certificate"] = certificate
    return go


_KEY_PEM = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n"

ERRORS: list[tuple[str, Mutation, list[str]]] = [
    ("typo-top-key", lambda d, f, c: d.update(partys=d.pop("party")),
     ["'partys'", "unknown key", "did you mean 'party'"]),
    ("typo-party-key", lambda d, f, c: d["party"][1].update(adress=d["party"][1].pop("address")),
     ["party 'hospital-b'", "'adress'", "did you mean 'address'"]),
    ("typo-session-key", lambda d, f, c: d["session"].update(timout=d["session"].pop("timeout")),
     ["[session]", "'timout'", "did you mean 'timeout'"]),
    ("dealer-rank", lambda d, f, c: d["dealer"].update(rank=3),
     ["dealer 'dealer'", "'rank'", "remove 'rank'"]),
    ("missing-session", _drop("session"), ["'session'", "missing"]),
    ("missing-party", _drop("party"), ["'party'", "missing", "[[party]] table"]),
    ("missing-session-name", _drop("session", "name"), ["[session]", "'name'", "missing"]),
    ("missing-address", _drop("party", "1", "address"), ["party 'hospital-b'", "'address'",
                                                           "missing"]),
    ("missing-fingerprint", _drop("party", "0", "fingerprint"), ["'fingerprint'", "missing"]),
    ("missing-dealer-certificate", _drop("dealer", "certificate"),
     ["dealer 'dealer'", "'certificate'", "missing"]),
    ("rank-bool", _party(0, rank=True), ["'rank'", "bool", "True", "whole number"]),
    ("rank-str", _party(0, rank="0"), ["'rank'", "str", "'0'"]),
    ("rank-float", _party(0, rank=1.0), ["'rank'", "float", "1.0"]),
    ("name-int", _party(0, name=7), ["'name'", "7", "letters, digits"]),
    ("address-int", _party(0, address=29500), ["'address'", "expected a string", "29500"]),
    ("certificate-list", _party(0, certificate=["a"]), ["'certificate'", "expected a string"]),
    ("session-not-table", lambda d, f, c: d.update(session="cardio"), ["'cardio'", "table"]),
    ("session-name-space", lambda d, f, c: d["session"].update(name="cardio 2026"),
     ["[session]", "'cardio 2026'", "letters, digits"]),
    ("session-name-long", lambda d, f, c: d["session"].update(name="x" * 65), ["'xxxx"]),
    ("party-name-slash", _party(0, name="a/b"), ["'a/b'", "not a valid name"]),
    ("timeout-zero", lambda d, f, c: d["session"].update(timeout=0), ["'timeout'", "0 seconds"]),
    ("timeout-negative", lambda d, f, c: d["session"].update(timeout=-5.0), ["-5.0 seconds"]),
    ("timeout-huge", lambda d, f, c: d["session"].update(timeout=4000), ["4000", "3600"]),
    ("timeout-enormous", lambda d, f, c: d["session"].update(timeout=10**400), ["out of range"]),
    ("timeout-bool", lambda d, f, c: d["session"].update(timeout=True), ["'timeout'", "bool"]),
    ("timeout-str", lambda d, f, c: d["session"].update(timeout="60"), ["'timeout'", "'60'"]),
    ("duplicate-names", _party(1, name="hospital-a"),
     ["two members are called 'hospital-a' (ranks 0 and 1)", "its own name"]),
    ("dealer-takes-a-party-name", lambda d, f, c: d["dealer"].update(name="hospital-c"),
     ["two members are called 'hospital-c' (ranks 2 and 3)"]),
    ("duplicate-ranks", _party(1, rank=0), ["'rank'", "both have rank 0", "missing: 1",
                                            "0 to 2"]),
    ("rank-gap", _party(2, rank=3), ["'hospital-c' has rank 3", "missing: 2"]),
    ("rank-negative", _party(0, rank=-1), ["rank -1", "missing: 0"]),
    ("one-party", lambda d, f, c: d.update(party=d["party"][:1]), ["1 party", "at least 2"]),
    ("too-many-parties", lambda d, f, c: d.update(party=[d["party"][0]] * (MAX_PARTIES + 1)),
     [f"{MAX_PARTIES + 1} parties", f"at most {MAX_PARTIES}"]),
    ("party-not-an-array", lambda d, f, c: d.update(party=d["party"][0]), ["[[party]]"]),
    ("duplicate-address", _party(1, address="10.0.0.1:29500"),
     ["'hospital-a' and 'hospital-b' share the address '10.0.0.1:29500'"]),
    ("duplicate-address-by-case", lambda d, f, c: (d["party"][0].update(address="Node:1"),
                                                   d["party"][1].update(address="node:1")),
     ["share the address 'node:1'"]),
    ("duplicate-address-ipv6", lambda d, f, c: (d["party"][0].update(address="[::1]:1"),
                                                d["party"][1].update(address="[0:0::1]:1")),
     ["share the address '[::1]:1'"]),
    ("certificate-missing", _party(0, certificate="nope.crt"),
     ["party 'hospital-a'", "'certificate'", "'nope.crt'", "not found"]),
    ("certificate-is-a-folder", _party(0, certificate="."), ["'.'", "not a file"]),
    ("certificate-too-big", _cert_file(lambda c: b"x" * (MAX_CERTIFICATE_BYTES + 1)),
     ["'hospital-a.crt'", f"{MAX_CERTIFICATE_BYTES + 1} bytes", f"{MAX_CERTIFICATE_BYTES}"]),
    ("certificate-garbage", _cert_file(lambda c: b"hello, not a certificate\n"),
     ["party 'hospital-a'", "hospital-a's certificate hospital-a.crt is not a PEM certificate"]),
    ("certificate-truncated", _cert_file(lambda c: c["hospital-a"][:200]),
     ["hospital-a's certificate hospital-a.crt is not a PEM certificate"]),
    ("certificate-with-private-key", _cert_file(lambda c: c["hospital-a"] + _KEY_PEM),
     ["hospital-a.crt holds a private key", "new identity"]),
    ("certificate-two-of-them", _cert_file(lambda c: c["hospital-a"] + c["hospital-b"]),
     ["holds 2 certificates", "exactly one"]),
    ("certificate-inline-garbage",
     _party(0, certificate="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
     ["hospital-a's certificate (inline PEM) is not a PEM certificate"]),
    ("fingerprint-garbage", _party(0, fingerprint="abc"),
     ["'fingerprint'", "'abc'", "not a SHA-256 fingerprint", "64 hex digits"]),
    ("fingerprint-md5", _party(0, fingerprint="md5:" + "a" * 32), ["'md5:aaaa"]),
    ("fingerprint-short", _party(0, fingerprint="sha256:" + "a" * 63), ["not a SHA-256"]),
    ("fingerprint-not-hex", _party(0, fingerprint="sha256:" + "g" * 64), ["not a SHA-256"]),
    ("fingerprint-int", _party(0, fingerprint=12), ["'fingerprint'", "12"]),
    ("fingerprint-stale", _with_fingerprint_of(1, "hospital-c"),
     ["party 'hospital-b', field 'fingerprint'", "hospital-b's certificate hospital-b.crt has "
      "fingerprint {hospital-b} but the manifest says {hospital-c}",
      "the file was swapped or the manifest is stale"]),
    ("certificate-swapped", _with_fingerprint_of(1, "hospital-b", "hospital-c.crt"),
     ["hospital-b's certificate hospital-c.crt has fingerprint {hospital-c} but the manifest "
      "says {hospital-b}"]),
    ("same-certificate-twice", _with_fingerprint_of(1, "hospital-a", "hospital-a.crt"),
     ["'hospital-a' and 'hospital-b' list the same certificate ({hospital-a})", "distinct"]),
    ("dealer-shares-a-certificate", lambda d, f, c: d["dealer"].update(
        certificate="hospital-c.crt", fingerprint=fingerprint(c["hospital-c"])),
     ["'hospital-c' and 'dealer' list the same certificate"]),
]


@pytest.mark.parametrize("fmt", ["toml", "json"])
@pytest.mark.parametrize("mutate,fragments", [pytest.param(m, f, id=i) for i, m, f in ERRORS])
def test_each_mistake_is_refused_with_a_useful_message(tmp_path, site, certs, fmt, mutate,
                                                       fragments) -> None:
    data = copy.deepcopy(site)
    mutate(data, tmp_path, certs)
    path = write(tmp_path, data, fmt)
    with pytest.raises(ConfigurationError) as info:
        load_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        fragment = fragment.format(**{n: fingerprint(certs[n]) for n in NAMES})
        assert fragment in message, message


BAD_ADDRESSES = ["10.0.0.1", "10.0.0.1:", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:-1",
                 "10.0.0.1:abc", "10.0.0.1:29500 ", "::1:29500", "[::1", "[::1]29500",
                 "[10.0.0.1]:1", "[::g]:1", "999.0.0.1:1", "host name:1", ":29500",
                 "-bad-.example:1", "h\u00f6st:1", "10.0.0.1:\u0661\u0662"]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_bad_addresses_are_refused(tmp_path, site, address) -> None:
    site["party"][1]["address"] = address
    with pytest.raises(ConfigurationError) as info:
        load_manifest(write(tmp_path, site))
    message = str(info.value)
    assert "party 'hospital-b', field 'address': " in message, message
    assert repr(address) in message and ("write" in message or "use" in message), message


def test_oversize_file_is_refused_before_parsing(tmp_path, monkeypatch) -> None:
    path = tmp_path / "huge.toml"
    path.write_bytes(b"#" * (MAX_MANIFEST_BYTES + 1))

    def no_parsing(*args, **kwargs):
        raise AssertionError("the manifest was parsed")

    monkeypatch.setattr(tomllib, "loads", no_parsing)
    with pytest.raises(ConfigurationError, match=f"more than the {MAX_MANIFEST_BYTES}"):
        load_manifest(path)
    with pytest.raises(ConfigurationError, match=f"more than the {MAX_MANIFEST_BYTES}"):
        parse_manifest("#" * (MAX_MANIFEST_BYTES + 1))


@pytest.mark.parametrize("name,content,fragment", [
    ("bad.toml", b"[session\nname = 1\n", "not valid TOML"),
    ("bad.json", b'{"session": {"name": "a"}, "session": {}}', "appears twice"),
    ("nan.json", b'{"session": {"name": "a", "timeout": NaN}, "party": []}', "NaN"),
    ("list.json", b"[1, 2]", "must hold one object"),
    ("latin1.toml", b'[session]\nname = "caf\xe9"\n', "not UTF-8"),
])
def test_unreadable_documents_are_refused(tmp_path, name, content, fragment) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ConfigurationError, match=fragment):
        load_manifest(tmp_path / name)


def test_missing_manifest_and_folder_and_format(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="there is no session manifest at"):
        load_manifest(tmp_path / "absent.toml")
    with pytest.raises(ConfigurationError, match="not a regular file"):
        load_manifest(tmp_path)
    with pytest.raises(ConfigurationError, match="fmt='toml'"):
        parse_manifest("{}", fmt="yaml")


# --- lookups, build, digest, round trip ------------------------------------------------------


def test_lookups(tmp_path, site, certs) -> None:
    m = load_manifest(write(tmp_path, site))
    assert m.by_rank(3) is m.dealer and m.by_rank(1).name == "hospital-b"
    fp_c = fingerprint(certs["hospital-c"])
    assert m.by_fingerprint(fp_c.upper()) is m.member("hospital-c")
    assert m.by_fingerprint("sha256:" + "0" * 64) is None
    with pytest.raises(ConfigurationError) as info:
        m.member("hospital-z")
    assert "'hospital-z'" in str(info.value) and "'hospital-a', 'hospital-b'" in str(info.value)
    with pytest.raises(ConfigurationError, match="no member has rank 4; ranks run from 0 to 3"):
        m.by_rank(4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.session = "other"  # type: ignore[misc]


def _members(certs: dict[str, bytes]) -> list[Member]:
    out = [Member(n, i, f"10.0.0.{i + 1}", 29500, certs[n], fingerprint(certs[n]))
           for i, n in enumerate(NAMES[:3])]
    return out + [Member("dealer", 3, "10.0.0.9", 29500, certs["dealer"],
                         fingerprint(certs["dealer"]), is_dealer=True)]


def test_build_orders_checks_and_equals_the_loaded_manifest(tmp_path, site, certs) -> None:
    loaded = load_manifest(write(tmp_path, site))
    members = _members(certs)
    built = Manifest.build("cardio-2026", [members[3], members[2], members[0], members[1]],
                           timeout=60)
    assert built == loaded and built.members == loaded.members
    assert built.timeout == 60.0 and isinstance(built.timeout, float)
    upper = dataclasses.replace(members[0], fingerprint=members[0].fingerprint.upper())
    assert Manifest.build("s", [upper, *members[1:]]).by_rank(0).fingerprint == \
        members[0].fingerprint


@pytest.mark.parametrize("change,fragment", [
    (lambda ms: ms.__setitem__(1, dataclasses.replace(ms[1], fingerprint=ms[2].fingerprint)),
     "the manifest says"),
    (lambda ms: ms.__setitem__(3, dataclasses.replace(ms[3], rank=7)), "takes rank 3"),
    (lambda ms: ms.__setitem__(0, dataclasses.replace(ms[0], port=0)), "'port'"),
    (lambda ms: ms.__setitem__(0, dataclasses.replace(ms[0], host="a b")), "'host'"),
    (lambda ms: ms.__setitem__(0, dataclasses.replace(ms[0], rank=False)), "bool"),
    (lambda ms: ms.__setitem__(0, dataclasses.replace(ms[0], certificate_pem="x")), "bytes"),
    (lambda ms: ms.__setitem__(2, dataclasses.replace(ms[2], is_dealer=True)), "2 members are"),
    (lambda ms: ms.append("not a member"), "Member"),
    (lambda ms: ms.__delitem__(slice(1, 3)), "1 party"),
])
def test_build_validates_like_load(certs, change, fragment) -> None:
    members = _members(certs)
    change(members)
    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        Manifest.build("cardio-2026", members)


def test_digest_ignores_order_and_form_but_not_content(tmp_path, site, certs) -> None:
    m = load_manifest(write(tmp_path, site))
    digest = m.digest()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    reordered = copy.deepcopy(site)
    reordered["party"].reverse()
    reordered["party"][0] = dict(reversed(list(reordered["party"][0].items())))
    reordered["party"][1]["certificate"] = certs["hospital-b"].decode("ascii")
    reordered["party"][2]["fingerprint"] = reordered["party"][2]["fingerprint"].upper()
    reordered["session"]["timeout"] = 5.0
    assert load_manifest(write(tmp_path, reordered, "json")).digest() == digest
    moved = copy.deepcopy(site)
    moved["party"][1]["address"] = "10.0.0.2:29501"
    assert load_manifest(write(tmp_path, moved)).digest() != digest
    renamed = copy.deepcopy(site)
    renamed["session"]["name"] = "cardio-2027"
    assert load_manifest(write(tmp_path, renamed)).digest() != digest
    swapped = copy.deepcopy(site)
    swapped["party"][0]["rank"], swapped["party"][1]["rank"] = 1, 0
    assert load_manifest(write(tmp_path, swapped)).digest() != digest


def test_to_toml_round_trip(tmp_path, site) -> None:
    site["party"][2]["address"] = "[2001:db8::3]:29500"
    m = load_manifest(write(tmp_path, site))
    text = m.to_toml()
    again = parse_manifest(text)
    assert again == m and again.digest() == m.digest() and again.members == m.members
    (tmp_path / "copy" / "x").mkdir(parents=True)
    (tmp_path / "copy" / "x" / "inline.toml").write_text(text)
    assert load_manifest(tmp_path / "copy" / "x" / "inline.toml") == m
    del site["dealer"], site["session"]["timeout"]
    bare = load_manifest(write(tmp_path, site))
    assert parse_manifest(bare.to_toml()) == bare


@given(session=st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
       ports=st.lists(st.integers(1, 65535), min_size=3, max_size=3, unique=True),
       timeout=st.none() | st.floats(min_value=1e-3, max_value=3600.0),
       v6=st.booleans())
def test_to_toml_round_trip_law(identities, session, ports, timeout, v6) -> None:
    pems = {n: pem for n, (pem, _) in identities.items()}
    members = [dataclasses.replace(m, port=p, host="2001:db8::1" if v6 else m.host)
               for m, p in zip(_members(pems)[:3], ports)]
    m = Manifest.build(session, members, timeout=timeout)
    assert parse_manifest(m.to_toml()) == m


# --- the documented example ------------------------------------------------------------------


def test_the_example_fails_only_on_its_placeholder_certificates(tmp_path, certs) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_manifest(EXAMPLE)
    assert "certificate file 'hospital-a.crt' was not found" in str(info.value)
    # With real files under its names and their fingerprints in place of the placeholders, the
    # example loads as it stands.
    text = EXAMPLE.read_text()
    for member in tomllib.loads(text)["party"] + [tomllib.loads(text)["dealer"]]:
        (tmp_path / member["certificate"]).write_bytes(certs[member["name"]])
        assert text.count(member["fingerprint"]) == 1
        text = text.replace(member["fingerprint"], fingerprint(certs[member["name"]]))
    (tmp_path / "session.toml").write_text(text)
    m = load_manifest(tmp_path / "session.toml")
    assert m.world_size == 3 and m.dealer is not None and m.dealer.rank == 3
    assert m.member("hospital-c").address == "[2001:db8::3]:29500"

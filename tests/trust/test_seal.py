"""Keys at rest (veil.trust.seal): round trips, every way to fail, files, modes and secrets."""

from __future__ import annotations

import os
import pickle
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.errors import ConfigurationError, SerializationError, UnsealError
from veil.trust import seal as sealmod
from veil.trust.seal import (
    MAGIC,
    Secret,
    is_sealed,
    new_key_file,
    read_sealed,
    seal,
    unseal,
    write_sealed,
)

FAST = {"scrypt_log2_n": 10}  # the documented test keyword: cheap scrypt
PURPOSE = "veil.test.secret"
PASS = Secret.passphrase("correct horse battery staple")
HEADER = len(MAGIC) + 4 + 16 + 12  # magic, kind/N/r/p, salt, nonce
posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def key_secret(tmp_path: Path) -> Secret:
    return Secret.key_file(new_key_file(tmp_path / "k.hex"))


# --- round trips -----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=2048), purpose=st.sampled_from(["a", "veil.identity.key"]))
def test_passphrase_round_trip(data: bytes, purpose: str) -> None:
    blob = seal(data, PASS, purpose=purpose, **FAST)
    assert is_sealed(blob) and blob.startswith(MAGIC)
    assert unseal(blob, PASS, purpose=purpose) == data
    if len(data) >= 8:
        assert data not in blob


def test_key_file_round_trip_and_fresh_salt_and_nonce(key_secret: Secret) -> None:
    a = seal(b"same data", key_secret, purpose=PURPOSE)
    b = seal(b"same data", key_secret, purpose=PURPOSE)
    assert a != b and a[len(MAGIC):len(MAGIC) + 4] == bytes((2, 0, 0, 0))
    assert unseal(a, key_secret, purpose=PURPOSE) == unseal(b, key_secret, purpose=PURPOSE)


def test_default_scrypt_parameters_are_in_the_header() -> None:
    blob = seal(b"x", PASS, purpose=PURPOSE)
    assert blob[len(MAGIC):len(MAGIC) + 4] == bytes((1, 15, 8, 1))
    assert unseal(blob, PASS, purpose=PURPOSE) == b"x"


# --- failures --------------------------------------------------------------------------------


def test_wrong_passphrase_and_wrong_key_file(tmp_path: Path, key_secret: Secret) -> None:
    blob = seal(b"payload", PASS, purpose=PURPOSE, **FAST)
    with pytest.raises(UnsealError, match="wrong passphrase") as info:
        unseal(blob, Secret.passphrase("correct horse battery stapl"), purpose=PURPOSE)
    assert "correct horse" not in str(info.value) and "payload" not in str(info.value)
    other = Secret.key_file(new_key_file(tmp_path / "other.hex"))
    kblob = seal(b"payload", key_secret, purpose=PURPOSE)
    with pytest.raises(UnsealError, match="wrong key-file"):
        unseal(kblob, other, purpose=PURPOSE)
    with pytest.raises(UnsealError, match="sealed with a key-file but a passphrase"):
        unseal(kblob, PASS, purpose=PURPOSE)
    with pytest.raises(UnsealError, match="sealed with a passphrase"):
        unseal(blob, key_secret, purpose=PURPOSE)


def test_wrong_purpose_fails() -> None:
    blob = seal(b"paillier key", PASS, purpose="veil.paillier.private-key", **FAST)
    with pytest.raises(UnsealError):
        unseal(blob, PASS, purpose="veil.identity.key")
    assert unseal(blob, PASS, purpose="veil.paillier.private-key") == b"paillier key"


def _region(i: int, total: int) -> str:
    m = len(MAGIC)
    if i < m:
        return "magic"
    if i < m + 4:
        return "params"
    if i < m + 4 + 16:
        return "salt"
    if i < HEADER:
        return "nonce"
    return "tag" if i >= total - 16 else "ciphertext"


@pytest.mark.parametrize("secret_kind", ["passphrase", "key-file"])
def test_every_altered_byte_is_refused(secret_kind: str, key_secret: Secret) -> None:
    secret = PASS if secret_kind == "passphrase" else key_secret
    blob = seal(b"sixteen byte msg", secret, purpose=PURPOSE, **FAST)
    seen = set()
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        region = _region(i, len(blob))
        seen.add(region)
        expected = SerializationError if region == "magic" else (UnsealError, SerializationError)
        if region in ("salt", "nonce", "ciphertext", "tag"):
            expected = UnsealError
        with pytest.raises(expected):
            unseal(bytes(bad), secret, purpose=PURPOSE)
    assert seen == {"magic", "params", "salt", "nonce", "ciphertext", "tag"}


def test_altered_scrypt_cost_still_fails_authentication() -> None:
    blob = bytearray(seal(b"data", PASS, purpose=PURPOSE, **FAST))
    blob[len(MAGIC) + 1] = 11  # log2 N 10 -> 11: valid, so the tag check must catch it
    with pytest.raises(UnsealError):
        unseal(bytes(blob), PASS, purpose=PURPOSE)


def test_truncation_at_every_length_is_refused() -> None:
    blob = seal(b"some secret bytes", PASS, purpose=PURPOSE, **FAST)
    for n in range(1, len(blob)):
        with pytest.raises(UnsealError):
            unseal(blob[:n], PASS, purpose=PURPOSE)
    with pytest.raises(UnsealError):
        unseal(blob + b"\0", PASS, purpose=PURPOSE)


@pytest.mark.parametrize("log2_n", [9, 23, 40, 255])
def test_attacker_header_with_extreme_scrypt_cost_is_refused_fast(log2_n: int) -> None:
    blob = bytearray(seal(b"data", PASS, purpose=PURPOSE, **FAST))
    blob[len(MAGIC) + 1] = log2_n
    t0 = time.monotonic()
    with pytest.raises(SerializationError, match="scrypt log2 N"):
        unseal(bytes(blob), PASS, purpose=PURPOSE)
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize(("r", "p"), [(0, 1), (17, 1), (8, 0), (8, 5), (255, 255)])
def test_attacker_header_with_bad_r_or_p_is_refused(r: int, p: int) -> None:
    blob = bytearray(seal(b"data", PASS, purpose=PURPOSE, **FAST))
    blob[len(MAGIC) + 2:len(MAGIC) + 4] = bytes((r, p))
    with pytest.raises(SerializationError):
        unseal(bytes(blob), PASS, purpose=PURPOSE)


@pytest.mark.parametrize("blob", [b"", b"hello world, not sealed at all", b"VEILSEAX" + b"\0" * 80,
                                  b"\x89PNG\r\n\x1a\n" + b"\0" * 80])
def test_data_that_is_not_sealed(blob: bytes) -> None:
    assert not is_sealed(blob)
    with pytest.raises(SerializationError, match="not sealed"):
        unseal(blob, PASS, purpose=PURPOSE)


def test_unknown_version_kind_and_size() -> None:
    blob = seal(b"data", PASS, purpose=PURPOSE, **FAST)
    with pytest.raises(SerializationError, match="version 2"):
        unseal(MAGIC[:-1] + b"\x02" + blob[len(MAGIC):], PASS, purpose=PURPOSE)
    with pytest.raises(SerializationError, match="unknown kind"):
        unseal(blob[:len(MAGIC)] + b"\x07" + blob[len(MAGIC) + 1:], PASS, purpose=PURPOSE)
    with pytest.raises(SerializationError, match="max_bytes"):
        unseal(blob, PASS, purpose=PURPOSE, max_bytes=len(blob) - 1)


def test_seal_refuses_bad_arguments(key_secret: Secret) -> None:
    with pytest.raises(ConfigurationError, match="scrypt log2 N"):
        seal(b"x", PASS, purpose=PURPOSE, scrypt_log2_n=9)
    with pytest.raises(ConfigurationError, match="scrypt log2 N"):
        seal(b"x", PASS, purpose=PURPOSE, scrypt_log2_n=23)
    with pytest.raises(ConfigurationError, match="purpose"):
        seal(b"x", PASS, purpose="")
    with pytest.raises(ConfigurationError, match="only bytes"):
        seal("text", PASS, purpose=PURPOSE)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Secret"):
        seal(b"x", "a passphrase", purpose=PURPOSE)  # type: ignore[arg-type]
    # the cost byte means nothing for key files: any scrypt_log2_n is ignored
    assert unseal(seal(b"x", key_secret, purpose=PURPOSE, scrypt_log2_n=3), key_secret,
                  purpose=PURPOSE) == b"x"


# --- files -----------------------------------------------------------------------------------


@posix_only
def test_sealed_files_are_0600_atomic_and_size_checked(tmp_path: Path) -> None:
    path = write_sealed(tmp_path / "s.bin", b"secret", PASS, purpose=PURPOSE, **FAST)
    assert _mode(path) == 0o600 and read_sealed(path, PASS, purpose=PURPOSE) == b"secret"
    write_sealed(path, b"second", PASS, purpose=PURPOSE, **FAST)  # replaces atomically
    assert read_sealed(path, PASS, purpose=PURPOSE) == b"second" and _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin"]  # no temporary left over
    with pytest.raises(ConfigurationError, match="already exists"):
        write_sealed(path, b"x", PASS, purpose=PURPOSE, overwrite=False, **FAST)
    with pytest.raises(SerializationError, match="max_bytes"):
        read_sealed(path, PASS, purpose=PURPOSE, max_bytes=10)
    with pytest.raises(UnsealError, match="s.bin"):
        read_sealed(path, Secret.passphrase("nope"), purpose=PURPOSE)
    with pytest.raises(ConfigurationError, match="does not exist"):
        read_sealed(tmp_path / "missing", PASS, purpose=PURPOSE)


def test_write_sealed_into_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        write_sealed(tmp_path / "no" / "s.bin", b"x", PASS, purpose=PURPOSE, **FAST)


@posix_only
def test_key_files(tmp_path: Path) -> None:
    path = new_key_file(tmp_path / "k.hex")
    assert _mode(path) == 0o600 and len(path.read_text().strip()) == 64
    with pytest.raises(ConfigurationError, match="already exists"):
        new_key_file(path)
    secret = Secret.key_file(path)
    assert secret.kind == "key-file"
    path.chmod(0o640)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        Secret.key_file(path)
    path.chmod(0o600)
    path.write_text("zz" * 32)
    with pytest.raises(ConfigurationError, match="veil identity key-file new"):
        Secret.key_file(path)
    path.write_text("ab" * 16)
    with pytest.raises(ConfigurationError, match="32 bytes"):
        Secret.key_file(path)
    with pytest.raises(ConfigurationError, match="does not exist.*key-file new"):
        Secret.key_file(tmp_path / "nope.hex")


# --- secrets ---------------------------------------------------------------------------------


def test_repr_and_pickle_never_show_the_secret(tmp_path: Path, key_secret: Secret) -> None:
    secret = Secret.passphrase("s3cr3t-passphrase")
    assert "s3cr3t" not in repr(secret) and secret.kind == "passphrase"
    assert "passphrase" in repr(secret)
    key_hex = (tmp_path / "k.hex").read_text().strip()
    assert key_hex not in repr(key_secret) and "k.hex" in repr(key_secret)
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_passphrase_text_is_normalised_and_empty_refused() -> None:
    blob = seal(b"x", Secret.passphrase("caf\u00e9"), purpose=PURPOSE, **FAST)
    assert unseal(blob, Secret.passphrase("cafe\u0301"), purpose=PURPOSE) == b"x"
    assert unseal(blob, Secret.passphrase("caf\u00e9".encode()), purpose=PURPOSE) == b"x"
    for empty in ("", b""):
        with pytest.raises(ConfigurationError, match="empty"):
            Secret.passphrase(empty)


def test_from_env(monkeypatch) -> None:
    monkeypatch.setenv("MY_PASS", "from-env")
    blob = seal(b"x", Secret.from_env("MY_PASS"), purpose=PURPOSE, **FAST)
    assert unseal(blob, Secret.passphrase("from-env"), purpose=PURPOSE) == b"x"
    monkeypatch.delenv("MY_PASS")
    with pytest.raises(ConfigurationError, match="MY_PASS"):
        Secret.from_env("MY_PASS")


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("VEIL_PASSPHRASE", raising=False)
    monkeypatch.delenv("VEIL_KEY_FILE", raising=False)
    return monkeypatch


def test_resolve_each_source(tmp_path: Path, clean_env) -> None:
    blob = seal(b"x", Secret.passphrase("pw"), purpose=PURPOSE, **FAST)

    def opens(secret: Secret) -> bool:
        return unseal(blob, secret, purpose=PURPOSE) == b"x"

    pw_file = tmp_path / "pw.txt"
    pw_file.write_text("pw\nsecond line ignored\n")
    clean_env.setenv("PW_VAR", "pw")
    assert opens(Secret.resolve(passphrase="pw"))
    assert opens(Secret.resolve(passphrase_env="PW_VAR"))
    assert opens(Secret.resolve(passphrase_file=pw_file))
    key = new_key_file(tmp_path / "k.hex")
    assert Secret.resolve(key_file=key).kind == "key-file"
    clean_env.setenv("VEIL_PASSPHRASE", "pw")
    assert opens(Secret.resolve())
    clean_env.delenv("VEIL_PASSPHRASE")
    clean_env.setenv("VEIL_KEY_FILE", str(key))
    assert Secret.resolve().kind == "key-file"
    clean_env.delenv("VEIL_KEY_FILE")
    clean_env.setattr(sealmod.getpass, "getpass", lambda prompt="": "pw")
    assert opens(Secret.resolve(prompt=True))


def test_resolve_refuses_none_or_several(tmp_path: Path, clean_env) -> None:
    with pytest.raises(ConfigurationError, match="--passphrase-env.*--key-file"):
        Secret.resolve()
    with pytest.raises(ConfigurationError, match="exactly one.*passphrase, key_file"):
        Secret.resolve(passphrase="a", key_file=tmp_path / "k")
    clean_env.setenv("VEIL_PASSPHRASE", "pw")
    clean_env.setenv("VEIL_KEY_FILE", str(tmp_path / "k"))
    with pytest.raises(ConfigurationError, match="unset one"):
        Secret.resolve()
    empty = tmp_path / "empty.txt"
    empty.write_text("\nsecond\n")
    with pytest.raises(ConfigurationError, match="empty first line"):
        Secret.resolve(passphrase_file=empty)
    with pytest.raises(ConfigurationError, match="does not exist"):
        Secret.resolve(passphrase_file=tmp_path / "missing.txt")
    with pytest.raises(ConfigurationError, match="NOT_SET_ANYWHERE"):
        Secret.resolve(passphrase_env="NOT_SET_ANYWHERE")

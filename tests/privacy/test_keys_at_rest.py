"""Keys at rest (issue #14): the audit log's HMAC key file is sealed; plain ones warn.

Library (veil.privacy.audit.new_key_file / read_key_file / seal_key_file) and command line
(`veil audit key new|seal`, `veil audit verify --key-file`, `veil stats --audit-key-file`).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from veil.errors import ConfigurationError, UnsealError
from veil.privacy import AuditLog, verify
from veil.privacy.audit import KEY_BYTES, new_key_file, read_key_file, seal_key_file
from veil.trust.seal import Secret, is_sealed
from veil.trust.seal import new_key_file as new_kek_file

FAST = {"scrypt_log2_n": 10}
PW = Secret.passphrase("audit passphrase")


def _no_warning_read(path: Path, secret) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_key_file(path, secret)


def test_new_key_file_is_sealed_0600_and_never_overwritten(tmp_path) -> None:
    path = new_key_file(tmp_path / "audit.key", PW, **FAST)
    data = path.read_bytes()
    assert is_sealed(data) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = _no_warning_read(path, PW)
    assert len(key) == KEY_BYTES
    assert key not in data and key.hex().encode() not in data  # the key itself is not there
    with pytest.raises(ConfigurationError, match="already exists"):
        new_key_file(path, PW, **FAST)
    assert _no_warning_read(path, PW) == key


def test_sealed_key_needs_the_right_secret(tmp_path) -> None:
    path = new_key_file(tmp_path / "audit.key", PW, **FAST)
    with pytest.raises(UnsealError, match="wrong passphrase"):
        read_key_file(path, Secret.passphrase("not it"))
    with pytest.raises(ConfigurationError, match="is sealed.*--passphrase-env"):
        read_key_file(path)
    kek = Secret.key_file(new_kek_file(tmp_path / "kek"))
    with pytest.raises(UnsealError, match="sealed with a passphrase"):
        read_key_file(path, kek)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(UnsealError):
        read_key_file(path, PW)


def test_a_sealed_file_of_another_purpose_is_not_an_audit_key(tmp_path) -> None:
    from veil.trust.seal import write_sealed

    other = write_sealed(tmp_path / "other", os.urandom(32), PW, purpose="veil.identity.key",
                         **FAST)
    with pytest.raises(UnsealError, match="another purpose"):
        read_key_file(other, PW)


def test_secret_callable_is_asked_only_for_a_sealed_file(tmp_path) -> None:
    asked = []

    def secret() -> Secret:
        asked.append(1)
        return PW

    plain = tmp_path / "plain.key"
    plain.write_bytes(os.urandom(32))
    with pytest.warns(UserWarning):
        read_key_file(plain, secret)
    assert asked == []
    _no_warning_read(new_key_file(tmp_path / "sealed.key", PW, **FAST), secret)
    assert asked == [1]


def test_legacy_plain_key_file_is_read_with_a_warning(tmp_path) -> None:
    path = tmp_path / "legacy.key"
    raw = os.urandom(32)
    path.write_bytes(raw)
    with pytest.warns(UserWarning, match=r"not encrypted.*veil audit key seal"):
        assert read_key_file(path) == raw
    (tmp_path / "short.key").write_bytes(b"abc")
    with pytest.raises(ConfigurationError, match="at least 16"):
        read_key_file(tmp_path / "short.key")
    with pytest.raises(ConfigurationError, match="no such file"):
        read_key_file(tmp_path / "missing.key")
    (tmp_path / "big.key").write_bytes(b"x" * 5000)
    with pytest.raises(ConfigurationError, match="over 4096 bytes"):
        read_key_file(tmp_path / "big.key")


def test_seal_key_file_keeps_the_key_so_old_logs_verify(tmp_path) -> None:
    path, log = tmp_path / "legacy.key", tmp_path / "audit.jsonl"
    raw = os.urandom(32)
    path.write_bytes(raw)
    AuditLog(log, key=raw).append({"statistic": "mean", "rows": 10})
    seal_key_file(path, PW, **FAST)
    data = path.read_bytes()
    assert is_sealed(data) and raw not in data
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = _no_warning_read(path, PW)
    assert key == raw and verify(log, key=key).ok
    with pytest.raises(ConfigurationError, match="sealed already"):
        seal_key_file(path, PW, **FAST)


def test_keyed_log_with_a_sealed_key(tmp_path) -> None:
    key = _no_warning_read(new_key_file(tmp_path / "k", PW, **FAST), PW)
    log = tmp_path / "audit.jsonl"
    for i in range(3):
        AuditLog(log, key=key).append({"statistic": "mean", "i": i})
    report = verify(log, key=key)
    assert report.ok and report.keyed and report.entries == 3
    assert not verify(log, key=os.urandom(32)).ok


# -- command line ----------------------------------------------------------------------------------


def _veil(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("VEIL_PASSPHRASE", "VEIL_KEY_FILE")}
    return subprocess.run([sys.executable, "-m", "veil", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**base, "COLUMNS": "200", **env})


def test_cli_key_new_verify_and_errors(tmp_path) -> None:
    made = _veil("audit", "key", "new", "audit.key", "--passphrase-env", "AUDIT_PW",
                 cwd=tmp_path, AUDIT_PW="s3cret")
    assert made.returncode == 0, made.stderr
    assert "sealed with a passphrase" in made.stdout
    key_path = tmp_path / "audit.key"
    assert is_sealed(key_path.read_bytes())
    key = read_key_file(key_path, Secret.passphrase("s3cret"))
    AuditLog(tmp_path / "audit.jsonl", key=key).append({"rows": 1})
    ok = _veil("audit", "verify", "audit.jsonl", "--key-file", "audit.key", cwd=tmp_path,
               VEIL_PASSPHRASE="s3cret")
    assert ok.returncode == 0 and "HMAC-keyed" in ok.stdout, ok.stderr
    pw_file = tmp_path / "pw.txt"
    pw_file.write_text("s3cret\n")
    ok2 = _veil("audit", "verify", "audit.jsonl", "--key-file", "audit.key",
                "--passphrase-file", "pw.txt", cwd=tmp_path)
    assert ok2.returncode == 0, ok2.stderr
    wrong = _veil("audit", "verify", "audit.jsonl", "--key-file", "audit.key", cwd=tmp_path,
                  VEIL_PASSPHRASE="nope")
    assert wrong.returncode == 1 and "UnsealError" in wrong.stderr
    assert "nope" not in wrong.stderr and "s3cret" not in wrong.stderr
    none = _veil("audit", "verify", "audit.jsonl", "--key-file", "audit.key", cwd=tmp_path)
    assert none.returncode == 2 and "no terminal" in none.stderr
    assert "--passphrase-env" in none.stderr
    both = _veil("audit", "verify", "audit.jsonl", "--key-file", "audit.key",
                 "--passphrase-env", "X", "--passphrase-file", "pw.txt", cwd=tmp_path)
    assert both.returncode == 2 and "not several" in both.stderr
    unused = _veil("audit", "verify", "audit.jsonl", "--passphrase-env", "X", cwd=tmp_path)
    assert unused.returncode == 2 and "give --key-file FILE too" in unused.stderr
    again = _veil("audit", "key", "new", "audit.key", cwd=tmp_path, VEIL_PASSPHRASE="x")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_cli_key_seal_and_legacy_warning(tmp_path) -> None:
    raw = os.urandom(32)
    (tmp_path / "legacy.key").write_bytes(raw)
    AuditLog(tmp_path / "audit.jsonl", key=raw).append({"rows": 1})
    legacy = _veil("audit", "verify", "audit.jsonl", "--key-file", "legacy.key", cwd=tmp_path)
    assert legacy.returncode == 0 and "not encrypted" in legacy.stderr
    kek = new_kek_file(tmp_path / "kek")
    sealed = _veil("audit", "key", "seal", "legacy.key", "--seal-key-file", str(kek),
                   cwd=tmp_path)
    assert sealed.returncode == 0, sealed.stderr
    assert is_sealed((tmp_path / "legacy.key").read_bytes())
    after = _veil("audit", "verify", "audit.jsonl", "--key-file", "legacy.key", cwd=tmp_path,
                  VEIL_KEY_FILE=str(kek))
    assert after.returncode == 0 and "not encrypted" not in after.stderr, after.stderr


def test_cli_stats_opens_a_sealed_audit_key(tmp_path, monkeypatch) -> None:
    """`veil stats --audit-key-file` with a sealed key (checked before the release runs)."""
    from veil.cli.stats import _open_audit

    key_path = new_key_file(tmp_path / "audit.key", PW, **FAST)
    for var in ("VEIL_PASSPHRASE", "VEIL_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AUDIT_PW_TEST", "audit passphrase")
    log = _open_audit(tmp_path / "a.jsonl", key_path, "AUDIT_PW_TEST", None, None)
    assert log.key == read_key_file(key_path, PW)
    with pytest.raises(ConfigurationError, match="give --audit-key-file FILE too"):
        _open_audit(tmp_path / "a.jsonl", None, "AUDIT_PW_TEST")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    with pytest.raises(ConfigurationError, match="--audit-key-file .* no terminal"):
        _open_audit(tmp_path / "a.jsonl", key_path)

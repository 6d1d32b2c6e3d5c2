"""The audit log against someone who can edit its files (issue 12 item 11)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from veil.errors import ConfigurationError
from veil.privacy import AuditLog, verify

KEY = b"k" * 32


def _log(tmp_path: Path, n: int = 4, key: bytes | None = KEY) -> Path:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=key)
    for i in range(n):
        log.append({"statistic": f"mean#{i}", "rows": 100 + i})
    return path


def _head(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _truncate(path: Path, keep: int) -> list[str]:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep]))
    return lines


def test_keyed_log_with_its_tail_cut_and_its_anchor_deleted_fails(tmp_path: Path) -> None:
    path = _log(tmp_path)
    assert verify(path, key=KEY).ok
    _truncate(path, 2)
    _head(path).unlink()
    report = verify(path, key=KEY)
    assert not report.ok and "anchor" in report.problems[0] and "missing" in report.problems[0]


def test_keyed_log_with_its_anchor_rewritten_without_the_key_fails(tmp_path: Path) -> None:
    path = _log(tmp_path)
    _truncate(path, 2)
    last = json.loads(path.read_text().splitlines()[-1])
    # the attacker copies the new last entry's (genuine) hash into a fresh anchor ...
    _head(path).write_text(json.dumps({"seq": last["seq"], "hash": last["hash"]}))
    assert not verify(path, key=KEY).ok
    # ... or adds a made-up MAC
    _head(path).write_text(json.dumps({"seq": last["seq"], "hash": last["hash"],
                                       "mac": "ab" * 32}))
    report = verify(path, key=KEY)
    assert not report.ok and "not authenticated" in report.problems[0]


def test_a_rollback_of_both_files_shows_only_against_a_head_kept_elsewhere(
        tmp_path: Path) -> None:
    path = _log(tmp_path, n=2)
    old_log, old_head = tmp_path / "old.jsonl", tmp_path / "old.head"
    shutil.copy(path, old_log)
    shutil.copy(_head(path), old_head)
    AuditLog(path, key=KEY).append({"statistic": "later", "rows": 1})
    kept = verify(path, key=KEY).head
    shutil.copy(old_log, path)
    shutil.copy(old_head, _head(path))
    assert verify(path, key=KEY).ok  # documented limit: both files replaced by an older copy
    report = verify(path, key=KEY, head=kept)
    assert not report.ok and "given head" in report.problems[0]


def test_a_keyed_log_verified_without_the_key_says_so(tmp_path: Path) -> None:
    report = verify(_log(tmp_path))
    assert not report.ok and "--key-file" in report.problems[0]


def test_an_unkeyed_log_reports_what_it_proves(tmp_path: Path) -> None:
    path = _log(tmp_path, key=None)
    report = verify(path)
    assert report.ok and report.anchored and not report.keyed
    _truncate(path, 2)
    _head(path).unlink()
    report = verify(path)  # undetectable without a key: reported as unanchored
    assert report.ok and not report.anchored and report.entries == 2


@pytest.mark.parametrize("key", [KEY, None])
@pytest.mark.parametrize("attack", ["truncate", "delete_anchor", "empty_log"])
def test_append_refuses_a_log_that_does_not_match_its_anchor(
        tmp_path: Path, key: bytes | None, attack: str) -> None:
    path = _log(tmp_path, key=key)
    if attack == "truncate":  # without this check the next append would launder the cut
        _truncate(path, 2)
    elif attack == "delete_anchor":
        _head(path).unlink()
    else:
        path.write_text("")
    before = path.read_bytes()
    log = AuditLog(path, key=key)
    with pytest.raises(ConfigurationError, match="nothing was appended"):
        log.check()
    with pytest.raises(ConfigurationError, match="nothing was appended"):
        log.append({"statistic": "mean", "rows": 5})
    assert path.read_bytes() == before


def test_append_refuses_an_anchor_written_without_the_key(tmp_path: Path) -> None:
    path = _log(tmp_path)
    _truncate(path, 3)
    last = json.loads(path.read_text().splitlines()[-1])
    _head(path).write_text(json.dumps({"seq": last["seq"], "hash": last["hash"]}))
    with pytest.raises(ConfigurationError, match="not authenticated"):
        AuditLog(path, key=KEY).append({"statistic": "mean"})


def test_an_interrupted_append_is_repaired_by_the_next_one(tmp_path: Path) -> None:
    path = _log(tmp_path, n=2)
    stale = _head(path).read_text()
    AuditLog(path, key=KEY).append({"statistic": "third"})
    _head(path).write_text(stale)  # the process died between the entry and the anchor
    assert not verify(path, key=KEY).ok
    AuditLog(path, key=KEY).append({"statistic": "fourth"})
    report = verify(path, key=KEY)
    assert report.ok and report.entries == 4


@pytest.mark.parametrize("line", [
    "[" * 50_000 + "]" * 50_000,
    '{"seq": 0, "prev": "' + "0" * 64 + '", "hash": "' + "a" * 64 + '", "x": NaN}',
    '{"seq": 0, "prev": "' + "0" * 64 + '", "hash": "' + "a" * 64 + '", "x": ' + "9" * 5000
    + "}",
    '{"seq": false, "prev": "' + "0" * 64 + '", "hash": "' + "a" * 64 + '"}',
    '{"seq": 0, "prev": "' + "0" * 64 + '", "hash": "\u00e9' + "a" * 63 + '"}',
    '{"seq": 0, "prev": "' + "0" * 64 + '", "hash": "' + "a" * 64 + '\\n"}',
    "not json",
])
def test_malformed_lines_are_reported_not_raised(tmp_path: Path, line: str) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(line + "\n")
    report = verify(path)
    assert not report.ok and "line 1" in report.problems[0]
    with pytest.raises(ConfigurationError):
        AuditLog(path).append({"x": 1})


@pytest.mark.parametrize("anchor", ["{", "[" * 50_000, '{"seq": -1, "hash": "x"}',
                                    '{"seq": 0, "hash": "' + "a" * 64 + '", "mac": 5}',
                                    "x" * 10_000])
def test_a_damaged_anchor_is_reported(tmp_path: Path, anchor: str) -> None:
    path = _log(tmp_path, n=1, key=None)
    _head(path).write_text(anchor)
    report = verify(path)
    assert not report.ok and "damaged anchor" in report.problems[0]


def test_paths_that_are_not_logs_are_reported(tmp_path: Path) -> None:
    assert "not a regular file" in verify(tmp_path).problems[0]
    assert "does not exist" in verify(tmp_path / "nope").problems[0]
    with pytest.raises(ConfigurationError, match="64 hex digits"):
        verify(tmp_path / "nope", head="abc")
    with pytest.raises(ConfigurationError, match="at least 16"):
        verify(tmp_path / "nope", key=b"short")


def test_new_anchors_are_written_atomically_with_a_mac(tmp_path: Path) -> None:
    path = _log(tmp_path, n=1)
    doc = json.loads(_head(path).read_text())
    assert set(doc) == {"seq", "hash", "mac"} and doc["mac"] != doc["hash"]
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))

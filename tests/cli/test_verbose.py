"""``veil -v``: log records on stderr, and the phase spinner of ``veil.cli.logs``.

The spinner is tested with synthetic records (forwarded frames, as local parties send them)
and once around a real joint-statistics run; ``veil -v stats`` runs as a subprocess.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from veil.cli.logs import LOG_FORMAT, MPC_LOGGER, PhaseBoard, configure, phase_progress
from veil.mpc import logs
from veil.mpc.logs import PhaseEvent

VEIL = Path(sys.executable).with_name("veil")


@pytest.fixture(autouse=True)
def restored_logging():
    """The veil loggers these tests touch, as they were (levels, handlers, propagation); the
    root logger's handlers are pytest's, changed only by :func:`root_capture`."""
    names = ["veil", MPC_LOGGER]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers),
                 logging.getLogger(n).propagate) for n in names}
    yield
    for name, (level, handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate


def _terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120), out


def _phase(member: str, event: str, name: str, depth: int = 1, seconds: float = 0.0,
           level: int | None = None, created: float | None = None) -> bytes:
    """A record frame as a local party forwards it (veil.mpc.logs)."""
    info = {"event": event, "name": name, "member": member, "depth": depth,
            "seconds": seconds, "bytes_sent": 8, "bytes_received": 8, "rounds": 1}
    if level is None:
        level = logging.DEBUG if event == "start" else logging.INFO
    msg = f"phase {name!r} started" if event == "start" else f"phase {name!r} {event} in 1 s"
    return json.dumps({"name": f"veil.mpc.{member}", "level": level, "msg": msg,
                       "created": time.time() if created is None else created,
                       "phase": info}).encode()


def _wait_for(out: io.StringIO, needle: str) -> None:
    """Until the spinner's refresh thread has drawn ``needle`` (a few refreshes; CI is slow)."""
    deadline = time.monotonic() + 10
    while needle not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)


def _emit(frame: bytes) -> None:
    logs.reemit(frame, process="veil-mpc-party 0", pid=1)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def root_capture():
    """An application's handler on the root logger, as logging.basicConfig() adds."""
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    yield capture
    logging.getLogger().removeHandler(capture)


# -- configure ---------------------------------------------------------------------------------
def test_configure_sets_one_stderr_handler_and_never_doubles_it() -> None:
    veil = logging.getLogger("veil")
    before = list(veil.handlers)
    configure(0)
    assert veil.handlers == before and veil.level == logging.NOTSET
    configure(1)
    configure(1)
    added = [h for h in veil.handlers if h not in before]
    assert len(added) == 1 and veil.level == logging.INFO and added[0].level == logging.INFO
    assert added[0].formatter._fmt == LOG_FORMAT
    configure(2)
    logs.log_to_stderr("DEBUG")  # the library's own switch replaces the CLI's handler
    added = [h for h in veil.handlers if h not in before]
    assert len(added) == 1 and veil.level == logging.DEBUG


def test_verbose_lines_are_printed_once(capsys) -> None:
    configure(1)
    logs.log_to_stderr("INFO")
    configure(1)
    logging.getLogger("veil.mpc.party0").info("phase %r done", "p")
    logging.getLogger("veil.mpc.party0").debug("not at -v")
    err = capsys.readouterr().err
    assert err.count("phase 'p' done") == 1 and "not at -v" not in err


# -- the board ---------------------------------------------------------------------------------
def _event(member: str, event: str, name: str, depth: int = 1, seconds: float = 0.0
           ) -> PhaseEvent:
    return PhaseEvent(event, name, member, depth, seconds, 0, 0, 0)


def test_board_names_each_busy_party_its_phase_and_time() -> None:
    board = PhaseBoard("stats")
    assert board.text(now=100.0) == "stats: starting the parties"
    board.update(_event("party1", "start", "stats linear"), 97.0)
    assert board.text(now=100.0) == "stats: party1: stats linear (3.0 s)"
    board.update(_event("party0", "start", "stats linear"), 96.8)
    board.update(_event("party0", "start", "reveal to all", depth=2), 99.0)  # inner: not shown
    assert board.text(now=100.0) == "stats: parties 0, 1: stats linear (3.2 s)"
    board.update(_event("party0", "done", "reveal to all", depth=2, seconds=1.0), 100.0)
    board.update(_event("party0", "done", "stats linear", seconds=3.2), 100.0)
    board.update(_event("party0", "start", "stats reveal"), 100.5)
    assert board.text(now=101.0) == ("stats: party0: stats reveal (0.5 s) · "
                                     "party1: stats linear (4.0 s)")
    board.update(_event("party0", "done", "stats reveal", seconds=0.6), 101.0)
    board.update(_event("party1", "failed", "stats linear", seconds=3.0), 101.0)
    assert board.text(now=101.0) == "stats: party1: stats linear failed in 3.0 s"
    assert list(board.ended) == [
        ("party0", "reveal to all", "done"), ("party0", "stats linear", "done"),
        ("party0", "stats reveal", "done"), ("party1", "stats linear", "failed")]


def test_board_orders_parties_by_rank_and_counts_the_rest() -> None:
    board = PhaseBoard("t")
    for member in ["dealer", "party10", "party2", "party1", "party3"]:
        board.update(_event(member, "start", "p"), 0.0)
    assert board.text(now=1.0) == "t: parties 1, 2, 3, 10 and the dealer: p (1.0 s)"
    board = PhaseBoard("t")
    for i, member in enumerate(["party4", "party3", "party2", "party1", "party0"]):
        board.update(_event(member, "start", f"p{i}"), 0.0)
    assert board.text(now=1.0) == ("t: party0: p4 (1.0 s) · party1: p3 (1.0 s) · "
                                   "party2: p2 (1.0 s) · +2 more")
    board.update(_event("party0", "done", "never started"), 1.0)  # an end without a start
    assert "party0: p4" in board.text(now=1.0)
    board = PhaseBoard("t")
    board.update(_event("party0", "start", "p"), 0.0)
    board.update(_event("dealer", "start", "p"), 0.0)
    assert board.text(now=0.0) == "t: party 0 and the dealer: p (0.0 s)"


# -- the spinner -------------------------------------------------------------------------------
def test_spinner_shows_the_reported_phase_without_printing_records(capfd, root_capture) -> None:
    mpc_logger = logging.getLogger(MPC_LOGGER)
    mpc_capture = _Capture()  # and one on veil.mpc itself
    mpc_logger.addHandler(mpc_capture)
    handlers = list(mpc_logger.handlers)
    console, out = _terminal()
    with phase_progress(console, "joint statistics") as board:
        assert board is not None
        assert logs.child_levels() is not None  # the parties will send their phase records
        _emit(_phase("party0", "start", "stats linear"))
        _emit(_phase("party1", "start", "stats linear"))
        assert "parties 0, 1: stats linear" in board.text()
        _wait_for(out, "joint statistics: parties 0, 1: stats linear (")
        _emit(_phase("party0", "done", "stats linear", seconds=0.4))
        _emit(_phase("party1", "failed", "stats linear", level=logging.WARNING))
    shown = out.getvalue()
    assert "joint statistics: parties 0, 1: stats linear (" in shown
    assert list(board.ended) == [("party0", "stats linear", "done"),
                                 ("party1", "stats linear", "failed")]
    # only the WARNING record went on to the application's handlers; nothing on stderr
    assert [r.levelno for r in root_capture.records] == [logging.WARNING]
    assert [r.levelno for r in mpc_capture.records] == [logging.WARNING]
    assert capfd.readouterr().err == ""
    # everything restored
    assert mpc_logger.level == logging.NOTSET and mpc_logger.propagate is True
    assert mpc_logger.handlers == handlers
    assert logs.child_levels() is None


def test_without_any_handler_only_warnings_reach_the_last_resort(capfd) -> None:
    logging.getLogger(MPC_LOGGER).handlers = []  # not even veil.mpc's NullHandler
    root = logging.getLogger()
    pytest_handlers, root.handlers = root.handlers, []  # nor pytest's
    console, _ = _terminal()
    try:
        with phase_progress(console, "stats"):
            _emit(_phase("party0", "start", "p"))
            _emit(_phase("party0", "done", "p"))
            _emit(_phase("party0", "failed", "q", level=logging.WARNING))
    finally:
        root.handlers = pytest_handlers
    assert capfd.readouterr().err == "phase 'q' failed in 1 s\n"  # as without the spinner
    assert logging.getLogger(MPC_LOGGER).handlers == []


def test_with_v_the_records_print_above_the_spinner_once(capfd) -> None:
    console, out = _terminal()
    handler = logs.log_to_stderr("INFO", stream=out)  # what -v does, on the console's file
    with phase_progress(console, "stats"):
        assert handler.stream is not out  # routed through the console while it runs
        _emit(_phase("party0", "start", "stats linear"))
        _emit(_phase("party0", "done", "stats linear"))
    assert handler.stream is out
    shown = out.getvalue()
    assert shown.count("veil.mpc.party0 INFO: phase 'stats linear' done in 1 s") == 1, shown
    assert "started" not in shown  # the DEBUG start fed the spinner only
    assert capfd.readouterr().err == ""


def test_with_vv_the_spinner_changes_no_level() -> None:
    logging.getLogger("veil").setLevel(logging.DEBUG)
    capture = _Capture()
    logging.getLogger("veil").addHandler(capture)
    console, _ = _terminal()
    with phase_progress(console, "stats") as board:
        assert logging.getLogger(MPC_LOGGER).level == logging.NOTSET
        assert logging.getLogger(MPC_LOGGER).propagate is True
        _emit(_phase("party0", "start", "p"))
        assert "party0: p" in board.text()
    assert [r.levelno for r in capture.records] == [logging.DEBUG]


@pytest.mark.parametrize("how", ["not a terminal", "disabled", "dumb terminal"])
def test_spinner_is_a_no_op_off_a_terminal_or_when_disabled(how: str, monkeypatch) -> None:
    out = io.StringIO()
    if how == "dumb terminal":
        monkeypatch.setenv("TERM", "dumb")
    console = Console(file=out, force_terminal=how != "not a terminal")
    mpc_logger = logging.getLogger(MPC_LOGGER)
    handlers = list(mpc_logger.handlers)
    with phase_progress(console, "stats", enabled=how != "disabled") as board:
        assert board is None
        assert mpc_logger.handlers == handlers and mpc_logger.level == logging.NOTSET
        assert logs.child_levels() is None
    assert out.getvalue() == ""


def test_spinner_writes_nothing_to_stdout(capsys) -> None:
    console = Console(stderr=True, force_terminal=True)
    with phase_progress(console, "stats"):
        _emit(_phase("party0", "start", "p"))
    captured = capsys.readouterr()
    assert captured.out == "" and "stats: party0: p" in captured.err


def test_spinner_restores_logging_when_the_block_raises() -> None:
    console, _ = _terminal()
    with pytest.raises(KeyError), phase_progress(console, "stats"):
        raise KeyError("x")
    mpc_logger = logging.getLogger(MPC_LOGGER)
    assert mpc_logger.level == logging.NOTSET and mpc_logger.propagate is True
    assert not [h for h in mpc_logger.handlers if type(h).__name__ == "_BoardHandler"]


def test_spinner_follows_a_real_session_and_prints_no_record(capfd, root_capture) -> None:
    from veil import stats

    rng = np.random.default_rng(2)
    frames = [pd.DataFrame({"x": rng.uniform(0, 10, 12)}) for _ in range(2)]
    console, out = _terminal()
    with phase_progress(console, "joint statistics") as board:
        stats.joint(frames, ["mean"], backend="mpc", timeout=120)
    ended = {(m, n) for m, n, e in board.ended if e == "done"}
    for member in ("party0", "party1"):
        assert {(member, "stats preflight"), (member, "stats reveal")} <= ended, ended
    assert "joint statistics: " in out.getvalue()
    assert not [r for r in root_capture.records if r.name.startswith("veil")]
    assert "phase '" not in capfd.readouterr().err


# -- veil -v stats ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def csvs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verbose")
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        pd.DataFrame({"age": rng.uniform(20, 80, 12)}).to_csv(root / f"{name}.csv", index=False)
    return root


def _veil(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([str(VEIL), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "COLUMNS": "100"},
                          start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done


def _phase_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "phase 'stats " in line]


def test_veil_v_stats_prints_every_party_phases_on_stderr(csvs: Path) -> None:
    args = ["stats", "-d", "a.csv", "-d", "b.csv", "-c", "age", "-s", "mean", "-b", "mpc",
            "--json"]
    verbose = _veil("-v", *args, cwd=csvs)
    assert json.loads(verbose.stdout)["statistics"]["mean"]["age"] > 0  # stdout stays JSON
    lines = _phase_lines(verbose.stderr)
    for party in ("party0", "party1"):
        mine = [line for line in lines if f" veil.mpc.{party}: phase 'stats " in line]
        assert any("phase 'stats reveal' done in " in line and " B sent, " in line
                   for line in mine), verbose.stderr
        assert all(" INFO " in line for line in mine)
    assert "all 2 parties done in " in verbose.stderr
    quiet = _veil(*args, cwd=csvs)
    assert json.loads(quiet.stdout)["statistics"]["mean"]["age"] > 0
    assert _phase_lines(quiet.stderr) == [] and "veil.mpc" not in quiet.stderr

"""veil.mpc.logs: per-party loggers, timed phases, and the records local parties forward.

Four real sessions (a phase job at INFO, a joint-statistics run at DEBUG, a run with logging
off, a failing job); the rest are unit tests of the forwarding frames.
"""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from veil import mpc, stats
from veil.errors import PartyFailure
from veil.mpc import logs
from veil.mpc.logs import PhaseEvent, phase_event

SECRET_INPUT = 31337.25  # a distinctive input value: must appear in no record
SECRET_NUMBER = 987654321  # in an exception message: must appear in no record
TRAFFIC = ("bytes_sent", "bytes_received", "rounds")


# -- jobs (module level: the party processes import them by name) ----------------------------
def phase_job(party):
    x_val = torch.tensor([SECRET_INPUT, 2.5]) if party.rank == 0 else None
    y_val = torch.tensor([3.0, 4.0]) if party.rank == 1 else None
    before = party.comm_stats()
    with party.phase("my phase"):
        x = party.share(x_val, src=0)
        y = party.share(y_val, src=1)
        z = party.reveal((x * y).sum())
    after = party.comm_stats()
    return {k: after[k] - before[k] for k in TRAFFIC}, float(z)


def failing_job(party):
    with party.phase("doomed phase"):
        x = party.share(torch.ones(2) if party.rank == 0 else None, src=0)
        party.reveal(x * x)
        if party.rank == 1:
            raise ValueError(f"the value was {SECRET_NUMBER}")
    return 1


# -- helpers ---------------------------------------------------------------------------------
def _veil(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.name.startswith("veil.")]


def _events(records: list[logging.LogRecord], member: str) -> list[PhaseEvent]:
    return [e for e in map(phase_event, records) if e is not None and e.member == member]


def _messages(records: list[logging.LogRecord], logger: str) -> list[str]:
    return [r.getMessage() for r in records if r.name == logger]


def _assert_no_value(records: list[logging.LogRecord], *needles: str) -> None:
    for r in records:
        text = r.getMessage() + json.dumps(getattr(r, logs.PHASE_FIELD, None))
        for needle in needles:
            assert needle not in text, (r.name, text)


# -- real sessions ---------------------------------------------------------------------------
def test_phases_and_milestones_of_every_party_reach_the_driver(caplog) -> None:
    caplog.set_level(logging.INFO, logger="veil")
    results = mpc.run(phase_job, parties=2, timeout=60)
    product = SECRET_INPUT * 3.0 + 2.5 * 4.0
    assert [z for _, z in results] == [pytest.approx(product)] * 2
    records = _veil(caplog.records)
    for rank, (deltas, _) in enumerate(results):
        name = f"veil.mpc.party{rank}"
        done = [e for e in _events(records, f"party{rank}") if e.event == "done"]
        assert [e.name for e in done] == ["my phase"]  # the share/reveal phases are DEBUG
        event = done[0]
        assert event.depth == 1 and event.seconds >= 0
        assert event.bytes_sent > 0 and event.bytes_received > 0 and event.rounds > 0
        # the deltas of the party's counters over the phase, as comm_stats() saw them
        assert (event.bytes_sent, event.bytes_received, event.rounds) == tuple(
            deltas[k] for k in TRAFFIC)
        record = next(r for r in records if phase_event(r) == event)
        assert record.name == name and record.levelno == logging.INFO
        assert record.processName == f"veil-mpc-party {rank}"
        assert record.getMessage().startswith("phase 'my phase' done in ")
        assert f"{event.bytes_sent:,} B sent" in record.getMessage()
        said = _messages(records, name)
        assert any(m.startswith("session connected in ") for m in said), said
        assert any(m.startswith("job finished in ") for m in said), said
        assert not any(r.levelno < logging.INFO for r in records)
    assert any(m.startswith("dealer finished") for m in _messages(records, "veil.mpc.dealer"))
    driver = _messages(records, logs.DRIVER)
    assert driver[0].startswith("launched 2 parties and the dealer"), driver
    assert driver[-1].startswith("all 2 parties done in "), driver
    # no input, intermediate or output value in any record
    _assert_no_value(records, "31337", f"{product:g}", "94021")


def test_joint_statistics_log_their_phases_for_every_party(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="veil")
    rng = np.random.default_rng(5)
    a = pd.DataFrame({"x": rng.uniform(0, 10, 12)})
    b = pd.DataFrame({"x": rng.uniform(0, 10, 12)})
    a.loc[0, "x"] = SECRET_INPUT
    result = stats.joint([a, b], ["mean"], backend="mpc", timeout=120)
    assert result.values["mean"][0] == pytest.approx(pd.concat([a, b])["x"].mean(), rel=1e-3)
    records = _veil(caplog.records)
    expected = ["stats preflight", "stats minimum cohort", "stats linear", "stats reveal"]
    for member in ("party0", "party1"):
        events = _events(records, member)
        top = [e for e in events if e.depth == 1]
        assert [e.name for e in top if e.event == "done"] == expected, top
        assert [e.name for e in top if e.event == "start"] == expected
        # DEBUG: the phases Veil opens itself in party.share, nested in the stats phases
        inner = {e.name for e in events if e.depth == 2 and e.event == "done"}
        assert {"share from party 0", "share from party 1"} <= inner, inner
        starts = [r for r in records if (e := phase_event(r)) and e.member == member
                  and e.event == "start"]
        assert starts and all(r.levelno == logging.DEBUG for r in starts)
        assert all(r.getMessage().endswith(" started") for r in starts)
    _assert_no_value(records, "31337")


def test_with_logging_off_nothing_is_logged_or_forwarded(caplog, monkeypatch) -> None:
    assert logging.getLogger("veil").getEffectiveLevel() == logging.WARNING
    assert logs.child_levels() is None
    frames: list[bool] = []
    levels: list[dict[str, int] | None] = []
    real_is_frame, real_levels = logs.is_record_frame, logs.child_levels

    def is_record_frame(data: bytes) -> bool:  # what the driver reads from the result pipes
        frames.append(real_is_frame(data))
        return frames[-1]

    def child_levels() -> dict[str, int] | None:  # what the parties are told
        levels.append(real_levels())
        return levels[-1]

    monkeypatch.setattr(logs, "is_record_frame", is_record_frame)
    monkeypatch.setattr(logs, "child_levels", child_levels)
    results = mpc.run(phase_job, parties=2, timeout=60)
    assert len(results) == 2
    assert levels == [None]  # the parties were told to log nothing...
    assert frames and not any(frames)  # ...and sent only reports, no record frame
    assert not [r for r in _veil(caplog.records) if r.levelno < logging.WARNING]


def test_a_failing_phase_logs_the_exception_class_only(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="veil")
    with pytest.raises(PartyFailure, match=str(SECRET_NUMBER)) as info:
        mpc.run(failing_job, parties=2, timeout=20)
    assert info.value.rank == 1
    records = _veil(caplog.records)
    failed = [e for e in _events(records, "party1") if e.event == "failed"]
    assert [e.name for e in failed] == ["doomed phase"]
    message = next(r.getMessage() for r in records
                   if (e := phase_event(r)) and e.event == "failed" and e.member == "party1")
    assert message.startswith("phase 'doomed phase' failed after ")
    assert "(ValueError)" in message
    # what the job raised (not the PartyFailure it became), and where
    assert "failed in phase 'doomed phase' (ValueError)" in _messages(records, "veil.mpc.party1")
    assert _messages(records, logs.DRIVER)[-1].startswith("session failed in ")
    for member in ("party0", "party1"):  # DEBUG: party.share and party.reveal are phases too
        inner = [(e.name, e.event) for e in _events(records, member) if e.depth == 2]
        assert inner == [("share from party 0", "start"), ("share from party 0", "done"),
                         ("reveal to all", "start"), ("reveal to all", "done")], inner
    _assert_no_value(records, str(SECRET_NUMBER), "the value was")


# -- frames, levels and phases without a session ----------------------------------------------
@pytest.fixture
def veil_logger():
    """The ``veil`` logger, restored after the test (level, handlers, propagation)."""
    logger = logging.getLogger("veil")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    yield logger
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


def _frame(**fields: object) -> bytes:
    base: dict[str, object] = {"name": "veil.mpc.party1", "level": logging.INFO,
                               "msg": "hello", "created": 1_700_000_000.25}
    base.update(fields)
    return json.dumps(base).encode()


@pytest.mark.parametrize("data", [
    b"{not json", b"{}", b'{"name": "veil.mpc.party1"}', b"[1, 2]", b'"text"', b"42",
    _frame(level="high"), _frame(created="noon"), _frame(name=7),
    _frame(name="root"), _frame(name="crypten.mpc"), _frame(name="veilx.mpc"),
    _frame(name="veil..mpc"), _frame(name="veil.mpc party1"), _frame(name="veil." + "x" * 200),
    _frame(level=logging.DEBUG),  # below the logger's level: dropped, not an error
], ids=lambda d: d[:40].decode(errors="replace"))
def test_reemit_drops_malformed_frames_and_foreign_names(caplog, data: bytes) -> None:
    caplog.set_level(logging.INFO)
    logs.reemit(data, process="veil-mpc-party1", pid=1)
    assert caplog.records == []


def test_reemit_keeps_name_level_time_process_and_phase_fields(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="veil")
    phase = {"event": "done", "name": "p", "member": "party1", "depth": 1, "seconds": 0.5,
             "bytes_sent": 10, "bytes_received": 20, "rounds": 3}
    logs.reemit(_frame(msg="100% done %s", phase=phase), process="veil-mpc-party1", pid=4242)
    (record,) = caplog.records
    assert record.name == "veil.mpc.party1" and record.levelno == logging.INFO
    assert record.getMessage() == "100% done %s"  # not %-formatted again
    assert record.created == 1_700_000_000.25 and record.msecs == pytest.approx(250)
    assert (record.processName, record.process) == ("veil-mpc-party1", 4242)
    assert phase_event(record) == PhaseEvent("done", "p", "party1", 1, 0.5, 10, 20, 3)
    assert phase_event(logging.makeLogRecord({"veil_phase": {"event": "x"}})) is None


def test_record_frames_are_json_and_reports_are_pickles(veil_logger) -> None:
    sent: list[bytes] = []
    logs.forward_records(sent.append, {"veil": logging.INFO, "veil.mpc": logging.DEBUG,
                                       "not a logger name": 10, "veil.x": "loud"})
    try:
        assert veil_logger.propagate is False
        assert logging.getLogger("veil.mpc").level == logging.DEBUG
        assert logging.getLogger("veil.x").level == logging.NOTSET  # bad levels are ignored
        logging.getLogger("veil.mpc.party0").debug("phase %r started", "p")
        logging.getLogger("veil.stats").debug("not at this level")
    finally:  # the fixture removes the forwarder
        logging.getLogger("veil.mpc").setLevel(logging.NOTSET)
    (data,) = sent
    assert logs.is_record_frame(data)
    assert json.loads(data)["msg"] == "phase 'p' started"
    for report in [("result", {"x": 1}), ("phase", "job"), ("failure", None)]:
        assert not logs.is_record_frame(pickle.dumps(report, protocol=pickle.HIGHEST_PROTOCOL))


def test_child_levels_follow_the_driver(veil_logger) -> None:
    veil_logger.setLevel(logging.NOTSET)
    assert logs.child_levels() is None  # the default: WARNING from the root logger
    veil_logger.setLevel(logging.INFO)
    assert logs.child_levels() == {"veil": logging.INFO}
    veil_logger.setLevel(logging.WARNING)
    mpc_logger = logging.getLogger("veil.mpc")
    mpc_logger.setLevel(logging.DEBUG)
    try:
        assert logs.child_levels() == {"veil": logging.WARNING, "veil.mpc": logging.DEBUG}
        logging.disable(logging.DEBUG)  # DEBUG off here: the parties need not send it
        assert logs.child_levels() == {"veil": logging.WARNING, "veil.mpc": logging.DEBUG + 1}
        logging.disable(logging.INFO)
        assert logs.child_levels() is None
    finally:
        logging.disable(logging.NOTSET)
        mpc_logger.setLevel(logging.NOTSET)


def test_a_phase_costs_nothing_while_its_logger_is_off(caplog) -> None:
    logger = logging.getLogger("veil.mpc.party0")
    assert logs.start_phase(logger, "p") is None
    logs.end_phase(None)
    caplog.set_level(logging.INFO, logger="veil")
    timer = logs.start_phase(logger, "p")
    assert timer is not None and not caplog.records  # the start is DEBUG
    logs.end_phase(timer, KeyError(f"key {SECRET_NUMBER}"))
    (record,) = caplog.records
    assert phase_event(record).event == "failed"
    assert "(KeyError)" in record.getMessage() and str(SECRET_NUMBER) not in record.getMessage()


def test_phase_listener_hears_every_phase_event_and_changes_no_logging(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="veil")
    heard: list[tuple[PhaseEvent, float]] = []

    def failing(event: PhaseEvent, created: float) -> None:
        raise RuntimeError("a broken listener must not break the session")

    frame = json.dumps({"name": "veil.mpc.party1", "level": logging.DEBUG, "msg": "started",
                        "created": 12.5, "phase": {
                            "event": "start", "name": "p", "member": "party1", "depth": 1,
                            "seconds": 0, "bytes_sent": 0, "bytes_received": 0,
                            "rounds": 0}}).encode()
    assert logs.child_levels() is None
    with logs.phase_listener(failing), logs.phase_listener(lambda e, t: heard.append((e, t))):
        assert logs.child_levels()["veil.mpc"] == logging.DEBUG  # the parties send phases
        logs.reemit(frame, process="p1")
        logs.reemit(b'{"name": "veil.mpc.party1", "level": 10, "msg": "x", "created": 1}',
                    process="p1")  # no phase fields: nothing to hear
    logs.reemit(frame, process="p1")  # after the block: nobody listens
    assert logs.child_levels() is None
    assert [(e.event, e.name, e.member, t) for e, t in heard] == [("start", "p", "party1", 12.5)]
    assert not [r for r in caplog.records if r.name.startswith("veil")]  # nothing was logged

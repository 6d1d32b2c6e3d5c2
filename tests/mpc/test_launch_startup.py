"""Party start-up: no re-run of the main script when nothing needs it; forkserver preloads."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from veil import mpc
from veil.errors import ConfigurationError
from veil.mpc._runtime.launch import _EXTRA_PRELOAD, _mentions_main


def test_arguments_from_the_main_script_are_detected(monkeypatch):
    main = sys.modules["__main__"]
    _Local = type("_VeilTestLocal", (), {"__module__": "__main__"})  # as if the script defined it
    monkeypatch.setattr(main, "_VeilTestLocal", _Local, raising=False)
    assert _mentions_main((_Local(),), [()])
    assert _mentions_main((), [(1,), ({"k": _Local()},)])
    assert not _mentions_main((np.zeros(3), "text"), [(1,), (2,)])
    assert _mentions_main((lambda: 0,), [()])  # unpicklable here: keep the main import


def test_preload_validates_names_and_deduplicates(monkeypatch):
    monkeypatch.setattr("veil.mpc._runtime.launch._EXTRA_PRELOAD", [])
    from veil.mpc._runtime import launch as _launch

    mpc.preload("veil.stats._party", "veil.stats._party")
    assert _launch._EXTRA_PRELOAD == ["veil.stats._party"]
    for bad in ("veil..x", "1abc", "", None):
        with pytest.raises(ConfigurationError, match="dotted module names"):
            mpc.preload(bad)
    assert isinstance(_EXTRA_PRELOAD, list)


def test_main_script_runs_once_when_the_job_lives_in_a_module(tmp_path) -> None:
    (tmp_path / "jobs_mod.py").write_text("def job(party, k):\n    return party.rank * k\n")
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import os
        with open("imports.log", "a") as f:   # module-level side effect: one line per import
            f.write(str(os.getpid()) + "\\n")
        from veil import mpc
        from jobs_mod import job

        if __name__ == "__main__":
            print(mpc.run(job, parties=2, args=(5,), timeout=60))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[0, 5]"
    assert len((tmp_path / "imports.log").read_text().split()) == 1

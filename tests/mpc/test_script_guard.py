"""Scripts that call mpc.run get told how to fix the two classic mistakes: no `__main__` guard,
and a job defined under the guard (a ConfigurationError saying what to do, not an
AttributeError about `__mp_main__`; issue 20, item 13)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from veil.errors import ConfigurationError
from veil.mpc._runtime.jobs import JobRef, resolve_job


def _run_script(tmp_path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)


def test_unguarded_script_gets_a_clear_hint(tmp_path) -> None:
    proc = _run_script(tmp_path, """
        from veil import mpc

        def job(party):
            return party.rank

        print(mpc.run(job, parties=2, timeout=20))
    """)
    assert proc.returncode != 0
    assert "PartyFailure" in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr


def test_a_job_defined_under_the_main_guard_gets_told_where_to_put_it(tmp_path) -> None:
    proc = _run_script(tmp_path, """
        from veil import mpc

        if __name__ == "__main__":
            def job(party):
                return party.rank

            print(mpc.run(job, parties=2, timeout=20))
    """)
    assert proc.returncode != 0
    assert "__mp_main__" not in proc.stderr
    assert "ConfigurationError" in proc.stderr
    assert "top level" in proc.stderr and "def job(party, ...)" in proc.stderr


def test_a_party_that_cannot_find_the_job_says_what_to_do(tmp_path) -> None:
    script = tmp_path / "s.py"
    script.write_text("x = 1\n")
    with pytest.raises(ConfigurationError, match="not defined at the top level"):
        resolve_job(JobRef(module="__main__", qualname="job", path=str(script)))

"""A job defined under the script's `__main__` guard: a clear ConfigurationError saying what to
do, not an AttributeError about `__mp_main__` (issue 20, item 13)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from veil.errors import ConfigurationError
from veil.mpc._jobs import JobRef, resolve_job


def test_a_job_defined_under_the_main_guard_gets_told_where_to_put_it(tmp_path) -> None:
    script = tmp_path / "guarded.py"
    script.write_text(textwrap.dedent("""
        from veil import mpc

        if __name__ == "__main__":
            def job(party):
                return party.rank

            print(mpc.run(job, parties=2, timeout=20))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert proc.returncode != 0
    assert "__mp_main__" not in proc.stderr
    assert "ConfigurationError" in proc.stderr
    assert "top level" in proc.stderr and "def job(party, ...)" in proc.stderr


def test_a_party_that_cannot_find_the_job_says_what_to_do(tmp_path) -> None:
    script = tmp_path / "s.py"
    script.write_text("x = 1\n")
    with pytest.raises(ConfigurationError, match="not defined at the top level"):
        resolve_job(JobRef(module="__main__", qualname="job", path=str(script)))

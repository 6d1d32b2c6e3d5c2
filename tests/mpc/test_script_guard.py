"""A script that calls mpc.run without the __main__ guard gets told how to fix it."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_unguarded_script_gets_a_clear_hint(tmp_path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        from veil import mpc

        def job(party):
            return party.rank

        print(mpc.run(job, parties=2, timeout=20))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert proc.returncode != 0
    assert "PartyFailure" in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr

"""Ctrl-C in any subcommand: exit code 130 and the one line "interrupted", no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from veil.cli import EXIT_INTERRUPTED, main


def _interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


def _csvs(tmp_path: Path) -> list[str]:
    out = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.csv"
        path.write_text("age\n" + "\n".join(str(20 + i) for i in range(12)) + "\n")
        out.append(str(path))
    return out


CASES = {
    "demo": ("veil.cli.demo", "run_demo", ["demo"]),
    "stats": ("veil.stats", "joint", ["stats", "-d", "A", "-d", "B", "-c", "age"]),
    "audit": ("veil.privacy", "verify", ["audit", "verify", "A"]),
    "bench schemes": ("veil.bench.schemes", "run_schemes",
                      ["bench", "schemes", "--json", "J", "--plot", "P"]),
    "bench peers": ("veil.bench.peers", "run_peers", ["bench", "peers", "--json", "J",
                                                      "--plot", "P"]),
    "serve": ("veil.serve.runner", "serve", ["serve"]),
    "party": ("veil.mpc.host", "run_party",
              ["party", "--rank", "0", "--world-size", "2", "--insecure-plaintext",
               "--master", "127.0.0.1:1",
               "--job", "selftest"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_keyboard_interrupt_becomes_exit_130(name: str, tmp_path: Path, monkeypatch,
                                             capsys) -> None:
    import importlib

    module, attr, argv = CASES[name]
    monkeypatch.setattr(importlib.import_module(module), attr, _interrupt)
    a, b = _csvs(tmp_path)
    subs = {"A": a, "B": b, "J": str(tmp_path / "x.json"), "P": str(tmp_path / "x.png")}
    code = main([subs.get(arg, arg) for arg in argv])
    out, err = capsys.readouterr()
    assert code == EXIT_INTERRUPTED == 130, (out, err)
    assert err.strip() == "interrupted"
    assert "Traceback" not in out + err

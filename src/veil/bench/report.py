"""Benchmark results: records, summary statistics, rich table, JSON and a matplotlib plot."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from veil.bench.environment import environment


@dataclass
class Record:
    """One (scheme, operation, size) measurement."""

    scheme: str
    op: str
    size: int
    times_s: list[float]
    bytes: int | None
    max_error: float | None
    security_bits: int | None
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def iqr_s(self) -> float:
        if len(self.times_s) < 2:
            return 0.0
        q = statistics.quantiles(self.times_s, n=4, method="inclusive")
        return q[2] - q[0]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["median_s"] = self.median_s
        out["iqr_s"] = self.iqr_s
        return out


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def _fmt_bytes(b: int | None) -> str:
    if b is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if b < 1000 or unit == "GB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1000  # type: ignore[assignment]
    return str(b)  # pragma: no cover


def table(records: Sequence[Record], title: str) -> Any:
    """A rich Table of the records, grouped by operation and size."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("op", "size", "scheme", "median", "IQR", "bytes", "max |error|", "security"):
        t.add_column(col, justify="left" if col in ("op", "scheme") else "right")
    for r in sorted(records, key=lambda r: (r.op, r.size, r.scheme)):
        t.add_row(
            r.op, f"{r.size:,}", r.scheme, _fmt_time(r.median_s), _fmt_time(r.iqr_s),
            _fmt_bytes(r.bytes),
            "-" if r.max_error is None else f"{r.max_error:.1e}",
            "-" if r.security_bits is None else f"{r.security_bits}-bit",
        )
    return t


def json_text(records: Sequence[Record], **extra: Any) -> str:
    """The records, the environment (versions, machine, git) and ``extra`` as JSON text."""
    doc = {"environment": environment(), **extra, "records": [r.to_json() for r in records]}
    return json.dumps(doc, indent=2, default=str)


def write_json(records: Sequence[Record], path: str | Path, **extra: Any) -> None:
    Path(path).write_text(json_text(records, **extra))


def plot(records: Sequence[Record], path: str | Path, title: str) -> None:
    """Log-scale time and bytes per scheme, one panel pair per operation (largest size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r.op for r in records})
    fig, axes = plt.subplots(2, len(ops), figsize=(3.2 * len(ops), 6.0), squeeze=False)
    for j, op in enumerate(ops):
        rows = [r for r in records if r.op == op]
        size = max(r.size for r in rows)
        rows = sorted((r for r in rows if r.size == size), key=lambda r: r.scheme)
        names = [r.scheme for r in rows]
        axes[0][j].bar(names, [r.median_s for r in rows], color="tab:blue")
        axes[0][j].set_yscale("log")
        axes[0][j].set_title(f"{op} (n={size:,})", fontsize=9)
        axes[1][j].bar(names, [r.bytes or 0 for r in rows], color="tab:orange")
        axes[1][j].set_yscale("symlog")
        for ax in (axes[0][j], axes[1][j]):
            ax.tick_params(axis="x", labelrotation=60, labelsize=7)
            ax.tick_params(axis="y", labelsize=7)
    axes[0][0].set_ylabel("time (s, log)")
    axes[1][0].set_ylabel("bytes (log)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

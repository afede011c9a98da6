"""What every benchmark script does with its finished table: print it and, with ``--out``, write it."""

from __future__ import annotations

from pathlib import Path


def emit(report: str, out: Path | None) -> None:
    """Print ``report``; with ``out`` also write it there (parent folders made), ending in one newline."""
    print(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + "\n", encoding="utf-8")

"""Runs of the CLI itself, one after another in this process: ``python dist_cli_runs.py OUT CASES.json``, where
``CASES.json`` maps a run name to its ``--set`` values; run ``NAME`` goes to ``OUT/NAME``.

Started as it is for one process and under ``torchrun`` for several (tests/test_distributed_equivalence.py): every
``graph-mtl train`` of a torchrun launch joins the process group the first one set up.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from graph_mtl.cli import main


def run_all(out: Path, cases: dict[str, list[str]]) -> int:
    """``graph-mtl train --out OUT/NAME --set ...`` for every case; the first non-zero exit code, else 0."""
    for name, sets in cases.items():
        code = main(["train", "--out", str(out / name), "--quiet", *[a for s in sets for a in ("--set", s)]])
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run_all(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())))

"""The README's method table: every registered balancer's kind, paper, modes and step-time ratio to EW.

Reads a table written by ``step_time.py --out`` (for example ``benchmarks/results/step_time_cpu_rep.md``) and
prints one Markdown row per method: the ratio of its cheapest measured mode (``rep`` for gradient methods
where it was measured, else its default) at each ``T`` of the file.

    python benchmarks/method_table.py benchmarks/results/step_time_cpu_rep.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from graph_mtl.balancers import BALANCERS, create
from graph_mtl.balancers.base import FAMILIES


def read_ratios(path: Path) -> dict[tuple[str, str, int], float]:
    """``(method, mode, T) -> ratio to ew`` from a ``step_time.py`` report."""
    ratios = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or not cells[2].isdigit() or not cells[5].replace(".", "", 1).isdigit():
            continue
        ratios[(cells[0], cells[1], int(cells[2]))] = float(cells[5])
    return ratios


def modes(name: str) -> str:
    """Where the method, with its default arguments, can take its gradients: exact / rep / amortised
    (``update_every``)."""
    method = create(name, 3)
    if method.family in ("loss", "last-layer"):
        return "one backward" if method.family == "loss" else "last layer + one backward"
    out = ["exact"]
    if getattr(method, "allows_rep", True):
        out.append("rep")
    if method.linear:
        out.append("amortised")
    return " / ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a step_time.py --out file")
    args = parser.parse_args()
    ratios = read_ratios(args.report)
    sizes = sorted({t for _, _, t in ratios})
    print("| method | kind | paper | modes | " + " | ".join(f"ratio to EW, T = {t}" for t in sizes) + " |")
    print("|---" * (4 + len(sizes)) + "|")
    for name, cls in sorted(BALANCERS.items(), key=lambda kv: (FAMILIES.index(kv[1].family), kv[0])):
        cells = []
        for t in sizes:
            measured = {mode: r for (m, mode, size), r in ratios.items() if m == name and size == t}
            mode = next((m for m in ("rep", "default", "default (same batch)") if m in measured), None)
            cells.append("-" if mode is None else f"{measured[mode]:.2f} ({mode})")
        print(f"| {name} | {cls.family} | {cls.paper} | {modes(name)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""Sharing architectures (``model.arch``) against single-task models, by delta-m %, through ``graph-mtl compare``.

``hard`` runs first and trains the single-task models (each a hard-sharing model of one task: the reference every
architecture is measured against); every other architecture reuses those single-task metrics (``--baselines``),
so one set of single-task runs serves the whole table. Each architecture's compare folder is ``OUT/<arch>/``
(rerun to resume), and the table (delta-m %, mean ± std over seeds, per balancer; parameters; minutes per run)
is printed and written to ``OUT/arch_compare.md``.

    python benchmarks/arch_compare.py --config benchmarks/configs/tox21_compare.yaml \\
        --set data.root=SCRATCH --archs hard,mmoe,cgc,cross_stitch --balancers ew --seeds 0,1,2 --out runs/arch
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from graph_mtl.compare import compare
from graph_mtl.config import load_config


def parameter_count(run_dir: Path) -> int:
    """Parameters of the model a finished run saved (its ``best.pt``)."""
    from graph_mtl.inference import load_run

    model = load_run(run_dir).model
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="graph-mtl config (YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--archs", default="hard,soft,cross_stitch,mmoe,cgc,ple")
    parser.add_argument("--balancers", default="ew")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default="runs/arch_compare")
    args = parser.parse_args(argv)
    archs = args.archs.split(",")
    if archs[0] != "hard":
        parser.error("--archs: start with hard (its single-task models are every architecture's reference)")
    balancers, seeds, out = args.balancers.split(","), [int(s) for s in args.seeds.split(",")], Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    baselines = out / "single_task.json"
    lines = ["| arch | balancer | delta-m % | parameters | minutes per run |", "|---|---|---|---:|---:|"]
    for arch in archs:
        config = load_config(args.config, [*args.set, f"model.arch={arch}"])
        summary = compare(config, balancers, seeds, out / arch, baselines if arch != "hard" else None,
                          log=lambda line: print(line, file=sys.stderr, flush=True), jobs=args.jobs)
        if arch == "hard":
            baselines.write_text(json.dumps(summary["baselines"], indent=2) + "\n")
        for balancer in balancers:
            row = summary["balancers"][balancer]
            params = parameter_count(out / arch / balancer / f"seed{seeds[0]}")
            lines.append(f"| {arch} | {balancer} | {row['delta_m']['mean']:+.2f} ± {row['delta_m']['std']:.2f} | "
                         f"{params:,} | {row['minutes']['mean']:.1f} |")
        text = "\n".join([f"Delta-m % against single-task hard models (lower is better), seeds {seeds}; "
                          f"config {args.config} {' '.join(args.set)}", "", *lines]) + "\n"
        (out / "arch_compare.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``graph-mtl`` command: ``train`` a multi-task model, ``report`` on a run, measure task ``affinity``, ``compare``
balancers with single-task models, ``list`` what is available."""

from __future__ import annotations

import argparse
import builtins
import sys
from pathlib import Path

from graph_mtl.config import ConfigError, load_config

USER_ERRORS = (ConfigError, ValueError, KeyError, FileNotFoundError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graph-mtl", description="Multi-task learning on graphs.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a multi-task model (default: the embedded molecule dataset)")
    train.add_argument("--config", help="YAML config file (every key optional)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=5 --set balancer=pcgrad")
    train.add_argument("--out", default="runs/latest", help="run folder (default: runs/latest)")
    train.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                       help="resume from a checkpoint (default: OUT/last.pt)")
    train.add_argument("--seeds", default=None, metavar="S1,S2,...",
                       help="train once per seed into OUT/seed<N> and report mean ± std (e.g. --seeds 0,1,2)")
    train.add_argument("--quiet", action="store_true", help="no progress bar (same as --set train.progress=false)")
    train.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    report = sub.add_parser("report", help="plots and a Markdown report (RUN_DIR/report/report.md) of a run")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by graph-mtl train")
    report.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    affinity = sub.add_parser("affinity", help="measure inter-task affinity (TAG lookahead) in a short run")
    affinity.add_argument("--config", help="YAML config file (every key optional)")
    affinity.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a config key, e.g. --set dataset=sbm")
    affinity.add_argument("--steps", type=int, default=50, help="training steps to average over (default: 50)")
    affinity.add_argument("--lr", type=float, default=None,
                          help="learning rate of the lookahead SGD step (default: the config's train.lr)")
    affinity.add_argument("--out", default="runs/affinity", help="output folder (default: runs/affinity)")
    affinity.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    compare = sub.add_parser("compare", help="balancers x seeds against single-task models: table of delta-m %%")
    compare.add_argument("--config", help="YAML config file (every key optional)")
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config key, e.g. --set train.epochs=5")
    compare.add_argument("--balancers", required=True, metavar="B1,B2,...", help="e.g. ew,pcgrad,nashmtl")
    compare.add_argument("--seeds", default="0", metavar="S1,S2,...", help="seeds of the multi-task runs (default: 0)")
    compare.add_argument("--out", default="runs/compare", help="folder of the runs and the table (default: "
                                                                "runs/compare); rerun to resume")
    compare.add_argument("--baselines", metavar="FILE", help="known single-task test metrics (JSON {task: value} or "
                                                              "CSV task,value) instead of training them")
    compare.add_argument("--main-task", metavar="TASK", help="delta-m on this task only (the others are auxiliary)")
    compare.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    sub.add_parser("list", help="list datasets, encoders, pooling and balancers")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            return _list()
        if args.command == "report":
            return _report(args)
        if args.command == "affinity":
            return _affinity(args)
        if args.command == "compare":
            return _compare(args)
        return _train(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"graph-mtl: error: {message}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    config = load_config(args.config, [*args.set, *(["train.progress=false"] if args.quiet else [])])
    from graph_mtl.run import results_table, seed_table, train, train_seeds

    out = Path(args.out)
    show = _main_process_print  # under torchrun only rank 0 prints the tables
    if args.seeds is not None:
        if args.resume is not None:
            raise ValueError("--resume: resume one seed's run with --out OUT/seed<N> instead of --seeds")
        seeds = _parse_seeds(args.seeds)
        summary = train_seeds(config, seeds, out)
        show()
        show(seed_table(summary))
        show(f"\nper-seed runs in {out}/seed<N>; summary in {out}/summary.json and {out}/summary.md")
        return 0
    resume = None
    if args.resume is not None:
        resume = Path(args.resume) if args.resume else out / "last.pt"
    results = train(config, out, resume=resume)
    show()
    show(results_table(results, "test"))
    show(f"\nbest epoch {results['best_epoch']} of {results['epochs_run']}; "
          f"{results['seconds']:.0f}s; results in {out}/results.json")
    return 0


def _main_process_print(*args, **kwargs) -> None:
    """``print`` on rank 0 of a torchrun launch (or in a plain run); nothing on the other processes."""
    from graph_mtl.engine.distributed import is_main_process

    if is_main_process():
        builtins.print(*args, **kwargs)


def _report(args: argparse.Namespace) -> int:
    from graph_mtl.report import write_report

    print(write_report(Path(args.run_dir)))
    return 0


def _affinity(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise ValueError(f"--steps: must be >= 1, got {args.steps}")
    config = load_config(args.config, args.set)
    from graph_mtl.affinity import format_matrix, run_affinity, suggest_groups

    result, path = run_affinity(config, args.steps, args.lr, Path(args.out))
    print()
    print("affinity Z[i -> j] (rows: task stepped i, columns: task measured j; > 0: a step on i lowers j's loss)")
    print(format_matrix(result.affinity, result.names))
    print("\nsuggested groups:")
    for k, group in enumerate(suggest_groups(result.affinity, result.names), start=1):
        print(f"  {k}. {', '.join(group)}")
    print(f"\nwritten to {path.parent} (affinity.csv, cosine.csv, affinity.png, {path.name})")
    return 0


def _compare(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    seeds = _parse_seeds(args.seeds)
    balancers = [b.strip() for b in args.balancers.split(",") if b.strip()]
    from graph_mtl.compare import compare, table_rows

    summary = compare(config, balancers, seeds, Path(args.out), args.baselines, args.main_task)
    rows = table_rows(summary)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print(f"\nwritten to {args.out} (compare.md, compare.csv, compare.json, compare.png)")
    return 0


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers like 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct comma-separated integers like 0,1,2, got {text!r}")
    return seeds


def _list() -> int:
    from graph_mtl.balancers import BALANCERS
    from graph_mtl.data.registry import DATASETS
    from graph_mtl.models import CONVS, POOLS

    print("datasets:")
    for name, (_, text) in DATASETS.items():
        print(f"  {name:<12} {text}")
    print(f"encoders (model.conv): {', '.join(CONVS)}")
    print(f"pooling (model.pool): {', '.join(POOLS)}")
    print(f"balancers (train.balancer): {', '.join(sorted(BALANCERS))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

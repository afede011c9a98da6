"""The ``graph-mtl`` command: ``train`` a multi-task model, ``report`` on a run, measure task ``affinity``, ``compare``
balancers with single-task models, ``list`` what is available."""

from __future__ import annotations

import argparse
import builtins
import sys
import warnings
from pathlib import Path

from graph_mtl.config import ConfigError, load_config

#: mistakes of the user, answered with one line and exit code 2 (``--debug`` shows the traceback)
USER_ERRORS = (ConfigError, ValueError, KeyError, FileNotFoundError, PermissionError, NotADirectoryError,
               IsADirectoryError)


class _Parser(argparse.ArgumentParser):
    """argparse with its mistakes on one line, like every other error of the command."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graph-mtl", description="Multi-task learning on graphs.")
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
    train.add_argument("--jobs", type=int, default=1, metavar="N",
                       help="with --seeds: train N seeds at once, each in its own process (default: 1)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in OUT (without it, a folder that holds files is refused)")
    train.add_argument("--init-from", metavar="RUN", default=None,
                       help="start the shared encoder (and the heads of tasks of the same name and shapes) from a "
                            "trained run folder's best.pt or a .pt checkpoint (sets train.init_from)")
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
    compare.add_argument("--jobs", type=int, default=1, metavar="N",
                         help="train N runs at once, each in its own process (default: 1)")
    compare.add_argument("--main-task", metavar="TASK", help="delta-m on this task only (the others are auxiliary)")
    compare.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    sub.add_parser("list", help="list datasets, encoders, pooling and balancers")
    _add_use_parsers(sub)
    return parser


def _add_use_parsers(sub) -> None:
    """``predict``, ``evaluate`` and ``embed``: using a trained run (``graph_mtl/inference.py``)."""
    predict = sub.add_parser("predict", help="predictions of a trained run for a CSV of SMILES (or a node split)")
    evaluate = sub.add_parser("evaluate", help="metrics of a trained run on a labelled CSV or a split")
    embed = sub.add_parser("embed", help="the shared encoder's embeddings of a CSV of SMILES")
    for command in (predict, evaluate, embed):
        command.add_argument("run", metavar="RUN", help="a run folder, a checkpoint file, or a --seeds folder")
        command.add_argument("--input", metavar="FILE.csv", help="CSV with a header row and a SMILES column")
        command.add_argument("--smiles-column", default="smiles", help="the SMILES column of --input (default: smiles)")
        command.add_argument("--checkpoint", default="best", help="best or last (default: best)")
        command.add_argument("--batch-size", type=int, default=None, help="default: the run's data.batch_size")
        command.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    predict.add_argument("--split", choices=("train", "valid", "test", "all"),
                         help="node datasets: predict the nodes of this split of the run's graph")
    predict.add_argument("--out", required=True, metavar="FILE.csv", help="where the predictions go")
    predict.add_argument("--node-out", metavar="FILE.csv",
                         help="atom-level tasks in long format (one row per atom) here instead of lists per row")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.add_argument("--split", choices=("train", "valid", "test"), help="a split of the run's own dataset")
    evaluate.add_argument("--out", metavar="FILE.json", help="also write the metrics here")
    embed.add_argument("--out", required=True, metavar="FILE", help=".npy (or .npz with --nodes)")
    embed.add_argument("--nodes", action="store_true", help="also every atom's embedding (written as .npz)")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as done:  # --help (0) or a mistake in the flags (2, already printed)
        return done.code if isinstance(done.code, int) else 0
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if args.command == "list":
                return _list()
            if args.command == "report":
                return _report(args)
            if args.command == "affinity":
                return _affinity(args)
            if args.command in ("predict", "evaluate", "embed"):
                return {"predict": _predict, "evaluate": _evaluate, "embed": _embed}[args.command](args)
            if args.command == "compare":
                return _compare(args)
            return _train_recorded(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"graph-mtl: error: {message}", file=sys.stderr)
        return 2


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file=None, line: str | None = None) -> None:
    """A warning as one line, without the source line Python's default format echoes."""
    print(f"graph-mtl: warning: {message}", file=sys.stderr)


def _train_recorded(args: argparse.Namespace) -> int:
    """``train``, recording for the exit of a torchrun process whether it finished (see ``close_distributed``)."""
    from graph_mtl.engine.distributed import work_finished

    work_finished(False)
    code = _train(args)
    work_finished(True)
    return code


def _train(args: argparse.Namespace) -> int:
    config = load_config(args.config, [*args.set, *(["train.progress=false"] if args.quiet else [])])
    if args.init_from is not None:
        if not args.init_from.strip():
            raise ValueError("--init-from: empty; give a run folder or a .pt checkpoint")
        config.train.init_from = args.init_from
    from graph_mtl.parallel_runs import check_jobs
    from graph_mtl.run import results_table, seed_table, train, train_seeds

    out = Path(args.out)
    show = _main_process_print  # under torchrun only rank 0 prints the tables
    if args.seeds is not None:
        if args.resume is not None:
            raise ValueError("--resume: resume one seed's run with --out OUT/seed<N> instead of --seeds")
        seeds = _parse_seeds(args.seeds)
        summary = train_seeds(config, seeds, out, overwrite=args.overwrite, jobs=check_jobs(args.jobs))
        show()
        show(seed_table(summary))
        show(f"\nper-seed runs in {out}/seed<N>; summary in {out}/summary.json and {out}/summary.md")
        return 0
    resume = None
    if args.jobs != 1:
        raise ValueError("--jobs: trains several seeds at once; give --seeds too (e.g. --seeds 0,1 --jobs 2)")
    if args.resume is not None:
        resume = Path(args.resume) if args.resume else out / "last.pt"
    results = train(config, out, resume=resume, overwrite=args.overwrite)
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


def _load_for(args: argparse.Namespace, split_ok: bool = True):
    """The run of ``predict`` / ``evaluate`` / ``embed`` after checking the flags that choose its input."""
    split = getattr(args, "split", None) if split_ok else None
    if (args.input is None) == (split is None):
        either = "--input FILE.csv or --split NAME" if split_ok else "--input FILE.csv"
        raise ValueError(f"{args.command}: give {either}" + (", not both" if args.input and split else ""))
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size: must be >= 1, got {args.batch_size}")
    from graph_mtl.inference import load_run

    return load_run(args.run, args.checkpoint, args.device)


def _predict(args: argparse.Namespace) -> int:
    run = _load_for(args)
    from graph_mtl.inference import PROGRESS_MIN, predict_nodes
    from graph_mtl.prediction_files import read_smiles, write_table

    if args.split is not None:
        if args.node_out:
            raise ValueError("--node-out: only for molecules (--input); --split writes one row per node to --out")
        table = predict_nodes(run, args.split)
        write_table(table, args.out)
        print(f"{len(table['node'])} node predictions written to {args.out}")
        return 0
    _, _, smiles = read_smiles(args.input, args.smiles_column)
    progress = not args.quiet and len(smiles) > PROGRESS_MIN and sys.stderr.isatty()
    predictions = run.predict(smiles, args.batch_size, progress)
    failed = sum(bool(e) for e in predictions.errors)
    if failed == len(smiles):
        raise ValueError(f"--input: none of the {len(smiles)} SMILES in column {args.smiles_column!r} can be used "
                         f"(first: {predictions.errors[0]}); check --smiles-column and the file")
    table = predictions.table(node_lists=args.node_out is None)
    table[args.smiles_column] = table.pop("smiles")
    table = {args.smiles_column: table.pop(args.smiles_column), **table}
    if args.node_out and predictions.node:
        write_table(predictions.node_table(), args.node_out)
    write_table(table, args.out)
    note = f"; {failed} row(s) with an unusable SMILES have an error and no prediction" if failed else ""
    print(f"{len(smiles)} predictions written to {args.out}{note}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    run = _load_for(args)
    from graph_mtl.engine.trainer import write_json
    from graph_mtl.inference import evaluate_run, evaluate_split, featurise_all, graph_loader
    from graph_mtl.prediction_files import add_labels, read_smiles

    if args.split is not None:
        result = evaluate_split(run, args.split)
    else:
        header, rows, smiles = read_smiles(args.input, args.smiles_column)
        graphs, errors = featurise_all(run, smiles)
        bad = [(line, e) for (line, _), e in zip(rows, errors) if e]
        if bad:
            shown = ", ".join(str(line) for line, _ in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise ValueError(f"--input: {len(bad)} row(s) of {args.input!r} have a SMILES the run cannot use "
                             f"(lines {shown}; {bad[0][1]}); fix or remove them")
        add_labels(run.tasks, header, rows, graphs, args.input)
        size = args.batch_size or run.config.data.batch_size
        result = evaluate_run(run, lambda member: graph_loader(graphs, size))
    if args.out:
        write_json(result, args.out)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _embed(args: argparse.Namespace) -> int:
    run = _load_for(args, split_ok=False)
    from graph_mtl.inference import Ensemble
    from graph_mtl.prediction_files import read_smiles, write_arrays

    if isinstance(run, Ensemble):
        raise ValueError(f"RUN: {args.run} is a --seeds folder, whose seeds embed into different spaces; give one "
                         "seed's run folder (RUN/seed<N>)")
    _, _, smiles = read_smiles(args.input, args.smiles_column)
    arrays, errors = run.embed(smiles, nodes=args.nodes, batch_size=args.batch_size)
    if all(errors):
        raise ValueError(f"--input: none of the {len(smiles)} SMILES can be used (first: {errors[0]}); check "
                         "--smiles-column and the file")
    if args.nodes:
        write_arrays(args.out, **arrays)
    else:
        write_arrays(args.out, graphs=arrays["graphs"])
    failed = sum(bool(e) for e in errors)
    note = f"; {failed} row(s) with an unusable SMILES are NaN" if failed else ""
    print(f"embeddings {arrays['graphs'].shape} written to {args.out}{note}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    seeds = _parse_seeds(args.seeds)
    balancers = [b.strip() for b in args.balancers.split(",") if b.strip()]
    from graph_mtl.compare import compare, table_rows
    from graph_mtl.parallel_runs import check_jobs

    summary = compare(config, balancers, seeds, Path(args.out), args.baselines, args.main_task,
                      jobs=check_jobs(args.jobs))
    rows = table_rows(summary)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print(f"\nwritten to {args.out} (compare.md, compare.csv, compare.json, compare.png)")
    return 0


def _parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct integers >= 0, comma-separated, none empty."""
    items = [s.strip() for s in text.split(",")]
    if not all(s.isascii() and s.isdigit() for s in items) or len(set(map(int, items))) != len(items):
        raise ValueError(f"--seeds: expected distinct comma-separated integers >= 0 like 0,1,2, got {text!r}")
    return [int(s) for s in items]


def _list() -> int:
    from graph_mtl.balancers import BALANCERS
    from graph_mtl.balancers.base import FAMILIES as FAMILY_ORDER
    from graph_mtl.data.graph_features import KINDS
    from graph_mtl.data.registry import DATASETS
    from graph_mtl.models import CONVS, POOLS

    print("datasets:")
    for name, (_, text) in DATASETS.items():
        print(f"  {name:<12} {text}")
    print(f"encoders (model.conv): {', '.join(CONVS)}")
    print(f"pooling (model.pool, model.task_pool): {', '.join(POOLS)}; model.pool: auto = each task's preference "
          "declared by its dataset, else mean; model.task_sum: {graph task: node task} reads a graph task out as "
          "the sum of a node task's values")
    print(f"molecule features (data.graph_features): {', '.join(KINDS)}")
    print("balancers (train.balancer), by the kind of input they read:")
    for name, cls in sorted(BALANCERS.items(), key=lambda kv: (FAMILY_ORDER.index(kv[1].family), kv[0])):
        print(f"  {name:<12} {cls.family:<10} {cls.paper}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

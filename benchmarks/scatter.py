"""Does the optional ``torch-scatter`` make a training step faster? One process, both settings.

PyG decides at every call (``torch_geometric.utils.scatter``): ``sum``/``mean`` always go through torch's own
``scatter_add_``; ``min``/``max``/``mul`` go through ``torch_scatter`` only when it is installed, the tensor is
on CUDA and needs a gradient. This script times equal-weighting steps (forward, losses, backward, Adam) of the
``step_time.py`` model with ``torch_geometric.typing.WITH_TORCH_SCATTER`` switched on and off in the same
process, alternating the two settings step by step, for encoders whose aggregations differ: GIN (sum), PNA
(mean/min/max/std) and GIN with max pooling. Without ``torch-scatter`` installed it says so and stops.

Run ``python benchmarks/scatter.py --help``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch_geometric.typing as pyg_typing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import emit
from step_time import bench_tasks, fixed_batches  # noqa: E402

from graph_mtl.config import ModelConfig  # noqa: E402
from graph_mtl.data.base import MultiTaskDataset  # noqa: E402
from graph_mtl.data.molecules import load_embedded  # noqa: E402
from graph_mtl.run import build_model  # noqa: E402
from graph_mtl.tasks import task_losses  # noqa: E402

ENCODERS: dict[str, dict] = {
    "gin, mean pool": {"conv": "gin"},
    "gin, max pool": {"conv": "gin", "pool": "max"},
    "pna, mean pool": {"conv": "pna"},
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if pyg_typing.torch_scatter is None or not hasattr(pyg_typing.torch_scatter, "scatter"):
        print("torch-scatter is not installed (pip install -e .[scatter]); nothing to compare")
        return 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    graphs = [copy.copy(g) for g in load_embedded().splits["train"]]
    tasks = bench_tasks(args.tasks)
    batches = fixed_batches(graphs, args.tasks, 128, 4, 0, device)
    bench = MultiTaskDataset("bench", tasks, {"train": graphs, "valid": [], "test": []}, node_features="ogb")
    lines = ["| encoder | median ms without | median ms with torch-scatter | ratio with / without |",
             "|---|---|---|---|"]
    for label, overrides in ENCODERS.items():
        torch.manual_seed(0)
        model = build_model(ModelConfig(hidden=args.hidden, num_layers=5, virtual_node=True, **overrides),
                            bench).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        times: dict[bool, list[float]] = {False: [], True: []}
        for k in range(2 * (args.steps + 1)):
            enabled = k % 2 == 1
            pyg_typing.WITH_TORCH_SCATTER = enabled
            batch = batches[k % len(batches)]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            out = model(batch)
            sum(task_losses(tasks, out.preds, batch).values()).backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if k >= 2:  # the first step of each setting warms up
                times[enabled].append((time.perf_counter() - started) * 1e3)
        without, with_ = statistics.median(times[False]), statistics.median(times[True])
        lines.append(f"| {label} | {without:.1f} | {with_:.1f} | {with_ / without:.2f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    pyg_typing.WITH_TORCH_SCATTER = True
    report = (f"# torch-scatter on and off, {device}, {args.threads} thread(s), equal weighting, T={args.tasks}, "
              f"5 x {args.hidden}, batches of 128 molecules, median of {args.steps} steps each\n\n"
              + "\n".join(lines))
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Process-group helpers for the data-parallel tests: spawn ``world_size`` gloo processes on this machine.

Kept out of the test module so that spawned processes import it by name (spawn pickles functions by
reference); the tests directory is on ``sys.path`` of the children because spawn passes the parent's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from conftest import SMILES, TINY_TASKS, molecule
from test_balancer_common import make
from torch_geometric.data import Batch

from graph_mtl.balancers import create as create_balancer
from graph_mtl.config import TrainConfig
from graph_mtl.engine.distributed import GradientSync
from graph_mtl.engine.trainer import Trainer
from graph_mtl.models import GNNEncoder, MultiTaskGNN
from graph_mtl.tasks import Task


def spawn(fn: Callable, world_size: int, tmp: Path, *args) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes joined in one gloo group."""
    init = tmp / "pg_init"
    mp.spawn(_entry, args=(fn, world_size, str(init), args), nprocs=world_size, join=True)


def _entry(rank: int, fn: Callable, world_size: int, init: str, args: tuple) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        tdist.destroy_process_group()


def tiny_model(tasks: list[Task], seed: int = 0) -> MultiTaskGNN:
    """GraphSAGE without dropout or batch norm (both would differ between shards and the whole batch; GIN has
    a batch norm inside its MLP)."""
    torch.manual_seed(seed)
    encoder = GNNEncoder(hidden=16, num_layers=2, conv="sage", node_encoder="atom", norm="none", dropout=0.0)
    return MultiTaskGNN(encoder, tasks, head_layers=1, head_dropout=0.0)


def train_shards(rank: int, world_size: int, cases: dict[str, tuple], out: str, steps: int = 3) -> None:
    """For each case ``name: (balancer, balancer_args[, "graph"])``: ``steps`` trainer steps on batches of 8
    molecules, this process holding graphs ``rank::world_size`` of each; ``"graph"`` keeps the graph-level
    tasks only (rep mode then works at the pooled graph embedding). Rank 0 saves, per case, the parameters,
    the balancer state, the weights of every step and the collectives used, to ``out``."""
    graphs = [molecule(s) for s in SMILES[:16]]
    saved = {}
    for name, (balancer, args, *level) in cases.items():
        tasks = [t for t in TINY_TASKS if not level or t.level == level[0]]
        model = tiny_model(tasks)
        sync = GradientSync(rank, world_size) if world_size > 1 else None
        cfg = TrainConfig(lr=0.01, progress=False)
        trainer = Trainer(model, make(balancer, [t.name for t in tasks], **args), cfg, graphs, sync=sync)
        weights = []
        for step in range(steps):
            batch = graphs[(step % 2) * 8:(step % 2 + 1) * 8]
            _, w = trainer.train_step(Batch.from_data_list(batch[rank::world_size]))
            weights.append(w)
        saved[name] = {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                       "balancer": trainer.engine.state_dict()["method"], "weights": torch.stack(weights),
                       "collectives": sync.summary() if sync is not None else {}}
    if rank == 0:
        torch.save(saved, out)


def edge_cases(rank: int, world_size: int, out: str) -> None:
    """Two things a single process never meets: a gradient only some processes (or none) have, and an
    evaluation split with fewer graphs than processes (one shard is empty; ``degree`` is multiclass)."""
    from torch_geometric.loader import DataLoader

    sync = GradientSync(rank, world_size)
    only_rank0, nowhere = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    if rank == 0:
        only_rank0.grad = torch.tensor([1.0, 2.0, 3.0])
    sync.reduce_grads([only_rank0, nowhere])
    graphs = [molecule(s) for s in SMILES[:16]]
    model = tiny_model(list(TINY_TASKS))
    trainer = Trainer(model, create_balancer("ew", [t.name for t in TINY_TASKS]), TrainConfig(progress=False),
                      graphs, sync=sync)
    valid = [molecule("CCO")]
    result = trainer.evaluate(DataLoader(valid[rank::world_size], batch_size=4))
    if rank == 0:
        torch.save({"only_rank0": only_rank0.grad, "nowhere": nowhere.grad, "per_task": result["per_task"]}, out)


def close_keeps_the_callers_group(rank: int, world_size: int) -> None:
    """``close_distributed`` destroys only a group ``init_distributed`` created; this one is the caller's."""
    from graph_mtl.engine.distributed import close_distributed, init_distributed

    assert init_distributed(torch.device("cpu")) is not None
    close_distributed()
    assert tdist.is_initialized()

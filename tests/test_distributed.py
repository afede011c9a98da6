"""Data parallelism (engine/distributed.py): 2 gloo processes holding half a batch each take the same step as
one process holding the whole batch; evaluation gathers every shard; checkpoints resume in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from dist_helpers import close_keeps_the_callers_group, edge_cases, spawn, train_shards

from graph_mtl.data.sharding import ShardedBatches, shard_node_mask

pytestmark = pytest.mark.skipif(not tdist.is_available() or not tdist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this torch build")

CASES = {
    "ew": ("ew", {}),
    "uw": ("uw", {}),
    "famo": ("famo", {}),
    "gradnorm": ("gradnorm", {}),
    "pcgrad-exact": ("pcgrad", {"grad_mode": "exact"}),
    "mgda-rep": ("mgda", {"grad_mode": "rep"}),
    "pcgrad-rep-pooled": ("pcgrad", {"grad_mode": "rep"}, "graph"),  # gradients at the pooled graph embedding
    "upgrad-every2": ("upgrad", {"grad_mode": "exact", "update_every": 2}),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[dict, dict]:
    """Every case trained by one process on whole batches and by 2 processes on half batches."""
    tmp = tmp_path_factory.mktemp("ddp")
    train_shards(0, 1, CASES, str(tmp / "single.pt"))
    spawn(train_shards, 2, tmp, CASES, str(tmp / "double.pt"))
    return torch.load(tmp / "single.pt"), torch.load(tmp / "double.pt")


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_with_half_batches_take_the_single_process_step(case, trained):
    one, two = trained[0][case], trained[1][case]
    balancer, args = CASES[case][:2]
    for name, value in one["params"].items():
        torch.testing.assert_close(two["params"][name], value, atol=1e-5, rtol=1e-5, msg=f"{case}: {name}")
    torch.testing.assert_close(two["weights"], one["weights"], atol=1e-5, rtol=1e-5)
    for key, value in one["balancer"].items():  # GradNorm's w and L(0), UW's log-variances, FAMO's logits
        if isinstance(value, dict) and "value" in value:
            torch.testing.assert_close(two["balancer"][key]["value"], value["value"], atol=1e-5, rtol=1e-5)
        elif isinstance(value, torch.Tensor):
            torch.testing.assert_close(two["balancer"][key], value, atol=1e-5, rtol=1e-5, equal_nan=True)
    kinds = set(two["collectives"])
    assert "losses" in kinds and "gradients" in kinds
    if balancer == "gradnorm" or args.get("grad_mode") == "exact":
        assert "jacobian" in kinds  # summed inside the balancer; the rest of the gradients after the step
    if args.get("grad_mode") == "rep":
        assert "gramian" in kinds and "jacobian" not in kinds


def test_the_shared_gradient_is_reduced_once_in_exact_mode(trained):
    """PCGrad exact: J [t, P_shared] is summed inside the balancer and the flat gradient after the step holds
    the heads only - never the shared parameters a second time."""
    stats = trained[1]["pcgrad-exact"]["collectives"]
    ew = trained[1]["ew"]["collectives"]
    head_tensors = [v for k, v in trained[0]["ew"]["params"].items() if k.startswith("heads")]
    assert head_tensors
    per_step_bytes = stats["gradients"]["megabytes"] * 2**20 / stats["gradients"]["calls"]
    # the heads' float32 gradients and one has-a-gradient flag per tensor
    assert per_step_bytes == 4 * (sum(v.numel() for v in head_tensors) + len(head_tensors))
    assert ew["gradients"]["megabytes"] > stats["gradients"]["megabytes"]


def test_sharded_batches_together_are_the_single_process_batches():
    gen = [torch.Generator().manual_seed(3) for _ in range(3)]
    whole = list(ShardedBatches(23, 8, 0, 1, True, gen[0]))
    shards = [list(ShardedBatches(23, 8, r, 2, True, gen[r + 1])) for r in range(2)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 3
    for k, batch in enumerate(whole):
        assert sorted(shards[0][k] + shards[1][k]) == sorted(batch)
    assert len(ShardedBatches(17, 8, 0, 2, False)) == 2  # a last global batch of 1 item is dropped for 2


def test_node_mask_shards_partition_the_mask():
    mask = torch.rand(50, generator=torch.Generator().manual_seed(0)) > 0.4
    parts = [shard_node_mask(mask, r, 3) for r in range(3)]
    assert torch.equal(parts[0] | parts[1] | parts[2], mask)
    assert int(sum(p.int() for p in parts).max()) == 1


def test_closing_leaves_a_group_the_caller_created(tmp_path):
    spawn(close_keeps_the_callers_group, 2, tmp_path)


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "graph_mtl.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_under_torchrun_gathers_metrics_and_resumes_in_one_process(tmp_path):
    from graph_mtl.cli import main

    out = tmp_path / "ddp"
    sets = ["--set", "data.name=sbm", "--set", "data.limit=200", "--set", "model.hidden=16",
            "--set", "model.num_layers=2", "--set", "model.conv=gin", "--set", "model.norm=none",
            "--set", "model.dropout=0.0",
            "--set", "train.balancer=pcgrad", "--set", "device=cpu", "--quiet"]
    done = _torchrun(["train", "--out", str(out), "--set", "train.epochs=2", *sets], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["collectives"]["jacobian"]["calls"] > 0
    # the same weights evaluated by one process give the metrics the two processes gathered
    single = tmp_path / "single"
    best = f"train.epochs={results['best_epoch']}"  # resume at the best epoch: no further training
    assert main(["train", "--out", str(single), "--resume", str(out / "best.pt"), "--set", best,
                 *sets]) == 0
    again = json.loads((single / "results.json").read_text())
    for split in ("valid", "test"):
        for task, value in results[split]["per_task"].items():
            assert again[split]["per_task"][task] == pytest.approx(value, abs=1e-6), (split, task)
    # the checkpoint written under torchrun resumes in a single process and trains on
    resumed = tmp_path / "resumed"
    assert main(["train", "--out", str(resumed), "--resume", str(out / "last.pt"), "--set", "train.epochs=3",
                 *sets]) == 0
    rows = (resumed / "metrics.csv").read_text().strip().splitlines()
    assert rows[-1].startswith("3,")
    # and under torchrun itself: the run continues from its own last.pt
    done = _torchrun(["train", "--out", str(out), "--resume", "", "--set", "train.epochs=3", *sets], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_missing_gradients_and_an_empty_evaluation_shard(tmp_path):
    """A gradient some process lacks counts as zero there; one no process has stays None (so Adam leaves
    the parameter alone, as in one process); a split with one graph on 2 processes evaluates like 1 process."""
    from conftest import SMILES, TINY_TASKS, molecule
    from dist_helpers import tiny_model
    from torch_geometric.loader import DataLoader

    from graph_mtl.balancers import create
    from graph_mtl.config import TrainConfig
    from graph_mtl.engine.trainer import Trainer

    spawn(edge_cases, 2, tmp_path, str(tmp_path / "edge.pt"))
    saved = torch.load(tmp_path / "edge.pt")
    assert torch.equal(saved["only_rank0"], torch.tensor([1.0, 2.0, 3.0]))
    assert saved["nowhere"] is None
    graphs = [molecule(s) for s in SMILES[:16]]
    single = Trainer(tiny_model(list(TINY_TASKS)), create("ew", [t.name for t in TINY_TASKS]),
                     TrainConfig(progress=False), graphs)
    expected = single.evaluate(DataLoader([molecule("CCO")], batch_size=4))["per_task"]
    assert saved["per_task"] == pytest.approx(expected, nan_ok=True)


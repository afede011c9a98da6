"""One process and two processes train the same model, through the CLI itself.

Every registered balancer (with its default arguments, plus a ``rep``-mode and an amortised run) trains a tiny
molecule model for 6 steps over 2 epochs, once in one process and once under ``torchrun`` with 2 gloo processes;
so do two runs on a single-graph node dataset (``sbm``: every process holds the graph, the node masks are
sharded). Both take the same global batches (``data/sharding.py``: one epoch permutation for any number of
processes) and the same step on them (``engine/distributed.py``), so the saved weights and balancer states agree
to float32 round-off. The model has nothing that differs between a shard and the whole batch, and no parameter
whose exact gradient is zero: SAGE convolutions (GIN's MLP holds a batch norm whatever ``model.norm`` says, and
a bias just before a batch norm gets Adam steps of +-lr from round-off alone), layer norms (the virtual node's
too), mean pooling where the embedded dataset asks for ``add_norm`` (a batch norm over the graphs), no dropout;
logp and tpsa are node sums, as by default. Batches of 19 of the 48 training molecules: shards of 10 and 9
graphs, a last batch of 10.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as tdist

from graph_mtl.balancers import BALANCERS
from graph_mtl.data.sharding import graph_loaders
from graph_mtl.engine.checkpoint import load_checkpoint
from graph_mtl.engine.trainer import _reseed_loader
from graph_mtl.run import build_loaders

pytestmark = pytest.mark.skipif(not tdist.is_available() or not tdist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this torch build")

WORKER = Path(__file__).with_name("dist_cli_runs.py")
BASE = ["data.name=embedded", "data.limit=60", "data.batch_size=19", "model.conv=sage", "model.hidden=16",
        "model.num_layers=2", "model.norm=layer", "model.vn_norm=layer", "model.dropout=0.0", "train.epochs=2",
        "train.threads=1", "device=cpu", "model.task_pool={qed: mean, lipinski: mean}"]
SBM = ["data.name=sbm", "data.limit=200", "train.epochs=4", "model.task_pool={}"]  # one step per epoch: the whole graph
#: run name -> (its ``--set`` values after BASE, the optimizer steps it takes)
CASES: dict[str, tuple[list[str], int]] = {
    **{name: ([f"train.balancer={name}"], 6) for name in BALANCERS},
    "upgrad-rep": (["train.balancer=upgrad", "train.grad_mode=rep"], 6),
    "pcgrad-every2": (["train.balancer=pcgrad", "train.update_every=2"], 6),
    "sbm-ew": ([*SBM, "train.balancer=ew"], 4),
    "sbm-upgrad": ([*SBM, "train.balancer=upgrad"], 4),
}
#: absolute, on every weight and balancer state entry: the runs agree to 2.4e-7 or better (sums taken in another
#: order; Adam divides each coordinate by its own gradient scale, which lifts that round-off above float32's 6e-8);
#: a different batch order gives about 6e-3
TOLERANCE = 1e-5
#: cases whose method solves an inner problem numerically, which amplifies round-off (still far from the 6e-3 of a
#: different batch order): CAGrad's dual by SLSQP moved the weights by 1.2e-5 after 6 steps
LOOSER = {"cagrad": 5e-5}
#: methods whose output is not continuous in the gradients, so round-off may move them anywhere (not checked)
DISCONTINUOUS = {"sdmgrad": "SDMGrad's inner projected-gradient loop (20 steps of lr 10, the authors' defaults) jumps "
                            "between simplex vertices: a 1e-7 change of G moved its weights from 0.03 to 0.79"}


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Every case trained by one process (``one/``) and by two (``two/``); the single runs build the data cache."""
    tmp = tmp_path_factory.mktemp("equivalence")
    cases = tmp / "cases.json"
    root = f"data.root={tmp / 'cache'}"
    cases.write_text(json.dumps({name: [*BASE, root, *sets] for name, (sets, _) in CASES.items()}))
    _run([sys.executable, str(WORKER), str(tmp / "one"), str(cases)], tmp)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
          str(tmp / "two"), str(cases)], tmp)
    return tmp


def _leaves(state: Any, path: str = "") -> dict[str, Any]:
    """A nested state (dicts and lists) as ``{path: leaf}``."""
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in _leaves(value, f"{path}.{key}").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in _leaves(value, f"{path}[{i}]").items()}
    return {path: state}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.skip(reason=DISCONTINUOUS[c]))
                                  if c in DISCONTINUOUS else c for c in CASES])
def test_one_and_two_processes_train_the_same_model(case, runs):
    one = load_checkpoint(runs / "one" / case / "last.pt")
    two = load_checkpoint(runs / "two" / case / "last.pt")
    assert one["step"] == two["step"] == CASES[case][1]
    assert one["model"].keys() == two["model"].keys()
    tolerance = LOOSER.get(case, TOLERANCE)
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, atol=tolerance, rtol=0, msg=f"{case}: {name}")
    # the method's state (UW's log-variances, FAMO's logits, GradVac's targets, the random generators of PCGrad,
    # GradVac, GradDrop and RLW: same seed, same number of draws) and the engine's last weights
    mine, theirs = _leaves(one["balancer"]), _leaves(two["balancer"])
    assert mine.keys() == theirs.keys()
    for key, value in mine.items():
        if isinstance(value, torch.Tensor):
            # relative too: ConFIG's weights reach 12
            torch.testing.assert_close(theirs[key], value, atol=tolerance, rtol=1e-5, msg=f"{case}: balancer{key}")
        elif isinstance(value, float):
            assert theirs[key] == pytest.approx(value, abs=tolerance), f"{case}: balancer{key}"
        else:
            assert theirs[key] == value, f"{case}: balancer{key}"
    assert "collectives" not in json.loads((runs / "one" / case / "results.json").read_text())
    assert "collectives" in json.loads((runs / "two" / case / "results.json").read_text())


def test_the_shards_of_two_processes_are_the_batches_of_one(tiny_dataset):
    """Through the loaders themselves, epoch by epoch reseeded as the trainer does: the two shards of each step
    hold exactly the graphs of one process's batch (7, 7, 6 of 20 graphs: shards of 4 and 3, then 3 and 3)."""
    for i, graph in enumerate(tiny_dataset.splits["train"]):
        graph.ident = torch.tensor([i])
    one = build_loaders(tiny_dataset, batch_size=7, seed=3)["train"]
    two = [graph_loaders(tiny_dataset, 7, 3, rank, 2)["train"] for rank in range(2)]
    orders = []
    for epoch in (1, 2):
        for loader in (one, *two):
            _reseed_loader(loader, epoch)
        whole = [batch.ident.tolist() for batch in one]
        shards = [[batch.ident.tolist() for batch in loader] for loader in two]
        assert [len(b) for b in whole] == [7, 7, 6]
        assert [sorted(a + b) for a, b in zip(*shards, strict=True)] == [sorted(b) for b in whole]
        orders.append(whole)
    assert orders[0] != orders[1]  # each epoch its own order

"""``grad_mode="gramian"``: the Gramian built layer by layer without ``J`` equals ``gramian(J)`` of the
materialised path on the project's models, the step writes the ``exact`` step's ``.grad``, and its refusals."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from graph_mtl.balancers import BALANCERS, create
from graph_mtl.balancers.args import ArgumentError
from graph_mtl.config import ModelConfig, TrainConfig
from graph_mtl.engine.distributed import DataParallelStepEngine
from graph_mtl.engine.gradients import JacobianEngine, gramian
from graph_mtl.engine.gramian import GramianRecorder
from graph_mtl.engine.step import StepEngine
from graph_mtl.engine.trainer import Trainer
from graph_mtl.run import build_balancer, build_loaders, build_model
from graph_mtl.tasks import task_losses

ROOT = Path(__file__).resolve().parents[1]
GRAMIAN_METHODS = ["upgrad", "mgda", "imtl", "cagrad", "nashmtl", "alignedmtl", "pcgrad"]


def _model(tiny_dataset, **cfg):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{"hidden": 16, "num_layers": 2, "dropout": 0.0, **cfg}), tiny_dataset)
    return model.train()


def _relative(G: torch.Tensor, R: torch.Tensor) -> float:
    return float((G - R).abs().max() / R.abs().max())


@pytest.mark.parametrize("cfg", [
    {"conv": "gin"}, {"conv": "gin", "virtual_node": True}, {"conv": "gine", "virtual_node": True},
    {"conv": "gcn"}, {"conv": "gcn", "virtual_node": True}, {"conv": "gat"}, {"conv": "gatv2"},
    {"conv": "sage", "jk": "cat"}, {"conv": "gin", "virtual_node": True, "jk": "sum"}, {"conv": "pna"},
    {"conv": "nnconv"},
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gramian_equals_the_materialised_one(cfg, tiny_dataset):
    model = _model(tiny_dataset, **cfg)
    shared = list(model.shared_parameters())
    recorder = GramianRecorder(model, shared)
    batch = Batch.from_data_list(tiny_dataset.splits["train"][:8])
    out = model(batch)
    parts = list(task_losses(model.tasks, out.preds, batch).values())
    G = recorder.gramian(parts, shared, JacobianEngine(), chunk=2)
    R = gramian(JacobianEngine().jacobian(parts, shared).double())
    assert G.dtype == torch.float64
    assert _relative(G, R) < 1e-6


def _step(name: str, mode: str, tiny_dataset, grad_scale=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model = _model(tiny_dataset, conv="gin", virtual_node=True)
    names = model.task_names
    kwargs = {"seed": 0} if "seed" in inspect.signature(BALANCERS[name]).parameters else {}
    engine = StepEngine(create(name, names, **kwargs), grad_mode=mode)
    engine.watch(model)
    batch = Batch.from_data_list(tiny_dataset.splits["train"][:8])
    out = model(batch)
    w = engine.backward(task_losses(model.tasks, out.preds, batch), shared_params=list(model.shared_parameters()),
                        task_params={n: list(model.task_parameters(n)) for n in names}, grad_scale=grad_scale)
    return w, [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


def _same_grads(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    """Equal to 1e-6 of the largest gradient entry (a parameter whose exact gradient is 0, a bias before a batch
    norm, holds round-off of that size in both modes) and 1e-4 relative."""
    top = max(float(g.abs().max()) for g in expected)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * top)


@pytest.mark.parametrize("name", GRAMIAN_METHODS)
def test_gramian_step_writes_the_exact_step(name, tiny_dataset):
    w_exact, g_exact = _step(name, "exact", tiny_dataset)
    w_gram, g_gram = _step(name, "gramian", tiny_dataset)
    assert torch.allclose(w_gram, w_exact, rtol=1e-4, atol=1e-6)
    _same_grads(g_gram, g_exact)  # heads included: each the plain gradient of its own loss


def test_gramian_step_with_loss_scaling(tiny_dataset):
    w_exact, g_exact = _step("upgrad", "exact", tiny_dataset, grad_scale=1024.0)
    w_gram, g_gram = _step("upgrad", "gramian", tiny_dataset, grad_scale=1024.0)
    assert torch.allclose(w_gram, w_exact, rtol=1e-4, atol=1e-6)
    _same_grads(g_gram, g_exact)


class _Twice(nn.Module):
    """One shared linear map applied twice (``h = lin(tanh(lin(x)))``), a 3-d input, and a scalar not in a
    linear module; two heads."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.tensor(0.7))
        self.heads = nn.ModuleList(nn.Linear(3, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.lin(torch.tanh(self.lin(x))) * self.scale
        return [head(h).pow(2).mean() for head in self.heads]

    def shared(self) -> list[nn.Parameter]:
        return [*self.lin.parameters(), self.scale]


def test_module_called_twice_is_exact():
    torch.manual_seed(0)
    model = _Twice()
    recorder = GramianRecorder(model, model.shared())
    losses = model(torch.randn(2, 5, 3))  # [2, 5, 3]: leading dims flattened
    G = recorder.gramian(losses, model.shared(), JacobianEngine())
    R = gramian(JacobianEngine().jacobian(losses, model.shared()).double())
    assert _relative(G, R) < 1e-6


def test_output_changed_in_place_falls_back_to_plain_gradients():
    """An in-place ReLU rewrites the first layer's recorded output (its gradient is no longer ``D``): that layer
    is taken the plain way, and ``G`` stays exact; a narrow batch (``N < in``) takes the rows form."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3))
    shared = list(mlp.parameters())
    for rows in (2, 9):
        recorder = GramianRecorder(mlp, shared)
        losses = list(mlp(torch.randn(rows, 4)).pow(2).sum(dim=0))
        G = recorder.gramian(losses, shared, JacobianEngine())
        assert _relative(G, gramian(JacobianEngine().jacobian(losses, shared).double())) < 1e-6
        recorder.remove()


def test_two_layer_mlp_against_hand_computed_gradients():
    """``L_i = sum_n y[n, i]`` with ``y = W2 relu(W1 x + b1) + b2``: ``dL_i/dW2 = e_i (sum_n h_n)^T``,
    ``dL_i/db2 = N e_i``, ``dL_i/dW1 = sum_n (W2[i] * relu'(a_n)) x_n^T``, ``dL_i/db1 = sum_n W2[i] * relu'(a_n)``."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    shared = list(mlp.parameters())
    recorder = GramianRecorder(mlp, shared)
    y = mlp(x)
    G = recorder.gramian(list(y.sum(dim=0)), shared, JacobianEngine())
    with torch.no_grad():
        W1, b1, W2, _ = (p.detach() for p in shared)
        a = x @ W1.T + b1
        h, on = a.clamp_min(0), (a > 0).double()
        rows = []
        for i in range(3):
            e = torch.zeros(3, dtype=torch.float64)
            e[i] = 1
            back = W2[i] * on  # [N, 5]: dL_i/da_n
            rows.append(torch.cat([(back.T @ x).reshape(-1), back.sum(0), torch.outer(e, h.sum(0)).reshape(-1),
                                   len(x) * e]))
        J = torch.stack(rows)
    assert torch.allclose(G, J @ J.T, rtol=1e-10, atol=1e-12)


def test_gramian_mode_refuses_an_aggregator():
    with pytest.raises(ArgumentError) as err:
        StepEngine(create("graddrop", ["a", "b"], seed=0), grad_mode="gramian")
    message = str(err.value)
    assert "\n" not in message and "train.grad_mode" in message and "'exact'" in message
    with pytest.raises(ValueError, match="train.grad_mode"):  # from a config
        build_balancer(TrainConfig(balancer="graddrop", grad_mode="gramian"), ["a", "b"])


def test_gramian_mode_refuses_data_parallel_and_a_missing_watch(tiny_dataset):
    with pytest.raises(ArgumentError, match="train.grad_mode"):
        DataParallelStepEngine(create("upgrad", ["a", "b"]), None, grad_mode="gramian")  # type: ignore[arg-type]
    model = _model(tiny_dataset, conv="gin")
    engine = StepEngine(create("upgrad", model.task_names), grad_mode="gramian")
    batch = Batch.from_data_list(tiny_dataset.splits["train"][:4])
    losses = task_losses(model.tasks, model(batch).preds, batch)
    with pytest.raises(ValueError, match="watch"):
        engine.backward(losses, shared_params=list(model.shared_parameters()))


def test_benchmark_quick_runs():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gramian_memory.py"), "--quick"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| gramian |" in result.stdout and "| exact |" in result.stdout


def test_trainer_watches_the_model_and_trains_as_exact(tiny_dataset, tmp_path):
    """Through :class:`~graph_mtl.engine.trainer.Trainer` (which calls ``watch``): two steps in each mode end at
    the same weights."""
    finals = []
    for mode in ("exact", "gramian"):
        model = _model(tiny_dataset, conv="gine")
        engine = StepEngine(create("upgrad", model.task_names), grad_mode=mode)
        # SGD: Adam would blow the round-off of a zero gradient (a bias before a batch norm) up to a step of lr
        cfg = TrainConfig(epochs=1, progress=False, max_steps_per_epoch=2, lr=1e-2, optimizer="sgd")
        trainer = Trainer(model, engine, cfg, tiny_dataset.splits["train"], out_dir=tmp_path / mode, seed=0,
                          log=lambda _: None)
        assert (engine.recorder is not None) == (mode == "gramian")
        trainer.train_epoch(build_loaders(tiny_dataset, batch_size=5, seed=0)["train"])
        finals.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*finals):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)

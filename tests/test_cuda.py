"""On a GPU: every balancer's update on CUDA against the CPU, no host sync inside a balanced step, AMP steps, the
batched per-task product against the loop, and a short training run. Skipped where CUDA is absent
(``benchmarks/gpu_check.sh`` runs this file)."""

from __future__ import annotations

import contextlib
import csv
import inspect
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from graph_mtl.balancers import BALANCERS, create
from graph_mtl.engine.gradients import JacobianEngine
from graph_mtl.engine.step import StepEngine
from graph_mtl.models import GNNEncoder, MultiTaskGNN
from graph_mtl.tasks import task_losses
from tests.test_device_agnostic import HOST_ALLOWED, gradient_method, two_steps

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")]

#: balancers that draw random numbers: their CUDA generator's stream is not the CPU's, so only the shape and
#: finiteness of their update are compared
RANDOM = {name for name, cls in BALANCERS.items() if "seed" in inspect.signature(cls).parameters}


@pytest.fixture(autouse=True)
def full_precision_matmul():
    """TF32 would make CUDA products differ from the CPU's in the 3rd digit."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _step(name: str, device: str, tiny_dataset, mode: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The weights and the flat update of one balanced step on ``device`` (same weights and batch everywhere)."""
    torch.manual_seed(0)
    encoder = GNNEncoder(hidden=16, num_layers=2, conv="gin", node_encoder="atom", norm="none", dropout=0.0)
    model = MultiTaskGNN(encoder, tiny_dataset.tasks).to(device)
    batch = Batch.from_data_list(tiny_dataset.splits["train"][:8]).to(device)
    names = [t.name for t in tiny_dataset.tasks]
    out = model(batch)
    losses = task_losses(model.tasks, out.preds, batch)
    engine = StepEngine(create(name, names), grad_mode=mode)
    w = engine.backward(losses, shared_params=list(model.shared_parameters()), representation=out.balancer_repr,
                        task_params={n: list(model.task_parameters(n)) for n in names},
                        last_shared_params=list(model.last_shared_parameters()))
    update = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters() if p.grad is not None])
    return w.detach().cpu(), update.detach().cpu()


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_updates_on_cuda_as_on_the_cpu(name, tiny_dataset):
    w_cpu, u_cpu = _step(name, "cpu", tiny_dataset)
    w_gpu, u_gpu = _step(name, "cuda", tiny_dataset)
    assert torch.isfinite(u_gpu).all() and u_gpu.shape == u_cpu.shape
    if name not in RANDOM:
        assert torch.allclose(w_gpu, w_cpu, rtol=1e-3, atol=1e-5)
        assert torch.allclose(u_gpu, u_cpu, rtol=1e-3, atol=1e-5)


#: methods that synchronise with the host inside a step on purpose, and why: those reading values on the host
#: (``tests/test_device_agnostic.py``), and those whose solvers need a value or a success flag on the host
SYNC_ALLOWED: dict[str, str] = {
    **HOST_ALLOWED,
    "fairgrad": "its Newton iteration stops on a tolerance test and its line search compares values on the host",
    "imtl": "the tasks with a nonzero gradient are selected with nonzero() (a shape that depends on values)",
    "imtl_full": "IMTL-G's part selects the tasks with a nonzero gradient with nonzero()",
    "mgda": "its active-set QP solver tests convergence on the host once per iteration (and linalg.eigh checks "
            "its success flag there)",
    "mgda_ub": "the same active-set QP solver as mgda",
    "upgrad": "its active-set QP solver (the dual cone projection) tests convergence on the host per iteration",
    "dualproj": "the same active-set QP solver as upgrad",
    "crmogm": "it wraps mgda (by default), whose solver tests convergence on the host",
    "alignedmtl": "torch.linalg.eigh checks its success flag on the host",
    "config": "torch.linalg.svd checks its success flag on the host",
}


@contextlib.contextmanager
def sync_is_an_error() -> Iterator[None]:
    """CUDA raises on any synchronising call inside the block, except the engine's one deliberate sync: the
    finiteness test of the losses (``StepEngine._finite``: a skipped step must leave ``.grad`` untouched)."""
    finite = StepEngine._finite

    def allowed(self, *args):
        torch.cuda.set_sync_debug_mode("default")
        try:
            return finite(self, *args)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StepEngine, "_finite", allowed)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name, mode", [(n, m) for n in sorted(BALANCERS)
                                        for m in (["auto", "exact", "rep"] if gradient_method(n) else ["auto"])])
def test_a_balanced_step_does_not_sync_with_the_host(name, mode, tiny_dataset):
    if name in SYNC_ALLOWED:
        pytest.skip(f"{name} synchronises on purpose: {SYNC_ALLOWED[name]}")
    two_steps(name, mode, tiny_dataset, device="cuda", around_second=sync_is_an_error)


@pytest.mark.parametrize("name", ["pcgrad", "mgda", "upgrad", "nashmtl", "cagrad", "imtl"])
def test_rep_mode_on_cuda_as_on_the_cpu(name, tiny_dataset):
    w_cpu, u_cpu = _step(name, "cpu", tiny_dataset, "rep")
    w_gpu, u_gpu = _step(name, "cuda", tiny_dataset, "rep")
    if name not in RANDOM:
        assert torch.allclose(w_gpu, w_cpu, rtol=1e-3, atol=1e-5)
    assert torch.allclose(u_gpu, u_cpu, rtol=1e-3, atol=1e-5) or name in RANDOM


def test_batched_per_task_product_matches_the_loop_on_cuda(tiny_dataset):
    torch.manual_seed(0)
    model = MultiTaskGNN(GNNEncoder(hidden=16, num_layers=2, conv="gin", node_encoder="atom"),
                         tiny_dataset.tasks).cuda()
    batch = Batch.from_data_list(tiny_dataset.splits["train"][:8]).cuda()
    out = model(batch)
    losses = list(task_losses(model.tasks, out.preds, batch).values())
    shared = list(model.shared_parameters())
    batched = JacobianEngine(batched=True).jacobian(losses, shared)
    loop = JacobianEngine(batched=False).jacobian(losses, shared)
    assert torch.allclose(batched, loop, rtol=1e-4, atol=1e-6)


def _tiny_csv(path: Path) -> Path:
    from tests.test_csv_dataset import SMILES

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["smiles", "a", "b", "c"])
        for i, smiles in enumerate(SMILES * 2):
            writer.writerow([smiles, i % 2, (i // 2) % 2, 0.1 * i])
    return path


@pytest.mark.parametrize("amp, balancer", [("none", "pcgrad"), ("bf16", "pcgrad"), ("fp16", "upgrad"),
                                           ("bf16", "famo"), ("fp16", "ew")])
def test_a_short_training_run_on_cuda(tmp_path, amp, balancer):
    from graph_mtl.cli import main

    data = _tiny_csv(tmp_path / "tiny.csv")
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--quiet", "--set", "device=cuda", "--set", "data.name=csv",
                 "--set", f"data.csv={data}", "--set", "data.split=random", "--set", "epochs=2",
                 "--set", "model.hidden=16", "--set", f"train.amp={amp}", "--set", f"balancer={balancer}"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["epochs_run"] == 2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the NCCL path needs two GPUs")
def test_two_processes_on_two_gpus_train_with_nccl(tmp_path):
    """torchrun with 2 processes on cuda:0 and cuda:1 (NCCL): the run finishes and its gradients went through the
    process group."""
    from tests.test_distributed import _torchrun

    out = tmp_path / "ddp"
    done = _torchrun(["train", "--out", str(out), "--quiet", "--set", "device=cuda", "--set", "data.name=sbm",
                      "--set", "data.limit=200", "--set", "model.hidden=16", "--set", "model.num_layers=2",
                      "--set", "train.balancer=pcgrad", "--set", "train.epochs=2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["epochs_run"] == 2 and results["collectives"]["jacobian"]["calls"] > 0

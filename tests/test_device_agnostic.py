"""No host read inside a balanced step, checked on the CPU: during the second ``StepEngine.backward`` of every
balancer (its default mode, and ``exact`` where it takes per-task gradients) ``Tensor.item``, ``.cpu``,
``.tolist`` and ``.numpy`` raise. On a GPU each of them waits for the device; ``tests/test_cuda.py`` checks the
same steps with CUDA's own sync detector (``torch.cuda.set_sync_debug_mode("error")``)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator

import pytest
import torch
from torch_geometric.data import Batch

from graph_mtl.balancers import BALANCERS, create
from graph_mtl.balancers.args import ArgumentError
from graph_mtl.balancers.base import Aggregator, GramianWeighting
from graph_mtl.engine.step import StepEngine
from graph_mtl.models import GNNEncoder, MultiTaskGNN
from graph_mtl.tasks import task_losses

#: the Tensor methods that copy a value to the host
HOST_READS = ("item", "cpu", "tolist", "numpy")

#: methods that read values on the host in every step on purpose, and why (``tests/test_cuda.py`` allows these
#: and the methods whose solvers synchronise otherwise)
HOST_ALLOWED: dict[str, str] = {
    "cagrad": "its dual is solved by a small numpy solver on the CPU (a t x t problem)",
    "nashmtl": "its t x t Nash bargaining problem is solved by an iterative solver on the CPU",
}


def gradient_method(name: str) -> bool:
    """Whether ``name`` takes per-task gradients (so ``grad_mode`` applies)."""
    return issubclass(BALANCERS[name], (GramianWeighting, Aggregator))


def modes(name: str) -> list[str]:
    """The grad modes a balancer is checked in: its default, and ``exact`` for a gradient method."""
    return ["auto", "exact"] if gradient_method(name) else ["auto"]


@contextlib.contextmanager
def no_host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every ``Tensor`` method of :data:`HOST_READS` raises inside the block (restored after it)."""
    with monkeypatch.context() as patch:
        for attr in HOST_READS:
            def refuse(self, *args, _attr=attr, **kwargs):
                raise AssertionError(f"Tensor.{_attr}() inside a balanced step (a host sync on a GPU)")
            patch.setattr(torch.Tensor, attr, refuse)
        yield


def two_steps(name: str, mode: str, dataset, device: str = "cpu",
              around_second: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
    """Two balanced steps of ``name`` in grad mode ``mode`` on a tiny model: the first warms up (lazy state,
    the batched product's check), only the second's ``StepEngine.backward`` runs inside ``around_second()``.
    Skips a mode the method refuses."""
    torch.manual_seed(0)
    model = MultiTaskGNN(GNNEncoder(hidden=8, num_layers=2, conv="gin", node_encoder="atom", norm="none",
                                    dropout=0.0), dataset.tasks).to(device)
    batch = Batch.from_data_list(dataset.splits["train"][:8]).to(device)
    names = [t.name for t in dataset.tasks]
    kwargs = {"seed": 0} if "seed" in inspect.signature(BALANCERS[name]).parameters else {}
    try:
        engine = StepEngine(create(name, names, **kwargs), grad_mode=mode)
    except ArgumentError as error:
        pytest.skip(f"{name} refuses grad_mode {mode}: {error}")
    shared = list(model.shared_parameters())
    task_params = {n: list(model.task_parameters(n)) for n in names}
    last = list(model.last_shared_parameters())
    for step in range(2):
        model.zero_grad(set_to_none=True)
        out = model(batch)
        losses = task_losses(model.tasks, out.preds, batch)
        with around_second() if step == 1 else contextlib.nullcontext():
            engine.backward(losses, shared_params=shared, representation=out.balancer_repr, task_params=task_params,
                            last_shared_params=last)


@pytest.mark.parametrize("name, mode", [(n, m) for n in sorted(BALANCERS) for m in modes(n)])
def test_a_balanced_step_reads_nothing_on_the_host(name, mode, tiny_dataset, monkeypatch):
    if name in HOST_ALLOWED:
        pytest.skip(f"{name} reads values on the host on purpose: {HOST_ALLOWED[name]}")
    two_steps(name, mode, tiny_dataset, around_second=lambda: no_host_reads(monkeypatch))


@pytest.mark.parametrize("name", sorted(HOST_ALLOWED))
def test_the_allow_list_is_needed(name, tiny_dataset, monkeypatch):
    """A method on the allow-list does read on the host (else it should leave the list)."""
    with pytest.raises(AssertionError, match="inside a balanced step"):
        for mode in modes(name):
            two_steps(name, mode, tiny_dataset, around_second=lambda: no_host_reads(monkeypatch))


@pytest.mark.parametrize("device, workers", [("cpu", 0), ("cuda", 2)])
def test_loaders_pin_batches_for_cuda_and_keep_their_workers(device, workers, tiny_dataset):
    from graph_mtl.config import load_config
    from graph_mtl.run import make_loaders

    config = load_config(overrides=[f"data.num_workers={workers}"])
    loaders = make_loaders(config, tiny_dataset, None, torch.device(device))
    for loader in loaders.values():  # building a loader touches no device: this runs on a CPU
        assert loader.pin_memory == (device == "cuda")
        assert loader.num_workers == workers and loader.persistent_workers == (workers > 0)

"""``state_dict`` round trips: a resumed balancer continues exactly like an uninterrupted one."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from test_balancer_common import NAMES, TinyMTL, batch, flat_grad, losses_of, make, step

from graph_mtl.balancers import BALANCERS
from graph_mtl.dropin import PCGrad

ARGS = {"mgda": {"update_every": 2}, "nashmtl": {"update_every": 2}}


def train(balancer, model: TinyMTL, optimizer, seeds) -> list[torch.Tensor]:
    out = []
    for seed in seeds:
        names = NAMES if seed % 3 else ["a", "c"]  # some steps with an absent task
        out.append(step(balancer, model, *batch(seed), names=names))
        out.append(flat_grad(model.parameters()))
        optimizer.step()
        if seed % 2:
            balancer.on_epoch_end()
    return out


def saved(obj) -> dict:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_resume_continues_identically(name: str) -> None:
    model = TinyMTL()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    balancer = make(name, **ARGS.get(name, {}))
    train(balancer, model, optimizer, range(1, 6))
    state = saved(balancer.state_dict())
    model_copy = copy.deepcopy(model)
    optimizer_copy = torch.optim.SGD(model_copy.parameters(), lr=0.05)
    expected = train(balancer, model, optimizer, range(6, 10))
    other_seed = {"seed": 999} if "seed" in state.get("rng", {}) else {}  # the state must restore the RNG
    resumed = make(name, **{**ARGS.get(name, {}), **other_seed})
    resumed.load_state_dict(state)
    got = train(resumed, model_copy, optimizer_copy, range(6, 10))
    for a, b in zip(expected, got):
        assert torch.allclose(a, b, atol=1e-6), name


def test_drop_in_state_round_trip() -> None:
    model = TinyMTL()
    dropin = PCGrad(torch.optim.SGD(model.parameters(), lr=0.1), seed=1)
    losses, _ = losses_of(model, *batch())
    dropin.pc_backward(list(losses.values()))
    state = saved(dropin.state_dict())
    twin = copy.deepcopy(model)
    other = PCGrad(torch.optim.SGD(twin.parameters(), lr=0.1), seed=2)
    other.load_state_dict(state)
    for m, d in ((model, dropin), (twin, other)):
        losses, _ = losses_of(m, *batch(3))
        d.pc_backward(list(losses.values()))
    assert torch.allclose(flat_grad(model.parameters()), flat_grad(twin.parameters()))

"""The gradient engine against plain per-task backward loops: every mode that claims exactness, heads, absent
tasks, amortised weights, the sequential fallback and the registry's argument errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_balancer_common import (
    NAMES,
    TinyMTL,
    batch,
    exact_only,
    flat_grad,
    gradient_methods,
    losses_of,
    make,
    reference_jacobian,
    step,
)

from graph_mtl.balancers import BALANCERS, GramianWeighting
from graph_mtl.engine.gradients import JacobianEngine, gramian, leaf_parameters
from graph_mtl.engine.step import NonFiniteLoss

ATOL = 1e-5


def reference(model: TinyMTL, x, y, names, at: str):
    """Reference per-task gradients (at the shared params, or at the representation) and the losses."""
    losses, z = losses_of(model, x, y, names)
    stacked = [losses[n] for n in names]
    J_theta = reference_jacobian(stacked, model.shared())
    J_at = J_theta if at == "exact" else reference_jacobian(stacked, [z])
    plain = {n: torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[n], model.task_params()[n],
                                                                        retain_graph=True)]) for n in names}
    return J_theta, J_at, torch.stack(stacked).detach(), plain


@pytest.mark.parametrize("mode", ["exact", "rep"])
@pytest.mark.parametrize("name", gradient_methods())
def test_shared_update_matches_reference(name: str, mode: str) -> None:
    if mode == "rep" and exact_only(name):
        pytest.skip("keeps per-parameter state: exact mode only (refusal tested in test_balancer_new_methods)")
    model = TinyMTL()
    x, y = batch()
    names = NAMES
    J_theta, J_at, L, plain = reference(model, x, y, names, mode)
    index = [NAMES.index(n) for n in names]
    kwargs = {"grad_mode": mode, **({"beta": 0.0} if name == "dbmtl" and mode == "rep" else {})}
    fresh, balancer = make(name, **kwargs), make(name, **kwargs)
    w = step(balancer, model, x, y, names)
    if isinstance(balancer.method, GramianWeighting):  # a Gramian method: w^T J
        w_ref = fresh.method.weights(gramian(J_at.clone()), L, index).float()
        assert torch.allclose(w[index], w_ref, atol=ATOL, rtol=1e-4)
        expected = w_ref @ J_theta
    else:  # a method on J itself: its update at the representation is pulled back through the encoder
        update, _ = fresh.method.aggregate(J_at.clone(), L, index)
        if mode == "exact":
            expected = update
        else:
            _, z = losses_of(model, x, y, names)
            expected = torch.cat([g.reshape(-1) for g in
                                  torch.autograd.grad(z, model.shared(), update.view_as(z))])
    assert torch.allclose(flat_grad(model.shared()), expected, atol=ATOL, rtol=1e-4)
    for n in names:  # heads: the plain gradient of their own loss
        assert torch.allclose(flat_grad(model.task_params()[n]), plain[n], atol=1e-6)


@pytest.mark.parametrize("name", ["pcgrad", "mgda"])
def test_absent_task_gets_zero_weight(name: str) -> None:
    model = TinyMTL()
    x, y = batch()
    w = step(make(name), model, x, y, ["a", "c"])
    assert w[1] == 0 and torch.isfinite(w).all()
    assert all(p.grad is None for p in model.task_params()["b"])
    assert torch.isfinite(flat_grad(model.shared())).all()


def test_accumulates_like_backward() -> None:
    model = TinyMTL()
    x, y = batch()
    step(make("pcgrad"), model, x, y)
    once = flat_grad(model.parameters())
    losses, z = losses_of(model, x, y)
    make("pcgrad").backward(losses, shared_params=model.shared(), representation=z,
                            task_params=model.task_params())
    assert torch.allclose(flat_grad(model.parameters()), 2 * once, atol=1e-6)


def test_without_task_params_heads_found_by_graph_walk() -> None:
    model = TinyMTL()
    x, y = batch()
    step(make("mgda"), model, x, y)
    expected = flat_grad(model.parameters())
    model.zero_grad(set_to_none=True)
    losses, _ = losses_of(model, x, y)
    make("mgda").backward(losses, shared_params=model.shared())
    assert torch.allclose(flat_grad(model.parameters()), expected, atol=1e-6)
    found = leaf_parameters([losses["a"]])
    assert {id(p) for p in found} == {id(p) for p in [*model.shared(), *model.task_params()["a"]]}


def test_update_every_reuses_weights_with_one_backward() -> None:
    model = TinyMTL()
    balancer = make("mgda", update_every=3)
    weights = [step(balancer, model, *batch(seed)) for seed in range(4)]
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])
    assert not torch.equal(weights[0], weights[3])  # recomputed at step 3
    # in between: shared = backward of sum w_i L_i, heads = plain gradients
    x, y = batch(1)
    J, _, _, plain = reference(model, x, y, NAMES, "exact")
    w = step(balancer, model, x, y)  # step 4: reuse
    assert torch.equal(w, weights[3])
    assert torch.allclose(flat_grad(model.shared()), w @ J, atol=ATOL)
    assert torch.allclose(flat_grad(model.task_params()["b"]), plain["b"], atol=1e-6)


def test_update_every_recomputes_for_a_new_task() -> None:
    model = TinyMTL()
    balancer = make("mgda", update_every=10)
    x, y = batch()
    first = step(balancer, model, x, y, ["a", "b"])
    second = step(balancer, model, x, y)  # task c was not covered: recompute
    assert first[2] == 0 and second[2] > 0


def test_chunked_and_sequential_jacobians_agree() -> None:
    model = TinyMTL()
    x, y = batch()
    losses, _ = losses_of(model, x, y)
    stacked = torch.stack(list(losses.values()))
    ref = reference_jacobian(list(stacked), model.shared())
    chunked = JacobianEngine(chunk_size=2, batched=True).jacobian(stacked, model.shared())
    sequential = JacobianEngine()
    sequential.batched = False
    assert torch.allclose(chunked, ref, atol=1e-6)
    assert torch.allclose(sequential.jacobian(stacked, model.shared()), ref, atol=1e-6)


class NoVmap(torch.autograd.Function):
    """An op whose backward cannot be batched by vmap (it leaves the tensor world)."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return torch.as_tensor(grad.detach().numpy() * 2)


def test_falls_back_to_sequential_and_remembers() -> None:
    model = TinyMTL()
    x, y = batch()
    balancer = make("pcgrad")
    balancer.jacobians.batched = True  # the CPU default is the per-task loop; force the batched try

    def no_vmap_losses():
        z = NoVmap.apply(model.trunk(x))
        return {n: ((h(z).squeeze(-1) - y[n]) ** 2).mean() for n, h in model.heads.items()}

    for attempt in range(2):
        model.zero_grad(set_to_none=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            balancer.backward(no_vmap_losses(), shared_params=model.shared(), task_params=model.task_params())
        assert any("falling back" in str(c.message) for c in caught) == (attempt == 0)
    assert not balancer.jacobians.batched
    losses = no_vmap_losses()
    J = reference_jacobian([losses[n] for n in NAMES], model.shared())
    assert torch.allclose(flat_grad(model.shared()), balancer._last @ J, atol=ATOL)


def test_rep_mode_needs_a_representation() -> None:
    model = TinyMTL()
    losses, _ = losses_of(model, *batch())
    with pytest.raises(ValueError, match="representation"):
        make("mgda", grad_mode="rep").backward(losses, shared_params=model.shared())


BAD_ARGS = [
    ("pcgrad", {"grad_mode": "fast"}, "grad_mode"), ("pcgrad", {"update_every": 0}, "update_every"),
    ("pcgrad", {"chunk_size": 0}, "chunk_size"), ("pcgrad", {"reduction": "max"}, "reduction"),
    ("pcgrad", {"seed": -1}, "seed"), ("pcgrad", {"typo": 1}, "typo"), ("cagrad", {"c": -1}, "c"),
    ("cagrad", {"rescale": 3}, "rescale"), ("gradvac", {"beta": 2}, "beta"), ("famo", {"lr": 0}, "lr"),
    ("famo", {"eps": 0}, "eps"), ("dbmtl", {"grad_mode": "rep"}, "grad_mode"),
    ("uw", {"optimizer": "lbfgs"}, "optimizer"),
    ("dwa", {"temperature": 0}, "temperature"), ("graddrop", {"update_every": 2}, "update_every"),
    ("graddrop", {"leak": 2}, "leak"), ("upgrad", {"reg_eps": 0}, "reg_eps"), ("nashmtl", {"eps": -1}, "eps"),
    ("gradnorm", {"optimizer": "x"}, "optimizer"), ("ew", {"grad_mode": "rep"}, "grad_mode"),
]


@pytest.mark.parametrize("name, kwargs, arg", BAD_ARGS)
def test_bad_arguments_are_one_line_errors(name: str, kwargs: dict, arg: str) -> None:
    with pytest.raises(ValueError, match=arg) as info:
        make(name, **kwargs)
    assert "\n" not in str(info.value)


def test_chunked_balancer_matches_unchunked() -> None:
    x, y = batch()
    models = TinyMTL(), TinyMTL()
    step(make("upgrad"), models[0], x, y)
    step(make("upgrad", chunk_size=1), models[1], x, y)
    assert torch.allclose(flat_grad(models[0].parameters()), flat_grad(models[1].parameters()), atol=1e-6)


def test_at_least_sixteen_balancers() -> None:
    assert len(BALANCERS) >= 16


@pytest.mark.parametrize("mode", ["exact", "rep"])
@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_grad_scale_scales_the_update_and_keeps_the_weights(name: str, mode: str) -> None:
    """fp16 loss scaling: ``.grad`` is ``s`` times the unscaled step's and the weights are those of the
    unscaled step (per-task gradients are unscaled before aggregating), for every balancer."""
    gradient_method = name in gradient_methods()
    if mode == "rep" and not gradient_method:
        pytest.skip("loss weightings have no grad_mode")
    if mode == "rep" and exact_only(name):
        pytest.skip("keeps per-parameter state: exact mode only")
    kwargs = {"grad_mode": mode} if gradient_method else {}
    if name == "dbmtl" and mode == "rep":
        kwargs["beta"] = 0.0
    model, (x, y), scale = TinyMTL(), batch(), 1024.0
    plain_w = step(make(name, **kwargs), model, x, y)
    plain = flat_grad(model.parameters())
    model.zero_grad(set_to_none=True)
    losses, z = losses_of(model, x, y)
    scaled_w = make(name, **kwargs).backward(losses, shared_params=model.shared(), representation=z,
                                             task_params=model.task_params(),
                                             last_shared_params=model.last_shared(), grad_scale=scale)
    assert torch.allclose(scaled_w, plain_w, rtol=1e-4, atol=1e-6)
    assert torch.allclose(flat_grad(model.parameters()) / scale, plain, rtol=1e-4, atol=1e-6)


def test_a_batch_without_any_task_is_a_counted_no_op() -> None:
    model, engine = TinyMTL(), make("pcgrad")
    assert engine.backward({}, shared_params=model.shared()) is None
    assert engine.skipped == {"empty": 1, "nonfinite": 0} and engine.steps == 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["ew", "pcgrad", "gradnorm"])
def test_a_non_finite_loss_raises_naming_the_task_or_is_skipped(name: str) -> None:
    model, (x, y) = TinyMTL(), batch()
    losses, z = losses_of(model, x, y)
    losses["b"] = losses["b"] * float("nan")
    kwargs = {"shared_params": model.shared(), "representation": z, "task_params": model.task_params(),
              "last_shared_params": model.last_shared()}
    with pytest.raises(NonFiniteLoss, match=r"\['b'\] at step 1"):
        make(name).backward(losses, **kwargs)
    skipping = make(name, nonfinite="skip")
    assert skipping.backward(losses, **kwargs) is None
    assert skipping.skipped["nonfinite"] == 1
    assert all(p.grad is None for p in model.parameters())  # nothing reached .grad
    assert torch.isfinite(step(skipping, model, x, y)).all() and skipping.steps == 1  # the next step goes on


def test_after_step_hands_the_same_batch_before_and_after_to_the_method() -> None:
    model, (x, y) = TinyMTL(), batch()
    engine = make("famo")
    assert engine.wants_losses_after_step
    step(engine, model, x, y)
    seen = []
    engine.method.after_step = lambda before, after, index: seen.append((before, after, index))
    engine.after_step({n: torch.tensor(0.5) for n in ["a", "c"]})  # task b lost on the way: left out
    (before, after, index), = seen
    assert index == [0, 2] and torch.equal(after, torch.tensor([0.5, 0.5]))
    losses, _ = losses_of(model, x, y)
    assert torch.allclose(before, torch.stack([losses["a"], losses["c"]]).detach())
    engine.after_step({"a": torch.tensor(1.0)})  # once per step
    assert len(seen) == 1


def test_engine_settings_for_a_loss_weighting_are_refused() -> None:
    with pytest.raises(ValueError, match="update_every"):
        make("uw", update_every=2)

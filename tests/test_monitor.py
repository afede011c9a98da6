"""The gradient-conflict monitor: its statistics, its gradients, and that it leaves training unchanged."""

import json

import pytest
import torch
from torch import nn
from torch.nn.functional import cosine_similarity

from graph_mtl.balancers import create
from graph_mtl.config import ConfigError, ModelConfig, TrainConfig, from_dict
from graph_mtl.engine.gradients import JacobianEngine
from graph_mtl.engine.monitor import ConflictMonitor, conflict_stats
from graph_mtl.engine.trainer import Trainer
from graph_mtl.run import build_loaders, build_model
from graph_mtl.tasks import task_losses


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def test_conflict_stats_matches_a_per_pair_computation():
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(5, 40, generator=gen) * torch.tensor([[1.0], [1e-3], [30.0], [1.0], [2.0]])
    J[3] = 0.0  # a task with no gradient
    stats = conflict_stats(J)
    t = J.size(0)
    for i in range(t):
        ni = J[i].double().norm()
        assert stats["norms"][i].item() == pytest.approx(ni.item(), rel=1e-6)
        for j in range(t):
            nj = J[j].double().norm()
            cos = cosine_similarity(J[i].double(), J[j].double(), dim=0).item()
            gms = (2 * ni * nj / (ni**2 + nj**2)).item() if ni > 0 and nj > 0 else 0.0
            assert stats["cos"][i, j].item() == pytest.approx(cos, abs=1e-9)
            assert stats["gms"][i, j].item() == pytest.approx(gms, abs=1e-9)
            assert bool(stats["conflict"][i, j]) == (cos < 0)
    assert torch.all(stats["cos"][3] == 0) and torch.all(stats["gms"][:, 3] == 0)
    assert stats["cos"][0, 0] == 1.0 and stats["gms"][2, 2] == 1.0


def test_conflict_stats_survive_tiny_and_huge_gradients():
    J = torch.tensor([[1e-30, 2e-30], [-1e30, -2e30], [3e-30, -1e-30]])
    stats = conflict_stats(J)
    assert torch.isfinite(stats["cos"]).all() and torch.isfinite(stats["gms"]).all()
    assert stats["cos"][0, 1].item() == pytest.approx(-1.0)
    assert stats["gms"][0, 1].item() == pytest.approx(0.0, abs=1e-12)


def _batch_and_model(dataset, seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(conv="gine", hidden=16, num_layers=2, dropout=0.0), dataset)
    batch = next(iter(build_loaders(dataset, batch_size=8, seed=0)["train"]))
    return model, batch


@pytest.mark.parametrize("batched", [None, True])  # True: the vmap product a GPU uses, here on the CPU
@pytest.mark.parametrize("mode", ["rep", "exact"])
def test_monitor_cosines_equal_hand_computed_gradients_and_leave_grad_alone(tiny_dataset, mode, batched):
    model, batch = _batch_and_model(tiny_dataset)
    out = model(batch)
    losses = task_losses(model.tasks, out.preds, batch)
    names = [t.name for t in tiny_dataset.tasks]
    monitor = ConflictMonitor(names, every=1, mode=mode)
    monitor.engine = JacobianEngine(batched=batched)
    record = monitor.observe(1, losses, model.shared_parameters(), out.node_repr)
    assert all(p.grad is None for p in model.parameters())
    inputs = [out.node_repr] if mode == "rep" else list(model.shared_parameters())
    present = [n for n in names if n in losses]
    grads = [_flat(g if g is not None else torch.zeros_like(x)
                   for g, x in zip(torch.autograd.grad(losses[n], inputs, retain_graph=True, allow_unused=True),
                                   inputs))
             for n in present]
    assert record["tasks"] == present and len(present) >= 3
    for i, gi in enumerate(grads):
        assert record["norms"][i] == pytest.approx(gi.norm().item(), rel=1e-5)
        for j, gj in enumerate(grads):
            assert record["cos"][i][j] == pytest.approx(cosine_similarity(gi, gj, dim=0).item(), abs=1e-5)
    # the graph is still usable by the step's backward
    sum(losses.values()).backward()
    assert any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("mode", ["rep", "exact"])
def test_monitor_does_not_change_a_pcgrad_step(tiny_dataset, tmp_path, mode):
    def step(monitor):
        torch.manual_seed(0)
        model = build_model(ModelConfig(conv="gine", hidden=16, num_layers=2, dropout=0.0), tiny_dataset)
        balancer = create("pcgrad", [t.name for t in tiny_dataset.tasks], seed=3)
        trainer = Trainer(model, balancer, TrainConfig(progress=False), tiny_dataset.splits["train"],
                          log=lambda _: None, monitor=monitor)
        batch = next(iter(build_loaders(tiny_dataset, batch_size=8, seed=0)["train"]))
        _, weights = trainer.train_step(batch)
        grads = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
        return grads, [p.detach().clone() for p in model.parameters()], weights

    names = [t.name for t in tiny_dataset.tasks]
    monitor = ConflictMonitor(names, every=1, mode=mode, out_dir=tmp_path)
    plain_grads, plain_params, plain_w = step(None)
    grads, params, w = step(monitor)
    assert torch.equal(plain_w, w)
    for a, b in zip(plain_grads, grads):
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(plain_params, params):
        assert torch.equal(a, b)
    (line,) = (tmp_path / "conflicts.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["step"] == 1 and record["weights"] == pytest.approx(dict(zip(names, w.tolist())))


def test_a_trainer_run_logs_one_line_per_step_and_a_summary(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(conv="gine", hidden=16, num_layers=2, dropout=0.0), tiny_dataset)
    names = [t.name for t in tiny_dataset.tasks]
    monitor = ConflictMonitor(names, every=1, out_dir=tmp_path)
    trainer = Trainer(model, create("ew", names), TrainConfig(epochs=2, progress=False), tiny_dataset.splits["train"],
                      out_dir=tmp_path, log=lambda _: None, monitor=monitor)
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    records = [json.loads(line) for line in (tmp_path / "conflicts.jsonl").read_text().splitlines()]
    assert len(records) == trainer.step == 8
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["epoch"] for r in records] == [1] * 4 + [2] * 4
    assert all(set(r["weights"]) == set(names) for r in records)
    assert all(r["seconds"] >= 0 and 0 <= r["conflict_rate"] <= 1 for r in records)
    summary = monitor.summary()
    assert summary["observations"] == 8 and summary["seconds"] > 0
    assert summary["conflict_fraction"] and all(0 <= f <= 1 for f in summary["conflict_fraction"].values())
    assert all(v is None or -1 <= v <= 1 for row in summary["mean_cos"] for v in row)
    assert set(summary["mean_norms"]) == set(names)
    json.dumps(summary)


def test_every_n_th_step_only(tiny_dataset):
    model, batch = _batch_and_model(tiny_dataset)
    out = model(batch)
    losses = task_losses(model.tasks, out.preds, batch)
    monitor = ConflictMonitor([t.name for t in tiny_dataset.tasks], every=3)
    observed = [s for s in range(1, 10) if monitor.observe(s, losses, None, out.node_repr) is not None]
    assert observed == [3, 6, 9] and monitor.observations == 3


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        z = torch.tanh(self.encoder(x))
        return z, self.head(z).squeeze(-1)


@pytest.mark.parametrize("mode", ["rep", "exact"])
def test_identical_tasks_agree_and_opposed_tasks_conflict(mode):
    torch.manual_seed(0)
    toy = _Toy()
    x, y = torch.randn(16, 4), torch.randn(16)
    monitor = ConflictMonitor(["a", "b", "same", "minus"], every=1, mode=mode)
    for step in range(1, 4):
        z, pred = toy(x)
        loss = ((pred - y) ** 2).mean()
        monitor.observe(step, {"a": loss, "same": 1.0 * loss, "minus": -loss}, toy.encoder.parameters(), z)
    summary = monitor.summary()
    cos = summary["mean_cos"]
    assert cos[0][2] == pytest.approx(1.0) and cos[0][3] == pytest.approx(-1.0)
    assert summary["conflict_fraction"]["a__same"] == 0.0
    assert summary["conflict_fraction"]["a__minus"] == 1.0
    assert cos[1][0] is None and "a__b" not in summary["conflict_fraction"]  # "b" never present
    assert summary["top_conflicts"][0]["fraction"] == 1.0
    assert summary["mean_gms"][0][3] == pytest.approx(1.0)  # equal magnitudes


def test_tensorboard_scalars_when_available(tmp_path, monkeypatch):
    calls = []

    class Writer:
        def add_scalar(self, tag, value, step):
            calls.append((tag, step))

        def close(self):
            calls.append(("closed", None))

    monkeypatch.setattr("graph_mtl.engine.monitor._summary_writer", lambda log_dir: Writer())
    toy = _Toy()
    z, pred = toy(torch.randn(8, 4))
    monitor = ConflictMonitor(["a", "b"], every=1, out_dir=tmp_path)
    monitor.observe(1, {"a": pred.mean(), "b": pred.pow(2).mean()}, None, z, weights=torch.tensor([0.5, 2.0]))
    monitor.close()
    tags = {tag for tag, _ in calls}
    assert {"norm/a", "norm/b", "cos/a__b", "weight/a", "closed"} <= tags


def test_bad_arguments_and_config_keys():
    with pytest.raises(ValueError, match="every"):
        ConflictMonitor(["a"], every=0)
    with pytest.raises(ValueError, match="mode"):
        ConflictMonitor(["a"], mode="fast")
    with pytest.raises(ConfigError, match="train.monitor_mode"):
        from_dict({"train": {"monitor_mode": "fast"}})
    with pytest.raises(ConfigError, match="train.monitor_every"):
        from_dict({"train": {"monitor_every": 0}})
    assert from_dict({"train": {"monitor_every": 5}}).train.monitor_every == 5

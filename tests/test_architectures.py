"""model.arch: soft sharing, cross-stitch, MMoE, CGC and PLE trunks with the step engine's balancers."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch_geometric.loader import DataLoader

from graph_mtl.cli import main
from graph_mtl.config import ConfigError, ModelConfig, TrainConfig, from_dict
from graph_mtl.engine.trainer import Trainer
from graph_mtl.inference import evaluate_split, load_run
from graph_mtl.models import GNNEncoder, MultiTaskGNN
from graph_mtl.models.sharing import CrossStitch, ExpertMixture, SoftSharing
from graph_mtl.run import build_balancer, build_loaders, build_model

ARCHS = ("hard", "soft", "cross_stitch", "mmoe", "cgc", "ple")
METHODS = (("ew", None), ("pcgrad", "exact"), ("pcgrad", "rep"), ("gradnorm", None))


def _model(dataset, arch: str, seed: int = 0, **model) -> MultiTaskGNN:
    torch.manual_seed(seed)
    settings = dict(conv="gine", hidden=8, num_layers=2, dropout=0.0, arch=arch, experts=2, task_experts=1)
    return build_model(ModelConfig(**{**settings, **model}), dataset)


def _trainer(dataset, arch: str, balancer: str = "ew", grad_mode: str | None = None, **train) -> Trainer:
    model = _model(dataset, arch)
    cfg = TrainConfig(epochs=1, progress=False, balancer=balancer, grad_mode=grad_mode, lr=3e-3, **train)
    return Trainer(model, build_balancer(cfg, [t.name for t in dataset.tasks]), cfg, dataset.splits["train"],
                   log=lambda _: None)


def _batch(dataset, size: int = 6):
    return next(iter(DataLoader(dataset.splits["train"][:size], batch_size=size)))


@pytest.mark.parametrize(("arch", "method"), list(itertools.product(ARCHS, METHODS)))
def test_every_arch_trains_with_loss_weightings_and_gradient_methods(tiny_dataset, arch, method):
    balancer, grad_mode = method
    if arch == "soft" and balancer != "ew":
        with pytest.raises(ValueError, match=f"model.arch: soft shares no parameters, so train.balancer "
                                             f"'{balancer}' has nothing to balance; use a loss weighting"):
            _trainer(tiny_dataset, arch, balancer, grad_mode)
        return
    trainer = _trainer(tiny_dataset, arch, balancer, grad_mode, max_steps_per_epoch=3)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    stats = trainer.train_epoch(build_loaders(tiny_dataset, batch_size=5, seed=0)["train"])
    after = list(trainer.model.parameters())
    assert trainer.step == 3 and all(torch.isfinite(p).all() for p in after)
    unchanged = [i for i, (a, b) in enumerate(zip(before, after)) if torch.equal(a, b)]
    assert not unchanged  # every column, expert, gate, stitch and head got a gradient
    assert ("train_regularizer" in stats) == (arch == "soft")


@pytest.mark.parametrize("arch", ARCHS[1:])
def test_training_lowers_the_loss(tiny_dataset, arch):
    trainer = _trainer(tiny_dataset, arch, "pcgrad", "rep" if arch != "soft" else None) if arch != "soft" \
        else _trainer(tiny_dataset, arch)
    loader = build_loaders(tiny_dataset, batch_size=10, seed=0)["train"]
    losses = [trainer.train_epoch(loader)["train_loss"] for _ in range(8)]
    assert losses[-1] < losses[0]


def test_hard_arch_is_the_shared_encoder_with_the_old_parameter_names(tiny_dataset):
    model = _model(tiny_dataset, "hard")
    assert type(model.encoder) is GNNEncoder and model.arch == "hard" and model.regularizer() is None
    assert {k.split(".")[0] for k in model.state_dict()} == {"encoder", "heads"}
    torch.manual_seed(0)
    direct = MultiTaskGNN(GNNEncoder(hidden=8, num_layers=2, conv="gine", node_encoder="atom", edge_encoder="bond",
                                     virtual_node=True, dropout=0.0), tiny_dataset.tasks, head_dropout=0.0)
    assert list(direct.state_dict()) == list(model.state_dict())
    model.load_state_dict(direct.state_dict())
    batch = _batch(tiny_dataset)
    out, ref = model(batch), direct(batch)
    assert all(torch.equal(out.preds[n], ref.preds[n]) for n in ref.preds)
    assert out.shared_repr is out.node_repr and list(model.shared_parameters()) == list(model.encoder.parameters())


def test_encoder_layer_api_reproduces_forward(tiny_dataset):
    torch.manual_seed(0)
    encoder = GNNEncoder(hidden=8, num_layers=3, conv="gine", node_encoder="atom", edge_encoder="bond",
                         virtual_node=True, jk="sum")
    batch = _batch(tiny_dataset)
    encoder.eval()  # batch norm: the same statistics both times
    expected = encoder(batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.num_graphs)
    h, vn = encoder.begin(batch.x, batch.num_graphs)
    outputs = []
    for layer in range(3):
        h, vn = encoder.layer(layer, h, vn, batch.edge_index, batch.edge_attr, batch.batch, batch.num_graphs)
        outputs.append(h)
    assert torch.equal(encoder.readout(outputs), expected)


@pytest.mark.parametrize("target", ["pairwise", "mean"])
def test_soft_penalty_is_the_hand_computation_and_its_gradient_reaches_grad(tiny_dataset, target):
    model = _model(tiny_dataset, "soft", soft_l2=0.3, soft_target=target)
    trunk = model.encoder
    assert isinstance(trunk, SoftSharing) and float(trunk.regularizer().detach()) == 0.0  # the columns start equal
    assert list(model.shared_parameters()) == [] and list(model.last_shared_parameters()) == []
    with torch.no_grad():
        for p in trunk.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    columns = [dict(c.named_parameters()) for c in trunk.columns]
    T = len(columns)
    expected = torch.zeros((), dtype=torch.float64)
    for name in columns[0]:
        thetas = [c[name].detach().double() for c in columns]
        if target == "pairwise":
            expected += sum(((thetas[i] - thetas[j]) ** 2).sum() for i in range(T) for j in range(i + 1, T))
        else:
            mean = sum(thetas) / T
            expected += sum(((t - mean) ** 2).sum() for t in thetas)
    assert torch.allclose(trunk.regularizer().double(), 0.3 * expected, rtol=1e-5)

    cfg = TrainConfig(epochs=1, progress=False, grad_clip=None, lr=1e-3)
    trainer = Trainer(model, build_balancer(cfg, model.task_names), cfg, tiny_dataset.splits["train"],
                      log=lambda _: None)
    batch = _batch(tiny_dataset)
    model.zero_grad()
    (sum(trainer._losses(model(batch).preds, batch).values()) + model.regularizer()).backward()
    wanted = [p.grad.clone() for p in model.parameters()]
    trainer.train_step(batch)
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(model.parameters(), wanted))


def test_cross_stitch_mixing_is_the_hand_computation(tiny_dataset):
    torch.manual_seed(1)
    trunk = CrossStitch(lambda: GNNEncoder(hidden=8, num_layers=2, conv="gine", node_encoder="atom",
                                           edge_encoder="bond"), 2)
    trunk.eval()
    assert torch.allclose(trunk.stitch_matrix(0), torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    batch = _batch(tiny_dataset)
    args = (batch.edge_index, batch.edge_attr, batch.batch, batch.num_graphs)
    with torch.no_grad():  # identity stitches: each column is its own encoder
        for layer in trunk.stitch:
            for t, row in enumerate(layer):
                row.copy_(torch.eye(2)[t])
    out = trunk(batch.x, *args)
    for t in range(2):
        assert torch.allclose(out.task_reprs[t], trunk.columns[t](batch.x, *args), atol=1e-6)
    A = [torch.tensor([[0.7, 0.3], [-0.2, 1.1]]), torch.tensor([[0.5, 0.5], [0.25, 0.8]])]
    with torch.no_grad():
        for layer, matrix in zip(trunk.stitch, A):
            for row, values in zip(layer, matrix):
                row.copy_(values)
    c1, c2 = trunk.columns
    h1, _ = c1.layer(0, c1.begin(batch.x, batch.num_graphs)[0], None, *args)
    h2, _ = c2.layer(0, c2.begin(batch.x, batch.num_graphs)[0], None, *args)
    m1, m2 = 0.7 * h1 + 0.3 * h2, -0.2 * h1 + 1.1 * h2
    g1, _ = c1.layer(1, m1, None, *args)
    g2, _ = c2.layer(1, m2, None, *args)
    out = trunk(batch.x, *args)
    assert torch.allclose(out.task_reprs[0], 0.5 * g1 + 0.5 * g2, atol=1e-6)
    assert torch.allclose(out.task_reprs[1], 0.25 * g1 + 0.8 * g2, atol=1e-6)
    assert torch.allclose(out.balancer_reprs[0], torch.stack([g1, g2]), atol=1e-6)


@pytest.mark.parametrize("arch", ["mmoe", "cgc", "ple"])
def test_gates_sum_to_one_per_node_or_per_graph(tiny_dataset, arch):
    model = _model(tiny_dataset, arch, num_layers=2, ple_levels=2)
    trunk = model.encoder
    assert isinstance(trunk, ExpertMixture) and len(trunk.levels) == (2 if arch == "ple" else 1)
    batch = _batch(tiny_dataset)
    model(batch)
    experts = 2 + (0 if arch == "mmoe" else 1)
    for task, gate in zip(model.tasks, trunk.last_gates):
        rows = batch.num_graphs if task.level == "graph" else batch.num_nodes
        assert gate.shape == (rows, experts) and (gate >= 0).all()
        assert torch.allclose(gate.sum(-1), torch.ones(rows))


@pytest.mark.parametrize(("arch", "levels", "task_experts"), [
    ("cross_stitch", 1, 1), ("mmoe", 1, 0), ("cgc", 1, 1), ("ple", 2, 1), ("ple", 3, 1), ("ple", 3, 0)])
def test_rep_mode_sees_every_path_from_the_shared_parameters(tiny_dataset, arch, levels, task_experts):
    """With equal weights (an aggregator summing the task gradients), the update through ``Z`` equals the exact
    gradient of the summed losses at the shared parameters: ``Z`` lies on every path to a loss."""
    model = _model(tiny_dataset, arch, num_layers=3, ple_levels=levels, task_experts=task_experts)
    model.eval()  # batch norm's running statistics would differ between the two forwards
    batch = _batch(tiny_dataset)
    shared = list(model.shared_parameters())
    model.zero_grad()
    losses = _losses(model, batch)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())  # no parameter is dead
    exact = [p.grad.clone() for p in shared]
    model.zero_grad()
    out = model(batch)
    losses = _losses(model, batch, out)
    Z = out.shared_repr
    grads = torch.autograd.grad(sum(losses.values()), Z, retain_graph=True)
    torch.autograd.backward(Z, grads, inputs=shared)
    assert all(torch.allclose(p.grad, g, atol=1e-5) for p, g in zip(shared, exact))
    own = {id(p) for t in model.task_names for p in model.task_parameters(t)}
    assert not own & {id(p) for p in shared}
    assert own | {id(p) for p in shared} == {id(p) for p in model.parameters()}


def _losses(model, batch, out=None):
    from graph_mtl.engine.trainer import task_losses

    return task_losses(model.tasks, (out or model(batch)).preds, batch, {})


@pytest.mark.parametrize(("override", "message"), [
    ({"arch": "moe"}, "model.arch: unknown value 'moe'"),
    ({"experts": 0}, "model.experts: must be >= 1"),
    ({"task_experts": -1}, "model.task_experts: must be >= 0"),
    ({"soft_target": "max"}, "model.soft_target: unknown value"),
    ({"arch": "ple", "ple_levels": 5}, "model.ple_levels: 5 levels need at least as many layers"),
    ({"arch": "cross_stitch", "jk": "cat"}, "model.jk: cross_stitch mixes every layer's output"),
    ({"arch": "mmoe", "grouped_heads": True}, "model.grouped_heads: grouped heads read one shared representation"),
])
def test_config_refuses_bad_sharing_keys(override, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({"model": override})


TINY = ["--set", "dataset=sbm", "--set", "data.limit=120", "--set", "conv=gin", "--set", "model.hidden=8",
        "--set", "model.num_layers=2", "--set", "epochs=1", "--set", "train.progress=false"]


def test_cli_trains_an_mmoe_run_whose_checkpoint_reloads(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--set", "model.arch=mmoe", "--set", "model.experts=2", "--set", "balancer=pcgrad",
                 "--set", "train.monitor_every=1", "--out", str(out)]) == 0
    assert (out / "conflicts.jsonl").is_file()
    results = json.loads((out / "results.json").read_text())
    run = load_run(out)
    assert run.model.arch == "mmoe"
    assert evaluate_split(run, "test")["per_task"] == results["test"]["per_task"]


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "model.arch=moe"], "model.arch: unknown value 'moe'"),
    (["--set", "model.arch=mmoe", "--set", "model.experts=0"], "model.experts: must be >= 1"),
    (["--set", "model.arch=soft", "--set", "balancer=pcgrad"], "model.arch: soft shares no parameters"),
    (["--set", "model.arch=soft", "--set", "train.monitor_every=1"], "train.monitor_every: model.arch soft shares"),
])
def test_cli_bad_sharing_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", *TINY, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())

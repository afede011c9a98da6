"""Inter-task affinity (graph_mtl/affinity.py): the lookahead measure on tasks built to agree or to oppose, a hand
computation of one step, the grouping rule, and the ``affinity`` command."""

import copy
import csv

import numpy as np
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from graph_mtl.affinity import suggest_groups, task_affinity
from graph_mtl.cli import main
from graph_mtl.config import ModelConfig
from graph_mtl.models import GNNEncoder, MultiTaskGNN
from graph_mtl.run import build_model
from graph_mtl.tasks import Task, task_losses

PNG = b"\x89PNG\r\n\x1a\n"
SBM = ["--set", "dataset=sbm", "--set", "data.limit=120", "--set", "conv=gin", "--set", "model.hidden=16",
       "--set", "model.num_layers=2"]


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread is faster, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _graphs(n: int = 24) -> list[Data]:
    """Small random graphs with float features; ``y[:, 0]`` a graph target (|y| >= 1), ``y[:, 1] = -y[:, 0]``."""
    gen = torch.Generator().manual_seed(0)
    graphs = []
    for _ in range(n):
        nodes = int(torch.randint(3, 7, (1,), generator=gen))
        x = torch.randn(nodes, 4, generator=gen)
        src = torch.arange(nodes)
        edge_index = torch.stack([torch.cat([src, (src + 1) % nodes]), torch.cat([(src + 1) % nodes, src])])
        target = x[:, 0].mean() + torch.sign(x[:, 0].mean())  # away from 0
        graphs.append(Data(x=x, edge_index=edge_index, y=torch.stack([target, -target]).view(1, 2)))
    return graphs


def _model(tasks: list[Task], dropout: float = 0.0) -> MultiTaskGNN:
    encoder = GNNEncoder(in_channels=4, hidden=8, num_layers=2, conv="gin", norm="none", dropout=dropout)
    return MultiTaskGNN(encoder, tasks, head_layers=1)


def _loader(shuffle: bool = False) -> DataLoader:
    return DataLoader(_graphs(), batch_size=8, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def test_identical_tasks_affect_each_other_as_themselves():
    torch.manual_seed(0)
    tasks = [Task("a", "graph", "regression", columns=(0,)), Task("b", "graph", "regression", columns=(0,))]
    model = _model(tasks)
    model.heads["b"].load_state_dict(model.heads["a"].state_dict())  # same head: the tasks are the same task
    result = task_affinity(model, _loader(shuffle=True), tasks, steps=4, lr=1e-2, lookahead_lr=1e-2, device="cpu")
    z = result.affinity
    assert result.names == ["a", "b"] and result.steps == 4 and (result.counts == 4).all()
    assert z[0, 0] > 0
    np.testing.assert_allclose(z, np.full((2, 2), z[0, 0]), rtol=1e-5)
    np.testing.assert_allclose(result.cosine, np.ones((2, 2)), atol=1e-6)
    assert suggest_groups(z, result.names) == [["a", "b"]]


def test_opposed_tasks_have_negative_affinity_and_cosine():
    torch.manual_seed(0)
    tasks = [Task("pos", "graph", "regression", columns=(0,)), Task("neg", "graph", "regression", columns=(1,))]
    model = _model(tasks)
    model.heads["neg"].load_state_dict(model.heads["pos"].state_dict())
    for p in model.heads.parameters():  # frozen, identical heads: one prediction p for targets y and -y
        p.requires_grad_(False)
    result = task_affinity(model, _loader(shuffle=True), tasks, steps=4, lr=1e-2, lookahead_lr=1e-2, device="cpu")
    z, cos = result.affinity, result.cosine
    assert z[0, 0] > 0 and z[1, 1] > 0
    assert z[0, 1] < 0 and z[1, 0] < 0
    assert cos[0, 1] < -0.5 and cos[0, 1] == cos[1, 0]
    assert suggest_groups(z, result.names) == [["pos"], ["neg"]]


def test_affinity_of_one_step_matches_a_hand_computation(tiny_dataset):
    torch.manual_seed(0)
    tasks = tiny_dataset.tasks
    model = build_model(ModelConfig(conv="gine", hidden=8, num_layers=2, dropout=0.0), tiny_dataset)
    original = copy.deepcopy(model)
    loader = DataLoader(tiny_dataset.splits["train"], batch_size=10)
    eta = 0.05
    result = task_affinity(model, loader, tasks, steps=1, lr=1e-2, lookahead_lr=eta, device="cpu")

    batch = next(iter(loader))
    reference = copy.deepcopy(original).train()
    losses = task_losses(tasks, reference(batch).preds, batch)
    names = [t.name for t in tasks]
    assert set(losses) == set(names)
    shared = list(reference.shared_parameters())
    grads = [torch.autograd.grad(losses[n], shared, retain_graph=True, allow_unused=True) for n in names]
    expected = np.zeros((len(names), len(names)))
    for i, g_i in enumerate(grads):
        stepped = copy.deepcopy(original).train()
        with torch.no_grad():
            for p, g in zip(stepped.shared_parameters(), g_i):
                if g is not None:
                    p -= eta * g
            after = task_losses(tasks, stepped(batch).preds, batch)
        for j, n in enumerate(names):
            expected[i, j] = 1 - after[n].item() / losses[n].item()
    np.testing.assert_allclose(result.affinity, expected, rtol=1e-4, atol=1e-6)
    assert (result.counts == 1).all()
    flat = torch.stack([torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                   for g, p in zip(g_i, shared)]) for g_i in grads]).double()
    unit = flat / flat.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(result.cosine, (unit @ unit.T).numpy(), atol=1e-6)
    # the model took one real training step; the lookahead passes left no trace, not even in the BatchNorm
    # running statistics (which saw the training pass only, as the reference's did)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), original.parameters()))
    buffers = dict(reference.named_buffers())
    assert any("running_mean" in name for name in buffers)
    for name, value in model.named_buffers():
        torch.testing.assert_close(value, buffers[name], msg=name)


def test_lookahead_does_not_touch_the_model_and_sees_the_same_dropout_mask(tiny_dataset):
    torch.manual_seed(0)
    model = build_model(ModelConfig(conv="gine", hidden=8, num_layers=2, dropout=0.5), tiny_dataset)
    original = copy.deepcopy(model)
    loader = DataLoader(tiny_dataset.splits["train"], batch_size=10)
    # no training step (Adam lr 0) and a zero lookahead step: every Z is exactly 0 only if theta_s is restored
    # and the before/after passes draw the same dropout mask
    result = task_affinity(model, loader, tiny_dataset.tasks, steps=2, lr=0.0, lookahead_lr=0.0, device="cpu")
    assert (result.counts == 2).all()
    assert np.array_equal(result.affinity, np.zeros_like(result.affinity))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), original.parameters()))


def test_a_task_absent_from_a_batch_is_left_out_of_that_step(tiny_dataset):
    torch.manual_seed(0)
    model = build_model(ModelConfig(conv="gin", hidden=8, num_layers=1, virtual_node=False), tiny_dataset)
    graphs = tiny_dataset.splits["train"]
    missing = [k for k, g in enumerate(graphs) if g.y_graph[0, 1].isnan()]  # no "ring" label
    assert 0 < len(missing) < len(graphs)
    result = task_affinity(model, DataLoader(graphs, batch_size=1), tiny_dataset.tasks, steps=len(graphs),
                           lr=1e-3, lookahead_lr=1e-2, device="cpu")
    ring = result.names.index("ring")
    expected = np.full((4, 4), len(graphs))
    expected[ring, :] = expected[:, ring] = len(graphs) - len(missing)
    assert np.array_equal(result.counts, expected) and np.array_equal(result.cosine_counts, expected)
    assert np.isfinite(result.affinity).all() and np.isfinite(result.cosine).all()


def test_suggest_groups_on_hand_made_matrices():
    names = ["a", "b", "c", "d", "e"]
    nan = np.nan
    z = np.array([
        # a     b     c     d     e    (rows: stepped, columns: measured; the diagonal is ignored)
        [9.0, 0.9, 0.3, -0.2, nan],
        [0.1, 9.0, -0.1, -0.2, nan],
        [0.3, -0.1, 9.0, 0.5, nan],
        [-0.2, -0.2, 0.3, 9.0, -0.3],
        [nan, nan, nan, -0.3, 9.0],
    ])
    # S(a,b) = 0.5 merges first, then S(c,d) = 0.4; {a,b} vs {c,d} averages -0.05 and e only has S(d,e) < 0
    assert suggest_groups(z, names) == [["a", "b"], ["c", "d"], ["e"]]
    # average linkage: z joins {x, y} while the mean of S(x,z) = 0.3 and S(y,z) stays > 0
    s = np.array([[0.0, 0.5, 0.3], [0.5, 0.0, -0.2], [0.3, -0.2, 0.0]])
    assert suggest_groups(s, ["x", "y", "z"]) == [["x", "y", "z"]]
    s[1, 2] = s[2, 1] = -0.4
    assert suggest_groups(s, ["x", "y", "z"]) == [["x", "y"], ["z"]]
    assert suggest_groups(-np.ones((2, 2)), ["p", "q"]) == [["p"], ["q"]]
    with pytest.raises(ValueError, match="shape"):
        suggest_groups(np.zeros((2, 2)), names)


def test_affinity_command_writes_the_matrices_plot_and_page(tmp_path, capsys):
    out = tmp_path / "aff"
    # a small lookahead step keeps the first-order regime, where Z_ii > 0
    assert main(["affinity", *SBM, "--steps", "2", "--lr", "1e-4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "suggested groups:" in printed and "neighbour_mean" in printed
    for name in ("affinity.csv", "cosine.csv", "affinity.png", "affinity.md"):
        assert (out / name).is_file(), name
    assert (out / "affinity.png").read_bytes().startswith(PNG)
    with (out / "affinity.csv").open() as handle:
        rows = list(csv.reader(handle))
    names = rows[0][1:]
    assert {"block", "cross_degree", "neighbour_mean"} <= set(names) and [r[0] for r in rows[1:]] == names
    matrix = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    assert np.isfinite(matrix).all() and (np.diag(matrix) > 0).all()
    page = (out / "affinity.md").read_text()
    assert "## Suggested groups" in page and "](affinity.png)" in page and "Gradient cosine" in page


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "0"], "--steps: must be >= 1"),
    (["--lr", "-1"], "--lr: the lookahead learning rate must be > 0"),
])
def test_affinity_bad_input_is_a_one_line_error(tmp_path, capsys, args, message):
    assert main(["affinity", *SBM, *args, "--out", str(tmp_path / "aff")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "aff").exists()

"""train.task_lr, train.weight_schedule, train.init_from and train.freeze_epochs (graph_mtl/engine/strategies.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from graph_mtl.balancers import create
from graph_mtl.config import ModelConfig, TrainConfig
from graph_mtl.data.base import MultiTaskDataset
from graph_mtl.engine.strategies import WeightSchedule, load_pretrained, parse_schedule
from graph_mtl.engine.trainer import Trainer
from graph_mtl.run import build_loaders, build_model

SCHEDULE = {"kind": "linear", "main_task": "size", "epochs": 4, "start": 0.0}


def _trainer(dataset, out_dir=None, epochs=2, hidden=16, **train) -> Trainer:
    torch.manual_seed(0)
    model = build_model(ModelConfig(conv="gine", hidden=hidden, num_layers=2, dropout=0.0), dataset)
    train.setdefault("lr", 3e-3)
    cfg = TrainConfig(epochs=epochs, progress=False, **train)
    return Trainer(model, create("ew", [t.name for t in dataset.tasks]), cfg, dataset.splits["train"],
                   out_dir=out_dir, seed=0, log=lambda _: None)


def _batch(dataset):
    return next(iter(build_loaders(dataset, batch_size=20, seed=0)["train"]))


def _renamed(dataset: MultiTaskDataset, old: str, new: str) -> MultiTaskDataset:
    tasks = [dataclasses.replace(t, name=new) if t.name == old else t for t in dataset.tasks]
    return MultiTaskDataset(dataset.name, tasks, dataset.splits, node_features=dataset.node_features)


# ---------------------------------------------------------------------------------------- task_lr

def test_a_task_lr_is_its_heads_param_group_and_one_adam_step_moves_it_by_that_lr(tiny_dataset):
    trainer = _trainer(tiny_dataset, lr=1e-3, task_lr={"ring": 0.05}, grad_clip=None)
    groups = trainer.optimizer.param_groups
    head = list(trainer.model.task_parameters("ring"))
    assert [g["lr"] for g in groups] == [1e-3, 0.05] and groups[1]["task"] == "ring"
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in head]
    assert sum(len(g["params"]) for g in groups) == len(list(trainer.model.parameters()))
    before = {id(p): p.detach().clone() for g in groups for p in g["params"]}
    trainer.train_step(_batch(tiny_dataset))
    assert all(p.grad is not None for p in trainer.model.shared_parameters())  # trained, not frozen
    for group in groups:
        moved = 0.0
        for p in group["params"]:
            if p.grad is None:
                continue
            plain = before[id(p)].clone().requires_grad_(True)  # a plain Adam on one step, by hand
            plain.grad = p.grad.clone()
            torch.optim.Adam([plain], lr=group["lr"]).step()
            assert torch.allclose(p.detach(), plain.detach(), atol=1e-7)
            moved = max(moved, (p.detach() - before[id(p)]).abs().max().item())
        # the first Adam step is lr * g / (|g| + eps): lr where |g| >> eps, at most lr anywhere
        assert moved == pytest.approx(group["lr"], rel=1e-3)


@pytest.mark.parametrize("scheduler", ["cosine", "step", "plateau"])
def test_schedulers_keep_the_ratio_of_task_lr_to_lr(tiny_dataset, scheduler):
    trainer = _trainer(tiny_dataset, epochs=6, lr=1e-3, task_lr={"ring": 4e-3}, scheduler=scheduler,
                       plateau_patience=0)
    for epoch in range(5):
        trainer._step_scheduler(-float(epoch))  # a monitor that never improves: plateau lowers every epoch
        base, ring = (g["lr"] for g in trainer.optimizer.param_groups)
        assert ring == pytest.approx(4 * base, rel=1e-9, abs=1e-15)
    assert trainer.optimizer.param_groups[0]["lr"] < 1e-3


# ---------------------------------------------------------------------------------------- weight schedule

@pytest.mark.parametrize("raw, expected", [
    ({"kind": "warmup", "main_task": "a", "epochs": 2, "start": 0.0}, [0.0, 0.0, 1.0, 1.0]),
    ({"kind": "warmup", "main_task": "a", "epochs": 1, "start": 0.3}, [0.3, 1.0, 1.0, 1.0]),
    ({"kind": "linear", "main_task": "a", "epochs": 4, "start": 0.0}, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]),
    ({"kind": "linear", "main_task": "a", "epochs": 2, "start": 0.5}, [0.5, 0.75, 1.0, 1.0]),
    ({"kind": "step", "main_task": "a", "epochs": 2, "start": 0.25}, [0.25, 0.25, 0.5, 0.5, 1.0, 1.0]),
    ({"kind": "step", "main_task": "a", "epochs": 1, "start": 0.1, "factor": 3}, [0.1, 0.3, 0.9, 1.0]),
])
def test_schedule_factors_are_the_hand_values(raw, expected):
    schedule = parse_schedule(raw, ["a", "b"])
    assert [schedule(e) for e in range(len(expected))] == pytest.approx(expected)
    losses = schedule.scale({"a": torch.tensor(2.0), "b": torch.tensor(2.0)}, 0)
    assert losses["a"].item() == 2.0 and losses["b"].item() == pytest.approx(2 * expected[0])


def test_with_ew_a_non_main_tasks_gradient_is_scaled_by_the_factor(tiny_dataset):
    batch = _batch(tiny_dataset)
    grads = {}
    for name, schedule in (("plain", None), ("scheduled", SCHEDULE)):
        trainer = _trainer(tiny_dataset, grad_clip=None, weight_schedule=schedule)
        trainer.epoch = 3  # two epochs completed: s = 2 / 4
        trainer.train_step(batch)
        grads[name] = {t.name: [p.grad.clone() for p in trainer.model.task_parameters(t.name)]
                       for t in tiny_dataset.tasks}
    assert WeightSchedule("linear", "size", 4)(2) == 0.5
    for task in tiny_dataset.tasks:
        s = 1.0 if task.name == "size" else 0.5
        for plain, scheduled in zip(grads["plain"][task.name], grads["scheduled"][task.name]):
            assert torch.allclose(scheduled, s * plain, atol=1e-7), task.name


def test_the_factor_is_a_metrics_column(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, tmp_path, epochs=3, weight_schedule=SCHEDULE, max_steps_per_epoch=1)
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    assert [row["loss_factor"] for row in trainer.history] == [0.0, 0.25, 0.5]
    assert "loss_factor" in (tmp_path / "metrics.csv").read_text().splitlines()[0]


# ---------------------------------------------------------------------------------------- init_from, freeze

@pytest.fixture()
def pretrained(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, tmp_path / "pre", epochs=2, max_steps_per_epoch=2)
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    return tmp_path / "pre", torch.load(tmp_path / "pre" / "best.pt", weights_only=False)["model"]


def test_init_from_copies_the_encoder_and_matching_heads_and_keeps_new_heads_fresh(tiny_dataset, pretrained):
    run, saved = pretrained
    dataset = _renamed(tiny_dataset, "ring", "ring2")
    torch.manual_seed(1)
    model = build_model(ModelConfig(conv="gine", hidden=16, num_layers=2, dropout=0.0), dataset)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    line = load_pretrained(model, run)
    assert line == f"encoder from {run}; heads loaded: size, heavy, degree; new: ring2"
    state = model.state_dict()
    encoder = [k for k in state if k.startswith("encoder.")]
    assert encoder and all(torch.equal(state[k], saved[k]) for k in encoder)
    for k in (k for k in state if k.startswith("heads.size.")):
        assert torch.equal(state[k], saved[k])
    new = [k for k in state if k.startswith("heads.ring2.")]
    assert new and all(torch.equal(state[k], fresh[k]) for k in new)
    assert not torch.equal(state[new[0]], saved[new[0].replace("ring2", "ring")])


def test_init_from_refuses_another_encoder_naming_the_weight_and_both_shapes(tiny_dataset, pretrained):
    run, _ = pretrained
    model = build_model(ModelConfig(conv="gine", hidden=8, num_layers=2), tiny_dataset)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^train\.init_from: 'encoder\.\S+' is \(\d+, 16\) in .* and \(\d+, 8\) here"):
        load_pretrained(model, run)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(FileNotFoundError, match="^train.init_from: no run folder"):
        load_pretrained(model, run / "missing.pt")


def test_freeze_epochs_hold_the_shared_parameters_then_train_them(tiny_dataset):
    trainer = _trainer(tiny_dataset, epochs=2, freeze_epochs=2, weight_decay=0.1, max_steps_per_epoch=2)
    shared = list(trainer.model.shared_parameters())
    start = [p.detach().clone() for p in shared]
    head = [p.detach().clone() for p in trainer.model.task_parameters("size")]
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    assert all(torch.equal(p, s) for p, s in zip(shared, start))
    assert not all(torch.equal(p, s) for p, s in zip(trainer.model.task_parameters("size"), head))
    assert not any(p in trainer.optimizer.state for p in shared)  # no Adam moments while frozen
    trainer.cfg.epochs = 3
    trainer.fit(loaders["train"], loaders["valid"])
    assert not all(torch.equal(p, s) for p, s in zip(shared, start))
    steps = {int(trainer.optimizer.state[p]["step"]) for p in shared if p in trainer.optimizer.state}
    assert steps == {2}  # Adam's bias correction counts from the unfreezing: 2 steps in epoch 3


# ---------------------------------------------------------------------------------------- exact resume

def test_resume_with_task_lr_schedule_and_freeze_is_exact(tiny_dataset, tmp_path):
    # no scheduler: the 2-epoch run's cosine or step schedule is another one than the 4-epoch run's
    train = {"task_lr": {"ring": 1e-2, "heavy": 3e-4}, "weight_schedule": SCHEDULE, "freeze_epochs": 1}
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    full = _trainer(tiny_dataset, tmp_path / "full", epochs=4, **train)
    full.fit(loaders["train"], loaders["valid"])

    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    part = _trainer(tiny_dataset, tmp_path / "part", epochs=2, **train)
    part.fit(loaders["train"], loaders["valid"])
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    resumed = _trainer(tiny_dataset, tmp_path / "part", epochs=4, **train)
    resumed.fit(loaders["train"], loaders["valid"], resume=tmp_path / "part" / "last.pt")

    assert resumed.epoch == full.epoch == 4 and len(resumed.optimizer.param_groups) == 3
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name  # as the other resume tests
    assert [r["loss_factor"] for r in resumed.history] == [r["loss_factor"] for r in full.history]


def test_the_cli_fine_tunes_from_a_run_folder_and_logs_what_it_loaded(tmp_path, capsys):
    from graph_mtl.cli import main

    tiny = [a for s in ["dataset=sbm", "data.limit=120", "conv=gin", "model.hidden=16", "model.num_layers=2",
                        "epochs=2", "train.progress=false"] for a in ("--set", s)]
    assert main(["train", *tiny, "--out", str(tmp_path / "pre")]) == 0
    capsys.readouterr()
    assert main(["train", *tiny, "--set", "train.freeze_epochs=1", "--init-from", str(tmp_path / "pre"),
                 "--out", str(tmp_path / "ft")]) == 0
    out = capsys.readouterr().out
    assert f"encoder from {tmp_path / 'pre'}; heads loaded: " in out and "; new: -" in out
    assert "init_from: " + str(tmp_path / "pre") in (tmp_path / "ft" / "config.yaml").read_text()


# ---------------------------------------------------------------------------------------- with model.arch

def test_with_mmoe_a_task_lr_group_holds_the_tasks_gate_and_a_pretrained_trunk_loads_whole(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    model_cfg = ModelConfig(conv="gine", hidden=16, num_layers=2, dropout=0.0, arch="mmoe", experts=2)
    model = build_model(model_cfg, tiny_dataset)
    trainer = Trainer(model, create("ew", [t.name for t in tiny_dataset.tasks]),
                      TrainConfig(epochs=1, progress=False, task_lr={"ring": 0.05}), tiny_dataset.splits["train"],
                      out_dir=tmp_path / "pre", seed=0, log=lambda _: None)
    own = {id(p) for p in model.task_parameters("ring")}
    group = next(g for g in trainer.optimizer.param_groups if g.get("task") == "ring")
    assert {id(p) for p in group["params"]} == own
    assert own - {id(p) for p in model.heads.parameters()}  # beyond its head: its gate
    assert not own & {id(p) for p in model.shared_parameters()}  # and none of the shared experts
    loaders = build_loaders(tiny_dataset, batch_size=20, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    torch.manual_seed(1)
    fresh = build_model(model_cfg, tiny_dataset)
    load_pretrained(fresh, tmp_path / "pre")
    for (name, value), loaded in zip(model.state_dict().items(), fresh.state_dict().values()):
        if name.startswith("encoder."):
            assert torch.equal(value, loaded), name

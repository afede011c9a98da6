import csv
import json
import math

import pytest
import torch

from graph_mtl.balancers import BALANCERS, create
from graph_mtl.config import ModelConfig, TrainConfig
from graph_mtl.engine.step import NonFiniteLoss, StepEngine
from graph_mtl.engine.trainer import Trainer
from graph_mtl.run import build_balancer, build_loaders, build_model


def _trainer(dataset, out_dir, epochs, seed=0, balancer="ew", **train):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(conv="gine", hidden=16, num_layers=2, dropout=0.0), dataset)
    train.setdefault("lr", 3e-3)
    cfg = TrainConfig(epochs=epochs, progress=False, **train)
    return Trainer(model, create(balancer, [t.name for t in dataset.tasks]), cfg, dataset.splits["train"],
                   out_dir=out_dir, seed=seed, log=lambda _: None)


def test_fit_lowers_the_training_loss_and_writes_run_files(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, tmp_path, epochs=15)
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    losses = [row["train_loss"] for row in trainer.history]
    assert losses[-1] < 0.7 * losses[0]
    for name in ("best.pt", "last.pt", "metrics.csv", "steps.csv"):
        assert (tmp_path / name).is_file()
    rows = list(csv.DictReader((tmp_path / "steps.csv").open()))
    assert len(rows) == trainer.step == 15 * 4
    assert float(rows[0]["weight/size"]) == 1.0
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "valid/size" in header and "weight/ring" in header
    result = trainer.test({"test": loaders["test"]})["test"]
    assert set(result["per_task"]) == {t.name for t in tiny_dataset.tasks}
    assert json.dumps(result, default=float)


def test_resume_gives_the_same_weights_as_an_unbroken_run(tiny_dataset, tmp_path):
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    full = _trainer(tiny_dataset, tmp_path / "full", epochs=4)
    full.fit(loaders["train"], loaders["valid"])

    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    part = _trainer(tiny_dataset, tmp_path / "part", epochs=2)
    part.fit(loaders["train"], loaders["valid"])
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    resumed = _trainer(tiny_dataset, tmp_path / "part", epochs=4, seed=0)
    resumed.fit(loaders["train"], loaders["valid"], resume=tmp_path / "part" / "last.pt")

    assert resumed.epoch == full.epoch == 4
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_early_stopping_stops_when_the_monitor_stalls(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, None, epochs=50, patience=2, lr=1e-12, monitor="ring")
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    assert trainer.epoch < 50
    assert trainer.epoch - trainer.best_epoch == 2


def test_fixed_weights_scale_the_loss(tiny_dataset):
    trainer = _trainer(tiny_dataset, None, epochs=1)
    trainer.engine = StepEngine(create("fixed", [t.name for t in tiny_dataset.tasks], weights={"size": 0.0}))
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    _, weights = trainer.train_step(next(iter(loaders["train"])))
    assert weights[0] == 0.0 and weights[1] == 1.0
    head = list(trainer.model.task_parameters("size"))
    assert all(p.grad is None or torch.all(p.grad == 0) for p in head)


@pytest.mark.parametrize("monitor", ["loss", "size"])
def test_other_monitors(tiny_dataset, monitor):
    trainer = _trainer(tiny_dataset, None, epochs=2, monitor=monitor)
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    assert trainer.best_epoch >= 1


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_trains_in_the_trainer_and_resumes(name, tiny_dataset, tmp_path):
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    trainer = _trainer(tiny_dataset, tmp_path, epochs=2, balancer=name)
    trainer.fit(loaders["train"], loaders["valid"])
    assert all(math.isfinite(row["train_loss"]) for row in trainer.history)
    weights = [row[f"weight/{t.name}"] for row in trainer.history for t in tiny_dataset.tasks]
    assert all(math.isfinite(w) for w in weights)
    resumed = _trainer(tiny_dataset, tmp_path, epochs=3, balancer=name)
    resumed.fit(loaders["train"], loaders["valid"], resume=tmp_path / "last.pt")
    assert resumed.epoch == 3


@pytest.mark.parametrize(
    "train, message",
    [
        (dict(balancer="ew", grad_mode="rep"), "train.grad_mode: ew weights losses"),
        (dict(balancer="pcgrad", balancer_args={"grad_mode": "exact"}),
         "train.balancer_args.grad_mode: a setting of the step engine, not of the method; set train.grad_mode"),
        (dict(balancer="pcgrad", balancer_args={"c": 1}), "train.balancer_args.c: not an argument of 'pcgrad'"),
        (dict(balancer="cagrad", balancer_args={"c": -1}), "train.balancer_args.c: expected a number >= 0"),
        (dict(balancer="pcgrad", update_every=0), "train.update_every: expected an int >= 1"),
    ],
)
def test_grad_mode_keys_are_checked(train, message):
    with pytest.raises(ValueError, match=message):
        build_balancer(TrainConfig(**train), ["a", "b"])


def test_grad_mode_and_update_every_reach_gradient_balancers():
    balancer = build_balancer(TrainConfig(balancer="pcgrad", grad_mode="rep", update_every=3), ["a", "b"])
    assert balancer.grad_mode == "rep" and balancer.update_every == 3


def test_a_nan_loss_stops_naming_the_task_or_is_skipped_and_counted(tiny_dataset, tmp_path):
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    trainer = _trainer(tiny_dataset, None, epochs=1)
    name = tiny_dataset.tasks[0].name
    real = trainer._losses
    trainer._losses = lambda preds, batch: {**real(preds, batch), name: torch.tensor(float("nan"))}
    with pytest.raises(NonFiniteLoss, match=f"'{name}'"):
        trainer.fit(loaders["train"], loaders["valid"])
    skipping = _trainer(tiny_dataset, None, epochs=1, nonfinite="skip")
    before = [p.detach().clone() for p in skipping.model.parameters()]
    skipping._losses = trainer._losses
    record = skipping.fit(loaders["train"], loaders["valid"])
    assert record["skipped_steps"] == len(loaders["train"]) and skipping.step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, skipping.model.parameters()))


def test_famo_re_evaluates_the_step_batch_after_the_optimizer_step(tiny_dataset):
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    batch = next(iter(loaders["train"]))
    lazy = _trainer(tiny_dataset, None, epochs=1, balancer="famo")
    lazy.engine.method.estimate = "next_batch"
    lazy.train_step(batch)
    trainer = _trainer(tiny_dataset, None, epochs=1, balancer="famo")
    seen = []
    trainer.engine.method.after_step = lambda before, after, index: seen.append((before, after))
    losses, _ = trainer.train_step(batch)
    (before, after), = seen
    assert torch.allclose(before, torch.stack([v.detach().float() for v in losses.values()]))
    assert not torch.equal(before, after)  # the same batch, after the weights moved
    # the extra forward changed nothing else: same weights and batch-norm statistics as without it
    for a, b in zip(lazy.model.state_dict().values(), trainer.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_checkpoints_the_scaler(amp, tiny_dataset, tmp_path):
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    trainer = _trainer(tiny_dataset, tmp_path, epochs=2, balancer="pcgrad", amp=amp)
    trainer.fit(loaders["train"], loaders["valid"])
    assert all(math.isfinite(row["train_loss"]) for row in trainer.history)
    assert trainer.grad_scaler.is_enabled() == (amp == "fp16")
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    if amp == "fp16":
        assert state["grad_scaler"]["scale"] == trainer.grad_scaler.get_scale()

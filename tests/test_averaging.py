"""train.ema_decay: the moving average of the weights against a plain reference, what is evaluated and saved,
exact resume, and bad values."""

import pytest
import torch
from test_trainer import _trainer
from torch import nn

from graph_mtl.config import ConfigError, from_dict
from graph_mtl.engine.averaging import WARMUP_STEPS, WeightAverage
from graph_mtl.engine.checkpoint import load_checkpoint
from graph_mtl.run import build_loaders


def test_the_average_follows_its_formula_with_warm_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    average = WeightAverage(model, decay=0.9)
    reference = {k: v.clone().double() for k, v in model.state_dict().items() if v.is_floating_point()}
    no_warm_up = {k: v.clone() for k, v in reference.items()}
    for k in range(1, 31):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(5, 3))  # moves the batch-norm running statistics (averaged too)
        average.update(model)
        d = min(0.9, k / (k + WARMUP_STEPS))
        for key, value in model.state_dict().items():
            if key in reference:
                reference[key] = d * reference[key] + (1 - d) * value.double()
                no_warm_up[key] = 0.9 * no_warm_up[key] + 0.1 * value.double()
    for key, value in reference.items():
        assert torch.allclose(average.average[key].double(), value, atol=1e-5), key
    assert average.average["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"] == 30
    # the warm-up is exercised: a constant decay of 0.9 from the first step gives another average
    assert not torch.allclose(average.average["0.weight"].double(), no_warm_up["0.weight"], atol=1e-3)


def test_swapped_in_evaluates_the_average_and_gives_the_weights_back():
    model = nn.Linear(2, 2)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    own = model.weight.detach().clone()
    average.update(model)
    with average.swapped_in(model):
        assert torch.equal(model.weight, average.average["weight"])
        assert not torch.equal(model.weight, own)
    assert torch.equal(model.weight, own)


def test_the_trainer_selects_and_saves_the_averaged_weights(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, tmp_path, epochs=3, ema_decay=0.9)
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    last = load_checkpoint(tmp_path / "last.pt", "cpu")
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(last["training_model"][key], value), key
        assert torch.equal(last["model"][key], trainer.average.average[key]), key
    first = next(iter(last["model"]))
    assert not torch.equal(last["model"][first], last["training_model"][first])
    # the validation score of the last epoch is the averaged weights' score
    with trainer.evaluated_weights():
        valid = trainer.evaluate(loaders["valid"])
    assert valid["loss"] == pytest.approx(trainer.history[-1]["valid_loss"], rel=1e-6)
    assert trainer.evaluate(loaders["valid"])["loss"] != pytest.approx(valid["loss"], rel=1e-6)


def test_resume_continues_the_average_exactly(tiny_dataset, tmp_path):
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    full = _trainer(tiny_dataset, tmp_path / "full", epochs=4, ema_decay=0.8)
    full.fit(loaders["train"], loaders["valid"])
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    _trainer(tiny_dataset, tmp_path / "part", epochs=2, ema_decay=0.8).fit(loaders["train"], loaders["valid"])
    loaders = build_loaders(tiny_dataset, batch_size=5, seed=0)
    resumed = _trainer(tiny_dataset, tmp_path / "part", epochs=4, ema_decay=0.8)
    resumed.fit(loaders["train"], loaders["valid"], resume=tmp_path / "part" / "last.pt")
    assert resumed.average.updates == full.average.updates == full.step
    for key, value in full.average.average.items():
        assert torch.allclose(value.float(), resumed.average.average[key].float(), atol=1e-6), key
    assert [r["valid_loss"] for r in resumed.history] == pytest.approx([r["valid_loss"] for r in full.history])


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1])
def test_a_decay_outside_zero_one_is_a_one_line_error(decay):
    with pytest.raises(ConfigError, match=r"train.ema_decay: must be in \(0, 1\)"):
        from_dict({"train": {"ema_decay": decay}})

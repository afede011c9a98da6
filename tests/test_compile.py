"""``train.compile``: the encoder compiled in place trains as the eager model does, checkpoints the same keys,
resumes, and a platform where compiling fails gets one line naming the key."""

from __future__ import annotations

import shutil

import pytest
import torch

from graph_mtl.balancers import create
from graph_mtl.config import ModelConfig, TrainConfig, load_config
from graph_mtl.engine.checkpoint import load_checkpoint
from graph_mtl.engine.trainer import Trainer
from graph_mtl.run import build_loaders, build_model


def _fit(dataset, out_dir, compile: bool, epochs: int = 2, resume=None) -> Trainer:
    """A short pcgrad run (its per-task backward passes retain the compiled graph), plain SGD: the float noise of
    compiled kernels stays at its own size over a few steps (Adam's normalised steps would amplify it)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(conv="gine", hidden=16, num_layers=2, dropout=0.0), dataset)
    cfg = TrainConfig(epochs=epochs, progress=False, optimizer="sgd", lr=1e-3, max_steps_per_epoch=2,
                      compile=compile)
    trainer = Trainer(model, create("pcgrad", [t.name for t in dataset.tasks], seed=0), cfg,
                      dataset.splits["train"], out_dir=out_dir, log=lambda _: None)
    loaders = build_loaders(dataset, batch_size=5, seed=0)
    trainer.fit(loaders["train"], loaders["valid"], resume=resume)
    return trainer


@pytest.mark.slow  # two compilations: about a minute on a busy 2-core CPU
@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="torch.compile on the CPU needs a C++ compiler; none is on PATH")
def test_compiled_training_gives_the_eager_losses_keys_and_resumes(tiny_dataset, tmp_path):
    eager = _fit(tiny_dataset, tmp_path / "eager", compile=False, epochs=3)
    compiled = _fit(tiny_dataset, tmp_path / "compiled", compile=True)
    for a, b in zip(eager.history, compiled.history):
        for key in ("train_loss", "valid_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    for name in ("best.pt", "last.pt"):  # no "_orig_mod." prefixes: predict and init_from read them as eager ones
        assert list(load_checkpoint(tmp_path / "compiled" / name, "cpu")["model"]) == \
            list(load_checkpoint(tmp_path / "eager" / name, "cpu")["model"])
    resumed = _fit(tiny_dataset, tmp_path / "compiled", compile=True, epochs=3,
                   resume=tmp_path / "compiled" / "last.pt")
    assert resumed.epoch == 3
    assert resumed.history[-1]["train_loss"] == pytest.approx(eager.history[-1]["train_loss"], rel=1e-4)


def test_compile_is_a_boolean_key_off_by_default():
    assert load_config().train.compile is False
    assert load_config(overrides=["train.compile=true"]).train.compile is True
    with pytest.raises(ValueError, match="train.compile: expected bool"):
        load_config(overrides=["train.compile=yes please"])


def test_a_platform_that_cannot_compile_gets_one_line_naming_the_key(tiny_dataset, tmp_path, monkeypatch):
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/no/such/c++",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    torch._dynamo.reset()
    try:
        with pytest.raises(RuntimeError, match=r"^train\.compile: torch\.compile failed on this platform .*; set "
                                               r"train\.compile: false") as error:
            _fit(tiny_dataset, tmp_path, compile=True, epochs=1)
    finally:
        torch._dynamo.reset()
    assert "\n" not in str(error.value)

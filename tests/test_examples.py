"""The examples the README points to run as written (few steps, small data)."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_own_loop_example_trains_with_pcgrad(tmp_path):
    history = _load("own_loop").main(steps=30, limit=150, cache_dir=tmp_path)
    assert len(history) == 30
    assert sum(history[-5:]) < sum(history[:5])

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


def _readme_library_section() -> tuple[str, str]:
    """The README's library snippet and the output it says it prints."""
    text = (EXAMPLES.parent / "README.md").read_text().split("## As a library", 1)[1]
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    printed = text.split("prints (CPU, run as a test):\n\n```\n", 1)[1].split("```", 1)[0]
    return code, printed


def test_readme_library_snippet_runs_as_written_and_prints_its_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRAPH_MTL_CACHE", str(tmp_path))
    code, printed = _readme_library_section()
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out == printed


def test_the_readme_config_block_is_every_default():
    """The README's YAML block of the config holds every key with its default value."""
    import yaml

    from graph_mtl.config import Config

    text = (EXAMPLES.parent / "README.md").read_text()
    block = text.split("Config (YAML, every key optional", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == Config().to_dict()

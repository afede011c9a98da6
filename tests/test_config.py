import pytest

from graph_mtl.config import ConfigError, load_config


def _load(tmp_path, text, overrides=()):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, list(overrides))


def test_defaults_and_overrides(tmp_path):
    cfg = _load(tmp_path, "train:\n  epochs: 3\n", ["balancer=pcgrad", "model.hidden=32", "train.lr=1e-2"])
    assert cfg.train.epochs == 3 and cfg.train.balancer == "pcgrad"
    assert cfg.model.hidden == 32 and cfg.train.lr == pytest.approx(0.01)
    assert cfg.data.name == "embedded"


def test_ints_are_accepted_for_floats_and_null_for_optionals(tmp_path):
    cfg = _load(tmp_path, "train:\n  lr: 1\n  grad_clip: null\n")
    assert cfg.train.lr == 1.0 and cfg.train.grad_clip is None


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("train:\n  lrr: 0.1\n", [], "unknown key 'train.lrr'; did you mean 'train.lr'"),
        ("trian:\n  lr: 0.1\n", [], "unknown key 'trian'; did you mean 'train'"),
        ("train:\n  epochs: many\n", [], "train.epochs: expected int"),
        ("train:\n  epochs: true\n", [], "train.epochs: expected int"),
        ("train:\n  optimizer: adagrad\n", [], "train.optimizer: unknown value 'adagrad'"),
        ("model:\n  hidden: 0\n", [], "model.hidden: must be >= 1"),
        ("train:\n  lr: -1\n", [], "train.lr: must be > 0"),
        ("model: 3\n", [], "model: must be a mapping"),
        ("a: [\n", [], "not valid YAML at line"),
        ("", ["train.epochs"], "--set: 'train.epochs' must look like key=value"),
        ("", ["device=tpu"], "device: unknown value 'tpu'"),
    ],
)
def test_bad_configs_are_one_line_errors_naming_the_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")

"""Every bad input gets exit code 2, one line that names the field, no traceback, and leaves an existing run
folder byte for byte as it was (config keys, values and types, YAML shape, flags, CSV content, checkpoints,
output paths). All in-process and before any training, so the whole suite takes seconds."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest
import torch

from graph_mtl.cli import main

SMILES = [
    "CCO", "CCN", "CCCl", "c1ccccc1", "c1ccccc1O", "CC(=O)O", "CC(=O)N", "CCOC", "C1CCCCC1", "c1ccncc1",
    "CC(C)O", "OCCO", "CCCC", "CCC(=O)O", "c1ccc(Cl)cc1", "NCCN", "CC#N", "C=CC", "COC(=O)C", "c1ccoc1",
]
TINY = ["data.split=random", "epochs=1", "model.hidden=16", "model.num_layers=2", "data.batch_size=8",
        "train.progress=false"]


def _csv(rows: list[str], header: str = "smiles,size,ring") -> str:
    return header + "\n" + "".join(r + "\n" for r in rows)


GOOD_ROWS = [f"{s},{len(s)},{int('1' in s)}" for s in SMILES]
# CSV files by name: each a mistake in the file's content (the good one is "good")
CSVS: dict[str, str | bytes] = {
    "good": _csv(GOOD_ROWS),
    "empty": "",
    "no_smiles": _csv(GOOD_ROWS, header="mol,size,ring"),
    "text_label": _csv([*GOOD_ROWS[:-1], "CCO,big,1"]),
    "inf_label": _csv([*GOOD_ROWS[:-1], "CCO,inf,1"]),
    "huge_label": _csv([*GOOD_ROWS[:-1], "CCO,1e300,1"]),
    "field_count": _csv([*GOOD_ROWS[:-1], "CCO,1,1,1"]),
    "bad_smiles": _csv([f"xyz{i}(,{i},1" for i in range(20)]),
    "latin1": _csv(GOOD_ROWS).replace("smiles", "smilés").encode("latin-1"),
    "empty_column": _csv([f"{s},,{int('1' in s)}" for s in SMILES]),
    "no_label": _csv(SMILES, header="smiles"),
    "empty_header_name": _csv(GOOD_ROWS, header="smiles,,ring"),
    "repeated_column": _csv(GOOD_ROWS, header="smiles,size,size"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """The CSV files, a completed tiny run, damaged and foreign checkpoints, config files."""
    root = tmp_path_factory.mktemp("inputs")
    for name, text in CSVS.items():
        path = root / f"{name}.csv"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    good = str(root / "good.csv")
    base = [a for s in ["dataset=csv", f"csv={good}", *TINY] for a in ("--set", s)]
    assert main(["train", *base, "--out", str(root / "run")]) == 0
    assert main(["train", *base, "--set", "model.hidden=8", "--out", str(root / "other_model")]) == 0
    assert main(["train", *base, "--set", "data.label_columns=[size]", "--out", str(root / "other_tasks")]) == 0
    last = (root / "run" / "last.pt").read_bytes()
    (root / "truncated.pt").write_bytes(last[: len(last) // 2])
    (root / "empty.pt").write_bytes(b"")
    (root / "random.pt").write_bytes(os.urandom(4096))
    (root / "text.pt").write_text("not a checkpoint\n")
    torch.save([1, 2, 3], root / "list.pt")
    torch.save({"model": _Evil()}, root / "evil.pt")
    (root / "a_file").write_text("x")
    configs = {
        "syntax.yaml": "train:\n  lr: [1\n", "list.yaml": "- 1\n- 2\n", "scalar.yaml": "3\n",
        "section_list.yaml": "train: [1, 2]\n", "unknown_section.yaml": "optim:\n  lr: 1\n",
        "nested_type.yaml": "model:\n  pool: [mean]\n",
        "plan.yaml": "base:\n  data: {batch_size: 1}\nrows: []\n", "bad_value.yaml": "train:\n  lr: -1\n",
    }
    for name, text in configs.items():
        (root / name).write_text(text)
    (root / "latin1.yaml").write_bytes("train:\n  optimizer: adàm\n".encode("latin-1"))
    (root / "config_dir").mkdir()
    return root


class _Evil:
    def __reduce__(self):
        return (print, ("a checkpoint that runs code",))


# (id, argv after "train" with {root} for the inputs' folder, text the error line must hold, extra flags)
# the run is always given --out RUN, a copy of a completed run; "fresh" cases get --overwrite so that the mistake
# found after the config is the one answered (and --overwrite must not have removed anything yet)
CONFIG_CASES = [
    ("unknown_key", ["--set", "train.lrr=1"], "train.lrr"),
    ("unknown_model_key", ["--set", "model.hiden=3"], "model.hiden"),
    ("unknown_data_key", ["--set", "data.nmae=x"], "data.nmae"),
    ("unknown_top_key", ["--set", "nope=1"], "nope"),
    ("epochs_0", ["--set", "epochs=0"], "train.epochs"),
    ("epochs_negative", ["--set", "epochs=-1"], "train.epochs"),
    ("epochs_text", ["--set", "epochs=abc"], "train.epochs"),
    ("epochs_float", ["--set", "epochs=1.5"], "train.epochs"),
    ("epochs_bool", ["--set", "epochs=true"], "train.epochs"),
    ("lr_0", ["--set", "train.lr=0"], "train.lr"),
    ("lr_negative", ["--set", "train.lr=-1"], "train.lr"),
    ("lr_nan", ["--set", "train.lr=.nan"], "train.lr"),
    ("lr_inf", ["--set", "train.lr=.inf"], "train.lr"),
    ("lr_text", ["--set", "train.lr=fast"], "train.lr"),
    ("weight_decay_negative", ["--set", "train.weight_decay=-1"], "train.weight_decay"),
    ("weight_decay_nan", ["--set", "train.weight_decay=.nan"], "train.weight_decay"),
    ("max_steps_0", ["--set", "train.max_steps_per_epoch=0"], "train.max_steps_per_epoch"),
    ("max_steps_negative", ["--set", "train.max_steps_per_epoch=-3"], "train.max_steps_per_epoch"),
    ("seed_negative", ["--set", "seed=-1"], "seed"),
    ("seed_float", ["--set", "seed=1.5"], "seed"),
    ("split_seed_negative", ["--set", "data.split_seed=-1"], "data.split_seed"),
    ("num_workers_negative", ["--set", "data.num_workers=-1"], "data.num_workers"),
    ("batch_size_0", ["--set", "data.batch_size=0"], "data.batch_size"),
    ("limit_0", ["--set", "data.limit=0"], "data.limit"),
    ("limit_negative", ["--set", "data.limit=-5"], "data.limit"),
    ("limit_text", ["--set", "data.limit=all"], "data.limit"),
    ("hidden_0", ["--set", "model.hidden=0"], "model.hidden"),
    ("num_layers_0", ["--set", "model.num_layers=0"], "model.num_layers"),
    ("heads_0", ["--set", "model.heads=0"], "model.heads"),
    ("head_layers_0", ["--set", "model.head_layers=0"], "model.head_layers"),
    ("head_hidden_0", ["--set", "model.head_hidden=0"], "model.head_hidden"),
    ("dropout_1", ["--set", "model.dropout=1"], "model.dropout"),
    ("dropout_negative", ["--set", "model.dropout=-0.1"], "model.dropout"),
    ("dropout_nan", ["--set", "model.dropout=.nan"], "model.dropout"),
    ("grad_clip_0", ["--set", "train.grad_clip=0"], "train.grad_clip"),
    ("grad_clip_negative", ["--set", "train.grad_clip=-1"], "train.grad_clip"),
    ("grad_clip_inf", ["--set", "train.grad_clip=.inf"], "train.grad_clip"),
    ("monitor_every_0", ["--set", "train.monitor_every=0"], "train.monitor_every"),
    ("patience_0", ["--set", "train.patience=0"], "train.patience"),
    ("update_every_0", ["--set", "update_every=0"], "train.update_every"),
    ("optimizer", ["--set", "train.optimizer=adamx"], "train.optimizer"),
    ("scheduler", ["--set", "train.scheduler=linear"], "train.scheduler"),
    ("norm", ["--set", "model.norm=group"], "model.norm"),
    ("jk", ["--set", "model.jk=mean"], "model.jk"),
    ("pool", ["--set", "model.pool=sum"], "model.pool"),
    ("vn_norm", ["--set", "model.vn_norm=none"], "model.vn_norm"),
    ("vn_pool", ["--set", "model.vn_pool=max"], "model.vn_pool"),
    ("amp", ["--set", "train.amp=fp8"], "train.amp"),
    ("monitor_mode", ["--set", "train.monitor_mode=full"], "train.monitor_mode"),
    ("task_view", ["--set", "data.task_view=rows"], "data.task_view"),
    ("split", ["--set", "data.split=time"], "data.split"),
    ("loader", ["--set", "data.loader=cluster"], "data.loader"),
    ("sampler", ["--set", "data.sampler=fast"], "data.sampler"),
    ("partition", ["--set", "data.partition=kway"], "data.partition"),
    ("num_parts_1", ["--set", "data.num_parts=1"], "data.num_parts"),
    ("parts_per_batch_over", ["--set", "data.parts_per_batch=20"], "data.parts_per_batch"),
    ("device", ["--set", "device=tpu"], "device"),
    ("preset", ["--set", "preset=nope"], "preset"),
    ("balancer_args_type", ["--set", "train.balancer_args=3"], "train.balancer_args"),
    ("tasks_type", ["--set", "data.tasks=abc"], "data.tasks"),
    ("label_kinds_type", ["--set", "data.label_kinds=[a]"], "data.label_kinds"),
    ("virtual_node_type", ["--set", "model.virtual_node=maybe"], "model.virtual_node"),
    ("standardize_type", ["--set", "train.standardize_targets=2"], "train.standardize_targets"),
    ("residual_type", ["--set", "model.residual=2"], "model.residual"),
    ("section_scalar", ["--set", "data=3"], "data"),
    ("key_under_value", ["--set", "train.epochs.x=1"], "train.epochs"),
    ("set_without_equals", ["--set", "noequals"], "--set"),
    ("set_empty_key", ["--set", "=5"], "--set"),
    ("set_empty_part", ["--set", "train..lr=1"], "--set"),
    ("config_missing", ["--config", "{root}/missing.yaml"], "--config"),
    ("config_folder", ["--config", "{root}/config_dir"], "--config"),
    ("config_syntax", ["--config", "{root}/syntax.yaml"], "--config"),
    ("config_list", ["--config", "{root}/list.yaml"], "--config"),
    ("config_scalar", ["--config", "{root}/scalar.yaml"], "--config"),
    ("config_not_utf8", ["--config", "{root}/latin1.yaml"], "--config"),
    ("config_section_list", ["--config", "{root}/section_list.yaml"], "train"),
    ("config_unknown_section", ["--config", "{root}/unknown_section.yaml"], "optim"),
    ("config_nested_type", ["--config", "{root}/nested_type.yaml"], "model.pool"),
    ("config_bad_value", ["--config", "{root}/bad_value.yaml"], "train.lr"),
    ("config_is_a_benchmark_plan", ["--config", "{root}/plan.yaml"], "benchmark plan"),
    ("task_lr_negative", ["--set", "train.task_lr={size: -1}"], "train.task_lr"),
    ("task_lr_text", ["--set", "train.task_lr={size: fast}"], "train.task_lr"),
    ("task_lr_type", ["--set", "train.task_lr=[size]"], "train.task_lr"),
    ("weight_schedule_type", ["--set", "train.weight_schedule=3"], "train.weight_schedule"),
    ("weight_schedule_kind", ["--set", "train.weight_schedule={kind: cosine, main_task: size, epochs: 2}"],
     "train.weight_schedule.kind"),
    ("weight_schedule_epochs_0", ["--set", "train.weight_schedule={kind: warmup, main_task: size, epochs: 0}"],
     "train.weight_schedule.epochs"),
    ("weight_schedule_start", ["--set", "train.weight_schedule={kind: linear, main_task: size, epochs: 2, "
                                        "start: 1.5}"], "train.weight_schedule.start"),
    ("weight_schedule_step_start_0", ["--set", "train.weight_schedule={kind: step, main_task: size, epochs: 2}"],
     "train.weight_schedule.start"),
    ("weight_schedule_no_main_task", ["--set", "train.weight_schedule={kind: warmup, epochs: 2}"],
     "train.weight_schedule.main_task"),
    ("weight_schedule_unknown_field", ["--set", "train.weight_schedule={kind: warmup, main_task: size, epochs: 2, "
                                                "speed: 1}"], "train.weight_schedule.speed"),
    ("freeze_epochs_negative", ["--set", "train.freeze_epochs=-1"], "train.freeze_epochs"),
]
FLAG_CASES = [
    ("unknown_flag", ["--nope"], "--nope"),
    ("seeds_text", ["--seeds", "a,b"], "--seeds"),
    ("seeds_negative", ["--seeds", "-1"], "--seeds"),
    ("seeds_empty_item", ["--seeds", "0,,1"], "--seeds"),
    ("seeds_repeated", ["--seeds", "1,1"], "--seeds"),
    ("seeds_empty", ["--seeds", ""], "--seeds"),
    ("seeds_missing_value", ["--seeds"], "--seeds"),
    ("seeds_with_resume", ["--seeds", "0,1", "--resume"], "--resume"),
    ("resume_with_overwrite", ["--resume", "--overwrite"], "--overwrite"),
    ("config_missing_value", ["--config"], "--config"),
    ("init_from_with_resume", ["--resume", "--init-from", "{root}/run"], "train.init_from"),
    ("init_from_empty", ["--init-from", " "], "--init-from"),
]
# found once the dataset is loaded: run with --overwrite (which must not have removed anything yet)
DATA_CASES = [
    ("nonfinite", ["--set", "train.nonfinite=ignore"], "train.nonfinite"),
    ("grad_mode", ["--set", "grad_mode=fast"], "train.grad_mode"),
    ("dataset_unknown", ["--set", "dataset=nope"], "data.name"),
    ("csv_unset", ["--set", "csv=null"], "data.csv"),
    ("csv_missing", ["--set", "csv={root}/missing.csv"], "data.csv"),
    ("csv_empty", ["--set", "csv={root}/empty.csv"], "data.csv"),
    ("csv_no_smiles_column", ["--set", "csv={root}/no_smiles.csv"], "data.smiles_column"),
    ("csv_text_label", ["--set", "csv={root}/text_label.csv"], "data.label_columns"),
    ("csv_inf_label", ["--set", "csv={root}/inf_label.csv"], "data.label_columns"),
    ("csv_huge_label", ["--set", "csv={root}/huge_label.csv"], "data.label_columns"),
    ("csv_field_count", ["--set", "csv={root}/field_count.csv"], "data.csv"),
    ("csv_bad_smiles", ["--set", "csv={root}/bad_smiles.csv"], "data.csv"),
    ("csv_not_utf8", ["--set", "csv={root}/latin1.csv"], "data.csv"),
    ("csv_empty_column", ["--set", "csv={root}/empty_column.csv"], "data.label_columns"),
    ("csv_no_label_column", ["--set", "csv={root}/no_label.csv"], "data.label_columns"),
    ("csv_empty_header_name", ["--set", "csv={root}/empty_header_name.csv"], "data.label_columns"),
    ("csv_repeated_column", ["--set", "csv={root}/repeated_column.csv"], "data.label_columns"),
    ("label_columns_missing", ["--set", "data.label_columns=[nope]"], "data.label_columns"),
    ("label_columns_empty", ["--set", "data.label_columns=[]"], "data.label_columns"),
    ("label_columns_smiles", ["--set", "data.label_columns=[smiles]"], "data.label_columns"),
    ("label_kinds_unknown_kind", ["--set", "data.label_kinds={size: ordinal}"], "data.label_kinds"),
    ("label_kinds_not_binary", ["--set", "data.label_kinds={size: binary}"], "data.label_kinds"),
    ("label_kinds_not_a_column", ["--set", "data.label_kinds={nope: binary}"], "data.label_kinds"),
    ("tasks_unknown", ["--set", "data.tasks=[nope]"], "data.tasks"),
    ("conv_unknown", ["--set", "conv=gcnn"], "model.conv"),
    ("heads_divide", ["--set", "conv=gat", "--set", "model.heads=3"], "model.heads"),
    ("balancer_unknown", ["--set", "balancer=nope"], "train.balancer"),
    ("balancer_arg_unknown", ["--set", "balancer=pcgrad", "--set", "train.balancer_args={nope: 1}"],
     "train.balancer_args"),
    ("balancer_arg_update_every", ["--set", "balancer=pcgrad", "--set", "train.balancer_args={update_every: 0}"],
     "train.balancer_args.update_every"),
    ("balancer_arg_value", ["--set", "balancer=cagrad", "--set", "train.balancer_args={c: -1}"],
     "train.balancer_args.c"),
    ("balancer_arg_weights", ["--set", "balancer=fixed", "--set", "train.balancer_args={weights: {zz: 1}}"],
     "train.balancer_args.weights"),
    ("grad_mode_not_accepted", ["--set", "balancer=ew", "--set", "grad_mode=rep"], "train.grad_mode"),
    ("grad_mode_contradicts", ["--set", "balancer=pcgrad", "--set", "grad_mode=rep",
                               "--set", "train.balancer_args={grad_mode: exact}"], "train.grad_mode"),
    ("monitor_unknown_task", ["--set", "train.monitor=nope"], "train.monitor"),
    ("device_cuda_missing", ["--set", "device=cuda"], "device"),
    ("task_lr_unknown_task", ["--set", "train.task_lr={nope: 0.01}"], "train.task_lr"),
    ("task_lr_grouped_heads", ["--set", "train.task_lr={size: 0.01}", "--set", "model.grouped_heads=true"],
     "train.task_lr"),
    ("weight_schedule_unknown_main_task", ["--set", "train.weight_schedule={kind: warmup, main_task: nope, "
                                                    "epochs: 2}"], "train.weight_schedule.main_task"),
    ("init_from_missing", ["--init-from", "{root}/missing"], "train.init_from"),
    ("init_from_folder_without_best", ["--init-from", "{root}/config_dir"], "train.init_from"),
    ("init_from_not_a_checkpoint", ["--init-from", "{root}/text.pt"], "train.init_from"),
    ("init_from_list", ["--init-from", "{root}/list.pt"], "train.init_from"),
    ("init_from_runs_code", ["--init-from", "{root}/evil.pt"], "train.init_from"),
    ("init_from_other_encoder", ["--init-from", "{root}/other_model"], "train.init_from"),
    ("init_from_config_key", ["--set", "train.init_from={root}/truncated.pt"], "train.init_from"),
]
# --resume with a checkpoint that cannot be resumed from (into the run folder, so --resume is allowed there)
CHECKPOINT_CASES = [
    ("checkpoint_missing", ["--resume", "{root}/missing.pt"], "--resume"),
    ("checkpoint_folder", ["--resume", "{root}/config_dir"], "--resume"),
    ("checkpoint_truncated", ["--resume", "{root}/truncated.pt"], "truncated"),
    ("checkpoint_empty", ["--resume", "{root}/empty.pt"], "--resume"),
    ("checkpoint_random", ["--resume", "{root}/random.pt"], "--resume"),
    ("checkpoint_text", ["--resume", "{root}/text.pt"], "--resume"),
    ("checkpoint_list", ["--resume", "{root}/list.pt"], "not a graph_mtl training checkpoint"),
    ("checkpoint_runs_code", ["--resume", "{root}/evil.pt"], "could run code"),
    ("checkpoint_other_model", ["--resume", "{root}/other_model/last.pt"], "another model"),
    ("checkpoint_other_tasks", ["--resume", "{root}/other_tasks/last.pt"], "another model"),
    ("checkpoint_config_yaml", ["--resume", "{root}/run/config.yaml"], "--resume"),
]
# the output folder itself
OUT_CASES = [
    ("out_holds_a_run", [], "--out"),
    ("out_is_a_file", ["--out", "{root}/a_file"], "--out"),
    ("out_under_a_file", ["--out", "{root}/a_file/run"], "--out"),
    ("seeds_into_a_run", ["--seeds", "0,1"], "--out"),
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in folder.rglob("*")}


def _check(args: list[str], field: str, files: Path, tmp_path: Path, capsys, overwrite: bool = False) -> None:
    run = tmp_path / "run"
    shutil.copytree(files / "run", run)
    before = _snapshot(run)
    good = ["--set", "dataset=csv", "--set", f"csv={files / 'good.csv'}", *[a for s in TINY for a in ("--set", s)]]
    args = [a.replace("{root}", str(files)) for a in args]
    out = [] if "--out" in args else ["--out", str(run)]
    capsys.readouterr()
    code = main(["train", *good, *args, *out, *(["--overwrite"] if overwrite else [])])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith(("graph-mtl: error:", "graph-mtl train: error:"))]
    assert len(errors) == 1 and field in errors[0], err
    assert all(line.startswith("graph-mtl") for line in err.splitlines()), err  # one-line warnings at most
    assert "Traceback" not in err
    assert _snapshot(run) == before


@pytest.mark.parametrize("args, field", [c[1:] for c in CONFIG_CASES + FLAG_CASES],
                         ids=[c[0] for c in CONFIG_CASES + FLAG_CASES])
def test_bad_config_or_flag(args, field, files, tmp_path, capsys):
    _check(args, field, files, tmp_path, capsys)


@pytest.mark.parametrize("args, field", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_model_or_balancer(args, field, files, tmp_path, capsys):
    _check(args, field, files, tmp_path, capsys, overwrite=True)


@pytest.mark.parametrize("args, field", [c[1:] for c in CHECKPOINT_CASES], ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoint(args, field, files, tmp_path, capsys):
    _check(args, field, files, tmp_path, capsys)


@pytest.mark.parametrize("args, field", [c[1:] for c in OUT_CASES], ids=[c[0] for c in OUT_CASES])
def test_bad_output_folder(args, field, files, tmp_path, capsys):
    _check(args, field, files, tmp_path, capsys)


def test_a_second_run_into_a_locked_folder_is_refused(files, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(files / "run", run)
    with (run / ".lock").open("a") as held:  # as a run in progress holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = _snapshot(run)
        good = ["--set", "dataset=csv", "--set", f"csv={files / 'good.csv'}", *[a for s in TINY for a in ("--set", s)]]
        assert main(["train", *good, "--out", str(run), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "another graph-mtl run is writing" in err and len(err.strip().splitlines()) == 1
        assert _snapshot(run) == before
    # released (as when that run ends or is killed): the stale lock file blocks nothing
    assert main(["train", *good, "--out", str(run), "--overwrite"]) == 0


def test_the_suite_holds_at_least_100_distinct_bad_inputs():
    cases = CONFIG_CASES + FLAG_CASES + DATA_CASES + CHECKPOINT_CASES + OUT_CASES
    assert len({c[0] for c in cases}) == len(cases) >= 100
    assert len({tuple(c[1]) for c in cases if c[1]}) == len([c for c in cases if c[1]])

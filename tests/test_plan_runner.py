"""benchmarks/plan_runner.py: a plan of datasets x rows (single runs or ensembles) runs end to end into its table
(skipped without the offline OGB copies)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml
from test_ogb_mol import SHARED

from graph_mtl.inference import evaluate_split, load_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from plan_runner import run_plan  # noqa: E402


def test_a_plan_tabulates_each_datasets_own_ogb_metric_and_published_figures(tmp_path):
    if not (SHARED / "ogbg_molesol").is_dir() or not (SHARED / "ogbg_molbace").is_dir():
        pytest.skip(f"{SHARED} lacks ogbg_molesol / ogbg_molbace: the offline OGB copies live in ../shared/data")
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "datasets": ["ogbg-molesol", "ogbg-molbace"], "score": "ogb", "seeds": [0],
        "published": {"ogbg-molbace": "70.1 ± 5.4 (Hu et al. 2020)"},
        "base": {"model": {"hidden": 8, "num_layers": 1}, "train": {"epochs": 1, "threads": 1}},
        "rows": [{"label": "tiny ew", "set": {"train.balancer": "ew"}}]}))
    table = run_plan(plan, SHARED, tmp_path / "scratch", tmp_path / "runs", tmp_path / "table.md")
    rows = [line for line in table.splitlines() if line.startswith("| ogbg-")]
    assert [r.split(" | ")[2] for r in rows] == ["ogb/rmse", "ogb/rocauc"]
    assert rows[1].rstrip(" |").endswith("70.1 ± 5.4 (Hu et al. 2020)")
    assert (tmp_path / "table.md").read_text() == table
    assert (tmp_path / "runs" / "ogbg-molesol" / "tiny_ew.log").is_file()
    assert (tmp_path / "runs" / "ogbg-molbace" / "tiny_ew" / "seed0" / "results.json").is_file()


def test_an_ensemble_row_scores_each_seeds_members_mean_prediction(tmp_path):
    """ensemble: 2 over seeds [0, 1]: members 0,1 and 2,3 in ensemble0 / ensemble1; each ensemble's RMSE is at most
    the quadratic mean of its members' (Jensen: the mean prediction's squared error is at most the members' mean)."""
    if not (SHARED / "ogbg_molesol").is_dir():
        pytest.skip(f"{SHARED} lacks ogbg_molesol: the offline OGB copies live in ../shared/data")
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "datasets": ["ogbg-molesol"], "score": "ogb", "seeds": [0, 1],
        "base": {"model": {"hidden": 8, "num_layers": 1}, "train": {"epochs": 2, "threads": 1}},
        "rows": [{"label": "pairs", "ensemble": 2}]}))
    table = run_plan(plan, SHARED, tmp_path / "scratch", tmp_path / "runs", None)
    folder = tmp_path / "runs" / "ogbg-molesol" / "pairs"
    row = next(line for line in table.splitlines() if line.startswith("| ogbg-"))
    cells = row.split(" | ")
    best_epochs = yaml.safe_load(cells[6])
    assert len(best_epochs) == 2 and all(len(b) == 2 for b in best_epochs)
    test_values = []
    for seed, members in ((0, (0, 1)), (1, (2, 3))):
        member_rmse = [json.loads((folder / f"ensemble{seed}" / f"seed{m}" / "results.json").read_text())
                       ["test"]["summary"]["ogb/rmse"] for m in members]
        ensemble = evaluate_split(load_run(folder / f"ensemble{seed}"), "test")["summary"]["ogb/rmse"]
        assert ensemble <= math.sqrt(sum(r * r for r in member_rmse) / 2) + 1e-9
        assert ensemble not in member_rmse
        test_values.append(ensemble)
    mean = sum(test_values) / 2
    assert cells[3].startswith(f"{mean:.4f} ± ")

"""benchmarks/plan_runner.py: a plan of datasets x rows runs end to end into its table (skipped without the
offline OGB copies)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from test_ogb_mol import SHARED

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

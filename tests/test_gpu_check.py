"""benchmarks/gpu_check.sh dry-runs on the CPU: every step runs (the CUDA tests skip) and writes its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = {**os.environ, "PY": sys.executable, "GRAPH_MTL_SHARED_DATA": str(tmp_path / "no-data")}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny",
                           "--out", str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (tmp_path / "out" / "gpu_check_cpu.log").read_text()
    for name in ("cuda-tests", "demo", "step-time"):
        assert f"== {name}: exit 0" in log
    assert "throughput: skipped" in log and "every step passed" in log
    table = (tmp_path / "out" / "step_time_cpu.md").read_text()
    assert "pcgrad" in table and "upgrad" in table
    assert "| pcgrad | exact amp bf16 |" in table and "| ew | default amp bf16 |" in table


def test_gpu_check_refuses_a_bad_argument(tmp_path):
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "tpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--device must be cuda or cpu" in done.stderr

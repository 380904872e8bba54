"""benchmarks/gpu.py --quick runs every code path of the GPU benchmark on CPU (slow: Gemma 270M
steps) and writes its JSON and Markdown table, so the script is ready the day a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_gpu_benchmark_quick_runs_lokal_and_hf_trainer_and_writes_the_table(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/gpu.py", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [(r["setting"]["side"], r["status"]) for r in rows] == [("lokal", "ok"), ("hf", "ok"), ("lokal", "ok")]
    assert all(r["tokens_per_s"] > 0 and r["losses"] for r in rows)
    table = (tmp_path / "results.md").read_text()
    assert "| lokal | lora | checkpointing, packing |" in table and "| hf | lora | checkpointing |" in table

"""The README's headline runs, end to end through `train.py` (slow: minutes each)."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import run

pytestmark = pytest.mark.slow


def test_the_demo_beats_the_majority_class(tmp_path):
    result = run(f"hydra.run.dir={tmp_path}", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/accuracy"] > metrics["majority_class_accuracy"] + 0.1
    assert metrics["data/duplicates_dropped"] == 34_036
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_gemma_experiment_runs_and_beats_the_majority_class(tmp_path):
    result = run("experiment=indo_gemma", f"hydra.run.dir={tmp_path}", timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/accuracy"] > metrics["majority_class_accuracy"] + 0.1
    assert metrics["trainable_percent"] < 1

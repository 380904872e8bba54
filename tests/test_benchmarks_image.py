"""The image end-to-end benchmark's harness runs both sides on one split (slow: two real runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_end_to_end_image_quick_runs_lokal_and_a_plain_timm_loop_on_one_split(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, "benchmarks/end_to_end_image.py", "--quick", "--seeds", "42",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["side"] for r in rows] == ["lokal", "plain"]
    for row in rows:
        assert 0 <= row["test_accuracy"] <= 1 and row["wall_s"] > row["train_s"] > 0 and row["peak_mb"] > 100
    assert rows[0]["trainable"] == rows[1]["trainable"]  # the same parameters train on both sides
    assert "| lokal / plain (means) |" in done.stdout

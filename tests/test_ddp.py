"""DDP on CPU: 2 gloo processes train the same global batches as one process (lokal's training
loader shards one global order), write one run folder, and end with the same metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_resume import ENV, ROOT, comparable

pytestmark = pytest.mark.integration


def run(overrides: list[str]) -> str:
    proc = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def metrics(folder: Path) -> dict:
    return comparable(json.loads((folder / "metrics.json").read_text()))


def common(tiny_text_models) -> list[str]:
    """A dropout-free tiny BERT: without dropout the two runs differ only in summation order."""
    return ["model=hf_text", f"model.name={tiny_text_models['bert']}", "model.max_length=32", "method=full",
            "trainer.max_epochs=2", "trainer.limit_train_batches=6", "trainer.enable_progress_bar=false",
            "evaluation.plots=false", "evaluation.forgetting=false"]


def test_ddp_with_two_cpu_processes_matches_one_process_in_one_folder(tiny_text_models, tmp_path):
    run(common(tiny_text_models) + ["data.batch_size=16", f"paths.output_dir={tmp_path / 'one'}"])
    run(common(tiny_text_models) + ["trainer=ddp", "trainer.accelerator=cpu", "data.batch_size=8",
                                    f"paths.output_dir={tmp_path / 'ddp'}"])
    single, = (tmp_path / "one" / "runs").iterdir()
    folders = list((tmp_path / "ddp" / "runs").iterdir())
    assert len(folders) == 1 and list((tmp_path / "ddp").iterdir()) == [tmp_path / "ddp" / "runs"]
    ddp = folders[0]
    assert (ddp / "train_ddp_process_1.log").is_file()  # rank 1 logged into the run's own folder
    one, two = metrics(single), metrics(ddp)
    assert (two["steps"], two["epochs"]) == (one["steps"], one["epochs"]) == (12, 2)
    for key in ("val/accuracy", "val/auroc", "test/accuracy", "test/auroc", "test/f1_macro", "test/ece"):
        assert two[key] == pytest.approx(one[key], abs=1e-3), key


def test_a_ddp_multirun_keeps_one_folder_per_run(tiny_text_models, tmp_path):
    """Lightning restarts the script for rank 1 with its argv: in a multirun job that must be the
    job's own overrides, not the whole sweep again."""
    sweep = tmp_path / "sweep"
    run(["-m", *common(tiny_text_models), "method=full,bitfit", "trainer=ddp", "trainer.accelerator=cpu",
         "data.batch_size=8", "trainer.max_epochs=1", "trainer.limit_train_batches=2", f"hydra.sweep.dir={sweep}"])
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_indo_sentiment_hf_text_full", "1_indo_sentiment_hf_text_bitfit"]
    for job in jobs:
        assert (sweep / job / "metrics.json").is_file()
        assert not list((sweep / job).glob("**/multirun.yaml"))  # no sweep started inside a job

"""Integration: the real train.yaml through Hydra, a few steps on real data (the shipped
Indonesian corpus with the real MiniLM; a generated X-ray-layout folder with the real
EfficientNet-Lite0), then the run directory contract and loading the weights back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lokal.run import train
from lokal.runs.load import load_run
from tests.conftest import FAST, compose

pytestmark = pytest.mark.integration

CONTRACT_KEYS = {"test/accuracy", "test/f1_macro", "test/auroc", "trainable_params", "total_params",
                 "train_time_s", "peak_memory_mb"}


def accuracy_on(model, loader) -> float:
    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            correct += (model(batch).argmax(-1) == batch["label"]).sum().item()
            total += len(batch["label"])
    return correct / total


def check_run_dir(run_dir, metrics) -> dict:
    assert (run_dir / "config.yaml").is_file()  # the resolved config
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert CONTRACT_KEYS <= saved.keys()
    assert saved == pytest.approx(metrics)
    assert 0 < saved["trainable_params"] < saved["total_params"]
    check_timeline(saved)
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/accuracy") for r in rows)
    with Image.open(run_dir / "plots" / "confusion_matrix.png") as image:
        assert image.format == "PNG" and image.width > 100
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return saved


def check_timeline(saved: dict) -> None:
    """Every phase from launch to the scored checkpoint, positive, adding up to the time to the
    first step; training is the fit loop's steps, inside the run's train_time_s."""
    from lokal.training.timeline import PHASES

    phases = [saved[f"time/{p}_s"] for p in PHASES]
    assert all(t >= 0 for t in phases) and saved["time/to_first_step_s"] > 0  # training: 0 with one step
    assert sum(phases[:4]) == pytest.approx(saved["time/launch_to_first_step_s"], abs=0.05)
    assert saved["time/training_s"] <= saved["train_time_s"]


def test_lora_on_the_shipped_indonesian_corpus(run_dir):
    cfg = compose(FAST + ["data.batch_size=16", "model.max_length=32"], run_dir)
    metrics = train(cfg)

    saved = check_run_dir(run_dir, metrics)
    assert saved["data/duplicates_dropped"] > 30_000  # 35,328 rows, ~1.3k distinct texts
    assert saved["data/train_rows"] + saved["data/val_rows"] + saved["data/test_rows"] == saved["data/rows"] - \
        saved["data/duplicates_dropped"] - saved["data/conflicting_dropped"]
    adapter, base = run_dir / "adapter", Path(cfg.model.name) / "model.safetensors"
    assert (adapter / "adapter_model.safetensors").stat().st_size < base.stat().st_size / 100  # not the base

    datamodule, model = load_run(run_dir)  # a fresh base from the package + the saved adapter
    datamodule.setup()
    assert accuracy_on(model, datamodule.val_dataloader()) == pytest.approx(saved["val/accuracy"], abs=1e-6)


def test_bitfit_on_an_xray_folder_keeps_frozen_weights_bit_identical(run_dir, xray_dir):
    cfg = compose(FAST + ["method=bitfit", "data=medical_xray", f"data.root={xray_dir}",
                          "model.image_size=64", "data.batch_size=8"], run_dir)
    metrics = train(cfg)
    saved = check_run_dir(run_dir, metrics)
    assert saved["data/train_rows"] == 24 and saved["data/test_rows"] == 24

    datamodule, model = load_run(run_dir)
    datamodule.setup()
    assert accuracy_on(model, datamodule.val_dataloader()) == pytest.approx(saved["val/accuracy"], abs=1e-6)

    from hydra.utils import instantiate

    base = dict(instantiate(cfg.model, num_classes=2).net.named_parameters())
    trained = dict(model.net.named_parameters())
    frozen = [n for n in base if not n.endswith(".bias") and not n.startswith("classifier.")]
    assert len(frozen) == 98  # every conv kernel and BatchNorm scale of EfficientNet-Lite0
    for name in frozen:  # conv kernels and BatchNorm scales alike
        assert torch.equal(trained[name], base[name]), f"{name} changed under BitFit"
    assert not torch.equal(trained["bn2.bias"], base["bn2.bias"])


def test_flat_class_folders_are_split_stratified_by_seed(run_dir, tmp_path):
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "flat", classes=("cat", "dog", "fox"), per_class=10, splits=None)
    cfg = compose(FAST + ["method=lora", "data=image_folder", f"data.root={root}", "model.image_size=64",
                          "trainer.max_epochs=1", "loss=focal", "loss.class_weights_mode=balanced",
                          "data.balance=true"], run_dir)
    saved = check_run_dir(run_dir, train(cfg))
    assert (saved["data/train_rows"], saved["data/val_rows"], saved["data/test_rows"]) == (19, 4, 7)
    assert (run_dir / "adapter" / "buffers.safetensors").is_file()  # BatchNorm stats travel with the adapter

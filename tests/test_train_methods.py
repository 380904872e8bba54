"""Integration: every method in src/lokal/conf/method/ (and each `kind` of the multi-kind ones) runs end
to end through the real train.yaml on the shipped Indonesian corpus (tiny BERT, real data)
and on an image folder (the real EfficientNet-Lite0 at 64 px): trains, writes the run
directory, and the saved weights load back onto a fresh base giving the same predictions."""

from __future__ import annotations

import json

import pytest

from lokal.run import train
from lokal.runs.load import load_run
from tests.conftest import CONF, FAST, compose
from tests.test_train import accuracy_on

pytestmark = pytest.mark.integration

KINDS = {"additive": ["ia3", "side"], "prompt": [None], "adapter": [None]}
RUNS = [(path.stem, kind) for path in sorted((CONF / "method").glob("*.yaml"))
        for kind in KINDS.get(path.stem, [None])]


def method_overrides(method: str, kind: str | None) -> list[str]:
    return [f"method={method}"] + ([f"method.kind={kind}"] if kind else [])


def check_run(run_dir, metrics: dict) -> None:
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    assert 0 <= saved["test/accuracy"] <= 1 and saved["trainable_params"] > 0
    datamodule, model = load_run(run_dir)  # a fresh base + only what the run saved
    datamodule.setup("fit")
    assert accuracy_on(model, datamodule.val_dataloader()) == pytest.approx(saved["val/accuracy"])


@pytest.mark.parametrize("method,kind", RUNS)
def test_every_method_trains_on_the_shipped_corpus(method, kind, tiny_text_models, run_dir):
    overrides = [f"model.name={tiny_text_models['bert']}", "model.max_length=32", "data.batch_size=16",
                 *method_overrides(method, kind), *FAST]
    metrics = train(compose(overrides, run_dir))
    check_run(run_dir, metrics)


@pytest.mark.parametrize("method,kind", RUNS)
def test_every_method_trains_on_an_image_folder(method, kind, xray_dir, run_dir):
    overrides = ["data=image_folder", f"data.root={xray_dir}", "model.image_size=64", "data.batch_size=8",
                 *method_overrides(method, kind), *FAST]
    metrics = train(compose(overrides, run_dir))
    check_run(run_dir, metrics)

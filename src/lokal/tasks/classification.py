"""Single-label classification: one class per example (text, image or audio), a softmax head,
cross-entropy or focal loss. Before training: the majority class and, for texts, the TF-IDF
baseline on the same split (the bars to beat). After: predictions.csv from the best checkpoint,
metrics equal to scikit-learn's, subgroups, confusion matrix, plots."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lokal.errors import LokalError
from lokal.training.module import ScoredModule

log = logging.getLogger(__name__)


def classification_metrics(num_classes: int, prefix: str):
    """The metrics logged while training (val/) and by `trainer.test`; the run's final test
    metrics come from its predictions (lokal.evaluation.classification_report)."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            # mean recall per class: what a majority-class guess cannot inflate on imbalanced data
            "balanced_accuracy": MulticlassAccuracy(num_classes, average="macro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "auroc": MulticlassAUROC(num_classes, average="macro"),  # one-vs-rest; equals binary AUROC for 2 classes
        },
        prefix=prefix,
    )




class ClassifierModule(ScoredModule):
    """Classification: a model with a task head, a loss, torchmetrics."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        loss: nn.Module | None = None,
        method=None,
    ) -> None:
        super().__init__(model, optimizer, scheduler, method)
        self.loss = nn.CrossEntropyLoss() if loss is None else loss
        self.val_metrics = classification_metrics(num_classes, "val/")
        self.test_metrics = classification_metrics(num_classes, "test/")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """`label` is (B,) class ids, or (B, C) soft targets when the data module mixes
        training batches (data.mixup): lokal's losses take both."""
        loss = self.loss(self(batch), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss + self.method_penalty()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch).float()  # bf16 probabilities tie often: scores (and predictions.csv) use fp32
        # plain cross-entropy, whatever the training loss: val/loss stays comparable across runs
        self.log("val/loss", nn.functional.cross_entropy(logits, batch["label"]), prog_bar=True, batch_size=len(logits),
                 sync_dist=True)
        self.val_metrics.update(logits.softmax(-1), batch["label"])

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.test_metrics.update(self(batch).float().softmax(-1), batch["label"])



@dataclass
class Classification:
    """The classification task (lokal.tasks.Task) with a run's evaluation settings."""

    settings: object = None  # lokal.evaluation.Evaluation
    name = "classification"
    models = "a classification model, e.g. model=e5_small, model=efficientnet_lite0 or model=whisper_tiny_classifier"

    def model_arguments(self, data) -> dict:
        if len(data.class_names) < 2:
            raise LokalError(f"{data_name(data)} has a single class {data.class_names}: a classifier needs at least "
                             "two. Check data.label_column (is it the label?), data.label_map and data.classes, or "
                             "add examples of the other classes")
        return {"num_classes": len(data.class_names)}

    def module(self, model, optimizer, scheduler, loss, method, data) -> ClassifierModule:
        from lokal.evaluation import check_subgroups

        check_subgroups(self.settings.subgroups, data)
        return ClassifierModule(model, len(data.class_names), optimizer, scheduler,
                                loss(class_counts=class_counts(data)), method)

    def before_training(self, module, data, trainer) -> dict:
        """The bars to beat, on the same split: always the majority class; TF-IDF for texts."""
        metrics = {"majority_class_accuracy": majority_accuracy(data)}
        if data.modality == "text":
            metrics |= text_baseline(data)
        return metrics

    def evaluate(self, trainer, module, data) -> dict:
        from lokal.evaluation import best_checkpoint_scores

        # test/* come from the test predictions written next (write_outputs): one test pass
        return best_checkpoint_scores(trainer, module, data, losses=False, test=False)

    def write_outputs(self, trainer, module, data, metrics: dict, run_dir: Path) -> dict:
        from lokal.training.wandb import log_run_to_wandb

        predictions = predict_test(trainer, module, data)
        metrics = write_outputs(module, data, metrics, run_dir, predictions, self.settings)
        records = data.records() if self.settings.log_texts else None
        log_run_to_wandb(trainer.loggers, run_dir, metrics, data.class_names, predictions, records=records,
                         log_texts=self.settings.log_texts)
        return metrics


def data_name(datamodule) -> str:
    """data=NAME when Hydra runs (e.g. data=text_csv), else the data module's class."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return "data=" + HydraConfig.get().runtime.choices.get("data", type(datamodule).__name__)
    return type(datamodule).__name__


def predict_test(trainer, module, datamodule):
    """The test split's predictions (Contract A) by the best checkpoint (which `trainer.validate`
    loaded into `module`), on the trainer's device and precision."""
    from lokal.evaluation import predict_split

    return predict_split(module, datamodule, "test", trainer.strategy.root_device,
                         trainer.precision_plugin.test_step_context())


def subgroup_metrics(predictions, settings, run_dir: Path) -> dict:
    """The fairness report (lokal.evaluation.fairness): subgroups.json and subgroups.md, gaps above
    `evaluation.gap_warning` logged as warnings, flat `subgroup/<column>/max_gap/<metric>` keys."""
    from lokal.evaluation.fairness import subgroup_report, write_subgroup_report

    report = subgroup_report(predictions, settings.subgroups, settings.gap_warning)
    write_subgroup_report(report, run_dir)
    for line in report["warnings"]:
        log.warning("subgroup gap: %s", line)
    for line in report["notes"]:
        log.info("subgroup note: %s", line)
    return report["metrics"]


def write_outputs(module, datamodule, metrics: dict, run_dir: Path, predictions, settings) -> dict:
    """Weights and predictions.csv first (nothing after training can lose them), then the test
    metrics from the predictions (they replace the `trainer.test` ones of the same name), the
    subgroup report, confusion_matrix.csv, plots/, metrics.json, the summary. Returns the metrics."""
    from lokal.evaluation import classification_report, confusion_counts, save_plots, write_predictions
    from lokal.evaluation.summary import print_classification_summary
    from lokal.io import write_json, write_text
    from lokal.paths import FINISHED
    from lokal.training.weights import save_weights, write_classes

    save_weights(module.model, run_dir)
    write_classes(run_dir, datamodule.class_names)  # `lokal predict` then needs no training data
    write_predictions(predictions, run_dir / "predictions.csv")
    metrics = metrics | classification_report(predictions, datamodule.class_names)
    if settings.subgroups:
        metrics |= subgroup_metrics(predictions, settings, run_dir)
    counts = confusion_counts(predictions, datamodule.class_names)
    write_text(run_dir / "confusion_matrix.csv", counts.to_csv())
    if settings.plots:
        try:
            save_plots(run_dir, predictions, datamodule.class_names)
        except Exception as err:  # a plot must never cost a finished run its metrics.json
            log.warning("plots not written (%s: %s); metrics and predictions are", type(err).__name__, err)
    write_json(run_dir / FINISHED, metrics)  # last: its presence marks a finished run
    print_classification_summary(metrics, run_dir)
    return metrics


def class_counts(datamodule) -> list[int]:
    """Training examples per class (class-weighted losses, the majority baseline): the data
    actually trained on (this fold's, after dedup), not the whole file."""
    import numpy as np

    return np.bincount(datamodule.labels("train"), minlength=len(datamodule.class_names)).tolist()


def text_baseline(datamodule) -> dict[str, float]:
    from lokal.evaluation.baselines import tfidf_logreg

    splits = ("train", "test")
    return tfidf_logreg({s: datamodule.texts(s) for s in splits}, {s: datamodule.labels(s) for s in splits})


def majority_accuracy(datamodule) -> float:
    """Test accuracy of always predicting the most common training class: the bar to beat."""
    counts = class_counts(datamodule)
    majority = counts.index(max(counts))
    test = datamodule.labels("test")
    return sum(y == majority for y in test) / len(test)

"""Evaluation after training: the best checkpoint scored on validation and test (every task), and
for classifiers per-example predictions (predictions.csv), the full metric set computed from them
(torchmetrics; equal to scikit-learn's, tests check it) and the plots, once, at the end."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

ECE_BINS = 15  # torchmetrics' and Guo et al.'s default
PLOTS_DIR = "plots"


@dataclass
class Evaluation:
    """The `evaluation` config node (src/lokal/conf/evaluation/default.yaml): what a run reports after training."""

    plots: bool = True
    """PNG plots in RUN_DIR/plots/: confusion matrix, ROC curves, per-class F1, learning curves."""
    subgroups: list[str] = field(default_factory=list)
    """Metadata columns (data.metadata_columns) to report every metric per group for (lokal.evaluation.fairness)."""
    gap_warning: float = 0.05
    """Warn when a metric's largest gap between the groups of a column exceeds this."""
    forgetting: bool = False
    """Measure how much general ability the fine-tune kept (lokal.evaluation.forgetting)."""
    forgetting_reference: str | None = None
    """The general reference set for the forgetting meter; null: the one shipped for the modality."""
    log_texts: bool = False
    """W&B: include the raw texts in the table of test predictions (off: texts may be private)."""

    def __post_init__(self) -> None:
        self.subgroups = list(self.subgroups)  # Hydra passes a ListConfig


def evaluation_settings(cfg) -> Evaluation:
    """The run config's `evaluation` node, or the defaults for configs written before it existed."""
    from hydra.utils import instantiate

    node = cfg.get("evaluation")
    return instantiate(node) if node is not None else Evaluation()


def best_checkpoint_scores(trainer, module, datamodule, losses: bool = True, test: bool = True) -> dict:
    """Validation and test once each, with the best checkpoint (by the configured monitor; the last
    weights when there is none) left loaded in `module`, plus size, memory, length of training and
    the data counts. `losses=False` leaves out val/loss and test/loss (classifiers report metrics,
    not losses); `test=False` leaves the test split to the task, which scores it from its
    predictions (one pass over the test split, not two)."""
    from lokal.training.system import peak_memory_mb

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
    best = best or None  # a path, not "best": Lightning warns that "best" is ambiguous with two checkpointers
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0] if test else {}
    scores = {k: v for k, v in {**val, **test}.items() if losses or not k.endswith("/loss")}
    metrics = scores | parameter_counts(module.model) | peak_memory_mb()
    metrics |= {"epochs": trainer.current_epoch, "steps": trainer.global_step}
    return metrics | {f"data/{k}": v for k, v in datamodule.stats.items()}


def parameter_counts(model) -> dict[str, int | float]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_percent": round(100 * trainable / total, 4)}


def check_subgroups(subgroups: list[str], datamodule) -> None:
    """evaluation.subgroups must name columns predictions.csv carries (data.metadata_columns, or
    "group" for data.group_column): checked before training, not after."""
    from lokal.errors import LokalError

    carried = list(getattr(datamodule, "metadata_columns", []))
    carried += ["group"] if getattr(datamodule, "group_column", None) else []
    for column in subgroups:
        if column not in carried:
            raise LokalError(f"evaluation.subgroups: no column {column!r} in the data's metadata; "
                             f"it has {carried or 'none'}. Add it to data.metadata_columns "
                             "(e.g. data.metadata_columns=[gender,region]), or fix the name")


# -- predictions (Contract A) -----------------------------------------------------------------
def predict_split(model, datamodule, split: str = "test", device=None, context=None) -> pd.DataFrame:
    """One row per example of `split`, in `datamodule.records()` order: id, split, label,
    predicted, confidence (the top probability), correct (0/1), prob/<class> for every class,
    then group and the metadata columns when the data has them.

    `model` is a ClassifierModule or a classifier (both map a batch to logits). `device`: where to
    run (default: where the model is); `context`: the trainer's precision context (e.g. bf16
    autocast), so the predictions are those `trainer.test` scored. Evaluation transforms are
    used for val/test; an image `train` split keeps its training augmentation."""
    probs = split_probabilities(model, datamodule, split, device, context)  # (N, C)
    frame = prediction_frame(probs, datamodule.labels(split), datamodule.class_names)
    records = datamodule.records()
    records = records[records["split"] == split].reset_index(drop=True)
    extras = [c for c in records.columns if c not in ("id", "split", "label", "text", "path")]
    return pd.concat([records[["id", "split"]], frame, records[extras]], axis=1)


def split_probabilities(model, datamodule, split: str, device=None, context=None, multi_label: bool = False):
    """Class probabilities (N, C) for a split (softmax; per-label sigmoids with `multi_label`), put
    back in dataset order from each batch's `index` (text loaders batch by length, so batch order
    is not dataset order)."""
    import torch

    if not hasattr(datamodule, "datasets"):
        datamodule.setup("test")
    home = next(model.parameters()).device
    device, was_training = device or home, model.training
    model.to(device).eval()
    probs, index = [], []
    with torch.no_grad(), context or contextlib.nullcontext():
        for batch in datamodule._loader(split, train=False):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            logits = model(batch).float()
            probs.append((logits.sigmoid() if multi_label else logits.softmax(-1)).cpu())
            index.append(batch["index"].cpu())
    model.to(home).train(was_training)  # left as found (after trainer.test: on the CPU)
    probs, index = torch.cat(probs), torch.cat(index)
    rows = len(datamodule.labels(split))
    if sorted(index.tolist()) != list(range(rows)):  # each row exactly once
        raise RuntimeError(f"the {split} loader gave {len(index)} examples (indices not 0..{rows - 1}) for {rows} rows")
    ordered = torch.empty_like(probs)
    ordered[index] = probs
    return ordered.numpy()


def prediction_frame(probs, labels: list[int], class_names: list[str]) -> pd.DataFrame:
    """label, predicted, confidence, correct, prob/<class> from probabilities (N, C) and true class ids."""
    import numpy as np

    names = np.asarray(class_names, dtype=object)
    predicted = probs.argmax(1)
    frame = pd.DataFrame({"label": names[labels], "predicted": names[predicted], "confidence": probs.max(1),
                          "correct": (predicted == np.asarray(labels)).astype(int)})
    return frame.join(pd.DataFrame(probs, columns=[f"prob/{c}" for c in class_names]))


def write_predictions(predictions: pd.DataFrame, target: Path) -> Path:
    from lokal.io import write_atomically

    return write_atomically(target, lambda tmp: predictions.to_csv(tmp, index=False, float_format="%.6g"))


# -- metrics (Contract C) -----------------------------------------------------------------------
def tensors(predictions: pd.DataFrame, class_names: list[str]):
    """(probabilities (N, C) float, true class ids (N,), predicted ids (N,)) from a predictions frame."""
    import torch

    ids = {name: i for i, name in enumerate(class_names)}
    probs = torch.tensor(predictions[[f"prob/{c}" for c in class_names]].to_numpy(dtype=float))
    target = torch.tensor(predictions["label"].astype(str).map(ids).to_numpy())
    predicted = torch.tensor(predictions["predicted"].astype(str).map(ids).to_numpy())
    return probs, target, predicted


def classification_report(predictions: pd.DataFrame, class_names: list[str], prefix: str | None = None) -> dict:
    """Accuracy, balanced accuracy, macro/micro F1, AUROC, ECE and per-class precision/recall/F1
    from a predictions frame, as flat keys ("test/accuracy", "test/f1/<class>"; prefix: the
    frame's split). Balanced accuracy and AUROC average over the classes present in the labels
    (as scikit-learn does); a metric undefined on these labels (AUROC with one class) is left out."""
    from torchmetrics.functional import classification as tm

    probs, target, predicted = tensors(predictions, [str(c) for c in class_names])
    prefix = prefix if prefix is not None else f"{predictions['split'].iloc[0]}/"
    n = len(class_names)
    stats = tm.multiclass_stat_scores(predicted, target, n, average=None)  # (C, 5): tp, fp, tn, fn, support
    tp, fp, fn = stats[:, 0], stats[:, 1], stats[:, 3]
    present = (tp + fn) > 0  # classes with at least one true example
    precision = tm.multiclass_precision(predicted, target, n, average=None)
    recall = tm.multiclass_recall(predicted, target, n, average=None)
    f1 = tm.multiclass_f1_score(predicted, target, n, average=None)
    metrics = {
        "accuracy": tm.multiclass_accuracy(predicted, target, n, average="micro"),
        "balanced_accuracy": recall[present].mean(),
        "f1_macro": f1[present | (fp > 0)].mean(),  # classes in the labels or the predictions, as sklearn's
        "f1_micro": tm.multiclass_f1_score(predicted, target, n, average="micro"),
        "ece": tm.multiclass_calibration_error(probs, target, n, n_bins=ECE_BINS, norm="l1"),
    }
    auroc = mean_auroc(probs, target)
    if auroc is not None:
        metrics["auroc"] = auroc
    for i, name in enumerate(class_names):
        metrics |= {f"precision/{name}": precision[i], f"recall/{name}": recall[i], f"f1/{name}": f1[i]}
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()}


def mean_auroc(probs, target) -> float | None:
    """Binary AUROC (class 1 against class 0) for two classes, else the macro mean of one-vs-rest
    AUROCs over the classes with both positives and negatives; None when no class has both."""
    from torchmetrics.functional.classification import binary_auroc

    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    scores = [binary_auroc(probs[:, c], (target == c).long()) for c in classes if 0 < (target == c).sum() < len(target)]
    if not scores:
        log.warning("AUROC left out: the labels hold only one class")
        return None
    return float(sum(scores) / len(scores))


def confusion_counts(predictions: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Counts with true classes as rows and predicted classes as columns."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    _, target, predicted = tensors(predictions, [str(c) for c in class_names])
    counts = multiclass_confusion_matrix(predicted, target, len(class_names)).numpy()
    return pd.DataFrame(counts, index=pd.Index(class_names, name="true"), columns=list(class_names))


# -- plots (Contract C) ------------------------------------------------------------------------
def save_plots(run_dir: Path, predictions: pd.DataFrame, class_names: list[str]) -> list[Path]:
    """RUN_DIR/plots/: confusion_matrix.png, roc.png, per_class_f1.png and, when the run has a
    metrics.csv with training history, learning_curves.png. Returns the files written."""
    from lokal.evaluation import plots as report

    run_dir, names = Path(run_dir), [str(c) for c in class_names]
    folder = run_dir / PLOTS_DIR
    probs, target, _ = tensors(predictions, names)
    written = [report.save_confusion_matrix(confusion_counts(predictions, names).to_numpy(), names,
                                            folder / "confusion_matrix.png"),
               report.save_roc(probs, target, names, folder / "roc.png"),
               report.save_per_class(classification_report(predictions, names, prefix=""), names,
                                     folder / "per_class_f1.png")]
    curves = report.save_learning_curves(run_dir / "metrics.csv", folder / "learning_curves.png")
    return written + ([curves] if curves else [])

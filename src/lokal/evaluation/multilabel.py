"""Multi-label evaluation: per-label thresholds chosen on validation, and the metric set on test
(torchmetrics; equal to scikit-learn's, tests check it): micro and macro F1, per-label precision,
recall, F1 and AUROC, mean average precision, subset accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd


def choose_thresholds(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per label, the probability cut that maximises F1 on `probs` (validation): rare labels
    rarely reach 0.5. A label without positives there keeps 0.5."""
    thresholds = np.full(probs.shape[1], 0.5)
    for label in range(probs.shape[1]):
        truth = targets[:, label].astype(bool)
        if not truth.any():
            continue
        order = np.argsort(-probs[:, label], kind="stable")
        hits = np.cumsum(truth[order])  # predicting the top k positive: k = 1..N
        f1 = 2 * hits / (np.arange(1, len(order) + 1) + truth.sum())
        best = int(np.argmax(f1))
        below = probs[order[best + 1], label] if best + 1 < len(order) else 0.0
        thresholds[label] = (probs[order[best], label] + below) / 2  # midway to the next score
    return thresholds


def multilabel_report(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, names: list[str],
                      prefix: str = "test/") -> dict[str, float]:
    """Flat metrics of probabilities (N, L) against 0/1 targets, predictions at `thresholds`."""
    import torch
    from torchmetrics.functional.classification import (
        multilabel_auroc,
        multilabel_average_precision,
        multilabel_exact_match,
        multilabel_f1_score,
        multilabel_precision,
        multilabel_recall,
    )

    predicted = torch.as_tensor(probs >= thresholds, dtype=torch.float32)  # thresholds applied here, then at 0.5
    target, scores, n = torch.as_tensor(targets).long(), torch.as_tensor(probs, dtype=torch.float32), len(names)
    metrics = {"f1_micro": multilabel_f1_score(predicted, target, n, average="micro"),
               "f1_macro": multilabel_f1_score(predicted, target, n, average="macro"),
               "accuracy": multilabel_exact_match(predicted, target, n)}  # subset accuracy: every label right
    per_label = {"precision": multilabel_precision(predicted, target, n, average=None),
                 "recall": multilabel_recall(predicted, target, n, average=None),
                 "f1": multilabel_f1_score(predicted, target, n, average=None)}
    present = targets.sum(axis=0) > 0  # AP and AUROC need a positive (and a negative) to mean anything
    ranked = present & (targets.sum(axis=0) < len(targets))
    if present.any():
        ap = multilabel_average_precision(scores, target, n, average=None)
        metrics["map"] = ap[torch.as_tensor(present)].mean()
    if ranked.any():
        auroc = multilabel_auroc(scores, target, n, average=None)
        metrics["auroc"] = auroc[torch.as_tensor(ranked)].mean()
        per_label["auroc"] = torch.where(torch.as_tensor(ranked), auroc, torch.tensor(float("nan")))
    report = {f"{prefix}{k}": float(v) for k, v in metrics.items()}
    for metric, values in per_label.items():
        report |= {f"{prefix}{metric}/{name}": float(v) for name, v in zip(names, values, strict=True)
                   if not np.isnan(float(v))}
    return report


def prediction_frame(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray,
                     names: list[str]) -> pd.DataFrame:
    """labels (true set), predicted (the set at the thresholds), exact (0/1), prob/<label>."""
    from lokal.data.multilabel import joined_label_sets

    predicted = probs >= thresholds
    frame = pd.DataFrame({"labels": joined_label_sets(targets, names), "predicted": joined_label_sets(predicted, names),
                          "exact": (predicted == targets.astype(bool)).all(axis=1).astype(int)})
    return frame.join(pd.DataFrame(probs, columns=[f"prob/{n}" for n in names]))

"""Classification losses for imbalanced local data: class-weighted cross-entropy and focal loss.

Each is built by `run.py` with the training split's class counts, so "balanced" weights
come from the data actually trained on. Both take hard labels (B,) or soft targets (B, C)
(mixup/CutMix); a one-hot soft target gives the hard label's loss, class weights included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lokal.errors import LokalError


def class_weights(counts: Sequence[int], mode: str | None) -> torch.Tensor | None:
    """`balanced`: n_samples / (n_classes * count), as scikit-learn's class_weight="balanced"."""
    if mode is None:
        return None
    if mode != "balanced":
        raise LokalError(f"loss.class_weights={mode!r}: use null or 'balanced'")
    counts = torch.as_tensor(counts, dtype=torch.float32)
    if (counts == 0).any():
        raise LokalError(f"a class has no training examples (counts {counts.tolist()}): cannot weight it")
    return counts.sum() / (len(counts) * counts)


def cross_entropy(class_counts: Sequence[int], class_weights_mode: str | None = None,
                  label_smoothing: float = 0.0) -> nn.Module:
    return CrossEntropy(weight=class_weights(class_counts, class_weights_mode), label_smoothing=label_smoothing)


class CrossEntropy(nn.CrossEntropyLoss):
    """torch's cross-entropy, with one fix for class-weighted soft targets: torch averages
    those over the batch size, but hard labels over the summed weights of their classes, so
    the same one-hot target gave a different loss (by the batch's mean weight). Here soft
    targets are averaged over their expected weight, sum_i sum_c w_c t_ic: one-hot equals hard."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 1 or self.weight is None:
            return super().forward(logits, target)
        total = F.cross_entropy(logits, target, weight=self.weight, reduction="sum",
                                label_smoothing=self.label_smoothing)
        return total / (target @ self.weight).sum()


def binary_cross_entropy(class_counts: Sequence[int], examples: int,
                         pos_weight_mode: str | None = None) -> nn.Module:
    """Multi-label: one sigmoid cross-entropy per label. `class_counts` are each label's positive
    training examples; pos_weight_mode "balanced" weighs positives by negatives / positives (as
    torch's pos_weight), so a rare label's few positives count as much as its many negatives."""
    if pos_weight_mode not in (None, "balanced"):
        raise LokalError(f"loss.pos_weight_mode={pos_weight_mode!r}: choose null or balanced")
    if pos_weight_mode is None:
        return nn.BCEWithLogitsLoss()
    positives = torch.as_tensor(class_counts, dtype=torch.float32).clamp(min=1)
    return nn.BCEWithLogitsLoss(pos_weight=(examples - positives) / positives)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): down-weights easy examples by (1 - p_true)^gamma, so the
    many easy majority-class examples stop dominating the gradient. gamma=0 is cross-entropy."""

    def __init__(self, class_counts: Sequence[int], gamma: float = 2.0, class_weights_mode: str | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", class_weights(class_counts, class_weights_mode), persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == 2:
            return self.soft(logits, labels)
        log_p = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)  # (B,)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is None:
            return loss.mean()
        weight = self.weight[labels]
        return (weight * loss).sum() / weight.sum()  # same normalisation as weighted cross-entropy

    def soft(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft targets (B, C): the focal term's expectation over the target distribution,
        -sum_c t_c (1 - p_c)^gamma log p_c; weighted like CrossEntropy's soft targets."""
        log_p = F.log_softmax(logits, dim=-1)
        terms = -target * (1 - log_p.exp()) ** self.gamma * log_p  # (B, C)
        if self.weight is None:
            return terms.sum(-1).mean()
        return (terms * self.weight).sum() / (target @ self.weight).sum()

"""Classification losses for imbalanced local data: class-weighted cross-entropy and focal loss.

Each is built by `run.py` with the training split's class counts, so "balanced" weights
come from the data actually trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lokal import LokalError


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
    return nn.CrossEntropyLoss(weight=class_weights(class_counts, class_weights_mode), label_smoothing=label_smoothing)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): down-weights easy examples by (1 - p_true)^gamma, so the
    many easy majority-class examples stop dominating the gradient. gamma=0 is cross-entropy."""

    def __init__(self, class_counts: Sequence[int], gamma: float = 2.0, class_weights_mode: str | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", class_weights(class_counts, class_weights_mode), persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)  # (B,)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is None:
            return loss.mean()
        weight = self.weight[labels]
        return (weight * loss).sum() / weight.sum()  # same normalisation as weighted cross-entropy

"""Imbalance handling: class weights as scikit-learn computes them, focal loss reducing to
cross-entropy at gamma=0, and a sampler that draws classes equally often."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lokal.data.base import balanced_sampler
from lokal.errors import LokalError
from lokal.training.losses import FocalLoss, class_weights, cross_entropy

COUNTS = [90, 8, 2]
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
LOGITS = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))


def test_balanced_weights_equal_scikit_learns():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.repeat([0, 1, 2], COUNTS)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert torch.allclose(class_weights(COUNTS, "balanced"), torch.tensor(expected, dtype=torch.float32))
    assert class_weights(COUNTS, None) is None


def test_unknown_weighting_and_empty_classes_are_refused():
    with pytest.raises(LokalError, match="use null or 'balanced'"):
        class_weights(COUNTS, "inverse")
    with pytest.raises(LokalError, match="no training examples"):
        class_weights([5, 0], "balanced")


@pytest.mark.parametrize("mode", [None, "balanced"])
def test_focal_loss_with_gamma_zero_is_cross_entropy(mode):
    focal = FocalLoss(COUNTS, gamma=0.0, class_weights_mode=mode)
    assert torch.allclose(focal(LOGITS, LABELS), cross_entropy(COUNTS, mode)(LOGITS, LABELS), atol=1e-6)


def test_focal_loss_discounts_easy_examples():
    easy = torch.tensor([[6.0, 0.0, 0.0]])  # confidently right
    hard = torch.tensor([[0.0, 0.5, 0.0]])  # wrong
    label = torch.tensor([0])
    focal = FocalLoss(COUNTS, gamma=2.0)
    assert focal(easy, label) < 1e-3 * F.cross_entropy(easy, label)
    assert focal(hard, label) > 0.3 * F.cross_entropy(hard, label)


def test_balanced_sampler_draws_classes_equally_often():
    labels = [0] * 900 + [1] * 80 + [2] * 20
    drawn = Counter(labels[i] for i in balanced_sampler(labels, seed=0))
    assert sum(drawn.values()) == 1000
    assert all(280 < drawn[c] < 390 for c in range(3)), drawn
    assert list(balanced_sampler(labels, seed=0)) == list(balanced_sampler(labels, seed=0))

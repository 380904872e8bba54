"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lokal.methods import Method


@dataclass
class Full(Method):
    lr: float = 5e-5
    def apply(self, model: nn.Module) -> nn.Module:
        for param in model.net.parameters():
            param.requires_grad = True
        return model

"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class Full:
    lr: float = 5e-5  # the learning rate this method usually wants; conf/optimizer reads it
    def apply(self, model: nn.Module) -> nn.Module:
        for param in model.net.parameters():
            param.requires_grad = True
        return model

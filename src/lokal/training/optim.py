"""Learning-rate schedules: linear warmup, then cosine or linear decay (per optimizer step)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

LambdaLR = torch.optim.lr_scheduler.LambdaLR


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1,
                  min_lr_ratio: float = 0.0) -> LambdaLR:
    return _warmup_then(optimizer, total_steps, warmup_ratio, min_lr_ratio,
                        lambda t: 0.5 * (1 + math.cos(math.pi * t)))


def warmup_linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1,
                  min_lr_ratio: float = 0.0) -> LambdaLR:
    return _warmup_then(optimizer, total_steps, warmup_ratio, min_lr_ratio, lambda t: 1 - t)


def _warmup_then(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, min_lr_ratio: float,
                 decay: Callable[[float], float]) -> LambdaLR:
    """`decay` maps progress t in [0, 1] after warmup to a factor in [0, 1], floored at min_lr_ratio."""
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * decay(progress)

    return LambdaLR(optimizer, factor)

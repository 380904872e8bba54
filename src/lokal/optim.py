"""Learning-rate schedules: linear warmup, then cosine or linear decay (per optimizer step)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    return _warmup_then(optimizer, total_steps, warmup_ratio, lambda t: min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def warmup_linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    return _warmup_then(optimizer, total_steps, warmup_ratio, lambda t: min_lr_ratio + (1 - min_lr_ratio) * (1 - t))


def _warmup_then(optimizer, total_steps: int, warmup_ratio: float, decay) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return decay(min(1.0, (step - warmup) / max(1, total_steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""Fine-tuning methods. Each is a small dataclass whose fields are its YAML keys and whose
`apply(model)` is the one place it touches the model: freeze, unfreeze or inject weights.

A few methods also shape training; they override the optional hooks of `Method`, which
`ClassifierModule` calls: per-group learning rates (layer-wise decay), a loss penalty (L2-SP),
and a per-epoch change of what trains (gradual unfreezing). The defaults do nothing.

Adding a method = `src/lokal/methods/NAME.py` + `src/lokal/conf/method/NAME.yaml` + a row in
`tests/test_methods.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lokal.errors import LokalError


@dataclass
class Method:
    """What every method offers. Subclasses set their own `lr` default (the learning rate
    the method usually wants; `src/lokal/conf/optimizer` reads it) and implement `apply`."""

    lr: float = 1e-3

    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Optimizer parameter groups; a group may carry `lr_scale` (times the optimizer's lr)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the training loss (None: nothing)."""
        return None

    def on_train_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Change what trains per epoch; a pure function of `epoch`, so it survives resume."""


def freeze_all_but(model: nn.Module, trainable: Iterable[str], method: str) -> nn.Module:
    """Train exactly the parameters of `model.net` whose names start with one of `trainable`."""
    prefixes = tuple(p if p.endswith(".") else p + "." for p in trainable)
    count = 0
    for name, param in model.net.named_parameters():
        param.requires_grad = (name + ".").startswith(prefixes)
        count += param.requires_grad
    if count == 0:
        raise LokalError(f"method={method} would train no parameters of {model.name}")
    return model


def head_prefixes(model: nn.Module) -> list[str]:
    return [f"{name}." for name in model.head_names]


def require_modality(model: nn.Module, modalities: tuple[str, ...], method: str, hint: str) -> None:
    """Stop before training when a method cannot apply to this kind of model."""
    if model.modality not in modalities:
        raise LokalError(f"method={method} applies to {'/'.join(modalities)} models, not {model.name} "
                         f"({model.modality}); {hint}")

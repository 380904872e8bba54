"""Fine-tuning methods. Each is a small dataclass whose fields are its YAML keys and whose
`apply(model)` is the one place it touches the model: freeze, unfreeze or inject weights.

Adding a method = `src/lokal/methods/NAME.py` + `conf/method/NAME.yaml` + a row in
`tests/test_methods.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from torch import nn

from lokal import LokalError


class FinetuneMethod(Protocol):
    def apply(self, model: nn.Module) -> nn.Module: ...


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

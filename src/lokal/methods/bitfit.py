"""BitFit (Ben Zaken et al. 2022): train only the bias terms, plus the new task head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lokal.errors import LokalError
from lokal.methods import Method, freeze_all_but, head_prefixes


@dataclass
class BitFit(Method):
    lr: float = 1e-3
    # LLaMA/Gemma-style layers have no biases. true = give every bias-free Linear layer
    # outside the head a zero bias (the model's outputs do not change) and train those.
    add_bias: bool = False

    def apply(self, model: nn.Module) -> nn.Module:
        head = tuple(head_prefixes(model))
        if self.add_bias:
            add_zero_biases(model.net, skip=head)
        # Norm-layer biases (LayerNorm/BatchNorm `.bias`) count too, as in the paper.
        biases = [n for n, _ in model.net.named_parameters() if n.endswith(".bias")]
        if not [n for n in biases if not n.startswith(head)]:
            raise LokalError(
                f"method=bitfit: {model.name} has no bias terms outside its head (LLaMA/Gemma-style "
                "layers are bias-free), so BitFit would train only the head. Add zero biases with "
                "method.add_bias=true, or use method=lora"
            )
        return freeze_all_but(model, biases + list(head), "bitfit")


def add_zero_biases(net: nn.Module, skip: tuple[str, ...]) -> None:
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear) and module.bias is None and not (name + ".").startswith(skip):
            weight = module.weight
            module.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))

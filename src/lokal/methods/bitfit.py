"""BitFit (Ben Zaken et al. 2022): train only the bias terms, plus the new task head."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lokal import LokalError
from lokal.methods import Method, freeze_all_but, head_prefixes


@dataclass
class BitFit(Method):
    lr: float = 1e-3
    def apply(self, model: nn.Module) -> nn.Module:
        # Norm-layer biases (LayerNorm/BatchNorm `.bias`) count too, as in the paper.
        biases = [n for n, _ in model.net.named_parameters() if n.endswith(".bias")]
        head = head_prefixes(model)
        if not [n for n in biases if not n.startswith(tuple(head))]:
            raise LokalError(
                f"method=bitfit: {model.name} has no bias terms outside its head (LLaMA/Gemma-style "
                "layers are bias-free), so BitFit would train only the head; use method=lora instead"
            )
        return freeze_all_but(model, biases + head, "bitfit")

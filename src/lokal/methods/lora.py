"""LoRA (Hu et al. 2021) and DoRA (Liu et al. 2024) through PEFT.

The base stays frozen; only the low-rank adapters and the task head train and get saved,
so one base model serves many small per-domain adapters (`adapter_name` tells them apart).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from lokal.errors import LokalError
from lokal.methods import Method


@dataclass
class LoRA(Method):
    lr: float = 2e-3
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=list)
    use_dora: bool = False
    adapter_name: str = "default"

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        from lokal.training.weights import check_adapter_name

        check_adapter_name(self.adapter_name)
        targets = list(self.target_modules or model.lora_targets)
        self._check_targets(model.net, targets, model.name)
        config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            use_dora=self.use_dora,
            modules_to_save=model.head_names,  # the new head trains in full and is saved with the adapter
        )
        model.net = get_peft_model(model.net, config, adapter_name=self.adapter_name)
        return model

    @staticmethod
    def _check_targets(net: nn.Module, targets: list[str], model_name: str) -> None:
        """PEFT's own error names no alternatives; list the layer names that do exist."""
        if not targets:
            raise LokalError(f"method=lora needs target_modules: none given and {model_name} has no default")
        leaves = {n.rsplit(".", 1)[-1] for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        missing = [t for t in targets if not any(re.fullmatch(t, leaf) or t == leaf for leaf in leaves)]
        if missing:
            raise LokalError(
                f"method.target_modules {missing} match no Linear/Conv2d layer of {model_name}; "
                f"layer names there: {', '.join(sorted(leaves))}"
            )

"""Partial fine-tuning: freeze the early blocks, train the last `last_n_blocks` and the head.

Blocks are the model's own repeated units (transformer layers, timm stages). Everything
registered after the first trained block (final norms, pooler, conv head) trains too.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lokal import LokalError
from lokal.methods import Method, freeze_all_but, head_prefixes


@dataclass
class Partial(Method):
    lr: float = 1e-4
    last_n_blocks: int = 2

    def apply(self, model: nn.Module) -> nn.Module:
        blocks = model.blocks()
        if not 0 <= self.last_n_blocks <= len(blocks):
            raise LokalError(
                f"method.last_n_blocks={self.last_n_blocks}, but {model.name} has {len(blocks)} blocks"
            )
        names = [n for n, _ in model.net.named_parameters()]
        trainable = head_prefixes(model)
        if self.last_n_blocks:
            first = blocks[-self.last_n_blocks] + "."
            start = next(i for i, n in enumerate(names) if n.startswith(first))
            trainable += names[start:]
        return freeze_all_but(model, trainable, "partial")

"""Partial fine-tuning: freeze the early blocks, train the last `last_n_blocks` and the head,
optionally unfrozen gradually from the top (ULMFiT, Howard & Ruder 2018).

Blocks are the model's own repeated units (transformer layers, timm stages). Everything
registered after the first trained block (final norms, pooler, conv head) trains too.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lokal.errors import LokalError
from lokal.methods import Method, freeze_all_but, head_prefixes


@dataclass
class Partial(Method):
    lr: float = 1e-4
    last_n_blocks: int = 2
    # 0 = all N blocks train from the start. k > 0 = gradual unfreezing: the first k epochs
    # train only the head (and what follows the last block), then one more block from the
    # top every k epochs. A function of the epoch alone, so a resumed run picks it up exactly.
    unfreeze_every: int = 0

    def apply(self, model: nn.Module) -> nn.Module:
        blocks = model.blocks()
        if not 0 <= self.last_n_blocks <= len(blocks):
            raise LokalError(
                f"method.last_n_blocks={self.last_n_blocks}, but {model.name} has {len(blocks)} blocks"
            )
        if self.unfreeze_every < 0:
            raise LokalError(f"method.unfreeze_every={self.unfreeze_every}: give 0 (off) or a number of epochs")
        names = [n for n, _ in model.net.named_parameters()]
        trainable = head_prefixes(model)
        if self.last_n_blocks:
            first = blocks[-self.last_n_blocks] + "."
            start = next(i for i, n in enumerate(names) if n.startswith(first))
            trainable += names[start:]
        # Every parameter that will ever train is trainable now, so the optimizer holds it
        # from the start; the schedule below freezes the blocks whose turn has not come.
        self._scheduled = [b + "." for b in reversed(blocks[len(blocks) - self.last_n_blocks:])]
        return freeze_all_but(model, trainable, "partial")

    def on_train_epoch_start(self, model: nn.Module, epoch: int) -> None:
        if not self.unfreeze_every:
            return
        open_blocks = min(len(self._scheduled), epoch // self.unfreeze_every)
        frozen = tuple(self._scheduled[open_blocks:])
        for name, param in model.net.named_parameters():
            if name.startswith(tuple(self._scheduled)):
                param.requires_grad = not name.startswith(frozen) if frozen else True

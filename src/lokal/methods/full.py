"""Full fine-tuning, with two optional guards against catastrophic forgetting:
layer-wise learning-rate decay (ULMFiT, Howard & Ruder 2018; ELECTRA, Clark et al. 2020)
and L2-SP, a pull toward the pretrained weights (Li et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lokal.errors import LokalError
from lokal.methods import Method


@dataclass
class Full(Method):
    lr: float = 5e-5
    # 1.0 = one lr everywhere; 0.8 = each block gets 0.8x the lr of the block above it, the
    # embeddings/stem the smallest: early layers hold the general features worth keeping.
    layer_decay: float = 1.0
    # alpha of L2-SP: loss += l2sp / 2 * ||w - w_pretrained||^2 over the backbone (0 = off).
    # Keeps a copy of the pretrained backbone in memory while training.
    l2sp: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.layer_decay <= 1:
            raise LokalError(f"method.layer_decay={self.layer_decay}: give a value in (0, 1]; 1 turns decay off")
        if self.l2sp < 0:
            raise LokalError(f"method.l2sp={self.l2sp}: give 0 (off) or a positive strength such as 0.01")

    def apply(self, model: nn.Module) -> nn.Module:
        for param in model.net.parameters():
            param.requires_grad = True
        head = tuple(f"{name}." for name in model.head_names)
        self._anchor = {}
        if self.l2sp:  # the new head has no pretrained value to return to
            self._anchor = {n: p.detach().clone() for n, p in model.net.named_parameters() if not n.startswith(head)}
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        if self.layer_decay == 1.0:
            return super().param_groups(model)
        depths = layer_depths(model)
        groups: dict[int, list[nn.Parameter]] = {}
        for name, param in model.net.named_parameters():
            if param.requires_grad:
                groups.setdefault(depths[name], []).append(param)
        return [{"params": params, "lr_scale": self.layer_decay**depth} for depth, params in sorted(groups.items())]

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if not self.l2sp:
            return None
        params = dict(model.net.named_parameters())
        drift = 0.0
        for name, anchor in self._anchor.items():
            param = params[name]
            if anchor.device != param.device:  # moved once, after the model moved to a GPU
                anchor = self._anchor[name] = anchor.to(param.device)
            drift = drift + (param - anchor).pow(2).sum()
        return self.l2sp / 2 * drift


def layer_depths(model: nn.Module) -> dict[str, int]:
    """Distance of each parameter from the top: 0 for the head and whatever follows the last
    block (final norm, pooler), k for the k-th block from the top, len(blocks) + 1 for the
    embeddings/stem before the first block."""
    blocks = model.blocks()
    names = [n for n, _ in model.net.named_parameters()]
    first = next(i for i, n in enumerate(names) if n.startswith(blocks[0] + "."))
    depths = {}
    for i, name in enumerate(names):
        block = next((k for k, b in enumerate(blocks) if name.startswith(b + ".")), None)
        if block is not None:
            depths[name] = len(blocks) - block
        else:
            depths[name] = len(blocks) + 1 if i < first else 0
    return depths

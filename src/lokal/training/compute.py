"""How the model computes during training, switched on before fit and off after it: `torch.compile`,
gradient checkpointing and the cheaper CPU dropout. Compile and checkpointing are off by default:
compile pays minutes of compilation before the first step and only pays back on a GPU over long
runs (benchmarks/gpu.py measures it); checkpointing trades ~30% more compute for activation
memory. Fast dropout is on for CPU training (`auto`): same law, a quarter of the cost
(lokal.training.dropout)."""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import Callback
from torch import nn

from lokal.errors import LokalError
from lokal.training.dropout import use_fast_dropout

log = logging.getLogger(__name__)


class Compute(Callback):
    """`compile`: `torch.compile` the LokalModel in place (`nn.Module.compile`), after the method
    wrapped it, so checkpoints keep their plain names (no `_orig_mod.` prefix).
    `gradient_checkpointing`: recompute each block's activations in the backward pass.
    `fast_dropout`: `auto` (on when training on a CPU, where torch's dropout is slow), true, false."""

    def __init__(self, compile: bool = False, gradient_checkpointing: bool = False,
                 fast_dropout: bool | str = "auto") -> None:
        if fast_dropout not in (True, False, "auto"):
            raise LokalError(f"callbacks.compute.fast_dropout={fast_dropout!r}: choose auto, true or false")
        self.compile, self.gradient_checkpointing = compile, gradient_checkpointing
        self.fast_dropout = fast_dropout
        self._undo_fast_dropout = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if self.fast_dropout is True or (self.fast_dropout == "auto" and trainer.strategy.root_device.type == "cpu"):
            self._undo_fast_dropout = use_fast_dropout(pl_module.model.net)
        if self.gradient_checkpointing:
            enable_gradient_checkpointing(pl_module.model.net)
        if self.compile:
            # the before-training evaluation already ran uncompiled: compiling starts with training
            pl_module.model.compile()
            log.info("torch.compile: the first steps compile (minutes), later ones run compiled")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """Testing, predicting and exporting see the model as loaded (eval mode has no dropout anyway)."""
        if stage == "fit" and self._undo_fast_dropout is not None:
            self._undo_fast_dropout()
            self._undo_fast_dropout = None


def enable_gradient_checkpointing(net: nn.Module) -> None:
    """HF models (also inside a PEFT wrapper, which forwards the call) and timm models.

    Non-reentrant checkpointing (`use_reentrant=False`) gives exact gradients even when no input
    of a block requires grad, as with LoRA on a frozen embedding, so PEFT models need no
    `enable_input_require_grads` hook (that is only for the reentrant variant)."""
    if hasattr(net, "activation_checkpointing_enable"):  # transformers >= 5.2 (the old name warns)
        net.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(net, "gradient_checkpointing_enable"):
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(net, "set_grad_checkpointing"):  # timm
        net.set_grad_checkpointing(True)
    else:
        raise LokalError(f"{type(net).__name__} offers no gradient checkpointing; "
                         "set callbacks.compute.gradient_checkpointing=false")

"""What every task's LightningModule shares (lokal.tasks): the method's hooks, the optimizer and
scheduler from the config's factories, checkpoints of what trains only."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn


def make_optimizer(factory: Callable[..., torch.optim.Optimizer], groups: list[dict]) -> torch.optim.Optimizer:
    """The configured optimizer over a method's parameter groups; a group's `lr_scale`
    (layer-wise decay) multiplies the configured learning rate."""
    optimizer = factory(groups)
    for group in optimizer.param_groups:
        group["lr"] *= group.pop("lr_scale", 1.0)
    return optimizer


class FinetuneModule(L.LightningModule):
    """What every lokal LightningModule shares, whatever the task: the method's training hooks,
    the optimizer and scheduler from the config's factories, checkpoints of what trains only.
    Each task's module adds its steps and metrics (lokal.tasks.*)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        method=None,
    ) -> None:
        super().__init__()
        # from_pretrained returns modules in eval mode and Lightning keeps modes as it finds
        # them: without this, dropout would silently stay off during training.
        self.model = model.train()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.method = method  # a lokal.methods.Method: its optional hooks shape training
        # Checkpoints hold only what trains (plus buffers); the frozen base comes from the model.
        self.strict_loading = False

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.model(batch)

    def on_train_epoch_start(self) -> None:
        if self.method is not None:
            self.method.on_train_epoch_start(self.model, self.current_epoch)

    def on_train_start(self) -> None:
        """Also here: a run resumed mid-epoch gets no on_train_epoch_start from Lightning, and the
        method's per-epoch state (which blocks are open) must be the epoch's from the first batch."""
        self.on_train_epoch_start()

    def method_penalty(self) -> torch.Tensor | float:
        penalty = self.method.penalty(self.model) if self.method is not None else None
        if penalty is None:
            return 0.0
        self.log("train/penalty", penalty, batch_size=1)
        return penalty

    def configure_optimizers(self):
        optimizer = make_optimizer(self.optimizer_factory, self.param_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def param_groups(self) -> list[dict]:
        if self.method is not None:
            return self.method.param_groups(self.model)
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def state_dict(self, *args, **kwargs):
        """Drop frozen parameters: a LoRA checkpoint of Gemma is MBs, not a GB. Every name of a
        tied weight counts (Gemma's `lm_head.weight` is its embedding under a second name)."""
        state = super().state_dict(*args, **kwargs)
        frozen = {f"{kwargs.get('prefix', '')}{n}" for n, p in self.named_parameters(remove_duplicate=False)
                  if not p.requires_grad}
        return type(state)((k, v) for k, v in state.items() if k not in frozen)


class ScoredModule(FinetuneModule):
    """A module whose scores are torchmetrics collections (`val_metrics`, `test_metrics`, built
    by the task's module), logged once per epoch."""

    def on_validation_epoch_end(self) -> None:
        # torchmetrics' compute() already gathered every process's predictions: sync_dist only
        # tells Lightning so (the mean of equal values), under DDP
        self.log_dict(self.val_metrics.compute(), prog_bar=True, sync_dist=True)
        self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()

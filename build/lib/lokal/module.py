"""The LightningModules: a shared base (the method's hooks, the optimizer/scheduler factories
from the config) and the classifier's (a loss and torchmetrics). Causal-LM fine-tuning has its
own in lokal.lm."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn


def classification_metrics(num_classes: int, prefix: str):
    """The metrics logged while training (val/) and by `trainer.test`; the run's final test
    metrics come from its predictions (lokal.evaluation.classification_report)."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            # mean recall per class: what a majority-class guess cannot inflate on imbalanced data
            "balanced_accuracy": MulticlassAccuracy(num_classes, average="macro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "auroc": MulticlassAUROC(num_classes, average="macro"),  # one-vs-rest; equals binary AUROC for 2 classes
        },
        prefix=prefix,
    )


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
    Subclasses add the task's steps and metrics (LokalModule here; lokal.lm.LMModule)."""

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


class LokalModule(FinetuneModule):
    """Classification: a model with a task head, a loss, torchmetrics."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        loss: nn.Module | None = None,
        method=None,
    ) -> None:
        super().__init__(model, optimizer, scheduler, method)
        self.loss = nn.CrossEntropyLoss() if loss is None else loss
        self.val_metrics = classification_metrics(num_classes, "val/")
        self.test_metrics = classification_metrics(num_classes, "test/")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """`label` is (B,) class ids, or (B, C) soft targets when the data module mixes
        training batches (data.mixup): lokal's losses take both."""
        loss = self.loss(self(batch), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss + self.method_penalty()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch).float()  # bf16 probabilities tie often: scores (and predictions.csv) use fp32
        # plain cross-entropy, whatever the training loss: val/loss stays comparable across runs
        self.log("val/loss", nn.functional.cross_entropy(logits, batch["label"]), prog_bar=True, batch_size=len(logits),
                 sync_dist=True)
        self.val_metrics.update(logits.softmax(-1), batch["label"])

    def on_validation_epoch_end(self) -> None:
        # torchmetrics' compute() already gathered every process's predictions: sync_dist only
        # tells Lightning so (the mean of equal values), under DDP
        self.log_dict(self.val_metrics.compute(), prog_bar=True, sync_dist=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.test_metrics.update(self(batch).float().softmax(-1), batch["label"])

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()

"""timm image models (ResNet, DenseNet, Inception, EfficientNet, ViT, ...) as classifiers."""

from __future__ import annotations

from pathlib import Path

import torch

from lokal.errors import LokalError
from lokal.models import LokalModel


class ImageClassifier(LokalModel):
    """Any timm architecture with a fresh `num_classes` head.

    Weights come from `checkpoint` (a local file, e.g. the shipped EfficientNet-Lite0),
    else from the hub when `pretrained` is set, else random (only sensible for tests).
    """

    modality = "image"
    task, tasks = "classification", ("classification", "multi_label")  # one logit per class, or per label

    def __init__(
        self,
        name: str,
        num_classes: int,
        checkpoint: str | None = None,
        pretrained: bool = True,
        image_size: int | None = None,
        lora_targets: list[str] | None = None,
    ) -> None:
        super().__init__()
        import timm

        if name not in timm.list_models() and name not in timm.list_pretrained():
            raise LokalError(f"unknown timm model {name!r}; see `timm.list_models('*resnet*')` for names")
        overlay = None
        if checkpoint:
            if not Path(checkpoint).is_file():
                raise LokalError(f"model.checkpoint={checkpoint} does not exist: give a .pth/.safetensors file")
            overlay = {"file": str(checkpoint)}  # timm loads it like a hub file, minus the old head
        self.name, self.lora_targets = name, list(lora_targets or [])
        try:
            self.net = timm.create_model(
                name, pretrained=bool(checkpoint) or pretrained, num_classes=num_classes, pretrained_cfg_overlay=overlay
            )
        except (OSError, RuntimeError) as err:  # hub offline, or weights of another architecture
            raise LokalError(
                f"timm model {name}: pretrained weights could not be loaded ({str(err).splitlines()[0]}). "
                "Give model.checkpoint=FILE for this architecture, or run with the network on"
            ) from err
        self.data_config = timm.data.resolve_data_config({}, model=self.net)
        if image_size:
            self.data_config["input_size"] = (3, image_size, image_size)

    @property
    def head_names(self) -> list[str]:
        return [self.net.pretrained_cfg["classifier"]]

    def blocks(self) -> list[str]:
        """The stages/blocks in order, from timm's `feature_info` (stage ends): when they all sit
        in one container (EfficientNet/ViT `blocks`, ConvNeXt `stages`), every child of it,
        so stages without a resolution change count too; else the stage modules themselves."""
        stages = [info["module"] for info in getattr(self.net, "feature_info", [])]
        parents = {name.rpartition(".")[0] for name in stages}
        if len(parents) == 1 and (parent := parents.pop()):
            stages = [f"{parent}.{name}" for name, _ in self.net.get_submodule(parent).named_children()]
        head = tuple(f"{name}." for name in self.head_names)
        blocks = [name for name in stages if not (name + ".").startswith(head)
                  and any(True for _ in self.net.get_submodule(name).parameters())]
        if not blocks:
            raise LokalError(f"{self.name}: timm reports no stages (feature_info); methods that need blocks "
                             "(partial, side, adapter) cannot find them")
        return blocks

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["image"])

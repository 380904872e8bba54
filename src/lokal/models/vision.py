"""timm image models (ResNet, DenseNet, Inception, EfficientNet, ViT, ...) as classifiers."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lokal import LokalError


class ImageClassifier(nn.Module):
    """Any timm architecture with a fresh `num_classes` head.

    Weights come from `checkpoint` (a local file, e.g. the shipped EfficientNet-Lite0),
    else from the hub when `pretrained` is set, else random (only sensible for tests).
    """

    modality = "image"

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
        """timm's own coarse groups (stages / blocks), without the stem and the head group."""
        from timm.models import group_modules

        groups = group_modules(self.net, self.net.group_matcher(coarse=True))
        ordered = [groups[k] for k in sorted(groups)]
        return [modules[0] for modules in ordered[1:-1]]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["image"])

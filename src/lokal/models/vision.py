"""timm image models (ResNet, DenseNet, Inception, EfficientNet, ViT, ...) as classifiers."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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
        self.name = name
        try:
            self.net = create_net(name, num_classes, bool(checkpoint) or pretrained, overlay, image_size)
        except (OSError, RuntimeError) as err:  # hub offline, or weights of another architecture
            raise LokalError(
                f"timm model {name}: pretrained weights could not be loaded ({str(err).splitlines()[0]}). "
                "Give model.checkpoint=FILE for this architecture, or run with the network on"
            ) from err
        self.lora_targets = list(lora_targets or found_lora_targets(self.net, self.blocks()))
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


def create_net(name: str, num_classes: int, pretrained: bool, overlay: dict | None, image_size: int | None):
    """timm's model; vision transformers are built for `image_size` (their position embeddings,
    pretrained ones resampled by timm), since a ViT accepts only the size it was built for."""
    import timm

    options = {"pretrained": pretrained, "num_classes": num_classes, "pretrained_cfg_overlay": overlay}
    if image_size:
        try:
            return timm.create_model(name, img_size=image_size, **options)
        except TypeError as err:  # CNNs take any size and no img_size argument
            if "img_size" not in str(err):
                raise
    return timm.create_model(name, **options)


def found_lora_targets(net: nn.Module, blocks: list[str]) -> list[str]:
    """Layer names inside the blocks that LoRA (and (IA)^3) can wrap wherever they occur: the
    attention Linears of a transformer (ViT: qkv), else the dense convolutions of a CNN (ResNet:
    conv1-3, DenseNet: conv/conv1/conv2, Inception: conv), else the blocks' Linears (ConvNeXt:
    fc1, fc2). Depthwise/grouped convs, timm's padded `Conv2dSame`, and names shared with another
    kind of layer elsewhere (ViT's patch-embedding conv `proj`) are left out."""
    inside = [(f"{block}.{name}", module) for block in blocks
              for name, module in net.get_submodule(block).named_modules() if name and not leaf(name).isdigit()]
    attention = {leaf(name) for name, m in inside if type(m) is nn.Linear and "attn" in name}
    convs = {leaf(name) for name, m in inside if type(m) is nn.Conv2d and m.groups == 1}
    linears = {leaf(name) for name, m in inside if type(m) is nn.Linear}
    wanted, kind = (attention, nn.Linear) if attention else (convs, nn.Conv2d) if convs else (linears, nn.Linear)
    elsewhere = {leaf(name) for name, m in net.named_modules() if type(m) is not kind or not dense(m)}
    return sorted(wanted - elsewhere)


def leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def dense(module: nn.Module) -> bool:
    return not isinstance(module, nn.Conv2d) or module.groups == 1

"""Additive methods: new weights beside the frozen old ones, in one of two places.

- `kind=ia3`: (IA)^3 (Liu et al. 2022) through PEFT: learned vectors that rescale the keys,
  values and feed-forward activations *inside* the model. The fewest new weights of any
  method; mergeable into the base afterwards.
- `kind=side`: a parallel side network (Ladder Side-Tuning, Sung et al. 2022) *outside* the
  model: a small network reads each frozen block's output and adds its own logits to the
  head's. Nothing inside the base trains, so no gradient flows back through it: the lowest
  training memory of all methods. Not mergeable (it is a second network).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lokal.errors import LokalError
from lokal.methods import Method, freeze_all_but, head_prefixes

KINDS = ("ia3", "side")


@dataclass
class Additive(Method):
    lr: float = 3e-3
    kind: str = "ia3"
    # ia3: layer names to rescale (null = PEFT's default for HF models, the model's
    # lora_targets for timm); feed-forward ones rescale their input instead of their output.
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None
    side_dim: int = 64  # side: width of the side network
    adapter_name: str = "default"  # ia3: the PEFT adapter name (adapter.name in src/lokal/conf/train.yaml)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LokalError(f"method.kind={self.kind!r}: choose one of {', '.join(KINDS)}")

    def apply(self, model: nn.Module) -> nn.Module:
        return self._ia3(model) if self.kind == "ia3" else self._side(model)

    def _ia3(self, model: nn.Module) -> nn.Module:
        from peft import IA3Config, get_peft_model
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        from lokal.training.weights import check_adapter_name

        check_adapter_name(self.adapter_name)

        targets, feedforward = self.target_modules, self.feedforward_modules
        model_type = getattr(getattr(model.net, "config", None), "model_type", None)
        if targets is None and model_type not in PEFT_DEFAULTS:  # timm, or a type PEFT does not know
            targets = list(model.ia3_targets)
            feedforward = list(feedforward or model.ia3_feedforward)
        if targets is not None:
            from lokal.methods.lora import LoRA

            LoRA._check_targets(model.net, targets, model.name)
        config = IA3Config(target_modules=targets, feedforward_modules=feedforward,
                           modules_to_save=model.head_names, task_type=model.peft_task_type)
        model.net = get_peft_model(model.net, config, adapter_name=self.adapter_name)
        return model

    def _side(self, model: nn.Module) -> nn.Module:
        if model.task != "classification":
            raise LokalError(f"method.kind=side adds class logits, but {model.name} is a {model.task} model; "
                             "use method.kind=ia3, or method=lora / prompt / adapter")
        blocks = [model.net.get_submodule(b) for b in model.blocks()]
        widths, classes = probe(model, blocks)
        model.net.lokal_side = LadderSide(widths, self.side_dim, classes)
        captured: list[torch.Tensor] = []
        for block in blocks:
            block.register_forward_hook(lambda _m, _args, out: captured.append(first_tensor(out).detach()))

        def add_side_logits(_model, args, logits):
            features = [pool(x, args[0].get("attention_mask")) for x in captured]
            captured.clear()
            return logits + model.net.lokal_side(features)

        model.register_forward_hook(add_side_logits)
        return freeze_all_but(model, ["lokal_side.", *head_prefixes(model)], "additive")


class LadderSide(nn.Module):
    """Down-project each block's pooled output, mix it into a running side state through a
    learned gate, refine with a small residual MLP; the last state gives extra logits."""

    def __init__(self, widths: list[int], dim: int, classes: int) -> None:
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(w, dim) for w in widths)
        self.gates = nn.Parameter(torch.zeros(len(widths)))  # sigmoid(0) = an even mix at the start
        self.mlps = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU()) for _ in widths)
        self.out = nn.Linear(dim, classes)
        nn.init.zeros_(self.out.weight)  # starts as the base model plus nothing
        nn.init.zeros_(self.out.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:  # each (B, width_i)
        state = torch.zeros_like(self.down[0](features[0]))
        for gate, down, mlp, x in zip(self.gates.sigmoid(), self.down, self.mlps, features, strict=True):
            state = gate * state + (1 - gate) * down(x)
            state = state + mlp(state)
        return self.out(state)  # (B, classes)


def first_tensor(output) -> torch.Tensor:
    """HF layers may return tuples; the hidden states come first."""
    return output[0] if isinstance(output, (tuple, list)) else output


def pool(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, C, H, W) -> mean over space; (B, T, C) -> mean over real (unmasked) tokens."""
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    if mask is not None and mask.shape[1] > x.shape[1] and mask.shape[1] % x.shape[1] == 0:
        mask = mask[:, :: mask.shape[1] // x.shape[1]]  # Whisper: 2 log-mel frames per encoder position
    if mask is None or mask.shape[1] != x.shape[1]:  # ViT tokens, or a prompt-extended sequence
        return x.mean(dim=1)
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1)


def probe(model: nn.Module, blocks: list[nn.Module]) -> tuple[list[int], int]:
    """Each block's output width and the number of classes, from one dry forward pass."""
    widths: list[int] = []

    def record(_module, _args, output) -> None:
        x = first_tensor(output)
        widths.append(x.shape[1] if x.dim() == 4 else x.shape[-1])  # (B, C, H, W) or (B, T, C)

    hooks = [block.register_forward_hook(record) for block in blocks]
    was_training = model.training
    try:
        with torch.no_grad():
            logits = model.eval()(dummy_batch(model))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return widths, logits.shape[-1]


def dummy_batch(model: nn.Module) -> dict[str, torch.Tensor]:
    if model.modality == "image":
        return {"image": torch.zeros(1, *model.data_config["input_size"])}
    if model.modality == "audio":  # a silent window: (1, mels, frames) as the feature extractor makes it
        extractor = model.feature_extractor
        return {"input_features": torch.zeros(1, extractor.feature_size, extractor.nb_max_frames)}
    encoded = model.tokenizer(["lokal"], return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

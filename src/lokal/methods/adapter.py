"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) for transformers and
residual adapters (Rebuffi et al. 2017) for CNNs: small new layers inside the frozen model.

Each adapter computes x + up(act(down(x))) over the channels, with `up` zero-initialised so
the adapted model starts exactly as the base. Forward hooks put it on a sub-layer's output,
so base parameter names never change; the adapters live in `net.lokal_adapters`, and only
they and the head train (and get saved by `lokal.training.weights`). `detach(model)` takes them out.

- transformers: `placement=pfeiffer` adapts each feed-forward output, `houlsby` also each
  attention output. An attention module is one whose name has "attn"/"attention"; its last
  Linear is the attention output, the last other Linear beside it the feed-forward output.
- CNNs (no attention): one 1x1-conv adapter after each residual unit of every block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lokal.errors import LokalError
from lokal.methods import Method, freeze_all_but, head_prefixes

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
PLACEMENTS = ("houlsby", "pfeiffer")
PREFIX = "lokal_adapters"


@dataclass
class Adapter(Method):
    # `up` starts at zero, so adapters want large steps: on the demo (MiniLM, 81 steps) 1e-3 barely
    # moved (val loss 0.683), 3e-3 gave 0.609, 1e-2 gave 0.549 (LoRA at its default: 0.605).
    lr: float = 3e-3
    placement: str = "pfeiffer"  # pfeiffer: after each feed-forward; houlsby: after each attention too
    reduction_factor: int = 16  # bottleneck width = layer width // reduction_factor (at least 1)
    activation: str = "gelu"

    def __post_init__(self) -> None:
        for key, valid in (("placement", PLACEMENTS), ("activation", tuple(ACTIVATIONS))):
            if getattr(self, key) not in valid:
                raise LokalError(f"method.{key}={getattr(self, key)!r}: choose one of {', '.join(valid)}")
        if self.reduction_factor < 1:
            raise LokalError(f"method.reduction_factor={self.reduction_factor}: give 1 or more (16 is usual)")

    def apply(self, model: nn.Module) -> nn.Module:
        if hasattr(model.net, PREFIX):
            raise LokalError(f"{model.name} already has adapters; lokal.methods.adapter.detach(model) first")
        head = head_prefixes(model)  # before the adapters join net's children (HF's head_names lists them)
        adapters = {
            name: Bottleneck(width, self.reduction_factor, self.activation, conv, name)
            for name, (width, conv) in find_sites(model, self.placement).items()
        }
        model.net.add_module(PREFIX, nn.ModuleDict({n.replace(".", "_"): a for n, a in adapters.items()}))
        for name, adapter in adapters.items():
            adapter.attach(model.net.get_submodule(name))
        return freeze_all_but(model, [PREFIX, *head], "adapter")


class Bottleneck(nn.Module):
    """x + up(act(down(x))): Linear over the last axis for tokens (..., C), a 1x1 conv over
    the channel axis for feature maps (B, C, H, W)."""

    def __init__(self, width: int, reduction_factor: int, activation: str, conv: bool, at: str) -> None:
        super().__init__()
        hidden, self.at = max(1, width // reduction_factor), at
        self.down = nn.Conv2d(width, hidden, 1) if conv else nn.Linear(width, hidden)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Conv2d(hidden, width, 1) if conv else nn.Linear(hidden, width)
        nn.init.zeros_(self.up.weight)  # x + 0 == x exactly: training starts from the base model
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))

    def attach(self, target: nn.Module) -> None:
        reference = next(target.parameters(), None)
        if reference is not None:
            self.to(reference)  # the target's dtype and device
        # A bound method, not a closure: deepcopy (EMA, SWA) then hooks the copy's own adapter.
        self.handle = target.register_forward_hook(self.hook)

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self(output)

    def extra_repr(self) -> str:
        return f"at={self.at}"


def detach(model: nn.Module) -> nn.Module:
    """Take the adapters out again (hooks and `net.lokal_adapters`): the model computes
    exactly the base. Base weights stay frozen; another `Adapter().apply` may follow."""
    adapters = getattr(model.net, PREFIX, None)
    if adapters is None:
        raise LokalError(f"{model.name} has no adapters to detach")
    for adapter in adapters.values():
        adapter.handle.remove()
    delattr(model.net, PREFIX)
    return model


def find_sites(model: nn.Module, placement: str) -> dict[str, tuple[int, bool]]:
    """Module name -> (channel width, is a feature map) for every output that gets an adapter."""
    sites, units = {}, []
    for block in model.blocks():
        found = transformer_sites(model.net, block, placement)
        sites |= found
        if not found:
            units += residual_units(model.net, block)
    if units and model.modality != "image":
        raise LokalError(f"method=adapter found no attention layer (name with 'attn'/'attention') in {units[0]} "
                         f"of {model.name}; use method=lora with model.lora_targets instead")
    sites |= unit_sites(model, units)
    if not sites:
        raise LokalError(f"method=adapter found nowhere to put adapters in {model.name}; use method=lora")
    return sites


def transformer_sites(net: nn.Module, block: str, placement: str) -> dict[str, tuple[int, bool]]:
    """The last Linear of each attention module (houlsby only) and the last other Linear of
    the unit holding it: BERT attention.output.dense / output.dense, LLaMA self_attn.o_proj /
    mlp.down_proj, ViT attn.proj / mlp.fc2. A block may hold several units (Swin stages)."""
    linears = {n: m for n, m in net.get_submodule(block).named_modules() if is_linear(m)}
    attention: dict[str, str] = {}  # attention module -> its last Linear
    for name in linears:
        parts = name.split(".")
        at = next((i for i, p in enumerate(parts) if "attn" in p.lower() or "attention" in p.lower()), None)
        if at is not None:
            attention[".".join(parts[: at + 1])] = name
    chosen = list(attention.values()) if placement == "houlsby" else []
    feedforward = [n for n in linears if not any(n == a or n.startswith(a + ".") for a in attention)]
    for unit in dict.fromkeys(a.rpartition(".")[0] for a in attention):
        chosen += [n for n in feedforward if not unit or n.startswith(unit + ".")][-1:]
    return {f"{block}.{n}": (out_width(linears[n]), False) for n in sorted(chosen, key=list(linears).index)}


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's transposed Linear


def out_width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.nf


def residual_units(net: nn.Module, block: str) -> list[str]:
    """A timm stage (an nn.Sequential of composite modules) holds residual units, and each
    unit gets an adapter; any other block (a DenseNet transition, a single layer) gets one."""
    module = net.get_submodule(block)
    if isinstance(module, nn.Sequential) and all(any(c.children()) for c in module.children()):
        return [f"{block}.{name}" for name, _ in module.named_children()]
    return [block]


def unit_sites(model: nn.Module, units: list[str]) -> dict[str, tuple[int, bool]]:
    """Output widths of CNN units from one dry forward pass (DenseNet blocks concatenate, so
    the modules alone do not tell): (B, C, H, W) maps get 1x1 convs, (B, N, C) tokens Linears."""
    if not units:
        return {}
    shapes: dict[str, torch.Size | None] = {}

    def record(unit: str):
        def hook(_module, _args, out) -> None:  # returns None: the output passes unchanged
            shapes.setdefault(unit, out.shape if torch.is_tensor(out) else None)
        return hook

    hooks = [model.net.get_submodule(u).register_forward_hook(record(u)) for u in units]
    reference, was_training = next(model.net.parameters()), model.net.training
    try:
        with torch.no_grad():  # eval: BatchNorm statistics stay untouched
            model.net.eval()(torch.zeros(1, *model.data_config["input_size"]).to(reference))
    finally:
        for hook in hooks:
            hook.remove()
        model.net.train(was_training)
    sites = {}
    for unit in units:
        shape = shapes.get(unit)
        if shape is None or len(shape) not in (3, 4):
            raise LokalError(f"method=adapter: {unit} of {model.name} gives {shape}, not a (B, C, H, W) map "
                             "or (B, N, C) tokens; use method=lora or method=partial")
        sites[unit] = (shape[1], True) if len(shape) == 4 else (shape[-1], False)
    return sites

"""Save and load what a run trained: the PEFT adapter, or the trained tensors, as safetensors.

Frozen base weights are never copied: a run directory holds only what the method changed
(trainable parameters and normalisation statistics), loadable onto a fresh base.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lokal import LokalError
from lokal.io import write_atomically

ADAPTER_DIR, WEIGHTS_FILE, BUFFERS_FILE = "adapter", "weights.safetensors", "buffers.safetensors"


def is_peft(net: nn.Module) -> bool:
    return hasattr(net, "peft_config")


def trained_state(net: nn.Module, parameters: bool = True) -> dict[str, torch.Tensor]:
    """Trainable parameters (unless `parameters=False`) plus persistent buffers: BatchNorm
    running statistics move in training even where the weights are frozen."""
    keep = {n for n, _ in net.named_buffers()}
    if parameters:
        keep |= {n for n, p in net.named_parameters() if p.requires_grad}
    return {n: t.detach().contiguous() for n, t in net.state_dict().items() if n in keep}


def save_weights(model: nn.Module, run_dir: Path) -> Path:
    """Write `adapter/` (PEFT format, + buffers) or `weights.safetensors`; returns the path."""
    net = model.net
    if not is_peft(net):
        return write_atomically(run_dir / WEIGHTS_FILE, lambda tmp: save_file(trained_state(net), str(tmp)))
    target, tmp = run_dir / ADAPTER_DIR, run_dir / f".{ADAPTER_DIR}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp)
    buffers = trained_state(net.get_base_model(), parameters=False)  # PEFT saves only its own tensors
    if buffers:
        save_file(buffers, str(tmp / BUFFERS_FILE))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def load_weights(model: nn.Module, run_dir: Path) -> nn.Module:
    """Put a run's trained weights onto `model` (a fresh base with the run's method applied
    for non-PEFT methods; a plain fresh base for PEFT adapters)."""
    run_dir = Path(run_dir)
    if (run_dir / ADAPTER_DIR).is_dir():
        from peft import PeftModel

        model.net = PeftModel.from_pretrained(model.net, run_dir / ADAPTER_DIR)
        buffers = run_dir / ADAPTER_DIR / BUFFERS_FILE
        if buffers.exists():
            _load_into(model.net.get_base_model(), load_file(str(buffers)))
        return model
    weights = run_dir / WEIGHTS_FILE
    if not weights.exists():
        raise LokalError(f"{run_dir} holds no trained weights ({ADAPTER_DIR}/ or {WEIGHTS_FILE}): did the run finish?")
    _load_into(model.net, load_file(str(weights)))
    return model


def _load_into(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    unexpected = net.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise RuntimeError(f"weights do not fit this model: unexpected keys {unexpected[:5]}")

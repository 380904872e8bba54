"""Save and load what a run trained: the PEFT adapter, or the trained tensors, as safetensors.

Frozen base weights are never copied: a run directory holds only what the method changed
(trainable parameters and normalisation statistics), loadable onto a fresh base.

A PEFT run's `adapter/` is flat whatever the adapter's name: `adapter_model.safetensors`,
`adapter_config.json`, `buffers.safetensors` (BatchNorm statistics, CNNs only) and
`lokal_adapter.json` (the name), so several runs' adapters can share one base by name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lokal.errors import LokalError
from lokal.io import write_atomically

ADAPTER_DIR, WEIGHTS_FILE, BUFFERS_FILE = "adapter", "weights.safetensors", "buffers.safetensors"
NAME_FILE = "lokal_adapter.json"
PEFT_PREFIXES = ("lora_", "ia3_")  # parameter-name prefixes of the PEFT kinds lokal trains


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
    name = net.active_adapter
    target, tmp = run_dir / ADAPTER_DIR, run_dir / f".{ADAPTER_DIR}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp, selected_adapters=[name])
    folder = tmp if name == "default" else tmp / name  # PEFT files other names in a subfolder: keep adapter/ flat
    buffers = trained_state(net.get_base_model(), parameters=False)  # PEFT saves only its own tensors
    if buffers:
        save_file(buffers, str(folder / BUFFERS_FILE))
    (folder / NAME_FILE).write_text(json.dumps({"name": name}) + "\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(folder, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_weights(model: nn.Module, run_dir: Path) -> nn.Module:
    """Put a run's trained weights onto `model` (a fresh base with the run's method applied
    for non-PEFT methods; a plain fresh base for PEFT adapters)."""
    run_dir = Path(run_dir)
    if (run_dir / ADAPTER_DIR).is_dir():
        from peft import PeftModel

        check_adapter_folder(run_dir / ADAPTER_DIR)
        from lokal.methods.prompt import patch_peft_for_transformers_cache, ready_for_prompts

        patch_peft_for_transformers_cache()  # before loading: PEFT checks prefix-tuning support on load
        model.net = PeftModel.from_pretrained(model.net, run_dir / ADAPTER_DIR, adapter_name=adapter_name(run_dir))
        load_into(model.net.get_base_model(), load_buffers(run_dir))
        if model.net.active_peft_config.is_prompt_learning:
            ready_for_prompts(model)  # left padding on decoders, as in training
        return model
    weights = run_dir / WEIGHTS_FILE
    if not weights.exists():
        raise LokalError(f"{run_dir} holds no trained weights ({ADAPTER_DIR}/ or {WEIGHTS_FILE}): did the run finish?")
    load_into(model.net, load_file(str(weights)))
    return model


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors|adapter_model.bin")


def check_adapter_folder(folder: Path) -> None:
    """PEFT reads a folder missing its weights as a hub name and fails with an unrelated
    message: name the missing file instead."""
    for names in ADAPTER_FILES:
        if not any((folder / name).is_file() for name in names.split("|")):
            raise LokalError(f"{folder} lacks {names.replace('|', ' (or ')}{')' if '|' in names else ''}: the "
                             "adapter was deleted or copied only in part. Copy the whole adapter/ folder back, "
                             "or train the run again")


def write_classes(run_dir: str | Path, class_names: list[str]) -> Path:
    """RUN_DIR/classes.json: what `lokal predict` needs besides the config and weights."""
    from lokal.io import write_json
    from lokal.paths import CLASSES_FILE

    return write_json(Path(run_dir) / CLASSES_FILE, [str(c) for c in class_names])


def adapter_name(run_dir: Path) -> str:
    """The name a run's adapter was trained under (`adapter.name`); "default" before names were kept."""
    meta = Path(run_dir) / ADAPTER_DIR / NAME_FILE
    return json.loads(meta.read_text(encoding="utf-8"))["name"] if meta.is_file() else "default"


def load_buffers(run_dir: Path) -> dict[str, torch.Tensor]:
    """The BatchNorm statistics saved with a run's adapter ({} for models without any)."""
    path = Path(run_dir) / ADAPTER_DIR / BUFFERS_FILE
    return load_file(str(path)) if path.is_file() else {}


def check_adapter_name(name: str) -> str:
    """PEFT keys adapters by name in ModuleDicts and folders: a dot or slash would break both,
    and a name inside a parameter prefix ("a" in "lora_") can re-initialise weights on loading."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
        raise LokalError(f"adapter.name={name!r}: use letters, digits, '_' and '-' only (e.g. adapter.name=jakarta)")
    if any(name in prefix for prefix in PEFT_PREFIXES):
        raise LokalError(f"adapter.name={name!r} is part of a PEFT parameter prefix ({', '.join(PEFT_PREFIXES)}): "
                         "choose a longer name (e.g. adapter.name=jakarta)")
    return name


def load_into(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Overwrite the tensors of `net` named in `state`; a name `net` lacks is an error."""
    unexpected = net.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise RuntimeError(f"weights do not fit this model: unexpected keys {unexpected[:5]}")

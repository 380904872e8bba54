"""Base models. Every model class is a `LokalModel`: the one surface methods, tasks and
evaluation read (no attribute probing). A model class sets what it is as class attributes:

- `modality`: "text", "image" or "audio"; `tasks`: what it serves ("classification" and
  "multi_label" for classifiers, "causal_lm", "speech_recognition"), checked against the data;
- `net`: the wrapped library model (HF / timm), the one thing a method changes;
- `head_names`: modules of the new task head, which always train (none for generative models);
- `blocks()`: name prefixes of the repeated blocks in order (partial, LLRD, side network, adapters);
- `bf16_on_cpu`: whether bf16 was measured faster on an AMX CPU (trainer.precision=auto);
- per-method defaults: `lora_targets` (from the model YAML), `ia3_targets` and `ia3_feedforward`
  ((IA)^3; the LoRA targets unless set), `peft_task_type` (PEFT's task type);
- `forward(batch)`: logits (B, classes or labels) for classifiers, the HF output for generators.
"""

from __future__ import annotations

from torch import nn


class LokalModel(nn.Module):
    """What every lokal model offers; subclasses set the class attributes and implement
    `head_names`, `blocks` and `forward`."""

    name: str = ""
    modality: str = "text"
    task: str = "classification"  # the main task, for messages
    tasks: tuple[str, ...] = ("classification", "multi_label")  # every task it serves
    peft_task_type: str | None = None  # PEFT's task type (None: its generic model)
    lora_targets: list[str] = []
    ia3_feedforward: list[str] = []
    tokenizer = None  # text models: their tokenizer
    data_config: dict | None = None  # image models: timm's input size and normalisation
    # trainer.precision=auto trains in bf16 on a CPU with AMX only where this family measured
    # faster at equal accuracy there (lokal.training.precision; README, "bf16 on CPU")
    bf16_on_cpu: bool = False

    @property
    def ia3_targets(self) -> list[str]:
        return self.lora_targets

    @property
    def head_names(self) -> list[str]:
        raise NotImplementedError

    def blocks(self) -> list[str]:
        raise NotImplementedError

    def plan_frozen_prefix(self, augmented: bool) -> None:
        """Called once the method is applied (lokal.training.build): text encoders cache what the
        frozen prefix computes (lokal.models.prefix_cache); others have nothing to settle."""

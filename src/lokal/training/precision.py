"""`trainer.precision=auto`: bf16 where it was measured to pay, fp32 elsewhere.

On a GPU with bf16 (Ampere and later) bf16-mixed is the field's default. On a CPU it pays only
where the CPU multiplies bf16 natively and the model's matmuls are large enough to outweigh
autocast's casts: measured (README, "bf16 on CPU") on a Xeon with AMX for each model family,
which says so with its `bf16_on_cpu` class attribute. Everywhere else: 32-true. Any explicit
`trainer.precision` (32-true, bf16-mixed, 16-mixed ...) is used as given. On a CPU, bf16 trains
only: validation, test and predictions run in fp32 (`TrainingAutocast`)."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from functools import cache
from pathlib import Path

from lightning.pytorch.plugins.precision import MixedPrecision
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

AUTO = "auto"


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo does not exist."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return frozenset()
    for line in info.read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_amx() -> bool:
    """AMX tiles with bf16 (Xeon 4th generation and later): where bf16 was measured faster.
    AVX512-BF16 alone (e.g. AMD Zen 4) is not measured, so it keeps fp32."""
    return "amx_bf16" in cpu_flags()


def on_cuda(accelerator: str) -> bool:
    import torch

    return accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()


def choose_precision(requested: str, accelerator: str, model) -> str:
    """The Lightning precision a run trains with (see the module docstring)."""
    if requested != AUTO:
        return requested
    if on_cuda(accelerator):
        import torch

        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if model.bf16_on_cpu and cpu_has_amx() else "32-true"


def resolve_precision(trainer_cfg: DictConfig, model) -> None:
    """Replace `auto` in the config by the choice, so the run's config.yaml records what ran."""
    requested = str(trainer_cfg.get("precision", "32-true"))
    accelerator = str(trainer_cfg.get("accelerator", "cpu"))
    chosen = choose_precision(requested, accelerator, model)
    if requested == AUTO:
        log.info("trainer.precision=auto: %s (%s)", chosen, reason(chosen, model, on_cuda(accelerator)))
    with open_dict(trainer_cfg):
        trainer_cfg.precision = chosen


def reason(chosen: str, model, gpu: bool) -> str:
    if gpu:
        return "this GPU has bf16" if chosen == "bf16-mixed" else "this GPU has no bf16"
    if chosen != "bf16-mixed" and not model.bf16_on_cpu:
        return f"{type(model).__name__} was not measured faster in bf16 on a CPU"
    if chosen != "bf16-mixed":
        return "this CPU has no AMX bf16 unit"
    return "measured faster at equal accuracy on CPUs with AMX; validation and test stay fp32; " \
           "trainer.precision=32-true turns it off"


class TrainingAutocast(MixedPrecision):
    """bf16 autocast for the training steps; validation, test and predictions in fp32. bf16 logits
    keep 3 significant digits, so scores tie: a tiny model's test AUROC read 0.82 in bf16 and 1.0
    in fp32, and `lokal predict` / `lokal adapters` (fp32) would disagree with the run's own
    metrics. Scoring is a small part of a run; the steps are where bf16 pays."""

    def val_step_context(self) -> AbstractContextManager:
        return nullcontext()

    def test_step_context(self) -> AbstractContextManager:
        return nullcontext()

    def predict_step_context(self) -> AbstractContextManager:
        return nullcontext()


def precision_plugins(trainer_cfg: DictConfig) -> list:
    """`TrainingAutocast` for bf16-mixed on a CPU with lokal's own strategies (DeepSpeed and FSDP
    bring their own precision); none elsewhere, where `trainer.precision` applies as Lightning
    has it."""
    strategy = str(trainer_cfg.get("strategy", ""))
    if (trainer_cfg.get("precision") != "bf16-mixed" or on_cuda(str(trainer_cfg.get("accelerator", "cpu")))
            or "deepspeed" in strategy or "fsdp" in strategy):
        return []
    return [TrainingAutocast("bf16-mixed", "cpu")]

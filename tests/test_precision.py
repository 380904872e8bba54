"""trainer.precision=auto: bf16 only where measured to pay, explicit choices untouched, and the
run's config.yaml records what ran."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lokal.models import LokalModel
from lokal.training import precision


class Measured(LokalModel):
    bf16_on_cpu = True


class Unmeasured(LokalModel):
    pass


@pytest.fixture
def cpu(monkeypatch):
    """A CPU with the given flags, no GPU."""
    def with_flags(*flags: str) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    return with_flags


@pytest.mark.parametrize(("flags", "model", "expected"), [
    (("avx512f", "amx_bf16", "amx_tile"), Measured(), "bf16-mixed"),
    (("avx512f", "amx_bf16", "amx_tile"), Unmeasured(), "32-true"),  # the family was not measured faster
    (("avx2", "avx512_bf16"), Measured(), "32-true"),  # AVX512-BF16 without AMX (Zen 4): not measured
    (("avx2",), Measured(), "32-true"),
])
def test_auto_on_a_cpu_picks_bf16_only_with_amx_and_a_measured_family(cpu, flags, model, expected):
    cpu(*flags)
    assert precision.choose_precision("auto", "cpu", model) == expected


@pytest.mark.parametrize("explicit", ["32-true", "bf16-mixed", "16-mixed", "bf16-true"])
def test_an_explicit_precision_is_used_as_given(cpu, explicit):
    cpu("amx_bf16")
    assert precision.choose_precision(explicit, "cpu", Unmeasured()) == explicit


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_on_a_gpu_is_bf16_where_the_gpu_has_it(monkeypatch, bf16, expected):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: bf16)
    assert precision.choose_precision("auto", "gpu", Unmeasured()) == expected


def test_the_choice_replaces_auto_in_the_config(cpu):
    """config.yaml is written from this config after make_trainer: it says what ran."""
    cpu("amx_bf16")
    trainer_cfg = OmegaConf.create({"accelerator": "cpu", "precision": "auto"})
    precision.resolve_precision(trainer_cfg, Measured())
    assert trainer_cfg.precision == "bf16-mixed"


def test_the_shipped_trainer_configs_ask_for_auto():
    from lokal.paths import CONFIG_DIR

    for name in ("cpu", "gpu"):
        assert OmegaConf.load(CONFIG_DIR / "trainer" / f"{name}.yaml").precision == "auto"


def test_cpu_flags_reads_this_machine():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset) and (not flags or "fpu" in flags or "neon" in flags or "asimd" in flags)


def test_bf16_on_a_cpu_trains_in_bf16_and_scores_in_fp32(cpu):
    """bf16 logits tie (AUROC); predictions must equal what `lokal predict` computes in fp32."""
    import torch

    cpu("amx_bf16")
    [plugin] = precision.precision_plugins(OmegaConf.create({"accelerator": "cpu", "precision": "bf16-mixed"}))
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with plugin.train_step_context():
        assert layer(x).dtype == torch.bfloat16
    for context in (plugin.val_step_context, plugin.test_step_context, plugin.predict_step_context):
        with context():
            assert layer(x).dtype == torch.float32


@pytest.mark.parametrize("trainer_cfg", [{"accelerator": "cpu", "precision": "32-true"},
                                         {"accelerator": "cpu", "precision": "bf16-mixed", "strategy": "deepspeed"}])
def test_other_precisions_keep_lightnings_own_plugin(cpu, trainer_cfg):
    cpu("amx_bf16")
    assert precision.precision_plugins(OmegaConf.create(trainer_cfg)) == []

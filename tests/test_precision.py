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

"""Every shipped model config takes every method config, as a user would combine them
(`model=X method=Y`): the method applies with the model's own default targets, and one step
reaches the trainable weights. timm families load without weights (the hub is offline here);
configs that name a hub model (hf_text, hf_causal_lm) are covered by tests/test_methods.py."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

from tests.conftest import CONF, compose

HUB_ONLY = {"hf_text", "hf_causal_lm"}
TIMM = {"resnet", "densenet", "inception", "vit"}  # timm.yaml itself is resnet.yaml's parent
# 10-60 s a case on 2 cores (30 s Whisper windows, 118-268M parameters): in the slow suite
BIG = {"gemma3_270m", "gemma3_270m_lm", "e5_small", "whisper_tiny", "whisper_tiny_classifier"}
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem not in HUB_ONLY | {"timm"})
METHODS = [*sorted(p.stem for p in (CONF / "method").glob("*.yaml")), "additive_side", "bitfit_add_bias"]
OVERRIDES = {"additive_side": ["method=additive", "method.kind=side"],
             "bitfit_add_bias": ["method=bitfit", "method.add_bias=true"]}
# What a model refuses, with the message that names the way out (checked below).
REFUSED = {("gemma3_270m", "bitfit"): "add_bias", ("gemma3_270m_lm", "bitfit"): "add_bias",
           ("gemma3_270m_lm", "additive_side"): "method.kind=ia3", ("whisper_tiny", "additive_side"): "method.kind=ia3"}
# bitfit_add_bias exists for bias-free decoders; elsewhere plain bitfit is the method
CASES = [pytest.param(m, meth, marks=[pytest.mark.slow] if m in BIG else [])
         for m in MODELS for meth in METHODS if meth != "bitfit_add_bias" or m.startswith("gemma")]


@functools.lru_cache(maxsize=1)
def base_model(name: str):
    """The model as `model=name` builds it; images at 64 px (Inception: 96), timm families
    without weights (those come from the hub)."""
    from hydra.utils import instantiate

    cfg = compose([f"model={name}"], run_dir=".")
    kind = cfg.model._target_.rsplit(".", 1)[-1]
    extra = {"image_size": 96 if name == "inception" else 64} if kind == "ImageClassifier" else {}
    extra |= {"pretrained": False} if name in TIMM else {}
    sized = {} if kind in ("CausalLM", "WhisperASR") else {"num_classes": 3}
    return instantiate(cfg.model, **sized, **extra)


def method_for(name: str, model_name: str):
    from hydra.utils import instantiate

    return instantiate(compose([f"model={model_name}", *OVERRIDES.get(name, [f"method={name}"])], run_dir=".").method)


def batch_for(model) -> dict[str, torch.Tensor]:
    if model.modality == "image":
        return {"image": torch.randn(2, *model.data_config["input_size"])}
    if model.modality == "audio":
        second = np.sin(np.linspace(0, 2000, 16_000)).astype(np.float32)
        features = model.feature_extractor([second, second], sampling_rate=16_000, return_tensors="pt")
        return {"input_features": features.input_features, "labels": torch.tensor([[50257, 400, 50256]] * 2)}
    encoded = model.tokenizer(["sinyal hilang terus sejak pagi", "promo kuota murah"], padding=True,
                              return_tensors="pt")
    return dict(encoded) | {"labels": encoded["input_ids"]}


def one_step(model) -> float:
    output = model(batch_for(model))
    loss = output.loss if hasattr(output, "loss") else output.float().pow(2).mean()
    loss.backward()
    return sum(p.grad.abs().sum().item() for p in model.parameters() if p.requires_grad and p.grad is not None)


@pytest.mark.parametrize("model_name,method_name", CASES)
def test_every_model_config_takes_every_method(model_name, method_name):
    from lokal.errors import LokalError

    model, method = copy.deepcopy(base_model(model_name)), method_for(method_name, model_name)
    if (model_name, method_name) in REFUSED:
        with pytest.raises(LokalError, match=REFUSED[model_name, method_name]):
            method.apply(model)
        return
    model = method.apply(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable <= sum(p.numel() for p in model.parameters())
    assert one_step(model) > 0  # the gradient reaches what the method trains


@pytest.mark.parametrize("name,targets", [("resnet", ["conv1", "conv2", "conv3"]),
                                          ("densenet", ["conv", "conv1", "conv2"]),
                                          ("inception", ["conv"]), ("vit", ["qkv"])])
def test_timm_families_find_their_lora_targets(name, targets):
    assert base_model(name).lora_targets == targets

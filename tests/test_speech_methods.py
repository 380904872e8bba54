"""Every method on a tiny random Whisper (speech recognition): exactly the expected parameters
train, the teacher-forced loss falls, frozen weights stay bit-identical, and saved weights load
back onto a fresh base with identical outputs and transcripts (the contract of test_methods.py)."""

from __future__ import annotations

import copy
import functools
import re

import pytest
import torch

from lokal.errors import LokalError
from lokal.methods.additive import Additive
from lokal.models.speech import WhisperASR
from lokal.training.weights import load_weights, save_weights
from tests.test_methods import METHODS, PEFT_PARAMETER_MARKS, train_and_check

PEFT_METHODS = {"lora", "dora", "ia3"}
# What must train, as regexes over parameter names (Whisper has no new head: proj_out is tied to
# the token embedding).
EXPECTED = {
    "full": r".*", "full_llrd_l2sp": r".*",
    "bitfit": r".*\.bias",
    "bitfit_add_bias": r".*\.bias",
    "partial": r"model\.decoder\.layers\.1\..*|model\.decoder\.layer_norm\..*",
    "partial_gradual": r"model\.decoder\.layer_norm\..*",  # epoch 0: only what follows the last block
    "adapter": r"lokal_adapters\..*", "adapter_houlsby": r"lokal_adapters\..*",
    "prompt": r"lokal_prompt\..*",
}
CASES = [m for m in METHODS if m != "side"]


@functools.lru_cache(maxsize=1)
def _loaded(path) -> WhisperASR:
    return WhisperASR(str(path), lora_targets=["q_proj", "k_proj", "v_proj", "out_proj"], max_new_tokens=6)


def make_model(path) -> WhisperASR:
    """A fresh copy of the tiny Whisper (loading its tokenizer each time would dominate the tests)."""
    return copy.deepcopy(_loaded(path))


def make_batch() -> dict[str, torch.Tensor]:
    """Log-mels whose transcript (tokens 300 + 10 * class ...) is learnable from them."""
    generator = torch.Generator().manual_seed(1)
    classes = torch.tensor([0, 1] * 2)
    features = torch.randn(4, 80, 200, generator=generator) + classes.view(-1, 1, 1).float()
    labels = torch.stack([torch.tensor([50362, 300 + 10 * c, 301 + 10 * c, 50256]) for c in classes.tolist()])
    return {"input_features": features, "labels": labels}


def trainable_names(model) -> set[str]:
    return {n for n, p in model.net.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", CASES)
def test_trains_exactly_the_expected_parameters(method, tiny_whisper):
    method_ = METHODS[method]()
    model = method_.apply(make_model(tiny_whisper))
    method_.on_train_epoch_start(model, 0)
    trainable = trainable_names(model)
    if method in PEFT_METHODS:
        peft_trainable, _ = model.net.get_nb_trainable_parameters()
        assert sum(p.numel() for p in model.net.parameters() if p.requires_grad) == peft_trainable
        assert trainable and all(any(k in n for k in PEFT_PARAMETER_MARKS) for n in trainable)
        return
    names = [n for n, _ in model.net.named_parameters()]
    assert trainable == {n for n in names if re.fullmatch(EXPECTED[method], n)}
    assert 0 < len(trainable)


@pytest.mark.parametrize("method", CASES)
def test_loss_falls_and_frozen_weights_stay_bit_identical(method, tiny_whisper):
    batch = make_batch()
    train_and_check(method, make_model(tiny_whisper), lambda model: model(batch).loss, steps=30)


@pytest.mark.parametrize("method", CASES)
def test_saved_weights_load_back_with_identical_outputs(method, tiny_whisper, tmp_path):
    model = METHODS[method]().apply(make_model(tiny_whisper)).train()
    batch = make_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    save_weights(model, tmp_path)

    fresh = make_model(tiny_whisper)
    if method not in PEFT_METHODS:
        fresh = METHODS[method]().apply(fresh)
    loaded = load_weights(fresh, tmp_path).eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(batch).logits, loaded(batch).logits, atol=1e-6)
    assert model.transcribe(batch["input_features"][:2]) == loaded.transcribe(batch["input_features"][:2])


def test_untrained_methods_start_as_the_base_model(tiny_whisper):
    """Zero-initialised adapters, LoRA's B = 0 and a zero input pattern: the base WER measured
    after the method is applied is the base model's."""
    batch = make_batch()
    with torch.no_grad():
        base = make_model(tiny_whisper).eval()(batch).logits
        for method in ("lora", "adapter", "adapter_houlsby", "prompt"):
            assert torch.equal(METHODS[method]().apply(make_model(tiny_whisper)).eval()(batch).logits, base), method


def test_side_tuning_is_refused_with_the_alternatives(tiny_whisper):
    with pytest.raises(LokalError, match="speech_recognition model.*ia3"):
        Additive(kind="side").apply(make_model(tiny_whisper))

"""What only Whisper needs beyond the shared method contract (tests/test_methods.py runs every
method on a tiny random Whisper there): untrained methods start as the base model, transcripts
survive saving, and side tuning is refused for transcription."""

from __future__ import annotations

import pytest
import torch

from lokal.errors import LokalError
from lokal.methods.additive import Additive
from lokal.training.weights import load_weights, save_weights
from tests.test_methods import METHODS, make_batch, uses_peft
from tests.test_methods import whisper as make_model


@pytest.mark.parametrize("method", ["lora", "prompt", "partial"])
def test_saved_weights_load_back_with_identical_transcripts(method, tiny_whisper, tmp_path):
    model = METHODS[method]().apply(make_model(tiny_whisper)).train()
    batch = make_batch("whisper")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    save_weights(model, tmp_path)
    fresh = make_model(tiny_whisper)
    loaded = load_weights(fresh if uses_peft(method, "whisper") else METHODS[method]().apply(fresh), tmp_path).eval()
    model.eval()
    assert model.transcribe(batch["input_features"][:2]) == loaded.transcribe(batch["input_features"][:2])


def test_untrained_methods_start_as_the_base_model(tiny_whisper):
    """Zero-initialised adapters, LoRA's B = 0 and a zero input pattern: the base WER measured
    after the method is applied is the base model's."""
    batch = make_batch("whisper")
    with torch.no_grad():
        base = make_model(tiny_whisper).eval()(batch).logits
        for method in ("lora", "adapter", "adapter_houlsby", "prompt"):
            assert torch.equal(METHODS[method]().apply(make_model(tiny_whisper)).eval()(batch).logits, base), method


def test_side_tuning_is_refused_with_the_alternatives(tiny_whisper):
    with pytest.raises(LokalError, match="speech_recognition model.*ia3"):
        Additive(kind="side").apply(make_model(tiny_whisper))

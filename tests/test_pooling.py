"""model.pooling=mean: the head reads the mean of the real tokens' encoder states (what e5 and
sentence-transformers were trained to embed), under every method; padding changes nothing; models
without an encoder refuse it; a run pooled this way exports (with its pooling code) and predicts alike."""

from __future__ import annotations

import pytest
import torch

from lokal.errors import LokalError
from lokal.models.text import TextClassifier

TEXTS = ["sinyal hilang terus sejak pagi, kecewa banget", "promo kuota murah"]


def encoded(model: TextClassifier, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(model.tokenizer(texts, padding=True, return_tensors="pt"))


def test_the_head_reads_the_masked_mean_of_the_encoder_states(tiny_text_models):
    model = TextClassifier(str(tiny_text_models["bert"]), num_classes=2, pooling="mean").eval()
    batch = encoded(model, TEXTS)
    with torch.no_grad():
        states = model.net.bert(**batch).last_hidden_state  # outside forward(): the encoder is left as it is
        weights = batch["attention_mask"].unsqueeze(-1).float()
        mean = (states * weights).sum(1) / weights.sum(1)
        pooler = model.net.bert.pooler
        expected = model.net.classifier(pooler.activation(pooler.dense(mean)))
        assert torch.allclose(model(batch), expected, atol=1e-6)
        first = TextClassifier(str(tiny_text_models["bert"]), num_classes=2).eval()
        first.net.load_state_dict(model.net.state_dict())
        assert not torch.allclose(first(batch), expected, atol=1e-3)  # the plain head reads token 0


def test_padding_does_not_change_a_texts_logits(tiny_text_models):
    model = TextClassifier(str(tiny_text_models["bert"]), num_classes=2, pooling="mean").eval()
    with torch.no_grad():
        alone = model(encoded(model, TEXTS[1:]))
        padded = model(encoded(model, TEXTS))[1:]  # the short text padded to the long one's length
    assert torch.allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "prefix", "bitfit", "adapter"])
def test_every_method_trains_through_mean_pooling(tiny_text_models, method):
    from lokal.methods.adapter import Adapter
    from lokal.methods.bitfit import BitFit
    from lokal.methods.lora import LoRA
    from lokal.methods.prompt import Prompt

    methods = {"lora": lambda: LoRA(target_modules=["query", "value"]), "bitfit": BitFit,
               "prompt_tuning": lambda: Prompt(kind="prompt_tuning"), "prefix": lambda: Prompt(kind="prefix"),
               "adapter": Adapter}
    model = methods[method]().apply(TextClassifier(str(tiny_text_models["bert"]), num_classes=2, pooling="mean"))
    batch = encoded(model, TEXTS)
    loss = torch.nn.functional.cross_entropy(model(batch), torch.tensor([0, 1]))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    assert model.mean_pool.mask is None  # nothing left behind for other callers of the encoder


def test_a_decoder_refuses_mean_pooling_and_a_typo_is_named(tiny_text_models):
    with pytest.raises(LokalError, match="needs an encoder"):
        TextClassifier(str(tiny_text_models["llama"]), num_classes=2, pooling="mean")
    with pytest.raises(LokalError, match="choose first or mean"):
        TextClassifier(str(tiny_text_models["bert"]), num_classes=2, pooling="cls")


def test_mean_pooling_still_applies_once_peft_wraps_the_model(tiny_text_models):
    """A fresh LoRA adapter (B = 0) leaves the function unchanged: the wrapped model gives the
    mean-pooled logits, not the first token's."""
    from lokal.methods.lora import LoRA

    model = TextClassifier(str(tiny_text_models["bert"]), num_classes=2, pooling="mean").eval()
    batch = encoded(model, TEXTS)
    with torch.no_grad():
        before = model(batch)
        wrapped = LoRA(target_modules=["query", "value"]).apply(model).eval()
        assert torch.allclose(wrapped(batch), before, atol=1e-6)


def test_a_mean_pooled_run_predicts_as_trained_and_its_export_predicts_the_same(tiny_text_models, tmp_path):
    from lokal.runs.adapters import export_run
    from lokal.runs.predict import predict
    from tests.test_predict import fake_run, probs_of, text_probs

    run_dir = tmp_path / "run"
    model = fake_run(run_dir, [f"model.name={tiny_text_models['bert']}", "model.pooling=mean"], ["neg", "pos"])
    (tmp_path / "new.txt").write_text("\n".join(TEXTS) + "\n")
    trained = torch.tensor(text_probs(model, TEXTS))
    frame = predict(run_dir, [tmp_path / "new.txt"])
    assert torch.allclose(torch.tensor(probs_of(frame, ["neg", "pos"])), trained, atol=1e-5)
    exported = export_run(run_dir, tmp_path / "exported")
    assert (exported / "modeling_mean_pooling.py").is_file()
    frame = predict(exported, [tmp_path / "new.txt"])  # lokal predict on the export folder
    assert torch.allclose(torch.tensor(probs_of(frame, ["neg", "pos"])), trained, atol=1e-5)

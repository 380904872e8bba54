"""Contract tests that every method must pass on every backbone family, on tiny random models:
exactly the expected parameters train, the loss falls, frozen weights stay bit-identical,
and saved weights load back onto a fresh base with identical outputs."""

from __future__ import annotations

import re

import pytest
import torch

from lokal import LokalError
from lokal.methods.bitfit import BitFit
from lokal.methods.full import Full
from lokal.methods.lora import LoRA
from lokal.methods.partial import Partial
from lokal.weights import load_weights, save_weights

METHODS = {
    "full": Full,
    "bitfit": BitFit,
    "partial": lambda: Partial(last_n_blocks=1),
    "lora": lambda: LoRA(r=4, alpha=8, dropout=0.0),
}

# What must train, per (method, backbone), as regexes over parameter names ("*" = everything).
# LoRA is checked against PEFT's own count instead.
EXPECTED = {
    ("full", "bert"): r".*", ("full", "llama"): r".*", ("full", "cnn"): r".*", ("full", "vit"): r".*",
    ("bitfit", "bert"): r".*\.bias|classifier\..*",
    ("bitfit", "cnn"): r".*\.bias|classifier\..*",
    ("bitfit", "vit"): r".*\.bias|head\..*",
    ("partial", "bert"): r"bert\.encoder\.layer\.1\..*|bert\.pooler\..*|classifier\..*",
    ("partial", "llama"): r"model\.layers\.1\..*|model\.norm\..*|score\..*",
    ("partial", "cnn"): r"blocks\.4\..*|conv_head\..*|bn2\..*|classifier\..*",
    ("partial", "vit"): r"blocks\.5\..*|norm\..*|fc_norm\..*|head\..*",
}
LORA_TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"],
                "cnn": ["conv_pw", "conv_pwl", "conv_head"], "vit": ["qkv", "proj"]}
CASES = [(m, b) for m in METHODS for b in LORA_TARGETS if (m, b) != ("bitfit", "llama")]


def make_model(backbone: str, paths):
    torch.manual_seed(0)
    if backbone in ("bert", "llama"):
        from lokal.models.text import TextClassifier

        return TextClassifier(str(paths[backbone]), num_classes=2, lora_targets=LORA_TARGETS[backbone])
    from lokal.models.vision import ImageClassifier

    name = {"cnn": "test_efficientnet", "vit": "test_vit"}[backbone]
    return ImageClassifier(name, num_classes=2, pretrained=False, lora_targets=LORA_TARGETS[backbone])


def make_batch(backbone: str) -> dict[str, torch.Tensor]:
    """A batch whose label is learnable from the input."""
    generator = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 1] * 4)
    if backbone in ("bert", "llama"):
        ids = torch.randint(1000, 2000, (8, 12), generator=generator)
        ids[:, 1] = 3000 + labels * 500  # the class token
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "label": labels}
    images = torch.randn(8, 3, 32, 32, generator=generator) + labels.view(-1, 1, 1, 1).float()
    return {"image": images, "label": labels}


def trainable_names(model) -> set[str]:
    return {n for n, p in model.net.named_parameters() if p.requires_grad}


@pytest.fixture
def paths(tiny_text_models):
    return tiny_text_models


@pytest.mark.parametrize("method,backbone", CASES)
def test_trains_exactly_the_expected_parameters(method, backbone, paths):
    model = METHODS[method]().apply(make_model(backbone, paths))
    trainable = trainable_names(model)
    if method == "lora":
        peft_trainable, _ = model.net.get_nb_trainable_parameters()
        ours = sum(p.numel() for p in model.net.parameters() if p.requires_grad)
        assert ours == peft_trainable
        assert all("lora_" in n or "modules_to_save" in n for n in trainable)
        return
    names = [n for n, _ in model.net.named_parameters()]
    expected = {n for n in names if re.fullmatch(EXPECTED[method, backbone], n)}
    assert trainable == expected
    assert 0 < len(trainable) <= len(names)


@pytest.mark.parametrize("method,backbone", CASES)
def test_loss_falls_and_frozen_weights_stay_bit_identical(method, backbone, paths):
    model = METHODS[method]().apply(make_model(backbone, paths)).train()
    frozen = {n: p.detach().clone() for n, p in model.net.named_parameters() if not p.requires_grad}
    batch = make_batch(backbone)
    lr = 3e-3 if method == "full" else 1e-2  # every weight moving wants a smaller step
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(40):  # LoRA starts from B = 0 and needs a few steps before the loss moves
        loss = torch.nn.functional.cross_entropy(model(batch), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert max(losses[-3:]) < losses[0] - 0.05, losses
    for name, param in model.net.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"frozen {name} changed"


@pytest.mark.parametrize("method,backbone", CASES)
def test_saved_weights_load_back_with_identical_outputs(method, backbone, paths, tmp_path):
    model = METHODS[method]().apply(make_model(backbone, paths)).train()
    batch = make_batch(backbone)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # move trained weights (and BatchNorm statistics) away from the base
        torch.nn.functional.cross_entropy(model(batch), batch["label"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    save_weights(model, tmp_path)

    fresh = make_model(backbone, paths)  # a different random head: the saved one must replace it
    if method != "lora":
        fresh = METHODS[method]().apply(fresh)
    loaded = load_weights(fresh, tmp_path)
    with torch.no_grad():
        assert torch.allclose(model.eval()(batch), loaded.eval()(batch), atol=1e-6)


def test_lora_saves_only_the_adapter(paths, tmp_path):
    model = METHODS["lora"]().apply(make_model("bert", paths))
    adapter = save_weights(model, tmp_path)
    from safetensors.torch import load_file

    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert sum(t.numel() for t in saved.values()) == model.net.get_nb_trainable_parameters()[0]


def test_bitfit_on_a_bias_free_decoder_fails_clearly(paths):
    with pytest.raises(LokalError, match="no bias terms.*method=lora"):
        BitFit().apply(make_model("llama", paths))


def test_lora_targets_that_match_nothing_list_the_layers_that_exist(paths):
    with pytest.raises(LokalError, match=r"\['q_proj'\] match no.*query.*value"):
        LoRA(target_modules=["q_proj"]).apply(make_model("bert", paths))


def test_partial_with_too_many_blocks_says_how_many_there_are(paths):
    with pytest.raises(LokalError, match="has 2 blocks"):
        Partial(last_n_blocks=5).apply(make_model("bert", paths))

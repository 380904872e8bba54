"""Contract tests that every method must pass on every backbone family (BERT, LLaMA, CNN, ViT,
Whisper), on tiny random models: exactly the expected parameters train, the loss falls, frozen
weights stay bit-identical, and saved weights load back onto a fresh base with identical outputs.
Adding a method = its module, its YAML and one row in METHODS (plus EXPECTED where it trains
something other than a PEFT adapter)."""

from __future__ import annotations

import copy
import functools
import re

import pytest
import torch

from lokal.errors import LokalError
from lokal.methods.adapter import Adapter
from lokal.methods.additive import Additive
from lokal.methods.bitfit import BitFit
from lokal.methods.full import Full
from lokal.methods.lora import LoRA
from lokal.methods.partial import Partial
from lokal.methods.prompt import Prompt
from lokal.training.module import make_optimizer
from lokal.training.weights import load_weights, save_weights

METHODS = {
    "full": Full,
    "full_llrd_l2sp": lambda: Full(layer_decay=0.7, l2sp=0.01),
    "bitfit": BitFit,
    "bitfit_add_bias": lambda: BitFit(add_bias=True),
    "partial": lambda: Partial(last_n_blocks=1),
    "partial_gradual": lambda: Partial(last_n_blocks=2, unfreeze_every=1),
    "lora": lambda: LoRA(r=4, alpha=8, dropout=0.0),
    "dora": lambda: LoRA(r=4, alpha=8, dropout=0.0, use_dora=True),
    "ia3": lambda: Additive(kind="ia3"),
    "side": lambda: Additive(kind="side", side_dim=8),
    "adapter": lambda: Adapter(reduction_factor=4),
    "adapter_houlsby": lambda: Adapter(placement="houlsby", reduction_factor=4),
    "prompt": lambda: Prompt(num_tokens=4),
}
# Methods through PEFT: their trainable count is checked against PEFT's own.
PEFT_METHODS = {"lora", "dora", "ia3"}
PEFT_FOR_TEXT = {"prompt"}  # PEFT on text models; its own prompt parameters on image models
PEFT_PARAMETER_MARKS = ("lora_", "ia3_", "prompt_encoder", "modules_to_save")  # what PEFT names the weights it trains
# the loss-falls test's learning rate: every weight moving wants a smaller step; prompts a larger
# one (on the tiny BERT the prefix lowers the loss by only 0.04-0.08 at 1e-2, 0.1-0.2 at 3e-2)
LOSS_TEST_LR = {"full": 3e-3, "full_llrd_l2sp": 3e-3, "prompt": 3e-2}

# Whisper transcribes: no new head (proj_out is tied to the token embedding)
HEAD = {"bert": r"classifier\..*", "llama": r"score\..*", "cnn": r"classifier\..*", "vit": r"head\..*",
        "whisper": r"(?!)"}
# What must train, per (method, backbone), as regexes over parameter names; "{head}" = HEAD[backbone].
EXPECTED = {
    ("full", "*"): r".*", ("full_llrd_l2sp", "*"): r".*",
    ("bitfit", "*"): r".*\.bias|{head}",
    ("bitfit_add_bias", "*"): r".*\.bias|{head}",
    ("partial", "bert"): r"bert\.encoder\.layer\.1\..*|bert\.pooler\..*|{head}",
    ("partial", "llama"): r"model\.layers\.1\..*|model\.norm\..*|{head}",
    ("partial", "cnn"): r"blocks\.4\..*|conv_head\..*|bn2\..*|{head}",
    ("partial", "vit"): r"blocks\.5\..*|norm\..*|fc_norm\..*|{head}",
    # gradual unfreezing: at epoch 0 only what follows the last block trains
    ("partial_gradual", "bert"): r"bert\.pooler\..*|{head}",
    ("partial_gradual", "llama"): r"model\.norm\..*|{head}",
    ("partial_gradual", "cnn"): r"conv_head\..*|bn2\..*|{head}",
    ("partial_gradual", "vit"): r"norm\..*|fc_norm\..*|{head}",
    ("side", "*"): r"lokal_side\..*|{head}",
    ("adapter", "*"): r"lokal_adapters\..*|{head}", ("adapter_houlsby", "*"): r"lokal_adapters\..*|{head}",
    ("prompt", "cnn"): r"lokal_prompt\..*|{head}", ("prompt", "vit"): r"lokal_prompt\..*|{head}",
    ("partial", "whisper"): r"model\.decoder\.layers\.1\..*|model\.decoder\.layer_norm\..*",
    ("partial_gradual", "whisper"): r"model\.decoder\.layer_norm\..*",
    ("prompt", "whisper"): r"lokal_prompt\..*",  # a learned pattern on the log-mel (model reprogramming)
}
LORA_TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"],
                "cnn": ["conv_pw", "conv_pwl", "conv_head"], "vit": ["qkv", "proj"],
                "whisper": ["q_proj", "k_proj", "v_proj", "out_proj"]}
# bitfit needs biases (the tiny LLaMA has none); bitfit_add_bias is for exactly that model; a side
# network adds class logits, which a transcriber has not (refused: test_speech_methods.py)
CASES = [(m, b) for m in METHODS for b in LORA_TARGETS
         if (m, b) not in {("bitfit", "llama"), ("side", "whisper")} and (m != "bitfit_add_bias" or b == "llama")]


def uses_peft(method: str, backbone: str) -> bool:
    return method in PEFT_METHODS or (method in PEFT_FOR_TEXT and backbone in ("bert", "llama"))


def loss_of(backbone: str, model, batch) -> torch.Tensor:
    """Cross-entropy of the class logits; Whisper's own teacher-forced loss on the transcript."""
    if backbone == "whisper":
        return model(batch).loss
    return torch.nn.functional.cross_entropy(model(batch), batch["label"])


def outputs(backbone: str, model, batch) -> torch.Tensor:
    return model(batch).logits if backbone == "whisper" else model(batch)


def expected_pattern(method: str, backbone: str) -> str:
    pattern = EXPECTED.get((method, backbone)) or EXPECTED[method, "*"]
    return pattern.format(head=HEAD[backbone])




def make_model(backbone: str, paths):
    torch.manual_seed(0)
    if backbone == "whisper":
        return whisper(paths["whisper"])
    if backbone in ("bert", "llama"):
        from lokal.models.text import TextClassifier

        return TextClassifier(str(paths[backbone]), num_classes=2, lora_targets=LORA_TARGETS[backbone])
    from lokal.models.vision import ImageClassifier

    name = {"cnn": "test_efficientnet", "vit": "test_vit"}[backbone]
    return ImageClassifier(name, num_classes=2, pretrained=False, lora_targets=LORA_TARGETS[backbone])


@functools.lru_cache(maxsize=1)
def _whisper(path):
    from lokal.models.speech import WhisperASR

    return WhisperASR(str(path), lora_targets=LORA_TARGETS["whisper"], max_new_tokens=6)


def whisper(path):
    """A fresh copy of the tiny Whisper (loading its tokenizer each time would dominate the tests)."""
    return copy.deepcopy(_whisper(path))


def make_batch(backbone: str) -> dict[str, torch.Tensor]:
    """A batch whose label (Whisper: transcript tokens 300 + 10 * class ...) is learnable from the input."""
    generator = torch.Generator().manual_seed(1)
    if backbone == "whisper":
        classes = torch.tensor([0, 1] * 2)
        features = torch.randn(4, 80, 200, generator=generator) + classes.view(-1, 1, 1).float()
        transcripts = [torch.tensor([50362, 300 + 10 * c, 301 + 10 * c, 50256]) for c in classes.tolist()]
        return {"input_features": features, "labels": torch.stack(transcripts)}
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
def paths(tiny_text_models, tiny_whisper):
    return tiny_text_models | {"whisper": tiny_whisper}


@pytest.mark.parametrize("method,backbone", CASES)
def test_trains_exactly_the_expected_parameters(method, backbone, paths):
    method_ = METHODS[method]()
    model = method_.apply(make_model(backbone, paths))
    method_.on_train_epoch_start(model, 0)
    trainable = trainable_names(model)
    if uses_peft(method, backbone):
        peft_trainable, _ = model.net.get_nb_trainable_parameters()
        ours = sum(p.numel() for p in model.net.parameters() if p.requires_grad)
        assert ours == peft_trainable
        assert all(any(k in n for k in PEFT_PARAMETER_MARKS) for n in trainable)
        return
    names = [n for n, _ in model.net.named_parameters()]
    expected = {n for n in names if re.fullmatch(expected_pattern(method, backbone), n)}
    assert trainable == expected
    assert 0 < len(trainable) <= len(names)


@pytest.mark.parametrize("method,backbone", CASES)
def test_loss_falls_and_frozen_weights_stay_bit_identical(method, backbone, paths):
    """As ClassifierModule trains: the method's parameter groups and penalty, 4 "epochs" of 10 steps."""
    batch = make_batch(backbone)
    # LoRA starts from B = 0 and needs a few steps before the loss moves
    train_and_check(method, make_model(backbone, paths), lambda model: loss_of(backbone, model, batch), steps=40)


def train_and_check(method: str, model, loss_of, steps: int) -> None:
    """Train as ClassifierModule does (the method's parameter groups and penalty, an "epoch" every 10
    steps); the loss must fall and every frozen weight stay bit-identical."""
    method_ = METHODS[method]()
    model = method_.apply(model).train()
    frozen = {n: p.detach().clone() for n, p in model.net.named_parameters() if not p.requires_grad}
    lr = LOSS_TEST_LR.get(method, 1e-2)
    optimizer = make_optimizer(functools.partial(torch.optim.AdamW, lr=lr), method_.param_groups(model))
    losses = []
    for step in range(steps):
        if step % 10 == 0:
            method_.on_train_epoch_start(model, step // 10)
        loss = loss_of(model) + (method_.penalty(model) or 0.0)
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
        loss_of(backbone, model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    save_weights(model, tmp_path)

    fresh = make_model(backbone, paths)  # a different random head: the saved one must replace it
    if not uses_peft(method, backbone):
        fresh = METHODS[method]().apply(fresh)
    loaded = load_weights(fresh, tmp_path)
    with torch.no_grad():
        before, after = outputs(backbone, model.eval(), batch), outputs(backbone, loaded.eval(), batch)
        assert torch.allclose(before, after, atol=1e-6)


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

"""method=prompt beyond the shared contract (tests/test_methods.py): every text kind on an encoder
and a decoder classifier, padding on decoders, generation after prompt training of a causal LM,
visual prompts on a ViT (shallow and deep) and a CNN at two input sizes, and clear errors for kinds
that do not fit the model."""

from __future__ import annotations

import copy

import pytest
import torch

from lokal.errors import LokalError
from lokal.methods.prompt import TEXT_KINDS, Prompt
from lokal.training.weights import load_weights, save_weights
from tests.test_methods import make_batch, make_model


@pytest.fixture(scope="module")
def text_paths(tiny_text_models, tmp_path_factory) -> dict:
    """The shared tiny LLaMA, and the tiny BERT with larger random weights: at BERT's usual
    initializer_range (0.02) a 2-layer, 16-wide BERT passes almost nothing between tokens, so a
    classifier pooling the first (virtual) token could not learn from a shallow soft prompt."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("contextual_bert") / "bert"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_text_models["bert"]))
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=2,
        vocab_size=tokenizer.vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        initializer_range=0.3)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return {"bert": path, "llama": tiny_text_models["llama"]}


def train(model, batch: dict, steps: int, lr: float = 3e-2) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        out = model(batch)
        loss = out.loss if hasattr(out, "loss") else torch.nn.functional.cross_entropy(out, batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("backbone", ["bert", "llama"])
@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_every_text_kind_trains_and_loads_back(kind, backbone, text_paths, tmp_path):
    model = Prompt(kind=kind, num_tokens=4).apply(make_model(backbone, text_paths)).train()
    ours = sum(p.numel() for p in model.net.parameters() if p.requires_grad)
    assert ours == model.net.get_nb_trainable_parameters()[0]
    batch = make_batch(backbone)
    losses = train(model, batch, steps=20)
    assert losses[-1] < losses[0] - 0.05, losses

    save_weights(model, tmp_path)
    loaded = load_weights(make_model(backbone, text_paths), tmp_path)
    with torch.no_grad():
        assert torch.allclose(model.eval()(batch), loaded.eval()(batch), atol=1e-6)


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_a_decoder_classifies_a_padded_sequence_as_it_does_alone(kind, text_paths):
    """PEFT prepends the soft prompt and hands LLaMA inputs_embeds, from which it cannot find the
    last real token: left padding puts that token last (right padding is off by ~0.6 here). RoPE
    then sees the prompt a few positions further from the text: close (~1e-3), not exact. The
    prefix gets positions counted over real tokens, so it matches exactly."""
    model = Prompt(kind=kind, num_tokens=4).apply(make_model("llama", text_paths)).train()
    train(model, make_batch("llama"), steps=10)  # a prompt that matters, not its initial noise
    assert model.tokenizer.padding_side == "left"
    short, long = [101, 1500, 3000, 1600, 102], [101, 1700, 3500, 1800, 1900, 1100, 1200, 102]
    padded = model.tokenizer.pad([{"input_ids": short}, {"input_ids": long}], return_tensors="pt")
    alone = {"input_ids": torch.tensor([short]), "attention_mask": torch.ones(1, len(short), dtype=torch.long)}
    with torch.no_grad():
        together, by_itself = model.eval()(padded)[0], model(alone)[0]
    tolerance = 1e-5 if kind == "prefix" else 1e-2
    assert torch.allclose(together, by_itself, atol=tolerance), (together, by_itself)


def test_a_decoder_prompt_loaded_onto_a_fresh_base_gets_left_padding_back(text_paths, tmp_path):
    save_weights(Prompt(kind="prompt_tuning", num_tokens=4).apply(make_model("llama", text_paths)), tmp_path)
    fresh = make_model("llama", text_paths)
    assert fresh.tokenizer.padding_side == "right"
    loaded = load_weights(fresh, tmp_path)  # PEFT adapters load without the method: load_weights restores it
    assert loaded.tokenizer.padding_side == "left"


def test_an_encoder_keeps_right_padding(text_paths):
    model = Prompt(kind="prompt_tuning").apply(make_model("bert", text_paths))
    assert model.tokenizer.padding_side == "right"  # absolute positions: the prompt then stays next to the text


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_a_causal_lm_generates_with_its_trained_prompt(kind, tiny_causal_lm, tmp_path):
    """Generation must see the prompt exactly as training did: once, before the text (unpatched,
    PEFT 0.21 with transformers 5 re-inserts it at every step or drops the prefix)."""
    from lokal.models.causal_lm import CausalLM

    def fresh():
        torch.manual_seed(0)
        return CausalLM(str(tiny_causal_lm))

    model = Prompt(kind=kind, num_tokens=4).apply(fresh()).train()
    question = torch.randint(1000, 2000, (2, 5), generator=torch.Generator().manual_seed(0))  # (B, T)
    ids = torch.cat([question, torch.tensor([[2500, 2600]]).expand(2, -1)], 1)
    labels = ids.masked_fill(torch.arange(ids.shape[1]) < question.shape[1], -100)  # loss on the answer only
    losses = train(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}, steps=5)
    assert losses[-1] < losses[0], losses

    model.eval()
    kwargs = dict(attention_mask=torch.ones_like(question), max_new_tokens=3, do_sample=False,
                  pad_token_id=model.tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True)
    out = model.net.generate(input_ids=question, **kwargs)
    generated = torch.stack(out.logits, 1)  # (B, 3, V)
    with torch.no_grad():
        teacher_forced = model.net(input_ids=out.sequences[:, :-1]).logits[:, -3:]
        with model.net.disable_adapter():
            base = model.net(input_ids=out.sequences[:, :-1]).logits[:, -3:]
    assert torch.allclose(generated, teacher_forced, atol=1e-5)
    assert (generated - base).abs().max() > 1e-3  # the prompt does change what is generated

    save_weights(model, tmp_path)
    loaded = load_weights(fresh(), tmp_path).eval()
    assert torch.equal(loaded.net.generate(input_ids=question, **kwargs).sequences, out.sequences)


def test_visual_prompts_on_a_vit_shallow_and_deep(tmp_path):
    shallow = Prompt(num_tokens=3).apply(make_model("vit", None))
    deep = Prompt(num_tokens=3, deep=True).apply(make_model("vit", None))
    dim, depth = shallow.net.embed_dim, len(shallow.net.blocks)
    assert shallow.net.lokal_prompt.tokens.shape == (1, 3, dim)
    assert deep.net.lokal_prompt.tokens.shape == (depth, 3, dim)
    images = make_batch("vit")["image"]
    tokens = (images.shape[-1] // 16) ** 2 + deep.net.num_prefix_tokens
    assert deep.net.forward_features(images).shape[1] == tokens  # prompts are dropped before pooling

    deep.train()
    train(deep, make_batch("vit"), steps=3)
    save_weights(deep, tmp_path)
    loaded = load_weights(Prompt(num_tokens=3, deep=True).apply(make_model("vit", None)), tmp_path)
    with torch.no_grad():
        assert torch.allclose(deep.eval()(make_batch("vit")), loaded.eval()(make_batch("vit")), atol=1e-6)


@pytest.mark.parametrize("backbone", ["vit", "cnn"])
def test_a_deep_copy_of_the_model_uses_its_own_prompts(backbone):
    model = Prompt(num_tokens=3, deep=True).apply(make_model(backbone, None)).eval()
    twin = copy.deepcopy(model)
    batch = make_batch(backbone)
    with torch.no_grad():
        before = twin(batch)
        for param in model.net.lokal_prompt.parameters():  # noise, not a constant: LayerNorm erases a shift
            param.add_(torch.randn_like(param))
        assert torch.equal(twin(batch), before)
        assert not torch.allclose(model(batch), before)


def test_the_padding_prompt_is_a_border_at_any_input_size():
    model = Prompt(padding=16).apply(make_model("cnn", None))  # learned at test_efficientnet's 160x160
    prompt = model.net.lokal_prompt
    assert sum(p.numel() for p in prompt.parameters()) == 3 * (2 * 16 * 160 + 2 * 16 * 128)
    border = prompt(torch.zeros(1, 3, 160, 160))[0]
    assert border[:, 16:-16, 16:-16].abs().max() == 0 and border[:, :16].abs().min() > 0
    for size in (32, 224):
        images = torch.zeros(2, 3, size, size)
        assert prompt(images).shape == images.shape
        assert model({"image": images}).shape == (2, 2)


def test_a_padding_wider_than_the_image_stops_clearly():
    with pytest.raises(LokalError, match=r"method.padding=80 must be between 1 and 79"):
        Prompt(padding=80).apply(make_model("cnn", None))


def test_visual_prompts_on_a_text_model_stop_naming_the_text_kinds(text_paths):
    with pytest.raises(LokalError, match="applies to image models.*prompt_tuning, prefix, p_tuning"):
        Prompt(kind="visual").apply(make_model("bert", text_paths))


def test_a_text_kind_on_an_image_model_stops_naming_the_visual_kind():
    with pytest.raises(LokalError, match=r"applies to text models.*method.kind=visual"):
        Prompt(kind="prefix").apply(make_model("vit", None))


def test_an_unknown_kind_lists_the_valid_ones():
    with pytest.raises(LokalError, match="auto, prompt_tuning, prefix, p_tuning, visual"):
        Prompt(kind="soft")

"""Frozen-prefix feature caching (lokal.models.prefix_cache): with dropout off, training the real
MiniLM with the cache gives the losses and logits of training without it; the cache is rebuilt
when what it depends on changes; `true` where it cannot apply is a clear error; `auto` stays off
where it would not be exact (LoRA on every layer, a side network, text augmentation)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lokal.errors import LokalError
from lokal.models.text import TextClassifier
from lokal.training.build import build
from tests.conftest import compose

MINILM_PARTIAL = ["model=minilm", "method=partial", "method.last_n_blocks=2", "data.batch_size=16"]


def built(overrides: list[str], run_dir, setting: str = "auto"):
    """Data and MiniLM with the method applied, the head initialised alike, dropout off."""
    torch.manual_seed(0)
    datamodule, model = build(compose([*overrides, f"model.cache_frozen_prefix={setting}"], run_dir),
                              method=_method(overrides, run_dir))
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return datamodule, model


def _method(overrides: list[str], run_dir):
    from hydra.utils import instantiate

    return instantiate(compose(overrides, run_dir).method)


def train_steps(model: TextClassifier, batches: list[dict], epochs: int) -> tuple[list[float], torch.Tensor]:
    """Plain AdamW steps over the same batches each epoch; the losses and the last batch's logits after."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(epochs):
        for batch in batches:
            loss = nn.functional.cross_entropy(model(batch), batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    with torch.no_grad():
        return losses, model.eval()(batches[-1])


def some_batches(datamodule, count: int = 3) -> list[dict]:
    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(batch | {"labels": batch.get("labels", batch.get("label"))})
        if len(batches) == count:
            return batches
    return batches


@pytest.mark.integration
def test_cached_training_matches_uncached_with_dropout_off(run_dir):
    data, plain = built(MINILM_PARTIAL, run_dir, "false")
    _, cached = built(MINILM_PARTIAL, run_dir, "true")
    assert plain.prefix_cache is None and cached.prefix_cache.split.k == 4  # MiniLM: 6 blocks, top 2 train
    batches = some_batches(data)
    plain_losses, plain_logits = train_steps(plain, batches, epochs=2)
    cached_losses, cached_logits = train_steps(cached, batches, epochs=2)
    assert cached_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-6)
    assert torch.allclose(cached_logits, plain_logits, atol=1e-5)
    texts = sum(len(b["input_ids"]) for b in batches)
    assert cached.prefix_cache.misses == texts  # each text's prefix computed once, then read back
    assert cached.prefix_cache.hits == texts + len(batches[-1]["input_ids"])  # epoch 2 and the evaluation


@pytest.mark.integration
def test_the_frozen_prefix_stays_in_eval_mode_when_cached(run_dir):
    _, model = built(MINILM_PARTIAL, run_dir)
    model.train()
    prefix = model.prefix_cache.split.modules()
    assert not any(m.training for block in prefix for m in block.modules())
    assert all(m.training for m in model.prefix_cache.split.layers[-1].modules())  # trained blocks keep dropout


def test_the_cache_is_rebuilt_when_what_it_depends_on_changes(tiny_text_models):
    from lokal.methods.partial import Partial

    model = Partial(last_n_blocks=1).apply(TextClassifier(str(tiny_text_models["bert"]), num_classes=2))
    model.plan_frozen_prefix(augmented=False)
    cache = model.prefix_cache
    batch = dict(model.tokenizer(["sinyal hilang terus", "promo kuota murah"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        first = model.eval()(batch)
        assert (cache.misses, cache.hits) == (2, 0)
        assert torch.equal(model(batch), first) and cache.hits == 2
        other = dict(model.tokenizer(["sinyal hilang", "promo kuota murah"], padding=True, return_tensors="pt"))
        model(other)  # other data: only the new text is computed
        assert (cache.misses, cache.hits) == (3, 3)
        embeddings = model.net.bert.embeddings.word_embeddings.weight
        embeddings.mul_(2.0)  # new prefix weights (in place, as load_state_dict writes them)
        changed = model(batch)
    assert cache.misses == 5 and not torch.allclose(changed, first)
    with torch.no_grad():
        embeddings.div_(2.0)
        assert torch.allclose(model(batch), first, atol=1e-6)


def test_a_different_split_point_gets_its_own_cache(tiny_text_models):
    from lokal.methods.partial import Partial

    def cache_of(last_n: int):
        model = Partial(last_n_blocks=last_n).apply(TextClassifier(str(tiny_text_models["bert"]), num_classes=2))
        model.plan_frozen_prefix(augmented=False)
        return model.prefix_cache

    assert cache_of(1).split.k == 1 and cache_of(0).split.k == 2  # head only: the whole encoder is cached


@pytest.mark.parametrize("setup,why", [
    ("lora", "block 0 trains"),
    ("side", "side network"),
    ("prompt", "prompt or prefix tokens"),
    ("augment", "data.augment"),
    ("decoder", "not a BERT-style encoder"),
])
def test_true_where_it_cannot_apply_says_why_and_auto_stays_off(tiny_text_models, setup, why):
    with pytest.raises(LokalError, match=why):
        inapplicable(tiny_text_models, setup, "true")
    assert inapplicable(tiny_text_models, setup, "auto").prefix_cache is None


def inapplicable(tiny_text_models, setup: str, setting: str) -> TextClassifier:
    from lokal.methods.additive import Additive
    from lokal.methods.lora import LoRA
    from lokal.methods.partial import Partial
    from lokal.methods.prompt import Prompt

    methods = {"lora": lambda: LoRA(target_modules=["query", "value"]), "side": lambda: Additive(kind="side"),
               "prompt": lambda: Prompt(kind="prompt_tuning"), "augment": lambda: Partial(last_n_blocks=1),
               "decoder": lambda: Partial(last_n_blocks=1)}
    name = tiny_text_models["llama" if setup == "decoder" else "bert"]
    model = methods[setup]().apply(TextClassifier(str(name), num_classes=2, cache_frozen_prefix=setting == "true"
                                                  or setting))
    model.plan_frozen_prefix(augmented=setup == "augment")
    return model


def test_a_misspelled_setting_is_refused(tiny_text_models):
    model = TextClassifier(str(tiny_text_models["bert"]), num_classes=2, cache_frozen_prefix="yes")
    with pytest.raises(LokalError, match="auto, true or false"):
        model.plan_frozen_prefix(augmented=False)


def test_lora_on_the_top_layers_only_is_cached_below_them(tiny_text_models):
    """PEFT's layers_to_transform keeps block 0 frozen: the cache applies under the PEFT wrapper."""
    from peft import LoraConfig, get_peft_model

    model = TextClassifier(str(tiny_text_models["bert"]), num_classes=2)
    config = LoraConfig(r=4, target_modules=["query", "value"], layers_to_transform=[1],
                        modules_to_save=model.head_names)
    model.net = get_peft_model(model.net, config)
    model.plan_frozen_prefix(augmented=False)
    assert model.prefix_cache.split.k == 1
    batch = dict(model.tokenizer(["sinyal hilang terus", "promo"], padding=True, return_tensors="pt"))
    loss = nn.functional.cross_entropy(model.train()(batch), torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)

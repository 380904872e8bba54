"""Adapters beyond the shared contract (tests/test_methods.py): where they sit, that an
adapted model starts as the base, and that detaching gives the base back bit for bit."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from lokal.errors import LokalError
from lokal.methods.adapter import PREFIX, Adapter, detach, find_sites
from lokal.training.weights import load_weights, save_weights
from tests.test_methods import make_batch, make_model

BACKBONES = ["bert", "llama", "cnn", "vit"]
FEEDFORWARD = {"bert": "bert.encoder.layer.{}.output.dense", "llama": "model.layers.{}.mlp.down_proj",
               "vit": "blocks.{}.mlp.fc2"}
ATTENTION = {"bert": "bert.encoder.layer.{}.attention.output.dense", "llama": "model.layers.{}.self_attn.o_proj",
             "vit": "blocks.{}.attn.proj"}
DEPTH = {"bert": 2, "llama": 2, "vit": 6}


@pytest.fixture
def paths(tiny_text_models):
    return tiny_text_models


def outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(batch)


def scramble(model) -> None:
    """Random adapter weights, as if trained: the adapters now change the outputs."""
    torch.manual_seed(2)
    for param in getattr(model.net, PREFIX).parameters():
        param.data.normal_(0, 0.5)


def expected_sites(backbone: str, placement: str) -> list[str]:
    if backbone == "cnn":  # test_efficientnet: 5 stages of one residual unit; one adapter per unit
        return [f"blocks.{i}.0" for i in range(5)]
    sites = []
    for i in range(DEPTH[backbone]):
        sites += [ATTENTION[backbone].format(i)] if placement == "houlsby" else []
        sites += [FEEDFORWARD[backbone].format(i)]
    return sites


@pytest.mark.parametrize("placement", ["pfeiffer", "houlsby"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_adapters_sit_where_the_papers_put_them(backbone, placement, paths):
    model = Adapter(placement=placement, reduction_factor=4).apply(make_model(backbone, paths))
    adapters = list(getattr(model.net, PREFIX).values())
    assert [a.at for a in adapters] == expected_sites(backbone, placement)
    for adapter in adapters:  # the bottleneck is the layer's width / reduction_factor
        width, hidden = adapter.up.weight.shape[:2]  # Linear (C, C/r), 1x1 conv (C, C/r, 1, 1)
        assert hidden == max(1, width // 4)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_an_adapted_model_starts_exactly_as_the_base(backbone, paths):
    base = make_model(backbone, paths)
    batch = make_batch(backbone)
    expected = outputs(base, batch)
    assert torch.equal(outputs(Adapter().apply(base), batch), expected)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_detach_gives_back_the_base_outputs_bit_identical(backbone, paths):
    model = make_model(backbone, paths)
    batch = make_batch(backbone)
    base = outputs(model, batch)
    Adapter(placement="houlsby").apply(model)
    scramble(model)
    assert not torch.allclose(outputs(model, batch), base)
    detach(model)
    assert torch.equal(outputs(model, batch), base)
    assert not any(PREFIX in name for name, _ in model.net.named_parameters())
    assert not any(m._forward_hooks for m in model.net.modules())


def test_adapters_plug_in_and_out_of_one_base(paths, tmp_path):
    """One base, one adapter per domain: save one, detach it, plug a new one, load the first back."""
    model = Adapter().apply(make_model("bert", paths))
    batch = make_batch("bert")
    scramble(model)
    trained = outputs(model, batch)
    save_weights(model, tmp_path)
    Adapter().apply(detach(model))
    assert not torch.allclose(outputs(model, batch), trained)
    assert torch.equal(outputs(load_weights(model, tmp_path), batch), trained)


def test_a_deep_copy_runs_its_own_adapters(paths):
    """EMA/SWA copy the model: the copy's hooks must call the copy's adapters."""
    model = Adapter().apply(make_model("vit", paths))
    batch = make_batch("vit")
    twin = copy.deepcopy(model)
    before = outputs(model, batch)
    scramble(twin)
    assert torch.equal(outputs(model, batch), before)
    assert not torch.allclose(outputs(twin, batch), before)


@pytest.mark.parametrize("backbone", ["cnn", "vit"])
def test_adapters_take_the_models_dtype(backbone, paths):
    model = make_model(backbone, paths)
    model.net.to(torch.bfloat16)
    Adapter().apply(model)
    assert {p.dtype for p in model.net.parameters()} == {torch.bfloat16}
    batch = make_batch(backbone)
    assert model({"image": batch["image"].bfloat16()}).dtype == torch.bfloat16


def test_gpt2_style_conv1d_layers_are_found():
    """GPT-2 writes its Linears as transformers' Conv1D (weights transposed; width is `nf`)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    net = GPT2ForSequenceClassification(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
    blocks = ["transformer.h.0", "transformer.h.1"]
    model = SimpleNamespace(net=net, name="gpt2", modality="text", blocks=lambda: blocks)
    assert find_sites(model, "houlsby") == {
        f"transformer.h.{i}.{layer}": (32, False) for i in range(2) for layer in ("attn.c_proj", "mlp.c_proj")
    }


@pytest.mark.parametrize("key,value,listed", [
    ("placement", "middle", "houlsby, pfeiffer"),
    ("activation", "swish", "relu, gelu, silu, tanh"),
    ("reduction_factor", 0, "1 or more"),
])
def test_bad_settings_fail_at_instantiation_and_say_what_fits(key, value, listed):
    with pytest.raises(LokalError, match=f"method.{key}=.*{listed}"):
        Adapter(**{key: value})


def test_applying_twice_asks_to_detach_first(paths):
    model = Adapter().apply(make_model("bert", paths))
    with pytest.raises(LokalError, match="already has adapters.*detach"):
        Adapter().apply(model)

"""Method options beyond the contract table: layer-wise lr decay, L2-SP, gradual unfreezing
(through real training and resume), BitFit's added biases, the side network."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lokal.errors import LokalError
from lokal.methods.additive import Additive
from lokal.methods.bitfit import BitFit
from lokal.methods.full import Full, layer_depths
from lokal.methods.partial import Partial
from tests.conftest import FAST, compose
from tests.test_methods import make_batch, make_model


@pytest.fixture
def paths(tiny_text_models):
    return tiny_text_models


def test_layer_decay_gives_each_depth_its_own_scaled_lr(paths):
    model = Full(layer_decay=0.5).apply(make_model("bert", paths))
    groups = Full(layer_decay=0.5).param_groups(model)
    scales = {g["lr_scale"] for g in groups}
    assert scales == {1.0, 0.5, 0.25, 0.125}  # head/pooler, layer 1, layer 0, embeddings (2 layers)
    assert sum(len(g["params"]) for g in groups) == len(list(model.net.parameters()))
    depths = layer_depths(model)
    assert depths["classifier.weight"] == 0 and depths["bert.embeddings.word_embeddings.weight"] == 3
    assert depths["bert.encoder.layer.1.output.dense.weight"] == 1


def test_layer_decay_lrs_reach_the_optimizer(paths):
    from functools import partial

    from lokal.training.module import make_optimizer

    method = Full(layer_decay=0.5)
    model = method.apply(make_model("bert", paths))
    optimizer = make_optimizer(partial(torch.optim.AdamW, lr=1e-3), method.param_groups(model))
    assert sorted(g["lr"] for g in optimizer.param_groups) == [1.25e-4, 2.5e-4, 5e-4, 1e-3]


def drift_after_training(method: Full, model, batch, steps: int = 10) -> float:
    base = {n: p.detach().clone() for n, p in model.net.named_parameters() if not n.startswith("classifier")}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(batch), batch["label"]) + (method.penalty(model) or 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    params = dict(model.net.named_parameters())
    return sum((params[n] - p).pow(2).sum().item() for n, p in base.items())


def test_l2sp_is_zero_at_the_start_and_pulls_toward_the_pretrained_weights(paths):
    batch = make_batch("bert")
    method = Full(l2sp=5.0)
    model = method.apply(make_model("bert", paths)).train()
    assert method.penalty(model).item() == 0.0
    free, pulled = Full(), Full(l2sp=5.0)
    drift_free = drift_after_training(free, free.apply(make_model("bert", paths)).train(), batch)
    drift_pulled = drift_after_training(pulled, pulled.apply(make_model("bert", paths)).train(), batch)
    assert drift_pulled < 0.8 * drift_free


def test_full_rejects_meaningless_options():
    with pytest.raises(LokalError, match="layer_decay"):
        Full(layer_decay=1.5)
    with pytest.raises(LokalError, match="l2sp"):
        Full(l2sp=-1)


def test_gradual_unfreezing_opens_one_block_from_the_top_per_period(paths):
    method = Partial(last_n_blocks=2, unfreeze_every=2)
    model = method.apply(make_model("bert", paths))

    def open_layers() -> set[str]:
        return {n.split(".")[3] for n, p in model.net.named_parameters() if p.requires_grad and ".layer." in n}

    opened = []
    for epoch in range(6):
        method.on_train_epoch_start(model, epoch)
        opened.append(open_layers())
    assert opened == [set(), set(), {"1"}, {"1"}, {"0", "1"}, {"0", "1"}]


def test_gradual_unfreezing_continues_after_resume(paths, tmp_path):
    """3 epochs of 3 steps, the blocks opening one per epoch; a crash in epoch 1 (layer 1 open,
    last checkpoint mid-epoch): the resumed run opens layer 0 in epoch 2 and ends with exactly
    the weights of a run that was never interrupted."""
    from lokal.run import train

    base = {n: p for n, p in make_model("bert", paths).net.named_parameters()}
    overrides = [f"model.name={paths['bert']}", "method=partial", "method.last_n_blocks=2",
                 "method.unfreeze_every=1", "method.lr=0.01", *FAST, "trainer.max_epochs=3",
                 "callbacks.last_checkpoint.every_n_train_steps=1"]
    train(compose(overrides, tmp_path / "uninterrupted"))
    crash = "+callbacks.crash={_target_:tests.test_resume.Crash,at_step:6}"
    with pytest.raises(RuntimeError, match="crash"):
        train(compose([*overrides, crash], tmp_path / "run"))
    train(compose(overrides, tmp_path / "run"))
    final = load_file(str(tmp_path / "run" / "weights.safetensors"))
    for layer in ("0", "1"):
        key = f"bert.encoder.layer.{layer}.output.dense.weight"
        assert not torch.equal(final[key], base[key].detach()), f"layer {layer} never trained"
    expected = load_file(str(tmp_path / "uninterrupted" / "weights.safetensors"))
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 3


def test_bitfit_add_bias_keeps_outputs_then_trains_only_biases(paths):
    batch = make_batch("llama")
    model = make_model("llama", paths).eval()
    with torch.no_grad():
        before = model(batch)
    model = BitFit(add_bias=True).apply(model)
    with torch.no_grad():
        assert torch.equal(model(batch), before)  # zero biases change nothing
    added = [n for n, p in model.net.named_parameters() if n.endswith("proj.bias")]
    assert len(added) == 2 * 7  # q, k, v, o, gate, up, down per layer, 2 layers


def test_bitfit_on_a_bias_free_decoder_points_to_add_bias(paths):
    with pytest.raises(LokalError, match="add_bias=true"):
        BitFit().apply(make_model("llama", paths))


@pytest.mark.parametrize("backbone", ["bert", "llama", "cnn", "vit"])
def test_side_network_starts_as_the_base_and_never_backpropagates_into_it(backbone, paths):
    batch = make_batch(backbone)
    model = make_model(backbone, paths).eval()
    with torch.no_grad():
        before = model(batch)
    model = Additive(kind="side", side_dim=8).apply(model)
    with torch.no_grad():
        assert torch.allclose(model(batch), before, atol=1e-6)  # the side's output layer starts at zero
    model.train()
    logits = model(batch)
    torch.nn.functional.cross_entropy(logits, batch["label"]).backward()
    side_grads = [p.grad for n, p in model.net.named_parameters() if n.startswith("lokal_side.")]
    assert all(g is not None for g in side_grads)
    assert all(p.grad is None for n, p in model.net.named_parameters() if not p.requires_grad)


def test_additive_kind_must_be_known():
    with pytest.raises(LokalError, match="ia3, side"):
        Additive(kind="lora")


def test_ia3_on_timm_uses_the_models_layer_names(paths):
    model = Additive(kind="ia3").apply(make_model("cnn", paths))
    names = {n for n, _ in model.net.named_parameters() if "ia3_l" in n}
    assert names and all(any(t in n for t in ("conv_pw", "conv_pwl", "conv_head")) for n in names)


def test_side_network_refuses_a_causal_lm(tiny_causal_lm):
    from lokal.models.causal_lm import CausalLM

    with pytest.raises(LokalError, match="kind=side adds class logits.*kind=ia3"):
        Additive(kind="side").apply(CausalLM(str(tiny_causal_lm)))

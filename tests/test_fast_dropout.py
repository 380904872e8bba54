"""The cheaper CPU dropout (lokal.training.dropout, callbacks.compute.fast_dropout): the same law as
torch's dropout (keep rate 1 - p in every bit lane, kept values scaled to keep the mean, the
gradient masked alike), fixed by the seed; attention with dropout equals the eager math under the
same mask and SDPA without dropout; on the real MiniLM + LoRA every dropout is swapped, evaluation
is bit-identical, gradient checkpointing recomputes the same masks, and undoing restores all."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lokal.errors import LokalError
from lokal.training.build import build
from lokal.training.compute import Compute, enable_gradient_checkpointing
from lokal.training.dropout import ATTENTION, FastDropout, attention, fast_dropout, keep_mask, use_fast_dropout
from tests.conftest import compose


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_each_element_keeps_with_probability_one_minus_p_in_every_lane(p):
    torch.manual_seed(0)
    keep, scale = keep_mask(torch.Size([4 * 250_000]), p, torch.device("cpu"))
    lanes = keep.view(-1, 4).float().mean(0)  # element i takes 16 bits of draw i // 4, lane i % 4
    assert lanes.tolist() == pytest.approx([1 - p] * 4, abs=0.004)  # 1 sd: 0.0006 at p = 0.5
    assert scale == pytest.approx(1 / (1 - p), rel=1e-4)


def test_kept_values_are_scaled_dropped_ones_zero_and_the_gradient_is_masked_alike():
    torch.manual_seed(0)
    x = (torch.rand(300, 300) + 0.5).requires_grad_()
    y = fast_dropout(x, 0.2)
    kept = y != 0
    scale = y[kept] / x[kept]
    torch.testing.assert_close(scale, torch.full_like(scale, 2**16 / (2**16 - round(0.2 * 2**16))))
    assert kept.float().mean().item() == pytest.approx(0.8, abs=0.01)
    assert y.mean().item() == pytest.approx(x.mean().item(), rel=0.02)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale[0])


def test_the_seed_fixes_the_mask_and_evaluation_is_the_identity():
    x = torch.randn(64, 64)
    torch.manual_seed(1)
    first = fast_dropout(x, 0.1)
    torch.manual_seed(1)
    assert torch.equal(fast_dropout(x, 0.1), first)
    assert not torch.equal(fast_dropout(x, 0.1), first)
    assert FastDropout(0.1).eval()(x) is x and fast_dropout(x, 0.0) is x
    assert torch.count_nonzero(fast_dropout(x, 1.0)) == 0


def qkv_and_padding_mask():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 7, 8) for _ in range(3))
    attend = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    attend[0, ..., 5:] = False  # the first text is 5 tokens long
    return q, k, v, attend


@pytest.mark.parametrize("padded", [True, False])  # an encoder batch of equal lengths gets no mask
def test_attention_with_dropout_is_the_eager_math_under_the_same_mask(padded):
    q, k, v, attend = qkv_and_padding_mask()
    if not padded:
        attend = torch.ones_like(attend)
    module = nn.Module()
    module.is_causal = False
    torch.manual_seed(2)
    out, _ = attention(module, q, k, v, attend if padded else None, dropout=0.2, scaling=0.3)
    torch.manual_seed(2)
    keep, scale = keep_mask(torch.Size([3, 4, 7, 7]), 0.2, q.device)
    weights = torch.softmax((q @ k.transpose(2, 3) * 0.3).masked_fill(~attend, torch.finfo(q.dtype).min), -1)
    expected = ((weights * keep * scale) @ v).transpose(1, 2)
    torch.testing.assert_close(out, expected)


def test_attention_without_dropout_is_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v, attend = qkv_and_padding_mask()
    module = nn.Module()
    out, _ = attention(module, q, k, v, attend, dropout=0.0)
    assert torch.equal(out, sdpa_attention_forward(module, q, k, v, attend, dropout=0.0)[0])


@pytest.fixture
def minilm_lora(run_dir):
    from hydra.utils import instantiate

    overrides = ["model=minilm", "method=lora", "data.batch_size=8"]
    torch.manual_seed(0)
    datamodule, model = build(compose(overrides, run_dir), method=instantiate(compose(overrides, run_dir).method))
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    return model, batch | {"labels": batch.get("labels", batch.get("label"))}


def loss_and_grads(model, batch, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    loss = nn.functional.cross_entropy(model(batch), batch["labels"])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_on_minilm_lora_every_dropout_is_swapped_evaluation_is_unchanged_and_undo_restores(minilm_lora):
    model, batch = minilm_lora
    dropouts = [name for name, m in model.net.named_modules() if type(m) is nn.Dropout]
    assert any("lora_dropout" in name for name in dropouts)
    with torch.no_grad():
        before = model.eval()(batch)
    undo = use_fast_dropout(model.net)
    assert [name for name, m in model.net.named_modules() if isinstance(m, FastDropout)] == dropouts
    assert model.net.config._attn_implementation == ATTENTION
    with torch.no_grad():
        assert torch.equal(model.eval()(batch), before)
    loss, grads = loss_and_grads(model, batch)
    again, grads_again = loss_and_grads(model, batch)
    assert torch.equal(loss, again) and all(torch.equal(grads[n], grads_again[n]) for n in grads)
    assert all(g.isfinite().all() for g in grads.values()) and any(g.abs().sum() > 0 for g in grads.values())
    assert not torch.equal(loss_and_grads(model, batch, seed=1)[0], loss)  # dropout is on: another mask
    undo()
    assert not any(isinstance(m, FastDropout) for m in model.net.modules())
    assert model.net.config._attn_implementation == "sdpa"


def test_gradient_checkpointing_recomputes_the_same_masks(minilm_lora):
    model, batch = minilm_lora
    checkpointed = copy.deepcopy(model)
    use_fast_dropout(model.net)
    use_fast_dropout(checkpointed.net)
    enable_gradient_checkpointing(checkpointed.net)
    loss, grads = loss_and_grads(model, batch)
    again, grads_again = loss_and_grads(checkpointed, batch)
    torch.testing.assert_close(again, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_again[name], grad, msg=name)


def test_an_unknown_setting_names_the_choices():
    with pytest.raises(LokalError, match="fast_dropout='yes'.*auto, true or false"):
        Compute(fast_dropout="yes")

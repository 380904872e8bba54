"""The GPU path options, checked on CPU with tiny random models: fused AdamW (optimizer.fused),
gradient checkpointing and torch.compile (callbacks.compute), padding-free packing of
instruction data (data.packing): each gives the numbers of the plain path within float
tolerance, and checkpoints keep their plain names."""

from __future__ import annotations

import copy
import json
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from lokal.assets.shipped import indo_instruct
from lokal.data.instruct import IGNORE, InstructionDataModule, pack
from lokal.models.causal_lm import CausalLM
from lokal.training.compute import Compute, enable_gradient_checkpointing
from lokal.training.module import make_optimizer
from lokal.training.optim import adamw
from tests.conftest import FAST, compose


@pytest.fixture
def lm(tiny_causal_lm):
    torch.manual_seed(0)
    return CausalLM(str(tiny_causal_lm), lora_targets=["q_proj", "v_proj"])


def instruct_data(model, **kwargs) -> InstructionDataModule:
    datamodule = InstructionDataModule(str(indo_instruct()), batch_size=4, **kwargs)
    datamodule.use_model(model)
    datamodule.setup()
    return datamodule


def lora(model, dropout: float = 0.0):
    from lokal.methods.lora import LoRA

    return LoRA(r=4, alpha=8, dropout=dropout, target_modules=["q_proj", "v_proj"]).apply(model)


# -- fused AdamW ---------------------------------------------------------------------------------
def test_fused_adamw_is_auto_on_cpu_and_steps_like_the_unfused():
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    copies = [copy.deepcopy(weights) for _ in range(2)]
    fused = make_optimizer(partial(adamw, lr=0.1), [{"params": copies[0], "lr_scale": 0.5}])
    plain = make_optimizer(partial(adamw, lr=0.1, fused=False), [{"params": copies[1], "lr_scale": 0.5}])
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    assert fused.param_groups[0]["lr"] == 0.05
    for _ in range(3):
        for group, optimizer in zip(copies, (fused, plain), strict=True):
            for p in group:
                p.grad = p.detach().sin()
            optimizer.step()
    for a, b in zip(*copies, strict=True):
        torch.testing.assert_close(a, b)


def test_fused_auto_is_off_for_parameters_torch_cannot_fuse():
    assert not adamw([torch.nn.Parameter(torch.randn(3, device="meta"))], lr=0.1).defaults["fused"]


# -- gradient checkpointing ------------------------------------------------------------------------
def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad()
    loss = model(batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_is_on_and_changes_no_number(lm, method):
    batch = next(iter(instruct_data(lm).train_dataloader()))
    plain = lora(lm) if method == "lora" else lm
    checkpointed = copy.deepcopy(plain)
    enable_gradient_checkpointing(checkpointed.net)
    assert checkpointed.net.is_activation_checkpointing and not plain.net.is_activation_checkpointing
    calls = []
    layer = checkpointed.net.get_decoder().layers[0]
    # a pre-hook: the recomputation stops early, once the last saved tensor is back, before mlp returns
    layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    expected, expected_grads = loss_and_grads(plain, batch)
    loss, grads = loss_and_grads(checkpointed, batch)
    assert len(calls) == 2  # the forward, and its recomputation in the backward pass
    torch.testing.assert_close(loss, expected)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], msg=name)


def test_gradient_checkpointing_is_refused_for_a_model_without_it():
    from lokal.errors import LokalError

    with pytest.raises(LokalError, match="gradient_checkpointing=false"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


# -- torch.compile ---------------------------------------------------------------------------------
def test_compile_keeps_the_checkpoint_names(lm):
    from lokal.tasks.causal_lm import LMModule

    module = LMModule(lora(lm), optimizer=partial(adamw, lr=1e-3))
    names = list(module.state_dict())
    Compute(compile=True, fast_dropout=False).setup(None, module, "fit")
    assert list(module.state_dict()) == names and not any("_orig_mod" in n for n in names)


def fit(model, data, steps: int, compute: Compute):
    import lightning as L

    from lokal.tasks.causal_lm import LMModule

    losses = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    torch.manual_seed(0)
    module = LMModule(model, optimizer=partial(adamw, lr=3e-2))
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[compute, Losses()])
    trainer.fit(module, train_dataloaders=data.train_dataloader())
    return trainer, module, losses


@pytest.mark.slow  # inductor compiles forward and backward on CPU: ~1 minute on 2 cores
def test_a_compiled_run_trains_like_the_eager_one_and_saves_plain_names(lm, tmp_path):
    data = instruct_data(lm)
    _, _, eager = fit(lora(copy.deepcopy(lm)), data, 4, Compute())
    trainer, module, compiled = fit(lora(lm), data, 4, Compute(compile=True))
    assert compiled == pytest.approx(eager, rel=1e-3) and compiled[-1] < compiled[0]
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    assert saved and all("_orig_mod" not in n and "lora_" in n for n in saved)
    module.load_state_dict(saved, strict=False)


# -- packing -----------------------------------------------------------------------------------------
def tiny_gemma3():
    """A 2-layer Gemma 3 (sliding-window and global layers, as the 270M): its mask code differs from LLaMA's."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"])
    return Gemma3ForCausalLM(config)


def random_rows(n: int, seed: int = 0) -> list[dict]:
    """Examples of different lengths, the loss on the tail of each (the response)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for length in torch.randint(4, 7, (n,), generator=g).tolist():
        ids = torch.randint(1, 128, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE] * 2 + ids[2:]})
    return rows


def padded(rows: list[dict]) -> dict[str, torch.Tensor]:
    return InstructionDataModule._collate(SimpleNamespace(packing=False, tokenizer=SimpleNamespace(pad_token_id=0)),
                                          rows)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_packed_batch_gives_each_example_its_own_logits_on_gemma3(attention):
    net = tiny_gemma3().eval()
    net.config._attn_implementation = attention
    lm = SimpleNamespace(net=net)  # CausalLM.forward, the call lokal makes, on the tiny Gemma
    rows = random_rows(4)
    packed, plain = pack(rows), padded(rows)
    assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows)) and "attention_mask" not in packed
    out, expected = CausalLM.forward(lm, packed), CausalLM.forward(lm, plain)
    lengths = [len(r["input_ids"]) for r in rows]
    for i, logits in enumerate(out.logits[0].split(lengths)):  # (T_i, vocab) per example
        torch.testing.assert_close(logits, expected.logits[i, :lengths[i]], msg=f"example {i}")
    torch.testing.assert_close(out.loss, expected.loss)


def test_packing_through_the_data_module_gives_the_padded_loss_and_gradients(lm):
    packed = next(iter(instruct_data(lm, packing=True).train_dataloader()))
    plain = next(iter(instruct_data(lm).train_dataloader()))
    assert packed["input_ids"].shape[0] == 1 and packed["input_ids"].numel() == plain["attention_mask"].sum()
    model = lora(lm)
    loss, grads = loss_and_grads(model, plain)
    packed_loss, packed_grads = loss_and_grads(model, packed)
    torch.testing.assert_close(packed_loss, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, msg=name)


def test_packing_is_refused_with_prompt_tuning(lm):
    from lokal.errors import LokalError
    from lokal.methods.prompt import Prompt

    model = Prompt(num_tokens=2).apply(lm)
    with pytest.raises(LokalError, match="data.packing=false"):
        model(pack(random_rows(2)))


# -- the switches in train.py ------------------------------------------------------------------------------
@pytest.mark.integration
def test_train_py_runs_with_packing_checkpointing_and_fused_adamw(run_dir, tiny_causal_lm):
    from lokal.run import train

    cfg = compose(FAST + ["experiment=indo_instruct", f"model.name={tiny_causal_lm}", "method.lr=3e-2",
                          "data.packing=true", "callbacks.compute.gradient_checkpointing=true", "optimizer.fused=auto",
                          "data.generate_examples=1", "data.max_new_tokens=4"], run_dir)
    metrics = train(cfg)
    assert json.loads((run_dir / "metrics.json").read_text()) == pytest.approx(metrics)
    assert metrics["test/loss"] < metrics["base/test_loss"]

"""Causal-LM instruction fine-tuning on a tiny random LLaMA: the loss covers exactly the
response tokens, training lowers it, generation answers, train.py runs end to end on the
shipped Indonesian set, and bad input stops with a clear LokalError."""

from __future__ import annotations

import json

import pytest
import torch

from lokal.assets.shipped import indo_instruct
from lokal.data.instruct import IGNORE, InstructionDataModule
from lokal.errors import LokalError
from lokal.models.causal_lm import CausalLM
from tests.conftest import FAST, compose

# The template of a chat model in miniature: roles as text, [SEP] ends each turn.
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m.role }}> {{ m.content }} [SEP] {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


def write_jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def lm(tiny_causal_lm):
    torch.manual_seed(0)
    return CausalLM(str(tiny_causal_lm), lora_targets=["q_proj", "v_proj"])


def datamodule_for(model, path=None, **kwargs) -> InstructionDataModule:
    datamodule = InstructionDataModule(str(path or indo_instruct()), **kwargs)
    datamodule.use_model(model)
    datamodule.setup()
    return datamodule


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat_template"])
def test_exactly_the_response_tokens_are_unmasked(lm, chat):
    if chat:
        lm.tokenizer.chat_template = CHAT_TEMPLATE
    datamodule = datamodule_for(lm)
    assert datamodule.chat is chat
    end = [lm.tokenizer.eos_token_id]  # plain: the eos we append; chat: the template's [SEP] after the answer
    for (prompt, response), row in zip(datamodule.pairs("train"), datamodule.datasets["train"], strict=True):
        prompt_ids = datamodule.encode_prompt(prompt)
        response_ids = lm.tokenizer(response, add_special_tokens=False)["input_ids"] + end
        assert row["input_ids"] == prompt_ids + response_ids
        assert row["labels"] == [IGNORE] * len(prompt_ids) + response_ids
    assert datamodule.stop_ids() == end


def test_padding_is_masked_out_of_attention_and_loss(lm):
    batch = next(iter(datamodule_for(lm, batch_size=4).train_dataloader()))
    padded = batch["input_ids"] == lm.tokenizer.pad_token_id
    assert padded.any()  # the longest-first batch mixes lengths
    assert (batch["attention_mask"][padded] == 0).all() and (batch["labels"][padded] == IGNORE).all()


def test_training_lowers_the_loss_and_generation_answers(lm):
    datamodule = datamodule_for(lm)
    prompt, response = datamodule.pairs("train")[0]
    row = datamodule._collate([datamodule.encode(prompt, response)])
    params = [p for p in lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-2)
    losses = []
    for _ in range(30):  # memorise one pair
        loss = lm(row).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    answer = lm.generate(datamodule.encode_prompt(prompt), max_new_tokens=40, stop_ids=datamodule.stop_ids())
    assert answer == lm.tokenizer.decode(lm.tokenizer(response)["input_ids"], skip_special_tokens=True)


def test_empty_and_duplicate_pairs_are_dropped_and_counted(lm, tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(10)]
    rows += [{"prompt": "q1", "response": " A1 "}, {"prompt": "q11", "response": ""}, {"prompt": "q12"}]
    datamodule = InstructionDataModule(str(write_jsonl(tmp_path / "pairs.jsonl", rows)), seed=0)
    assert datamodule.stats.items() >= {"rows": 13, "empty_dropped": 2, "duplicates_dropped": 1}.items()
    assert (datamodule.stats["train_rows"], datamodule.stats["val_rows"], datamodule.stats["test_rows"]) == (8, 1, 1)
    again = InstructionDataModule(str(tmp_path / "pairs.jsonl"), seed=0)
    assert again.pairs("test") == datamodule.pairs("test")  # the split is a function of the seed


def test_a_missing_column_names_the_file_and_the_real_columns(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Apa kabar?", "answer": "Baik."}])
    with pytest.raises(LokalError, match=r"qa\.jsonl: no column 'prompt'; columns are \['question', 'answer'\]"):
        InstructionDataModule(str(path))
    datamodule = InstructionDataModule(str(path), prompt_column="question", response_column="answer",
                                       val_fraction=0, test_fraction=0)
    assert datamodule.pairs("train") == [("Apa kabar?", "Baik.")]


def test_a_classifier_on_instruction_data_is_refused_before_loading(tmp_path):
    from lokal.training.build import build

    cfg = compose(["data=indo_instruct", "model=minilm"], tmp_path)
    with pytest.raises(LokalError, match="data=indo_instruct needs a causal-LM model, e.g. model=gemma3_270m_lm"):
        build(cfg)


def test_a_language_model_on_labelled_data_is_refused(tmp_path, tiny_causal_lm):
    from lokal.training.build import build

    cfg = compose(["model=gemma3_270m_lm", f"model.name={tiny_causal_lm}"], tmp_path)
    with pytest.raises(LokalError, match="data=indo_sentiment needs a classification model"):
        build(cfg)


def test_partial_trains_the_last_block_and_what_follows(lm):
    from lokal.methods.partial import Partial

    Partial(last_n_blocks=1).apply(lm)
    trainable = {n for n, p in lm.net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.1.", "model.norm.", "lm_head.")) for n in trainable)


def test_checkpoints_hold_only_what_trains_even_when_the_head_is_tied(lm):
    """Gemma's LM head is its embedding under a second name: a LoRA checkpoint held it (680 MB)."""
    from lokal.methods.lora import LoRA
    from lokal.tasks.causal_lm import LMModule

    lm.net.lm_head.weight = lm.net.model.embed_tokens.weight
    module = LMModule(LoRA(r=4, alpha=8).apply(lm), optimizer=torch.optim.AdamW)
    assert module.state_dict() and all("lora_" in name for name in module.state_dict())


@pytest.mark.integration
def test_the_experiment_runs_end_to_end_and_loads_back(run_dir, tiny_causal_lm):
    from lokal.runs.load import load_run

    cfg = compose(FAST + ["experiment=indo_instruct", f"model.name={tiny_causal_lm}", "method.lr=3e-2",
                          "data.generate_examples=2", "data.max_new_tokens=6"], run_dir)
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss"
    from lokal.run import train

    metrics = train(cfg)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    assert {"test/loss", "test/perplexity", "val/loss", "val/perplexity", "base/test_perplexity",
            "trainable_params", "train_time_s", "peak_memory_mb"} <= saved.keys()
    assert saved["test/perplexity"] < saved["base/test_perplexity"]
    assert saved["test/perplexity"] == pytest.approx(torch.tensor(saved["test/loss"]).exp().item(), rel=1e-4)
    rows = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["before"], str) and isinstance(r["after"], str) for r in rows)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    datamodule, model = load_run(run_dir)  # a fresh base from its folder + the saved adapter
    datamodule.setup()
    from lokal.tasks.causal_lm import corpus_metrics

    reloaded = corpus_metrics(model, datamodule.test_dataloader(), torch.device("cpu"))
    assert reloaded["test/loss"].item() == pytest.approx(saved["test/loss"], rel=1e-5)


@pytest.mark.slow
def test_the_gemma_demo_lowers_test_perplexity(tmp_path):
    from tests.test_cli import run

    result = run("experiment=indo_instruct", f"hydra.run.dir={tmp_path}", timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/perplexity"] < 0.5 * metrics["base/test_perplexity"]
    assert metrics["trainable_percent"] < 1
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(r["after"] for r in rows)

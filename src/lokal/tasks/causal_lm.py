"""Causal-LM instruction fine-tuning: the LightningModule (HF's loss, which the data masks
to the response tokens; perplexity, next-token accuracy) and its evaluation: test perplexity
of the base model before training and of the tuned one after, and greedy answers of both next
to the references."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lokal.io import write_text
from lokal.training.module import FinetuneModule


@dataclass
class CausalLM:
    """The causal-LM task (lokal.tasks.Task): the base model's test perplexity and answers are
    measured first, so the run shows what training changed."""

    settings: object = None  # lokal.evaluation.Evaluation
    name = "causal_lm"
    models = "a causal-LM model, e.g. model=gemma3_270m_lm or model=hf_causal_lm"
    before: Before | None = None

    def model_arguments(self, data) -> dict:
        return {}

    def module(self, model, optimizer, scheduler, loss, method, data) -> LMModule:
        return LMModule(model, optimizer=optimizer, scheduler=scheduler, method=method)

    def before_training(self, module, data, trainer) -> dict:
        self.before = before_training(module.model, data, trainer.strategy.root_device, trainer.is_global_zero)
        return self.before.metrics

    def evaluate(self, trainer, module, data) -> dict:
        from lokal.evaluation import best_checkpoint_scores

        return best_checkpoint_scores(trainer, module, data)

    def write_outputs(self, trainer, module, data, metrics: dict, run_dir: Path) -> dict:
        from lokal.training.wandb import log_run_to_wandb

        write_outputs(module, data, metrics, run_dir, self.before or Before())
        log_run_to_wandb(trainer.loggers, run_dir, metrics, None, None)
        return metrics


def token_stats(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean loss and next-token accuracy over the batch's response tokens, and their number."""
    out = model(batch)
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    scored = targets != -100
    logits = out.logits[:, -batch["labels"].shape[1]:]  # PEFT prompt tuning prepends virtual-token logits
    correct = (logits[:, :-1].argmax(-1) == targets) & scored
    tokens = int(scored.sum())
    return out.loss, correct.sum() / max(tokens, 1), tokens


class TokenMetrics(nn.Module):
    """Token-weighted means (not per batch), so the numbers do not depend on how answers are batched."""

    def __init__(self) -> None:
        super().__init__()
        from torchmetrics import MeanMetric

        self.loss, self.accuracy = MeanMetric(), MeanMetric()

    def update(self, loss: torch.Tensor, accuracy: torch.Tensor, tokens: int) -> None:
        self.loss.update(loss, weight=tokens)
        self.accuracy.update(accuracy, weight=tokens)

    def compute(self, prefix: str) -> dict[str, torch.Tensor]:
        loss = self.loss.compute()
        return {f"{prefix}loss": loss, f"{prefix}perplexity": torch.exp(loss),
                f"{prefix}accuracy": self.accuracy.compute()}

    def reset(self) -> None:
        self.loss.reset()
        self.accuracy.reset()


class LMModule(FinetuneModule):
    """Causal-LM fine-tuning. Validation and test report loss, perplexity and accuracy (of
    the next token, teacher-forced, as TRL's mean_token_accuracy) over the response tokens."""

    def __init__(self, model: nn.Module, optimizer, scheduler=None, method=None) -> None:
        super().__init__(model, optimizer, scheduler, method)
        self.val_metrics, self.test_metrics = TokenMetrics(), TokenMetrics()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss + self.method_penalty()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_metrics.update(*token_stats(self.model, batch))

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute("val/"), prog_bar=True, sync_dist=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.test_metrics.update(*token_stats(self.model, batch))

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute("test/"), sync_dist=True)
        self.test_metrics.reset()


@dataclass
class Before:
    """The base model, measured before training: the bar the tuned model should clear."""

    metrics: dict[str, float] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)


def before_training(model: nn.Module, datamodule, device: torch.device, answers: bool = True) -> Before:
    """Test loss/perplexity of the untrained model (a fresh LoRA adapter changes nothing yet)
    and, if `answers`, its greedy answers to the prompts shown after training."""
    datamodule.setup("test")
    model.to(device)
    metrics = {k.replace("test/", "base/test_"): v.item()
               for k, v in corpus_metrics(model, datamodule.test_dataloader(), device).items()}
    before = Before(metrics)
    if answers:
        before.answers = generate_answers(model, datamodule)
    return before


@torch.no_grad()
def corpus_metrics(model: nn.Module, loader, device: torch.device) -> dict[str, torch.Tensor]:
    """test/loss, test/perplexity, test/accuracy over a loader, as LMModule's test computes them."""
    was_training = model.training
    model.eval()
    metrics = TokenMetrics().to(device)
    for batch in loader:
        metrics.update(*token_stats(model, {k: v.to(device) for k, v in batch.items()}))
    model.train(was_training)
    return metrics.compute("test/")


def shown_pairs(datamodule) -> list[tuple[str, str]]:
    """The test (prompt, reference) pairs whose answers a run shows: the first `generate_examples`."""
    return datamodule.pairs("test")[: datamodule.generate_examples]


def generate_answers(model: nn.Module, datamodule) -> list[str]:
    """Greedy answers to the shown test prompts."""
    was_training = model.training
    model.eval()
    stops = datamodule.stop_ids()
    answers = [model.generate(datamodule.encode_prompt(prompt), datamodule.max_new_tokens, stops)
               for prompt, _ in shown_pairs(datamodule)]
    model.train(was_training)
    return answers


def write_outputs(module: LMModule, datamodule, metrics: dict, run_dir: Path, before: Before) -> None:
    """Weights, generations.jsonl (before/after answers), then metrics.json, then the summary."""
    import json

    from lokal.io import write_json
    from lokal.paths import FINISHED
    from lokal.training.weights import save_weights

    save_weights(module.model, run_dir)
    pairs, after = shown_pairs(datamodule), generate_answers(module.model, datamodule)
    rows = [{"prompt": prompt, "reference": reference, "before": answer_before, "after": answer_after}
            for (prompt, reference), answer_before, answer_after
            in zip(pairs, before.answers or [None] * len(pairs), after, strict=True)]
    write_text(run_dir / "generations.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_json(run_dir / FINISHED, metrics)  # last: its presence marks a finished run
    print_summary(metrics, rows, run_dir)


def print_summary(metrics: dict, rows: list[dict], run_dir: Path) -> None:
    from rich.console import Console
    from rich.markup import escape

    from lokal.evaluation.summary import summary_table

    console = Console()
    console.print(summary_table(metrics, run_dir))
    for row in rows:  # answers are model output: escaped, so a "[b]" in them prints as written
        console.print()
        for key in ("prompt", "before", "after", "reference"):
            if row[key] is not None:
                console.print(f"[bold]{key:<10}[/] {escape(row[key])}", highlight=False)

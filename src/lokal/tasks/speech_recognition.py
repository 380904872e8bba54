"""Speech recognition fine-tuning: the LightningModule (Whisper's loss on the transcript tokens;
word and character error rates of greedy transcripts, torchmetrics) and its evaluation: the
test WER/CER of the base model before training and of the tuned one after, and every test
recording's transcript before and after next to its reference (transcripts.csv)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from lokal.training.module import FinetuneModule

ENGLISH = (None, "en", "english")


@dataclass
class SpeechRecognition:
    """The speech-recognition task (lokal.tasks.Task): the base model's test WER/CER and
    transcripts are measured first, so the run shows what training changed."""

    settings: object = None  # lokal.evaluation.Evaluation
    name = "speech_recognition"
    models = "a speech-recognition model, e.g. model=whisper_tiny"
    before: Before | None = None
    after: list[str] = field(default_factory=list)

    def model_arguments(self, data) -> dict:
        return {}

    def module(self, model, optimizer, scheduler, loss, method, data) -> SpeechModule:
        return SpeechModule(model, optimizer=optimizer, scheduler=scheduler, method=method)

    def before_training(self, module, data, trainer) -> dict:
        self.before = before_training(module.model, data, trainer.strategy.root_device)
        return self.before.metrics

    def evaluate(self, trainer, module, data) -> dict:
        from lokal.evaluation import best_checkpoint_scores

        metrics = best_checkpoint_scores(trainer, module, data)
        self.after = gathered_transcripts(module, len(data.texts("test")))  # every process: a collective
        return metrics

    def write_outputs(self, trainer, module, data, metrics: dict, run_dir: Path) -> dict:
        from lokal.training.wandb import log_run_to_wandb

        write_outputs(module, data, metrics, run_dir, self.before or Before(), self.after)
        log_run_to_wandb(trainer.loggers, run_dir, metrics, None, None)
        return metrics


@lru_cache(maxsize=4)
def _normaliser(english: bool):
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    # Whisper's own WER normalisers (Radford et al. 2022, appendix C): English spells numbers and
    # spellings one way ("one" == "1", "colour" == "color"); other languages drop marks and case only
    return EnglishTextNormalizer({}) if english else BasicTextNormalizer()


def normalise(text: str, language: str | None = None) -> str:
    """The text WER is measured on: Whisper's normaliser, then without the punctuation it keeps."""
    text = _normaliser(language in ENGLISH)(text)
    return " ".join(re.sub(r"[^\w\s']", " ", text).split())


class ErrorRates(nn.Module):
    """Corpus WER and CER (errors over all reference words/characters, not a mean per clip)."""

    def __init__(self) -> None:
        super().__init__()
        from torchmetrics.text import CharErrorRate, WordErrorRate

        self.wer, self.cer = WordErrorRate(), CharErrorRate()

    def update(self, heard: list[str], references: list[str]) -> None:
        # torchmetrics divides by the reference length: an empty normalised reference ("..."), never
        # in a real transcript table, would count as zero words
        self.wer.update(heard, references)
        self.cer.update(heard, references)

    def compute(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}wer": self.wer.compute(), f"{prefix}cer": self.cer.compute()}

    def reset(self) -> None:
        self.wer.reset()
        self.cer.reset()


class SpeechModule(FinetuneModule):
    """Whisper fine-tuning. Validation and test report the teacher-forced loss and the WER/CER of
    greedy transcripts on normalised text; test transcripts are kept for transcripts.csv."""

    def __init__(self, model: nn.Module, optimizer, scheduler=None, method=None) -> None:
        super().__init__(model, optimizer, scheduler, method)
        self.val_rates, self.test_rates = ErrorRates(), ErrorRates()
        self.test_transcripts: dict[int, str] = {}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["text"]))
        return loss + self.method_penalty()

    def _score(self, batch: dict, rates: ErrorRates, prefix: str) -> list[str]:
        self.log(f"{prefix}loss", self(batch).loss, batch_size=len(batch["text"]), sync_dist=True)
        heard = self.model.transcribe(batch["input_features"])
        rates.update(*normalised(heard, batch["text"], self.model.language))
        return heard

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch, self.val_rates, "val/")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_rates.compute("val/"), prog_bar=True, sync_dist=True)
        self.val_rates.reset()

    def on_test_epoch_start(self) -> None:
        self.test_transcripts = {}

    def test_step(self, batch: dict, batch_idx: int) -> None:
        heard = self._score(batch, self.test_rates, "test/")
        self.test_transcripts |= dict(zip(batch["index"].tolist(), heard, strict=True))

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_rates.compute("test/"), sync_dist=True)
        self.test_rates.reset()


def normalised(heard: list[str], references: list[str], language: str | None) -> tuple[list[str], list[str]]:
    return [normalise(t, language) for t in heard], [normalise(t, language) for t in references]


@dataclass
class Before:
    """The base model on the test split, before training: the bar the tuned model should clear."""

    metrics: dict[str, float] = field(default_factory=dict)
    transcripts: list[str] = field(default_factory=list)


def before_training(model: nn.Module, datamodule, device: torch.device) -> Before:
    """Test WER/CER and transcripts of the model as training starts (a fresh LoRA adapter, a
    zero-initialised adapter or prompt changes nothing yet: this is the base model)."""
    datamodule.setup("test")
    transcripts = transcribe_split(model.to(device), datamodule, "test", device)
    rates = ErrorRates().to(device)
    rates.update(*normalised(transcripts, datamodule.texts("test"), model.language))
    return Before({k.replace("test/", "base/test_"): v.item() for k, v in rates.compute("test/").items()},
                  transcripts)


@torch.no_grad()
def transcribe_split(model: nn.Module, datamodule, split: str, device: torch.device) -> list[str]:
    """Greedy transcripts of the val or test split, in its row order."""
    was_training = model.training
    model.eval()
    heard = []
    loader = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader}[split]()
    for batch in loader:
        heard += model.transcribe(batch["input_features"].to(device))
    model.train(was_training)
    return heard


def gathered_transcripts(module: SpeechModule, count: int) -> list[str]:
    """The test transcripts in row order, from every process under DDP (each tested a share)."""
    import torch.distributed as dist

    found = dict(module.test_transcripts)
    if dist.is_available() and dist.is_initialized():
        parts: list[dict] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(parts, found)
        for part in parts:
            found |= part
    return [found.get(i, "") for i in range(count)]


def write_outputs(module: SpeechModule, datamodule, metrics: dict, run_dir: Path, before: Before,
                  after: list[str]) -> None:
    """Weights, transcripts.csv (reference, before, after per test recording), metrics.json, summary."""
    import pandas as pd

    from lokal.io import write_json, write_text
    from lokal.paths import FINISHED
    from lokal.training.weights import save_weights

    save_weights(module.model, run_dir)
    rows = pd.DataFrame({"file": datamodule.files("test"), "reference": datamodule.texts("test"),
                         "before": before.transcripts or None, "after": after})
    write_text(run_dir / "transcripts.csv", rows.to_csv(index=False))
    write_json(run_dir / FINISHED, metrics)  # last: its presence marks a finished run
    print_summary(metrics, rows, run_dir)


def print_summary(metrics: dict, rows, run_dir: Path, shown: int = 5) -> None:
    from rich.console import Console
    from rich.markup import escape

    from lokal.evaluation.summary import summary_table

    console = Console()
    console.print(summary_table(metrics, run_dir))
    changed = rows[rows["before"] != rows["after"]] if "before" in rows else rows
    for row in changed.head(shown).itertuples():  # transcripts are model output: escaped
        console.print()
        for key in ("file", "reference", "before", "after"):
            console.print(f"[bold]{key:<10}[/] {escape(str(getattr(row, key)))}", highlight=False)

"""Tasks as plug-ins. A task owns its LightningModule, what it measures before training, its
evaluation and its outputs; the run path (`lokal.run`) calls these four hooks and never names a
task. Adding a task = one module here + its model/data classes + YAMLs + one entry in TASKS.

A data module says which task it serves (`datamodule.task`, e.g. "classification"); the model
class must serve the same one (checked before its weights load)."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Protocol

from lokal.errors import LokalError


class Task(Protocol):
    """One run's task, built with the run's evaluation settings (`lokal.evaluation.Evaluation`;
    None where only the model is rebuilt, e.g. to load a finished run)."""

    name: str
    models: str  # the models it takes, for messages: "a causal-LM model, e.g. model=gemma3_270m_lm"

    def model_arguments(self, data) -> dict:
        """What the model must know of the data before its weights load (a classifier: the
        number of classes); refuses data the task cannot learn from."""

    def module(self, model, optimizer, scheduler, loss, method, data):
        """The LightningModule that trains `model`. `optimizer` and `scheduler` are factories
        (Hydra partials); `loss` a factory taking the training split's class counts."""

    def before_training(self, module, data, trainer) -> dict:
        """What to measure before training (the bars to beat: baselines, the base model's scores)."""

    def evaluate(self, trainer, module, data) -> dict:
        """Validation and test with the best checkpoint: flat metrics."""

    def write_outputs(self, trainer, module, data, metrics: dict, run_dir: Path) -> dict:
        """Weights, predictions, plots, then metrics.json (last: it marks a finished run); returns
        the final metrics. Called on the main process only."""


# name -> "module:class"; imported only when a run needs it
TASKS: dict[str, str] = {
    "classification": "lokal.tasks.classification:Classification",
    "causal_lm": "lokal.tasks.causal_lm:CausalLM",
    "speech_recognition": "lokal.tasks.speech_recognition:SpeechRecognition",
    "multi_label": "lokal.tasks.multi_label:MultiLabel",
}


def make_task(name: str, settings=None) -> Task:
    """The registered task called `name`, for one run with these evaluation settings."""
    if name not in TASKS:
        raise LokalError(f"unknown task {name!r}; lokal knows: {', '.join(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(import_module(module), cls)(settings)


def task_of(obj) -> str:
    """What a data module (or model) is for; classifiers predate the attribute."""
    return getattr(obj, "task", "classification")


def tasks_of(model_class) -> tuple[str, ...]:
    """The tasks a model class (a lokal.models.LokalModel) serves."""
    return tuple(model_class.tasks)

"""The shape of the package: tasks are plug-ins behind one Protocol, and the run path never
names one. (Adding a task touches lokal/tasks/, its model/data classes and YAMLs, not run.py.)"""

from __future__ import annotations

import inspect
import re

import pytest

from lokal.tasks import TASKS, Task, make_task
from tests.conftest import ROOT

HOOKS = [name for name, _ in inspect.getmembers(Task, inspect.isfunction) if not name.startswith("_")]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_implements_the_protocol(name):
    task = make_task(name)
    assert task.name == name and task.models
    for hook in HOOKS:
        ours, protocol = inspect.signature(getattr(type(task), hook)), inspect.signature(getattr(Task, hook))
        assert list(ours.parameters) == list(protocol.parameters), hook


def test_the_run_path_never_names_a_task():
    source = (ROOT / "src" / "lokal" / "run.py").read_text()
    named = [name for name in TASKS if re.search(rf"\b{name}\b", source)]
    assert named == []


def test_no_import_cycles():
    from tools.code_shape import import_cycles

    assert import_cycles() == []


def test_functions_stay_short():
    from tools.code_shape import MAX_LINES, function_lengths

    assert [(lines, name) for lines, name in function_lengths() if lines >= MAX_LINES] == []


def test_run_configs_written_before_the_layout_load(tmp_path):
    from hydra.utils import get_class, get_method

    from lokal.runs.load import load_config

    (tmp_path / "config.yaml").write_text(
        "loss: {_target_: lokal.losses.cross_entropy, _partial_: true}\n"
        "scheduler: {_target_: lokal.optim.warmup_cosine, _partial_: true}\n"
        "logger: {csv: {_target_: lokal.loggers.CSVLogger}}\n"
        "callbacks: {requeue: {_target_: lokal.preemption.Requeue}, last: {_target_: lokal.resume.LastCheckpoint}}\n"
        "data: {_target_: lokal.data.text.TextDataModule}\n")
    cfg = load_config(tmp_path)
    get_method(cfg.loss._target_), get_method(cfg.scheduler._target_)
    for target in (cfg.logger.csv, cfg.callbacks.requeue, cfg.callbacks.last, cfg.data):
        get_class(target._target_)
    assert cfg.loss._target_ == "lokal.training.losses.cross_entropy"


def test_every_shipped_model_is_a_lokal_model():
    from hydra.utils import get_class

    from lokal.models import LokalModel
    from lokal.paths import CONFIG_DIR
    from tests.conftest import compose

    for file in sorted((CONFIG_DIR / "model").glob("*.yaml")):
        model_class = get_class(compose([f"model={file.stem}"], run_dir=".").model._target_)  # defaults composed
        assert issubclass(model_class, LokalModel), file.name
        assert model_class.modality in ("text", "image", "audio") and model_class.task in model_class.tasks
        assert set(model_class.tasks) <= set(TASKS), file.name

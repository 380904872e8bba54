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

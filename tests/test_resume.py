"""A killed run, started again with the same command, ends exactly where an uninterrupted run
ends (CPU): same batches, augmentations, dropout, optimizer and scheduler state. The real
train.py in subprocesses, killed with SIGKILL or stopped by SIGUSR1 (Slurm's warning)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from lokal.data.resumable import ResumableLoader, SeededSampler, resumable_loader
from tests.conftest import FAST, compose

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
# Two epochs of 8 batches with a checkpoint every 3 steps: a kill lands mid-epoch, and the resumed
# run crosses an epoch boundary. EDA augmentation and dropout both draw random numbers.
TEXT = ["trainer.max_epochs=2", "trainer.limit_train_batches=8", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false", "model.max_length=32",
        "data.batch_size=16", "data.augment={delete:0.1,swap:0.1}",
        "callbacks.last_checkpoint.every_n_train_steps=3", "evaluation.plots=false", "evaluation.forgetting=false"]


def comparable(metrics: dict) -> dict:
    """The metrics two identical runs must agree on: all but time and memory."""
    from lokal.training.timeline import is_timing

    return {k: v for k, v in metrics.items() if not is_timing(k)}


def start(overrides: list[str], output_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", *overrides, f"paths.output_dir={output_dir}"], cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def interrupt_after_first_checkpoint(proc: subprocess.Popen, output_dir: Path, signum: int) -> None:
    deadline = time.time() + 300
    while not list(output_dir.glob("runs/*/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.kill(proc.pid, signum)


def the_run(output_dir: Path) -> Path:
    runs = list(output_dir.glob("runs/*"))
    assert len(runs) == 1, f"expected one run folder, found {runs}"
    return runs[0]


def results(run: Path) -> tuple[dict, list]:
    metrics = comparable(json.loads((run / "metrics.json").read_text()))
    with open(run / "metrics.csv") as f:
        losses = sorted((int(r["step"]), r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss"))
    return metrics, losses


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, list]:
    out = tmp_path_factory.mktemp("uninterrupted")
    finish(start(TEXT, out))
    return results(the_run(out))


@pytest.mark.integration
def test_a_run_killed_mid_epoch_resumes_to_the_same_metrics(uninterrupted, tmp_path):
    proc = start(TEXT, tmp_path)
    interrupt_after_first_checkpoint(proc, tmp_path, signal.SIGKILL)
    proc.wait()
    run = the_run(tmp_path)
    assert not (run / "metrics.json").exists() and (run / "run.lock").exists()  # unfinished, stale lock
    log = finish(start(TEXT, tmp_path))  # the same command
    assert "continuing the unfinished run" in log
    assert the_run(tmp_path) == run  # no second folder
    assert results(run) == uninterrupted  # every metric and every logged loss, exactly
    assert not (run / "run.lock").exists()


@pytest.mark.integration
def test_sigusr1_saves_at_a_batch_boundary_and_the_same_run_id_continues(uninterrupted, tmp_path):
    """Outside Slurm, SIGUSR1 stops the run with a checkpoint (exit 3); started again it finishes
    as if never stopped, logging to the same W&B run (offline)."""
    overrides = TEXT + ["logger=wandb"]
    proc = start(overrides, tmp_path)
    interrupt_after_first_checkpoint(proc, tmp_path, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 3, out[-3000:]
    assert "SIGUSR1 received" in out and "run the same command again" in out
    finish(start(overrides, tmp_path))
    run = the_run(tmp_path)
    assert results(run) == uninterrupted
    wandb_runs = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and len({name.rsplit("-", 1)[-1] for name in wandb_runs}) == 1, wandb_runs


@pytest.mark.integration
def test_an_image_run_with_randaugment_resumes_exactly(tmp_path):
    """Image transforms draw from torch's global RNG: each sample is seeded from its position."""
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "xray", per_class=16, size=40)
    overrides = ["data=image_folder", f"data.root={root}", "model=efficientnet_lite0", "model.image_size=32",
                 "method=bitfit", "data.batch_size=4", f"data.cache_dir={tmp_path / 'cache'}",
                 "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "evaluation.plots=false",
                 "evaluation.forgetting=false", "callbacks.last_checkpoint.every_n_train_steps=3"]
    finish(start(overrides, tmp_path / "a"))
    proc = start(overrides, tmp_path / "b")
    interrupt_after_first_checkpoint(proc, tmp_path / "b", signal.SIGKILL)
    proc.wait()
    finish(start(overrides, tmp_path / "b"))
    assert results(the_run(tmp_path / "b")) == results(the_run(tmp_path / "a"))


class Crash(L.Callback):
    """Dies after training batch `at_step` (before that step's checkpoint: those callbacks run last)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("crash")


@pytest.mark.parametrize("crash_at", [2, 4, 6])  # mid-epoch, just after an epoch's last batch, at the end
def test_a_crashed_run_resumes_exactly_from_any_step(crash_at, tmp_path, tiny_text_models):
    """In-process and quick: 3 batches per epoch, a checkpoint every step, a crash after step 2
    (mid-epoch), 4 (the checkpoint of step 3 closes epoch 0) or 6 (the last step)."""
    from lokal.run import train

    overrides = FAST + ["model=hf_text", f"model.name={tiny_text_models['bert']}", "model.max_length=32",
                        "method=full", "data.batch_size=8", "data.augment={delete:0.2}", "evaluation.plots=false",
                        "evaluation.forgetting=false", "callbacks.last_checkpoint.every_n_train_steps=1"]
    expected = train(compose(overrides, tmp_path / "a"))
    crashing = overrides + [f"+callbacks.crash={{_target_:tests.test_resume.Crash,at_step:{crash_at}}}"]
    with pytest.raises(RuntimeError, match="crash"):
        train(compose(crashing, tmp_path / "b"))
    resumed = train(compose(overrides, tmp_path / "b"))
    assert comparable(resumed) == comparable(expected)


def test_a_finished_run_folder_returns_its_metrics_without_training(run_dir):
    from lokal.run import train

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps({"val/accuracy": 0.75}))
    cfg = compose(FAST + ["data.path=/nonexistent.csv"], run_dir)  # would fail if it loaded data
    assert train(cfg) == {"val/accuracy": 0.75}


def test_a_folder_in_use_by_a_live_process_is_refused(run_dir):
    from lokal.errors import LokalError
    from lokal.training.rundir import lock_owner, run_lock

    run_dir.mkdir(parents=True)
    (run_dir / "run.lock").write_text(json.dumps(lock_owner() | {"pid": os.getppid()}))  # alive: pytest's parent
    with pytest.raises(LokalError, match="in use by process"), run_lock(run_dir):
        pass
    (run_dir / "run.lock").write_text(json.dumps(lock_owner() | {"pid": 2**22 + 12345}))  # no such process: stale
    with run_lock(run_dir):
        assert json.loads((run_dir / "run.lock").read_text())["pid"] == os.getpid()
    assert not (run_dir / "run.lock").exists()


def test_the_resolver_finds_only_an_unfinished_run_of_the_same_command(tmp_path):
    from omegaconf import OmegaConf

    from lokal.training.rundir import find_unfinished_run, unfinished_run

    def make_run(name: str, overrides: list[str], checkpoint=True, finished=False) -> Path:
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")
        if checkpoint:
            (run / "checkpoints").mkdir()
            (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        if finished:
            (run / "metrics.json").write_text("{}")
        return run

    make_run("1_other", ["method=bitfit"])
    make_run("2_done", ["method=lora"], finished=True)
    make_run("3_no_checkpoint", ["method=lora"], checkpoint=False)
    wanted = make_run("4_unfinished", ["method=lora"])
    assert unfinished_run(tmp_path, ["method=lora"]) == wanted
    assert unfinished_run(tmp_path, ["method=full"]) is None
    assert find_unfinished_run(str(tmp_path / "new"), resume=False) == str(tmp_path / "new")


def test_a_resumed_loader_yields_exactly_the_rest_of_its_epoch():
    items = [{"x": torch.tensor([float(i)])} for i in range(23)]

    def loader() -> ResumableLoader:
        sampler = torch.utils.data.RandomSampler(items, generator=torch.Generator())
        return resumable_loader(items, sampler, seed=7, batch_size=4)

    def epoch(dl: ResumableLoader, number: int) -> list[list[float]]:
        dl.sampler.set_epoch(number)
        return [b["x"].flatten().tolist() for b in dl]

    full = loader()
    first, second = epoch(full, 0), epoch(full, 1)
    assert first != second and epoch(full, 0) == first  # the order depends on (seed, epoch) only
    resumed = loader()
    resumed.load_state_dict({"epoch": 1, "batches_done": 2})
    assert [b["x"].flatten().tolist() for b in resumed] == second[2:]


def test_each_sample_draws_from_its_own_seed():
    """An augmentation's random numbers depend on the sample's position, not on what ran before."""
    class Noisy:
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.rand(1) + i

    sampler = SeededSampler(torch.utils.data.RandomSampler(range(6), generator=torch.Generator()), seed=1)
    keys = list(sampler)
    dataset = resumable_loader(Noisy(), sampler.inner, 1, batch_size=1).dataset
    first = [dataset[k] for k in keys]
    torch.rand(100)  # unrelated draws in between change nothing
    assert [dataset[k] for k in reversed(keys)] == first[::-1]


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import lightning.fabric.plugins.io.torch_io as torch_io

    from lokal.training.resume import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def killed_midway(checkpoint, filepath):  # Lightning's own writer opens the target itself
        Path(filepath).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch_io, "_atomic_save", killed_midway)
    with pytest.raises(OSError):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path) == {"step": 1} and list(tmp_path.iterdir()) == [path]

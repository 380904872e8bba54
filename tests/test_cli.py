"""The command line as a user meets it: fast help, valid choices listed, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import CONF, ROOT

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def run(*args: str, code: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    if not code and "-m" not in args and not any(a.startswith("hydra.run.dir=") for a in args):
        args = (*args, f"hydra.run.dir={tempfile.mkdtemp(prefix='lokal-test-')}")  # keep the repo's outputs/ clean
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "train.py", *args]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_group_without_importing_torch():
    # torch + lightning take ~7 s to import: --help must not pay for them.
    code = ("import sys; sys.argv = ['train.py', '--help']; import runpy\n"
            "try: runpy.run_path('train.py', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'transformers', 'timm') if m in sys.modules))")
    result = run(code=code)
    assert result.returncode == 0, result.stderr
    for group in ("method", "data", "model"):
        choices = ", ".join(sorted(path.stem for path in (CONF / group).glob("*.yaml")))
        assert f"{group}: {choices}" in result.stdout
    assert "HEAVY []" in result.stdout


def test_unknown_method_lists_the_valid_choices():
    result = run("method=lorra")
    assert result.returncode != 0
    assert "Could not find 'method/lorra'" in result.stderr
    assert all(m in result.stderr for m in ("bitfit", "full", "lora", "partial"))


def test_xray_without_root_shows_the_expected_layout():
    result = run("method=bitfit", "data=medical_xray")
    assert result.returncode == 2
    assert "data.root is not set" in result.stderr and "DIR/train/CLASS/" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_layout_is_explained(tmp_path):
    (tmp_path / "just_images").mkdir()
    (tmp_path / "just_images" / "a.jpeg").write_bytes(b"")
    result = run("data=medical_xray", f"data.root={tmp_path / 'just_images'}")
    assert result.returncode == 2 and "expected one of these layouts" in result.stderr
    assert "Traceback" not in result.stderr


def test_text_model_on_image_data_is_refused_before_training(tmp_path):
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "x", per_class=4)
    result = run("data=medical_xray", "model=minilm", f"data.root={root}")
    assert result.returncode == 2 and "reads text but data=medical_xray gives image" in result.stderr
    assert "pick an image model, e.g. model=efficientnet_lite0" in result.stderr


@pytest.mark.integration
def test_train_py_runs_end_to_end(tmp_path):
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "x", per_class=6)
    result = run("method=bitfit", "data=medical_xray", f"data.root={root}", "model.image_size=64",
                 "trainer.max_epochs=1", "logger=wandb", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainable params" in result.stdout and (tmp_path / "run" / "metrics.json").is_file()
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    assert (tmp_path / "run" / "metrics.csv").is_file()  # W&B comes on top of the CSV, offline
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))


LIBRARY_NOISE = ("Warning", "warnings.warn", "Tip:", "litlogger", "GPU available", "srun", "ModelCheckpoint")


def test_the_default_console_holds_lokal_lines_only(tmp_path):
    env = ENV | {"COLUMNS": "80"}
    result = subprocess.run([sys.executable, "train.py", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                             "trainer.limit_val_batches=2", f"hydra.run.dir={tmp_path}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert [word for word in LIBRARY_NOISE if word in console] == []
    bar = [line for line in console.splitlines() if line.startswith("Epoch 0/0")]
    assert bar and all(len(line.rstrip()) <= 80 for line in bar)
    assert "loss:" in bar[-1] and "val/accuracy:" in bar[-1]  # one line: the loss and the checkpoint's metric


@pytest.mark.integration
def test_a_multirun_writes_one_folder_per_run(tmp_path):
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "x", per_class=6)
    result = run("-m", "method=bitfit,lora", "data=medical_xray", f"data.root={root}", "model.image_size=64",
                 "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / "metrics.json").is_file())
    assert runs == ["0_medical_xray_efficientnet_lite0_bitfit", "1_medical_xray_efficientnet_lite0_lora"]


def test_a_hub_model_offline_gets_a_clear_message():
    result = run("model.name=indobenchmark/indobert-base-p1", "trainer.max_epochs=1")
    assert result.returncode == 2 and "model.name=indobenchmark/indobert-base-p1 could not be loaded" in result.stderr
    assert "Traceback" not in result.stderr

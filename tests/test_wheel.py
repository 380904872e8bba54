"""lokal as someone who never cloned the repository gets it: a wheel in a new virtual environment,
used from an empty folder, with the user's own config folder on top of the shipped configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT

USER_DATA = """# the user's own table: the shipped text_csv config with their columns
defaults:
  - text_csv
  - _self_
path: ${oc.env:TABLE}
text_column: review
label_column: stars
"""
USER_EXPERIMENT = """# @package _global_
defaults:
  - override /data: my_reviews
trainer:
  max_epochs: 1
  enable_progress_bar: false
evaluation:
  forgetting: false
  plots: false
"""


def user_config_dir(root: Path) -> Path:
    """A config folder outside the repository that adds a data config and an experiment."""
    conf = root / "my_conf"
    (conf / "data").mkdir(parents=True)
    (conf / "experiment").mkdir()
    (conf / "data" / "my_reviews.yaml").write_text(USER_DATA)
    (conf / "experiment" / "mine.yaml").write_text(USER_EXPERIMENT)
    return conf


def reviews_table(folder: Path) -> Path:
    words = {"5": "enak mantap puas", "1": "basi mahal kecewa"}
    stars = ["5", "1"] * 20
    frame = pd.DataFrame({"review": [f"{words[s]} ke {i}" for i, s in enumerate(stars)], "stars": stars})
    frame.to_csv(folder / "reviews.csv", index=False)
    return folder / "reviews.csv"


def test_a_user_config_dir_composes_on_top_of_the_shipped_configs(tmp_path: Path):
    conf = user_config_dir(tmp_path)
    done = subprocess.run([sys.executable, "train.py", "--config-dir", str(conf), "experiment=mine", "--cfg", "job"],
                          cwd=ROOT, env=os.environ | {"TABLE": "reviews.csv"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "text_column: review" in done.stdout and "label_column: stars" in done.stdout
    assert "max_epochs: 1" in done.stdout and "_target_: lokal.data.text.TextDataModule" in done.stdout


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds, installed (not editable) in a new venv. Its dependencies
    come from this test's own environment through a .pth line (installing torch again would take
    minutes); lokal itself comes only from the wheel."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: setuptools writes build/ and egg-info into the tree it builds
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(root / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((root / "dist").glob("lokal-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    return venv


def in_empty_folder(venv: Path, folder: Path, *command: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    clean |= {"PATH": f"{venv / 'bin'}:{clean['PATH']}", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"} | env
    return subprocess.run(command, cwd=folder, env=clean, capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_the_wheel_works_without_the_repository(wheel_venv: Path, tmp_path: Path, tiny_text_models):
    work = tmp_path / "empty"
    work.mkdir()
    where = in_empty_folder(wheel_venv, work, "python", "-c", "import lokal, lokal.cli; print(lokal.cli.CONFIG_DIR)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(wheel_venv)), where.stdout  # the wheel's copy, not the repository's

    helped = in_empty_folder(wheel_venv, work, "lokal", "--help")
    assert helped.returncode == 0 and "lokal train" in helped.stdout
    job = in_empty_folder(wheel_venv, work, "lokal", "train", "--cfg", "job")
    assert job.returncode == 0 and "_target_: lokal.data.text.TextDataModule" in job.stdout, job.stderr

    conf, table = user_config_dir(tmp_path), reviews_table(work)
    trained = in_empty_folder(wheel_venv, work, "lokal", "train", "--config-dir", str(conf), "experiment=mine",
                              "model=hf_text", f"model.name={tiny_text_models['bert']}", "hydra.run.dir=run",
                              TABLE=str(table))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (work / "run" / "metrics.json").is_file() and (work / "run" / "adapter").is_dir()
    assert "review" in (work / "run" / "config.yaml").read_text()

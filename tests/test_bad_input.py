"""Bad input as a new user gives it: one row per case. Every row must end with a clear message
(what is wrong, which file/row/column/key, the fix), exit code 2, no traceback, the user's files
byte-identical, and no empty run folder left behind. The next case is one more row."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT

ENV_EXTRA = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
LOKAL = "import sys; from lokal.cli import main; sys.argv[0] = 'lokal'; main()"
WORDS = {"positive": "bagus mantap senang suka", "negative": "jelek buruk kecewa benci"}


def texts_table(rows: int = 40) -> pd.DataFrame:
    """Learnable Indonesian-ish texts: the label's words plus a counter."""
    labels = ["positive", "negative"] * (rows // 2)
    return pd.DataFrame({"text": [f"{WORDS[y]} nomor {i}" for i, y in enumerate(labels)], "label": labels})


def tiny_model_args(model: Path) -> list[str]:
    return ["model=hf_text", f"model.name={model}", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
            "evaluation.forgetting=false", "evaluation.plots=false"]


@dataclass
class Case:
    """`make(data, out, run)` writes the user's files under `data` and returns the command line
    (`train.py` arguments, or ["lokal", ...]); `expect`: fragments of the message."""

    id: str
    make: Callable[[Path, Path, Path], list[str]]
    expect: tuple[str, ...]


def _csv(data: Path, frame: pd.DataFrame, name: str = "data.csv") -> Path:
    data.mkdir(parents=True, exist_ok=True)
    frame.to_csv(data / name, index=False)
    return data / name


def _train(data: Path, out: Path, *args: str) -> list[str]:
    return [f"paths.output_dir={out}", *args]


def reused_finished(data, out, run):
    return [*run_args(run), f"hydra.run.dir={run}", "method.lr=0.5"]


def reused_unfinished(data, out, run):
    (run / "metrics.json").unlink()
    return [*run_args(run), f"hydra.run.dir={run}", "method=full"]


def run_args(run: Path) -> list[str]:
    return json.loads((run / "args.json").read_text())


def lost_adapter_weights(data, out, run):
    (run / "adapter" / "adapter_model.safetensors").unlink()
    (data / "new.txt").write_text("bagus sekali\n")
    return ["lokal", "predict", str(run), str(data / "new.txt"), "--out", str(out / "p.csv")]


def single_class(data, out, run):
    frame = texts_table().assign(label="positive")
    return _train(data, out, "data=text_csv", f"data.path={_csv(data, frame)}")


def list_column(data, out, run):
    frame = pd.DataFrame({"text": [["bagus", "sekali"], ["jelek"]] * 10, "label": ["a", "b"] * 10})
    frame.to_parquet(data / "t.parquet")
    return _train(data, out, "data=text_csv", f"data.path={data / 't.parquet'}")


def dict_label(data, out, run):
    rows = [{"text": f"teks {i}", "label": {"sentiment": "positive"}} for i in range(10)]
    (data / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _train(data, out, "data=text_csv", f"data.path={data / 't.jsonl'}")


def read_only_output(data, out, run):
    return _train(data, Path("/sys/lokal-cannot-write"))


def read_only_predict_out(data, out, run):
    (data / "new.txt").write_text("bagus sekali\n")
    return ["lokal", "predict", str(run), str(data / "new.txt"), "--out", "/sys/lokal-cannot-write/p.csv"]


def negative_lr(data, out, run):
    return _train(data, out, "method.lr=-0.001")


def zero_batch(data, out, run):
    return _train(data, out, "data.batch_size=0")


def symlink_loop(data, out, run):
    from tests.conftest import make_image_folder

    root = make_image_folder(data / "images", per_class=4, splits=None)
    (root / "NORMAL" / "loop.jpeg").symlink_to("loop.jpeg")
    return _train(data, out, "data=image_folder", f"data.root={root}")


def malformed_jsonl(data, out, run):
    (data / "t.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", label}\n')
    return _train(data, out, "data=text_csv", f"data.path={data / 't.jsonl'}")


def folder_as_path(data, out, run):
    (data / "tables").mkdir(parents=True)
    return _train(data, out, "data=text_csv", f"data.path={data / 'tables'}")


def latin1_audit(data, out, run):
    (data / "t.csv").write_bytes("text,label\ncaf\xe9 enak,positive\n".encode("latin-1"))
    return ["lokal", "audit", str(data / "t.csv"), "--out", str(out / "audit")]


def key_typo(data, out, run):
    return _train(data, out, "trainer.max_epoch=3")


CASES = [
    Case("reused folder, finished run, other config", reused_finished,
         ("holds a run with another config", "method.lr: 0.002 -> 0.5", "Nothing was changed")),
    Case("reused folder, unfinished run, other method", reused_unfinished,
         ("holds a run with another config", "method._target_")),
    Case("predict: adapter lost its weights file", lost_adapter_weights,
         ("lacks adapter_model.safetensors", "Copy the whole adapter/ folder back")),
    Case("a single class", single_class, ("single class ['positive']", "needs at least two")),
    Case("a Parquet list column as text", list_column, ("column 'text' (data.text_column) holds list values",)),
    Case("a dict-valued label column", dict_label, ("column 'label' (data.label_column) holds dict values",)),
    Case("a read-only output folder", read_only_output, ("cannot write /sys/lokal-cannot-write", "paths.output_dir=")),
    Case("predict --out in a read-only folder", read_only_predict_out, ("--out /sys/lokal-cannot-write/p.csv",)),
    Case("a negative learning rate", negative_lr, ("method.lr=-0.001 is out of range", "a positive number")),
    Case("batch size 0", zero_batch, ("data.batch_size=0 is out of range", "a whole number >= 1")),
    Case("a symlink loop in an image folder", symlink_loop, ("NORMAL/loop.jpeg: a symbolic link that loops",)),
    Case("a malformed JSONL line", malformed_jsonl, ("line 3 is not valid JSON",)),
    Case("a folder given as data.path", folder_as_path, ("is a folder, not a table", "data=image_folder")),
    Case("audit: a latin-1 table", latin1_audit, ("is not utf-8 text", "--encoding latin-1")),
    Case("a misspelled key", key_typo, ("trainer.max_epoch is not a key", "did you mean trainer.max_epochs")),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_text_models) -> Path:
    """A real finished LoRA run of a tiny BERT on a small table (the cases copy it)."""
    root = tmp_path_factory.mktemp("finished")
    run = root / "run"
    args = ["data=text_csv", f"data.path={_csv(root / 'data', texts_table())}",
            *tiny_model_args(tiny_text_models["bert"])]
    done = subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={run}"], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run / "args.json").write_text(json.dumps(args))
    return run


def env() -> dict[str, str]:
    import os

    return os.environ | ENV_EXTRA


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file's bytes under `folder` (train.log aside: Hydra appends its log line)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink() and p.name != "train.log"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_clear_message(case: Case, tmp_path: Path, finished_run: Path):
    data, out, run = tmp_path / "data", tmp_path / "outputs", tmp_path / "run"
    shutil.copytree(finished_run, run)
    data.mkdir()
    argv = case.make(data, out, run)
    before = fingerprint(tmp_path)
    command = [sys.executable, "-c", LOKAL, *argv[1:]] if argv[0] == "lokal" else [sys.executable, "train.py", *argv]
    done = subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    message = done.stderr[done.stderr.rfind("lokal: "):]
    for fragment in case.expect:
        assert fragment in message, message
    assert fingerprint(tmp_path) == before  # the user's files and the old run untouched, nothing half-written
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())  # no stub run folder


def test_the_readme_counts_the_cases():
    readme = (ROOT / "README.md").read_text()
    assert f"{len(CASES)} bad-input cases" in readme


# -- input that used to fail and now simply works ------------------------------------------------
def test_texts_without_words_train_and_audit(tmp_path: Path, tiny_text_models):
    """Emoji-only texts: the baseline falls back to character n-grams instead of crashing after
    training (which left a folder that crashed again on every rerun); the audit reads them too."""
    frame = pd.DataFrame({"text": [e * k + " " + c for k in range(1, 31) for e, c in [("😀", "a"), ("😡", "b")]],
                          "label": ["positive", "negative"] * 30})
    table = _csv(tmp_path / "data", frame)
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "train.py", "data=text_csv", f"data.path={table}",
                           *tiny_model_args(tiny_text_models["bert"]), f"hydra.run.dir={run}"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["baseline/tfidf_logreg_accuracy"] == 1.0  # one emoji per class: characters separate them
    audit = subprocess.run([sys.executable, "-c", LOKAL, "audit", str(table), "--out", str(tmp_path / "audit")],
                           cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert audit.returncode == 0, audit.stderr[-3000:]


def test_a_tab_separated_file_named_csv_is_read_as_tsv(tmp_path: Path):
    from lokal.data.tables import read_table

    (tmp_path / "t.csv").write_text("text\tlabel\nhalo, apa kabar\tpositive\n")
    frame = read_table(str(tmp_path / "t.csv"))
    assert list(frame.columns) == ["text", "label"] and frame["text"][0] == "halo, apa kabar"


def test_label_spellings_are_reported_and_label_map_merges_them(tmp_path: Path, caplog):
    from lokal.data.text import TextDataModule

    frame = texts_table()
    frame.loc[::4, "label"] = frame.loc[::4, "label"].str.capitalize()  # "Positive" beside "positive"
    table = _csv(tmp_path, frame)
    with caplog.at_level("WARNING"):
        split = TextDataModule(str(table), cache=False)
    assert split.class_names == ["Positive", "negative", "positive"]
    assert "data.label_map='{Positive: positive}'" in caplog.text
    merged = TextDataModule(str(table), cache=False, label_map={"Positive": "positive", "Negative": "negative"})
    assert merged.class_names == ["negative", "positive"]
    assert merged.stats["conflicting_dropped"] == 0

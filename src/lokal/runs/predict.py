"""`lokal predict RUN_DIR INPUTS...`: a finished run's model (or a `lokal export` folder) on new files.

Inputs are files: images or recordings, folders of them (searched recursively), tables (CSV, TSV,
JSONL, Parquet) with a text column for text models or a column of file paths for image and audio
models, and `.txt` files (one text per line). Predictions come in batches with every class's
probability and are written as one CSV: id, predicted, confidence, prob/<class>; a
speech-recognition run writes transcripts instead: id, file, seconds, pieces, text
(`lokal.runs.predict_audio`). The CSV is written atomically, once everything is predicted.

The model is rebuilt from the run's config.yaml and trained weights alone: the training data may
not be on the machine that predicts. The class names come from RUN_DIR/classes.json, else the
header of the run's predictions.csv, else data.classes in its config, else (slowest) from
reading the training data once; that answer is then kept in RUN_DIR/classes.json.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lokal.errors import LokalError
from lokal.paths import CLASSES_FILE, THRESHOLDS_FILE

log = logging.getLogger(__name__)

TABLES = (".csv", ".tsv", ".jsonl", ".parquet")
TEXT_FILES = (".txt",)
TEXT_INPUTS = "a CSV/TSV/JSONL/Parquet table with a text column (--text-column), or a .txt file (one text per line)"
IMAGE_INPUTS = "image files, folders of images, or a table with a column of image paths (--file-column)"
FOLDER_FILES = {"text": ".txt files", "image": "images", "audio": "audio files"}  # what a folder is searched for


@dataclass
class Predictor:
    """A model ready to predict: `model(batch)` gives logits (B, classes); text models carry
    `tokenizer` and `max_length`, image models `data_config` (timm's input size and normalisation),
    audio models `feature_extractor`; speech-recognition models transcribe instead (no classes)."""

    model: object
    class_names: list[str]
    modality: str  # "text" | "image" | "audio"
    source: str  # the run or folder, for messages
    prepare_text: Callable[[list[str]], list[str]] | None = None  # the run's own text normalisation
    thresholds: list[float] | None = None  # multi-label runs: a sigmoid per label, cut where validation chose
    task: str = "classification"  # or "speech_recognition"
    max_seconds: float | None = None  # audio classifiers: data.max_seconds, the longest chunk (None: the window)


# -- loading the model -------------------------------------------------------------------------
def load_predictor(source: str | Path) -> Predictor:
    """A run directory, its adapter/ folder, or a folder written by `lokal export`."""
    from lokal.training.console import quiet_libraries
    from lokal.training.weights import ADAPTER_DIR

    quiet_libraries()  # the libraries' known notes to someone else, silenced by their text as in training
    source = Path(source)
    if not source.is_dir():
        raise LokalError(f"{source}: not a run directory (give RUN_DIR, RUN_DIR/{ADAPTER_DIR} or a `lokal export` "
                         "folder)" if source.exists() else f"{source}: no such run directory")
    if source.name == ADAPTER_DIR and (source.parent / "config.yaml").is_file():
        source = source.parent  # the adapter alone lacks the base's name and the class names: its run has them
    if (source / "config.yaml").is_file():
        return from_run(source)
    if (source / "fold_0").is_dir():
        raise LokalError(f"{source} is a k-fold run with one model per fold: predict with one, "
                         f"e.g. {source / 'fold_0'}")
    if (source / "config.json").is_file():
        return from_export(source)
    if (source / "adapter_config.json").is_file():
        raise LokalError(f"{source} is an adapter without its run (no config.yaml beside it): pass the run directory "
                         "it came from, or a folder from `lokal export RUN_DIR OUT_DIR`")
    raise LokalError(f"{source} is not a lokal run directory (no config.yaml) nor a `lokal export` folder "
                     "(no config.json)")


def from_run(run_dir: Path) -> Predictor:
    """The run's trained model and its class names (none for speech recognition)."""
    from hydra.utils import get_class

    from lokal.runs.load import load_config

    cfg = load_config(run_dir)
    check_finished(run_dir)
    task = get_class(cfg.model._target_).task
    if task == "speech_recognition":
        return speech_predictor(run_dir, cfg)
    if task != "classification":
        raise LokalError(f"{run_dir} is a {task} run: `lokal predict` runs classifiers and speech "
                         "recognisers; chat with a language model's adapter through transformers (see `lokal export`)")
    class_names = run_classes(run_dir, cfg)
    try:
        model = trained_model(run_dir, cfg, num_classes=len(class_names))
    except RuntimeError as err:  # a head of another size: the class list does not fit the weights
        raise LokalError(f"{run_dir}: the trained weights do not fit a model of {len(class_names)} classes "
                         f"{class_names} ({str(err).splitlines()[0][:200]}); check {run_dir / CLASSES_FILE}") from err
    return Predictor(model, class_names, model.modality, str(run_dir), text_preparation(cfg.data),
                     saved_thresholds(run_dir, class_names), max_seconds=cfg.data.get("max_seconds"))


def trained_model(run_dir: Path, cfg, **arguments):
    """The run's base, fresh from its source, with the run's method and trained weights on it."""
    from hydra.utils import instantiate

    from lokal.training.weights import ADAPTER_DIR, load_weights

    model = instantiate(cfg.model, **arguments)
    if not (run_dir / ADAPTER_DIR).is_dir():
        model = instantiate(cfg.method).apply(model)  # non-PEFT weights fit the method's own layout
    return load_weights(model, run_dir).eval()


def speech_predictor(run_dir: Path, cfg) -> Predictor:
    """A speech-recognition run: the tuned Whisper, transcribing."""
    model = trained_model(run_dir, cfg)
    # the run's max_new_tokens bounds its evaluation; a 30 s piece of new speech may say more: allow what
    # OpenAI's decoder allows (sample_len, half the decoder's positions; 224 tokens for Whisper)
    model.max_new_tokens = max(model.max_new_tokens, model.max_label_tokens // 2)
    return Predictor(model, [], model.modality, str(run_dir), task="speech_recognition")


def saved_thresholds(run_dir: Path, class_names: list[str]) -> list[float] | None:
    """A multi-label run's per-label thresholds (thresholds.json), in output order; None otherwise."""
    file = run_dir / THRESHOLDS_FILE
    if not file.is_file():
        return None
    saved = json.loads(file.read_text())
    return [float(saved[name]) for name in class_names]


def check_finished(run_dir: Path) -> None:
    """Trained weights are written when training ends: without them there is nothing to predict
    with, but a last checkpoint to resume from."""
    from lokal.training.weights import ADAPTER_DIR, WEIGHTS_FILE

    if (run_dir / ADAPTER_DIR).is_dir() or (run_dir / WEIGHTS_FILE).is_file():
        return
    last = run_dir / "checkpoints" / "last.ckpt"
    where = (f"resume it from its last checkpoint {last} with: {resume_command(run_dir)}" if last.is_file()
             else "it has no checkpoint either (checkpoints/last.ckpt): train it again")
    raise LokalError(f"{run_dir} did not finish: it has no trained weights ({ADAPTER_DIR}/ or {WEIGHTS_FILE}); {where}")


def resume_command(run_dir: Path) -> str:
    """The run's own command line: the same overrides, the same folder (a k-fold run resumes whole)."""
    from omegaconf import OmegaConf

    if re.fullmatch(r"fold_\d+", run_dir.name) and (run_dir.parent / ".hydra").is_dir():
        run_dir = run_dir.parent
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = ([str(o) for o in OmegaConf.load(overrides_file) if not str(o).startswith("hydra.")]
                 if overrides_file.is_file() else ["<the run's overrides>"])
    return " ".join(["lokal train", *overrides, f"hydra.run.dir={run_dir}"])


def run_classes(run_dir: Path, cfg) -> list[str]:
    """The class names in the order of the model's outputs."""
    saved = run_dir / CLASSES_FILE
    if saved.is_file():
        return [str(c) for c in json.loads(saved.read_text(encoding="utf-8"))]
    header = run_dir / "predictions.csv"
    if header.is_file():  # contract A: one prob/<class> column per class, in output order
        columns = pd.read_csv(header, nrows=0).columns
        names = [c.removeprefix("prob/") for c in columns if c.startswith("prob/")]
        if names:
            return names
    if cfg.data.get("classes"):
        label_names = {str(k): str(v) for k, v in (cfg.data.get("label_names") or {}).items()}
        return [label_names.get(str(c), str(c)) for c in cfg.data.classes]
    return classes_from_data(run_dir, cfg)


def classes_from_data(run_dir: Path, cfg) -> list[str]:
    """Read the training data once for its classes (the run saved none), and keep the answer."""
    from hydra.utils import instantiate

    from lokal.io import write_json

    log.info("%s saves no class names: reading them from its training data", run_dir)
    try:
        names = [str(c) for c in instantiate(cfg.data).class_names]
    except Exception as err:
        raise LokalError(f"{run_dir}: the run saved no class names and its training data cannot be read here "
                         f"({str(err).splitlines()[0][:300]}); write them, in training order, to "
                         f"{run_dir / CLASSES_FILE}, e.g. [\"negative\", \"positive\"]") from err
    try:
        write_json(run_dir / CLASSES_FILE, names)  # the next predict skips the data
    except OSError:
        log.info("could not write %s (read-only run directory)", run_dir / CLASSES_FILE)
    return names


def text_preparation(data_cfg) -> Callable[[list[str]], list[str]] | None:
    """The normalisation the run trained with, applied to new texts too: the model must see the
    same words (slang normalised, personal data redacted) it saw in training."""
    slang, redact = bool(data_cfg.get("normalize_slang")), data_cfg.get("pii") == "redact"
    if not (slang or redact):
        return None

    def prepare(texts: list[str]) -> list[str]:
        from lokal.audit.pii import redact_series
        from lokal.data.augment import normalize_slang

        if redact:
            texts = redact_series(pd.Series(texts, dtype=object)).tolist()
        return [normalize_slang(t) for t in texts] if slang else texts

    return prepare


def from_export(folder: Path) -> Predictor:
    """A `lokal export` folder: a transformers save_pretrained folder or timm's hub layout."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "architectures" in config:
        model = ExportedText(folder)
        names = [str(model.net.config.id2label[i]) for i in range(model.net.config.num_labels)]
        return Predictor(model, names, "text", str(folder))
    if "architecture" in config:
        model = ExportedImage(folder)
        names = [str(n) for n in config.get("label_names") or range(config["num_classes"])]
        return Predictor(model, names, "image", str(folder))
    raise LokalError(f"{folder}/config.json is neither a transformers nor a timm model config: give a run directory "
                     "or a folder written by `lokal export`")


class ExportedText:
    """A merged transformers classifier with lokal's model interface (forward(batch) -> logits)."""

    modality = "text"

    def __init__(self, folder: Path) -> None:
        import transformers

        from lokal.models.text import load_tokenizer, quiet_transformers
        from lokal.runs.export_code import needs_lokal_code

        architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
        if not architecture.endswith("ForSequenceClassification"):
            raise LokalError(f"{folder} holds a {architecture}: `lokal predict` runs classifiers")
        trust = needs_lokal_code(folder)
        with quiet_transformers():
            self.net = transformers.AutoModelForSequenceClassification.from_pretrained(
                folder, trust_remote_code=trust).eval()
            self.tokenizer = load_tokenizer(str(folder), trust_remote_code=trust)
        # lokal's own max_length is not exported: the model's limit, capped as lokal's configs are
        self.max_length = min(self.tokenizer.model_max_length, 512)

    def __call__(self, batch: dict):
        return self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def to(self, device):
        self.net.to(device)
        return self


class ExportedImage:
    """A merged timm classifier, loaded as `timm.create_model("local-dir:FOLDER")` does."""

    modality = "image"

    def __init__(self, folder: Path) -> None:
        import timm

        self.net = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True).eval()
        self.data_config = timm.data.resolve_data_config({}, model=self.net)

    def __call__(self, batch: dict):
        return self.net(batch["image"])

    def to(self, device):
        self.net.to(device)
        return self


# -- reading the inputs ------------------------------------------------------------------------
def collect_inputs(paths: list[str | Path], predictor: Predictor, text_column: str = "text",
                   file_column: str = "file") -> tuple[list[str], list[str]]:
    """(ids, items): texts for text models, file paths for image and audio models, in the order given."""
    ids, items = [], []
    for path in map(Path, paths):
        for id_, item in read_input(path, predictor, text_column, file_column):
            ids.append(id_)
            items.append(item)
    if not items:
        raise LokalError(f"nothing to predict in {', '.join(map(str, paths))}: give {wanted_inputs(predictor)}")
    return ids, items


def read_input(path: Path, predictor: Predictor, text_column: str, file_column: str) -> list[tuple[str, str]]:
    from lokal.data.checks import modality_of

    if not path.exists():
        raise LokalError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_folder(path, predictor, text_column)
    suffix = path.suffix.lower()
    if suffix in TABLES:
        read = read_text_table if predictor.modality == "text" else read_file_table
        return read(path, predictor, text_column, file_column)
    kind = "text" if suffix in TEXT_FILES else modality_of(path)
    if kind != predictor.modality:
        raise wrong_modality(path, kind, predictor)
    return read_lines(path) if kind == "text" else [(str(path), str(path))]


def wanted_inputs(predictor: Predictor) -> str:
    from lokal.runs.predict_audio import AUDIO_INPUTS

    return {"text": TEXT_INPUTS, "image": IMAGE_INPUTS, "audio": AUDIO_INPUTS}[predictor.modality]


def wrong_modality(path: Path, kind: str | None, predictor: Predictor) -> LokalError:
    wanted = wanted_inputs(predictor)
    what = {"image": "an image", "audio": "an audio file", "text": "a text file"}.get(kind)
    if what is None:
        return LokalError(f"{path}: cannot predict on {path.suffix or 'extension-less'} files; give {wanted}")
    return LokalError(f"{path} is {what}, but {predictor.source} is {article(predictor.modality)} model: give {wanted}")


def article(modality: str) -> str:
    return f"an {modality}" if modality[0] in "aeiou" else f"a {modality}"


def read_lines(path: Path) -> list[tuple[str, str]]:
    """A .txt file: one text per non-empty line, id FILE:line N (1-based, as editors count)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(f"{path}:line {i}", line) for i, line in enumerate(lines, 1) if line.strip()]


def read_folder(folder: Path, predictor: Predictor, text_column: str = "text") -> list[tuple[str, str]]:
    """Every image, recording (audio models), or .txt file and table (text models: a folder of split
    tables, train.csv / valid.tsv / test.csv, gives every table's rows) below `folder`, in path order."""
    from lokal.data.checks import modality_of

    files = sorted(f for f in folder.rglob("*")
                   if f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts))
    kinds = {f: "text" if f.suffix.lower() in TEXT_FILES + TABLES else modality_of(f) for f in files}
    mine = [f for f in files if kinds[f] == predictor.modality]
    if not mine:
        other = next((f for f in files if kinds[f]), None)
        if other is not None:
            raise wrong_modality(other, kinds[other], predictor)
        raise LokalError(f"{folder}: no {FOLDER_FILES[predictor.modality]} in this folder or below it")
    if predictor.modality == "text":
        return [row for f in mine for row in (read_text_table(f, predictor, text_column, "file")
                                              if f.suffix.lower() in TABLES else read_lines(f))]
    return [(str(f), str(f)) for f in mine]


def read_text_table(path: Path, predictor: Predictor, text_column: str, file_column: str) -> list[tuple[str, str]]:
    from lokal.data.tables import read_table

    frame = read_table(str(path))
    if text_column not in frame.columns:
        files = file_column_of(frame, file_column)
        kind = files_of(frame[files]) if files is not None else None
        if kind is not None:
            raise LokalError(f"{path} is a table of {kind} files (column {files!r}), but {predictor.source} is a "
                             f"text model: give {TEXT_INPUTS}")
        raise LokalError(f"{path}: no column {text_column!r}; columns are {list(frame.columns)}. "
                         "Pass --text-column NAME")
    texts = frame[text_column]
    blank = texts.isna() | (texts.astype(str).str.strip() == "")
    if blank.any():
        log.warning("%s: %d rows have no text in column %r and are left out (e.g. %s)", path, int(blank.sum()),
                    text_column, ", ".join(f"row {i}" for i in frame.index[blank][:5]))
    return [(f"{path}:row {i}", str(t)) for i, t in texts[~blank].items()]


def read_file_table(path: Path, predictor: Predictor, text_column: str, file_column: str) -> list[tuple[str, str]]:
    """Image or audio paths in a table: relative ones start at the table's folder, as in training (data.root)."""
    from lokal.data.tables import read_table, resolve

    frame = read_table(str(path))
    column = file_column_of(frame, file_column)
    if column is None:
        if text_column in frame.columns:
            raise LokalError(f"{path} is a table of texts (column {text_column!r}), but {predictor.source} is "
                             f"{article(predictor.modality)} model: give {wanted_inputs(predictor)}")
        raise LokalError(f"{path}: no column {file_column!r}; columns are {list(frame.columns)}. "
                         "Pass --file-column NAME")
    files = frame[column].dropna().astype(str).str.strip()
    files = files[files != ""]
    if files_of(files) != predictor.modality:
        example = files.iloc[0] if len(files) else ""
        raise LokalError(f"{path}: column {column!r} lists no {predictor.modality} files (e.g. {example!r}); "
                         f"{predictor.source} is {article(predictor.modality)} model: give {wanted_inputs(predictor)}")
    return [(f"{path}:row {i}", str(resolve(path.parent, f))) for i, f in files.items()]


def file_column_of(frame: pd.DataFrame, file_column: str) -> str | None:
    """The column of file paths: the one asked for, else "path" when the default "file" is absent."""
    for column in (file_column, "path") if file_column == "file" else (file_column,):
        if column in frame.columns:
            return column
    return None


def files_of(values: pd.Series) -> str | None:
    """"image" or "audio" when the column lists such files (the most common kind), else None."""
    from lokal.data.checks import modality_of

    kinds = values.dropna().astype(str).map(modality_of).dropna()
    return str(kinds.mode().iloc[0]) if len(kinds) else None


# -- predicting --------------------------------------------------------------------------------
def predict(source: str | Path, inputs: list[str | Path], batch_size: int = 32, text_column: str = "text",
            file_column: str = "file", device: str | None = None, skip_bad: bool = False) -> pd.DataFrame:
    """Load `source`, read `inputs`, and return one row per input: id, predicted, confidence,
    prob/<class>, or a speech run's transcripts (inputs left out with `skip_bad` are not in it)."""
    predictor = load_predictor(source)
    ids, items = collect_inputs(inputs, predictor, text_column, file_column)
    return predictions(predictor, ids, items, batch_size, device, skip_bad)


def predictions(predictor: Predictor, ids: list[str], items: list[str], batch_size: int = 32,
                device: str | None = None, skip_bad: bool = False) -> pd.DataFrame:
    """What `lokal predict` writes: a speech run's transcripts (id, file, seconds, pieces, text), or
    every class's probability (id, predicted, confidence, prob/<class>)."""
    if predictor.task == "speech_recognition":
        from lokal.runs.predict_audio import transcripts

        return transcripts(predictor.model, ids, items, checked_batch_size(batch_size), pick_device(device), skip_bad)
    probs = probabilities(predictor, items, batch_size, device, skip_bad)
    return to_frame(ids, probs, predictor.class_names, predictor.thresholds)


def checked_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise LokalError(f"--batch-size {batch_size}: give 1 or more")
    return batch_size


def pick_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def probabilities(predictor: Predictor, items: list[str], batch_size: int = 32, device: str | None = None,
                  skip_bad: bool = False):
    """Softmax probabilities (N, classes) in input order (a sigmoid per label for multi-label runs);
    NaN rows for inputs skipped as unreadable."""
    import numpy as np
    import torch
    from rich.console import Console
    from rich.progress import Progress

    batch_size, device = checked_batch_size(batch_size), pick_device(device)
    if predictor.modality == "audio":
        from lokal.runs.predict_audio import class_probabilities

        return class_probabilities(predictor.model, items, len(predictor.class_names), predictor.max_seconds,
                                   batch_size, device, skip_bad, sigmoid=bool(predictor.thresholds))
    model = predictor.model.to(device)
    probs = np.full((len(items), len(predictor.class_names)), np.nan, dtype=np.float32)
    batches = text_batches if predictor.modality == "text" else image_batches
    with Progress(console=Console(stderr=True), transient=True) as progress, torch.inference_mode():
        task = progress.add_task("predicting", total=len(items))
        for index, batch in batches(predictor, items, batch_size, skip_bad):
            if batch is not None:
                logits = model({k: v.to(device) for k, v in batch.items()})
                logits = logits.float()
                probs[index] = (logits.sigmoid() if predictor.thresholds else logits.softmax(-1)).cpu().numpy()
            progress.advance(task, len(index))
    return probs


def text_batches(predictor: Predictor, texts: list[str], batch_size: int, skip_bad: bool = False) -> Iterator:
    """(row indices, padded batch), shortest texts first: similar lengths waste less padding."""
    from lokal.data.cache import tokenize

    tokenizer = predictor.model.tokenizer
    if predictor.prepare_text is not None:
        texts = predictor.prepare_text(texts)
    rows = tokenize(tokenizer, texts, predictor.model.max_length)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        padded = tokenizer.pad([rows[i] for i in index], return_tensors="pt")
        yield index, {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}


def image_batches(predictor: Predictor, paths: list[str], batch_size: int, skip_bad: bool = False) -> Iterator:
    """(row indices, image batch) with training's evaluation transform; files decode in threads
    (PIL releases the GIL). An unreadable image stops with its name, or (skip_bad) is left out
    and yielded alone as (index, None)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import timm
    import torch

    transform = timm.data.create_transform(**predictor.model.data_config, is_training=False)

    def load(path: str):
        return load_image(path, transform, skip_bad)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), batch_size):
            index = list(range(start, min(start + batch_size, len(paths))))
            images = list(pool.map(load, [paths[i] for i in index]))
            bad = [i for i, image in zip(index, images, strict=True) if image is None]
            yield from (([i], None) for i in bad)
            good = [(i, image) for i, image in zip(index, images, strict=True) if image is not None]
            if good:
                yield [i for i, _ in good], {"image": torch.stack([image for _, image in good])}


def load_image(path: str, transform, skip_bad: bool = False):
    """The transformed image, or None for an unreadable one with skip_bad (warned, named)."""
    from PIL import UnidentifiedImageError

    from lokal.data.checks import load_rgb

    try:
        return transform(load_rgb(path))  # any mode (greyscale, RGBA, 16-bit) as 8-bit RGB, as in training
    except (OSError, UnidentifiedImageError, ValueError) as err:
        reason = "file not found" if isinstance(err, FileNotFoundError) else f"not a readable image ({err})"
        if not skip_bad:
            raise LokalError(f"{path}: {reason}; remove it from the inputs, or pass --skip-bad to leave out "
                             "unreadable images") from err
        log.warning("%s: %s; left out (--skip-bad)", path, reason)
        return None


def to_frame(ids: list[str], probs, class_names: list[str], thresholds: list[float] | None = None) -> pd.DataFrame:
    """id, predicted, confidence, prob/<class>: rows with NaN probabilities (skipped) dropped.
    With `thresholds` (multi-label): predicted is the set of labels at or above their threshold,
    joined by |, and there is no single confidence."""
    import numpy as np

    kept = ~np.isnan(probs).any(axis=1)
    probs, ids = probs[kept], [i for i, k in zip(ids, kept, strict=True) if k]
    if thresholds is not None:
        from lokal.data.multilabel import joined_label_sets

        frame = pd.DataFrame({"id": ids, "predicted": joined_label_sets(probs >= np.asarray(thresholds), class_names)})
        return pd.concat([frame, pd.DataFrame(probs, columns=[f"prob/{c}" for c in class_names])], axis=1)
    frame = pd.DataFrame({"id": ids, "predicted": [class_names[i] for i in probs.argmax(axis=1)],
                          "confidence": probs.max(axis=1) if len(probs) else []})
    return pd.concat([frame, pd.DataFrame(probs, columns=[f"prob/{c}" for c in class_names])], axis=1)


def write_predictions(frame: pd.DataFrame, out: str | Path) -> Path:
    from lokal.io import write_atomically

    return write_atomically(Path(out), lambda tmp: frame.to_csv(tmp, index=False))


def print_predictions(frame: pd.DataFrame, total: int, out: Path, shown: int = 10) -> None:
    """The first rows and the count per predicted class (a speech run's: the first transcripts)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if "predicted" not in frame:
        from lokal.runs.predict_audio import print_transcripts

        return print_transcripts(frame, total, out, shown)

    table = Table(title=f"lokal predict: {len(frame):,} of {total:,} inputs", header_style="bold")
    columns = [c for c in ("id", "predicted", "confidence") if c in frame]  # multi-label: no single confidence
    for column in columns:
        table.add_column(column, justify="right" if column == "confidence" else "left")
    for row in frame.head(shown)[columns].itertuples(index=False):
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else escape(str(v)) for v in row))
    if len(frame) > shown:
        table.add_row(f"... {len(frame) - shown:,} more", *[""] * (len(columns) - 1))
    console = Console()
    console.print(table)
    counts = frame["predicted"].value_counts()
    console.print("predicted: " + ", ".join(f"{escape(str(c))} {n:,}" for c, n in counts.items()))
    print(f"written to {out}")

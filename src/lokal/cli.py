"""Command line: `python train.py ...` and `lokal train ...` run the same Hydra app;
`lokal adapters` and `lokal export` work on finished run directories; `lokal audit` and
`lokal clean` check and clean a dataset before it is trained on."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lokal import paths
from lokal.assets.shipped import register_resolver
from lokal.errors import LokalError, find_lokal_error
from lokal.training.rundir import register_resolvers

CONFIG_DIR = str(paths.CONFIG_DIR)

register_resolver()
register_resolvers()


_started_runs: list[Path] = []  # the run folders Hydra made for this process's jobs


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from lokal.run import train

    _started_runs.append(Path(HydraConfig.get().runtime.output_dir))
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric", "val/accuracy"))


def hydra_main() -> None:
    """`python train.py ...` and `lokal train ...`: the Hydra app. A mistake in the user's input
    (a LokalError, an unknown key or option, a folder that cannot be written) ends with one clear
    message and exit code 2, no traceback, and no empty run folder left behind."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra re-raises, so lokal can explain the user's mistakes
    try:
        _hydra_app()
    except Exception as err:
        message = user_message(err)
        if message is None:
            raise
        _remove_stub_run()
        print(f"\nlokal: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def user_message(err: BaseException) -> str | None:
    """What to tell the user about `err`, or None for a bug (its traceback is then shown)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    found = find_lokal_error(err)
    if found is not None:
        return str(found)
    if isinstance(err, ConfigCompositionException | OverrideParseException | MissingConfigException):
        return _composition_message(err)
    if isinstance(err, PermissionError | OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS,
                                                                      errno.ENOSPC):
        return (f"cannot write {err.filename}: {err.strerror}. Give a folder you can write to, e.g. "
                "paths.output_dir=~/lokal-runs (runs go to DIR/runs/), or free some space")
    return None


def _composition_message(err: Exception) -> str:
    """Hydra's own message, plus the nearest real key for a misspelled one: Hydra suggests
    `+key=value`, which adds the typo as a new key that the Trainer or data module then refuses."""
    import re

    text = str(err).strip()
    if isinstance(err.__cause__, Exception) and str(err.__cause__) not in text:
        text += f" ({str(err.__cause__).splitlines()[0]})"
    typo = re.search(r"Could not override '([\w.]+)'", text)
    if typo and "+" in text:
        close = _nearest_keys(typo.group(1))
        hint = f"did you mean {' or '.join(close)}?" if close else "check the spelling against `--cfg job`"
        text = (f"{typo.group(1)} is not a key of the config: {hint} (a leading + adds a new key, which the "
                f"class it configures would then refuse). Hydra said: {text}")
    return text


def _nearest_keys(key: str) -> list[str]:
    """Real keys close to `key` in the default config composed with this command's group choices."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lokal.training.config_checks import nearest_keys

    choices = [a for a in sys.argv[1:] if "=" in a and "." not in a.split("=")[0] and not a.startswith(("-", "+"))]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return nearest_keys(compose("train", overrides=choices), key)
    except Exception:  # a suggestion is a courtesy: never let it hide the real message
        return []


def _remove_stub_run() -> None:
    """A run that failed before it wrote anything leaves no empty folder behind to be listed
    as "still training"."""
    import shutil

    from lokal.training.rundir import is_stub

    if _started_runs and is_stub(_started_runs[-1]):
        logging.shutdown()  # release train.log
        shutil.rmtree(_started_runs[-1], ignore_errors=True)


def adapters_main(argv: list[str]) -> None:
    """`lokal adapters RUN_DIR...`: every run's adapter on one base, on every run's test split."""
    parser = argparse.ArgumentParser(
        prog="lokal adapters",
        description="Load the base once, add each run's adapter, and print test accuracy of every adapter "
                    "(columns) on every run's test split (rows), with each adapter's file size.")
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="runs trained with method=lora")
    parser.add_argument("--out", type=Path, help="also write the report: FILE.md as Markdown, else JSON")
    args = parser.parse_args(argv)
    from lokal.io import check_writable, write_json, write_text
    from lokal.runs.adapters import compare, to_markdown
    from lokal.training.console import quiet_libraries

    quiet_libraries()
    if args.out:
        check_writable(args.out)

    report = compare(args.runs)
    print(to_markdown(report))
    if args.out and args.out.suffix == ".md":
        print(f"written to {write_text(args.out, to_markdown(report))}")
    elif args.out:
        print(f"written to {write_json(args.out, report)}")


def export_main(argv: list[str]) -> None:
    """`lokal export RUN_DIR OUT_DIR`: the run's model (adapter merged) as a standalone folder."""
    parser = argparse.ArgumentParser(
        prog="lokal export",
        description="Merge a run's adapter into its base and write a standalone model: Hugging Face text models "
                    "as a save_pretrained folder, timm models as model.safetensors + config.json.")
    parser.add_argument("run", type=Path, metavar="RUN_DIR")
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="a new (or empty) folder")
    args = parser.parse_args(argv)
    from lokal.runs.adapters import export_run, how_to_load
    from lokal.training.console import quiet_libraries

    quiet_libraries()
    out = export_run(args.run, args.out)
    print(f"{out}: load it without lokal with {how_to_load(out)}")


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    """What to read, shared by audit and clean: a data config with overrides, or a path."""
    parser.add_argument("target", nargs="*", metavar="data=NAME|PATH",
                        help="data=NAME plus Hydra overrides (data.path=x.csv ...): the data exactly as training "
                             "reads and splits it; or a PATH: a CSV/TSV/JSONL/Parquet/SQLite table of texts or of "
                             "file paths, a folder of split tables (train.csv, valid.tsv / dev / val, test.csv: "
                             "leakage between them is leakage between splits), or a folder ROOT/CLASS/file or "
                             "ROOT/{train,val,test}/CLASS/file. Nothing: the default data config")
    parser.add_argument("--text-column", default="text", help="PATH tables: the text column (default: text)")
    parser.add_argument("--label-column", default="label", help="PATH tables: the label column (default: label)")
    parser.add_argument("--file-column", default="file",
                        help="PATH tables of files: the file column (default: file, else path)")
    parser.add_argument("--split-column", help="PATH tables: a train/val/test column (default: split, if present)")
    parser.add_argument("--table", help="PATH SQLite files: the table to read")
    parser.add_argument("--encoding", default="utf-8",
                        help="PATH CSV/TSV/JSONL tables: the text encoding (default: utf-8; e.g. latin-1, cp1252)")
    parser.add_argument("--near", action=argparse.BooleanOptionalAction, default=True,
                        help="search near duplicates too (default: on)")
    from lokal.audit.settings import AuditSettings

    defaults = AuditSettings()  # one place for the thresholds: the audit's own settings
    parser.add_argument("--text-threshold", type=float, default=defaults.text_threshold,
                        help="near-duplicate texts: Jaccard of character 4-grams of the normalised texts at least "
                             f"this (default: {defaults.text_threshold})")
    parser.add_argument("--image-threshold", type=int, default=defaults.image_threshold,
                        help="near-duplicate images: pHash + dHash differ in at most this many of 128 bits "
                             f"(default: {defaults.image_threshold})")


def _load_source(args: argparse.Namespace):
    from lokal.audit.source import from_config, from_path

    paths = [t for t in args.target if "=" not in t]
    if not paths:
        return from_config(args.target), " ".join(args.target) or "default data config"
    if len(args.target) > 1:
        raise LokalError(f"give either one PATH or data=NAME with overrides, not {args.target}")
    source = from_path(paths[0], args.text_column, args.label_column, args.file_column, args.split_column,
                       args.table, args.encoding)
    return source, paths[0]


def _settings(args: argparse.Namespace, label_errors: bool):
    from lokal.audit import AuditSettings

    return AuditSettings(near=args.near, text_threshold=args.text_threshold, image_threshold=args.image_threshold,
                         label_errors=label_errors)


def audit_main(argv: list[str]) -> None:
    """`lokal audit data=NAME ... | PATH`: the terminal table, then audit.json/.md/.html."""
    parser = argparse.ArgumentParser(
        prog="lokal audit",
        description="Find exact and near duplicates, leakage across splits, conflicting labels, class imbalance, "
                    "corrupt files, likely label errors and personal data (NIK, phone, email). Writes audit.json, "
                    "audit.md and a self-contained audit.html.")
    _data_arguments(parser)
    parser.add_argument("--out", type=Path, help="report folder (default: outputs/audit/NAME-TIMESTAMP)")
    parser.add_argument("--label-errors", action=argparse.BooleanOptionalAction, default=True,
                        help="look for likely label errors with a 5-fold model (default: on)")
    args = parser.parse_args(argv)
    from lokal.audit import analyse
    from lokal.audit.core import report
    from lokal.audit.report import print_table, write_reports
    from lokal.io import check_writable

    source, described = _load_source(args)
    out = check_writable(args.out or default_out("audit", source.name))
    audit = report(analyse(source.records, source.modality, _settings(args, args.label_errors)))
    audit["source"], audit["notes"] = described, source.notes
    print_table(audit, write_reports(audit, out))


def clean_main(argv: list[str]) -> None:
    """`lokal clean data=NAME ... | PATH --out DIR`: a cleaned copy and its manifest."""
    parser = argparse.ArgumentParser(
        prog="lokal clean",
        description="Write a cleaned copy (the original is only read): without duplicates (the test copy of an "
                    "item that leaks across splits stays), conflicting-label items and corrupt files, with personal "
                    "data redacted or dropped; manifest.json/.csv list every removed or redacted row and why.")
    _data_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="a new (or empty) folder for the copy")
    parser.add_argument("--pii", choices=("redact", "drop", "keep"), default="redact",
                        help="texts with a NIK, phone number or email: redact (default), drop the row, keep")
    parser.add_argument("--drop-label-errors", action="store_true", help="also drop likely label errors")
    args = parser.parse_args(argv)
    from lokal.audit import analyse
    from lokal.audit.clean import check_out, plan, write_clean
    from lokal.io import check_writable

    source, _ = _load_source(args)
    check_out(check_writable(args.out), source)  # refuse before the slow part
    analysis = analyse(source.records, source.modality, _settings(args, args.drop_label_errors))
    summary = write_clean(source, analysis, plan(analysis, args.pii, args.drop_label_errors), args.out, args.pii)
    _print_clean(summary, source)


def _print_clean(summary: dict, source) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"lokal clean: {summary['source']}"), header_style="bold")
    table.add_column("what")
    table.add_column("rows", justify="right")
    table.add_row("read", f"{summary['rows_in']:,}")
    for reason, n in summary["reasons"].items():
        table.add_row(escape(reason), f"{n:,}")
    table.add_row("kept", f"{summary['rows_out']:,}")
    Console().print(table)
    if source.kind != "folder" and source.path.suffix.lower() in (".db", ".sqlite"):
        print("the SQLite source was written as Parquet (one table, every column)")
    print(f"cleaned copy: {summary['written']}; manifest: {Path(summary['out']) / 'manifest.json'} (and .csv)")


def default_out(command: str, name: str, suffix: str = "") -> Path:
    """outputs/COMMAND/NAME-TIMESTAMP: a new place each time, never over an earlier report."""
    import time

    return Path("outputs", command, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}")


def predict_main(argv: list[str]) -> None:
    """`lokal predict RUN_DIR INPUTS...`: a finished run's model on new files, as a CSV."""
    parser = argparse.ArgumentParser(
        prog="lokal predict",
        description="Predict with a finished run (RUN_DIR, RUN_DIR/adapter, or a `lokal export` folder) on image "
                    "or audio files, folders of them (recursively), .txt files (one text per line) and CSV/TSV/"
                    "JSONL/Parquet tables (a text column for text models, a column of file paths for image and "
                    "audio models). Writes one CSV row per input: id, predicted, confidence, prob/<class>; for a "
                    "speech-recognition run: id, file, seconds, pieces, text (recordings longer than the model's "
                    "30 s window are cut at pauses and the pieces' transcripts joined).")
    parser.add_argument("source", type=Path, metavar="RUN_DIR_OR_ADAPTER")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="files, folders or tables")
    parser.add_argument("--out", type=Path, help="the CSV to write (default: outputs/predict/RUN-TIMESTAMP.csv)")
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per forward pass (default: 32)")
    parser.add_argument("--text-column", default="text", help="tables, text models: the text column (default: text)")
    parser.add_argument("--file-column", default="file",
                        help="tables, image and audio models: the column of file paths, relative to the table's "
                             "folder (default: file, else path)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable images and recordings (default: stop and name them)")
    args = parser.parse_args(argv)
    from lokal.io import check_writable
    from lokal.runs.predict import collect_inputs, load_predictor, predictions, print_predictions
    from lokal.runs.predict import write_predictions as write_csv
    from lokal.training.console import quiet_libraries

    quiet_libraries()
    run = args.source.resolve()
    run = run.parent if run.name == "adapter" else run  # RUN_DIR/adapter: named after its run
    out = check_writable(args.out or default_out("predict", run.name, ".csv"))
    predictor = load_predictor(args.source)
    ids, items = collect_inputs(args.inputs, predictor, args.text_column, args.file_column)
    frame = predictions(predictor, ids, items, args.batch_size, args.device, args.skip_bad)
    print_predictions(frame, len(ids), write_csv(frame, out))


def compare_main(argv: list[str]) -> None:
    """`lokal compare PATHS...`: one table and a Pareto plot across runs."""
    parser = argparse.ArgumentParser(
        prog="lokal compare",
        description="Compare finished runs (run directories, or folders holding them such as "
                    "outputs/multirun/DATE/): the metric, trainable parameters, peak memory and train time from "
                    "each run's metrics.json, sorted by the metric, Pareto front marked. Writes compare.md, a "
                    "self-contained compare.html, compare.png and compare.json.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--metric", default="test/accuracy", help="a metrics.json key (default: test/accuracy)")
    parser.add_argument("--lower-is-better", action=argparse.BooleanOptionalAction, default=None,
                        help="the metric's direction (default: from its name: loss, perplexity, ece, wer, cer "
                             "and error are lower-is-better)")
    parser.add_argument("--out", type=Path, help="report folder (default: outputs/compare/NAME-TIMESTAMP)")
    args = parser.parse_args(argv)
    from lokal.io import check_writable
    from lokal.runs.compare import compare, lower_is_better, print_table, write_reports

    lower = lower_is_better(args.metric) if args.lower_is_better is None else args.lower_is_better
    out = check_writable(args.out or default_out("compare", args.paths[0].resolve().name))
    rows = compare(args.paths, args.metric, lower)
    print_table(rows, args.metric, write_reports(rows, args.metric, out, lower))


def report_main(argv: list[str]) -> None:
    """`lokal report SWEEP_DIR [--wandb]`: the sweep as one HTML file, and as a W&B Report online."""
    parser = argparse.ArgumentParser(
        prog="lokal report",
        description="Report a sweep (a multirun folder, or any folder of finished runs): the run table "
                    "(metrics.json, config.yaml, the overrides that differ), validation accuracy by step, a test "
                    "metric against trainable parameters, and every run's plots, as one self-contained HTML file. "
                    "With --wandb, also a shareable W&B Report of the same runs (needs a network and `wandb login`; "
                    "the runs trained with logger=wandb and uploaded with `wandb sync`).")
    parser.add_argument("sweep", type=Path, metavar="SWEEP_DIR")
    parser.add_argument("--out", type=Path, help="the HTML file (default: SWEEP_DIR/report.html)")
    parser.add_argument("--title", help="the report's title (default: lokal sweep: SWEEP_DIR's name)")
    parser.add_argument("--metric", default="test/accuracy", help="plotted against trainable parameters "
                        "(default: test/accuracy)")
    parser.add_argument("--wandb", action="store_true", help="also build and save a W&B Report")
    parser.add_argument("--entity", help="W&B user or team (default: the runs' logger.wandb.entity, else your own)")
    parser.add_argument("--project", help="W&B project (default: the runs' logger.wandb.project, else lokal)")
    args = parser.parse_args(argv)
    from lokal.runs.sweep_report import write_html_report

    html = write_html_report(args.sweep, args.out, args.title, args.metric)
    print(f"HTML report: {html}")
    if args.wandb:
        from lokal.runs.wandb_report import publish_report

        print(f"W&B Report: {publish_report(args.sweep, html, args.entity, args.project, args.title)}")


USAGE = """usage: lokal {train,adapters,export,audit,clean,predict,compare,report} ...
  lokal train method=bitfit data=medical_xray data.root=DIR   (Hydra overrides, as train.py)
  lokal adapters RUN_DIR RUN_DIR... [--out report.md]          (domain x adapter matrix)
  lokal export RUN_DIR OUT_DIR                                 (merged standalone model)
  lokal audit data=NAME [overrides] | PATH [--out DIR]         (duplicates, leakage, labels, PII report)
  lokal clean data=NAME [overrides] | PATH --out DIR           (cleaned copy + manifest)
  lokal predict RUN_DIR INPUT... [--out preds.csv]             (files, folders, tables -> probabilities or transcripts)
  lokal compare outputs/multirun/DATE RUN_DIR... [--out DIR]   (table + Pareto plot across runs, .md/.html)
  lokal report outputs/multirun/DATE [--wandb] [--out F]       (one HTML file; a W&B Report with --wandb)"""


def main() -> None:
    """Console script `lokal`: `lokal train [overrides]` runs the Hydra app; every other
    command (USAGE) works on data or on finished run directories."""
    commands: dict[str, Callable[[list[str]], None]] = {"adapters": adapters_main, "export": export_main,
                                                        "audit": audit_main, "clean": clean_main,
                                                        "predict": predict_main, "compare": compare_main,
                                                        "report": report_main}
    if len(sys.argv) >= 2 and sys.argv[1] == "train":
        sys.argv.pop(1)
        hydra_main()
    elif len(sys.argv) >= 2 and sys.argv[1] in commands:
        _user_errors(commands[sys.argv[1]], sys.argv[2:])
    else:
        asked = len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help")
        print(USAGE, file=sys.stdout if asked else sys.stderr)
        raise SystemExit(0 if asked else 2)


def _user_errors(command: Callable[[list[str]], None], argv: list[str]) -> None:
    """The user's mistake (a LokalError, also when Hydra's instantiate wrapped it; a folder that
    cannot be written): its message, no traceback."""
    try:
        command(argv)
    except Exception as err:
        message = user_message(err)
        if message is None:
            raise
        print(f"\nlokal: {message}", file=sys.stderr)
        raise SystemExit(2) from None

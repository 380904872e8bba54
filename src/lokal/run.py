"""The one place that reads the Hydra config: build data, model, method and trainer,
train, test the best checkpoint, and write the run directory."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lokal import LokalError
from lokal.io import write_json, write_text
from lokal.rundir import resume_checkpoint

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Fine-tune as configured; returns the metrics also written to `metrics.json`.

    With `data.folds=k` (k >= 2): one run per fold and their mean (`cross_validate`). A run
    folder that finished before (it has metrics.json) is not trained again: its metrics are
    returned, so a sweep started again skips its finished runs."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from lokal.config_checks import check_ranges
    from lokal.rundir import claim_run_folder, finished_metrics, is_finished, run_lock

    run_dir = Path(cfg.paths.run_dir)
    check_ranges(cfg)
    claim_run_folder(run_dir, cfg, is_main=rank_zero_only.rank == 0)
    if is_finished(run_dir):
        log.warning("%s finished before: returning its metrics.json (a new folder trains anew)", run_dir)
        return finished_metrics(run_dir)
    with run_lock(run_dir, is_main=rank_zero_only.rank == 0), own_process_group():
        if cfg.data.get("folds"):  # 0 / absent: one train/val/test split
            from lokal.crossval import cross_validate

            return cross_validate(cfg)
        return train_run(cfg)


def train_run(cfg: DictConfig) -> dict:
    """One run: train, test the best checkpoint, write everything to `paths.run_dir`."""
    import lightning as L
    from hydra.utils import instantiate

    from lokal.evaluation import check_subgroups, evaluation_settings
    from lokal.module import LokalModule
    from lokal.system import tune_malloc

    if logging.getLogger().handlers:  # Hydra already logs to the console and train.log:
        logging.getLogger("lightning").handlers.clear()  # drop lightning's own copy of each line
    run_dir = Path(cfg.paths.run_dir)
    tune_malloc()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    method = instantiate(cfg.method)
    settings = evaluation_settings(cfg)  # before training: a misspelled evaluation key fails now
    datamodule, model = build(cfg, method)
    base = forgetting_base(model, settings)
    if task_of(datamodule) == "causal_lm":
        return train_lm(cfg, datamodule, model, method, settings, base)
    if task_of(datamodule) == "speech_recognition":
        return train_speech(cfg, datamodule, model, method)
    check_subgroups(settings.subgroups, datamodule)
    module = LokalModule(
        model,
        num_classes=len(datamodule.class_names),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        loss=make_loss(cfg, datamodule),
        method=method,
    )
    trainer = make_trainer(cfg)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_checkpoint(run_dir))
    train_time = round(time.perf_counter() - start, 2)
    metrics = evaluate(trainer, module, datamodule) | {"train_time_s": train_time}
    metrics |= measure_forgetting(base, module.model, settings)
    if trainer.is_global_zero:
        predictions = predict_test(trainer, module, datamodule)
        metrics = write_outputs(module, datamodule, metrics, run_dir, predictions, settings)
        share_run(trainer, run_dir, metrics, datamodule, predictions, settings)
    return metrics


def forgetting_base(model, settings):
    """The base the forgetting meter compares against, taken before training (None for PEFT
    models without BatchNorm: their adapters disabled are the base)."""
    if not settings.forgetting:
        return None
    from lokal.forgetting import base_copy

    return base_copy(model)


def measure_forgetting(base, tuned, settings) -> dict:
    """forgetting/* metrics (linear CKA on a general reference set; perplexity for causal LMs)
    with the best checkpoint loaded, when evaluation.forgetting is on."""
    if not settings.forgetting:
        return {}
    from lokal.forgetting import forgetting_report, summary_line

    report = forgetting_report(base, tuned, settings.forgetting_reference)
    log.info(summary_line(report))
    return report


def share_run(trainer, run_dir: Path, metrics: dict, datamodule=None, predictions=None, settings=None) -> None:
    """Plots, predictions and the adapter into the run's W&B run when logger=wandb (a no-op
    otherwise); raw texts and thumbnails only with evaluation.log_texts."""
    from lokal.wandb_report import log_run_to_wandb

    log_texts = bool(settings and settings.log_texts)
    log_run_to_wandb(trainer.loggers, run_dir, metrics, datamodule.class_names if datamodule else None, predictions,
                     records=datamodule.records() if log_texts else None, log_texts=log_texts)


def train_lm(cfg: DictConfig, datamodule, model, method, settings, base=None) -> dict:
    """Causal-LM instruction fine-tuning (lokal.lm): the same trainer, plus the base model's
    test perplexity and answers measured first, so the run shows what training changed."""
    from hydra.utils import instantiate

    from lokal import lm

    run_dir = Path(cfg.paths.run_dir)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = lm.LMModule(model, optimizer=instantiate(cfg.optimizer), scheduler=scheduler, method=method)
    trainer = make_trainer(cfg)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    before = lm.before_training(module.model, datamodule, trainer.strategy.root_device, trainer.is_global_zero)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_checkpoint(run_dir))
    train_time = round(time.perf_counter() - start, 2)
    metrics = evaluate_generative(trainer, module, datamodule) | before.metrics | {"train_time_s": train_time}
    metrics |= measure_forgetting(base, module.model, settings)
    if trainer.is_global_zero:
        lm.write_outputs(module, datamodule, metrics, run_dir, before)
        share_run(trainer, run_dir, metrics)
    return metrics


def train_speech(cfg: DictConfig, datamodule, model, method) -> dict:
    """Whisper speech recognition (lokal.speech): the same trainer, plus the base model's test
    WER/CER and transcripts measured first, so the run shows what training changed."""
    from hydra.utils import instantiate

    from lokal import speech

    run_dir = Path(cfg.paths.run_dir)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = speech.SpeechModule(model, optimizer=instantiate(cfg.optimizer), scheduler=scheduler, method=method)
    trainer = make_trainer(cfg)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    before = speech.before_training(module.model, datamodule, trainer.strategy.root_device)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_checkpoint(run_dir))
    train_time = round(time.perf_counter() - start, 2)
    metrics = evaluate_generative(trainer, module, datamodule) | before.metrics | {"train_time_s": train_time}
    after = speech.gathered_transcripts(module, len(datamodule.texts("test")))
    if trainer.is_global_zero:
        speech.write_outputs(module, datamodule, metrics, run_dir, before, after)
        share_run(trainer, run_dir, metrics)
    return metrics


def evaluate_generative(trainer, module, datamodule) -> dict:
    """Validation and test once each, with the best checkpoint (by the configured monitor), for the
    tasks that generate (causal LM, speech): their modules log every metric themselves."""
    from lokal.system import peak_memory_mb

    best = "best" if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path else None
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    metrics = {**val, **test} | parameter_counts(module.model) | peak_memory_mb()
    metrics |= {"epochs": trainer.current_epoch, "steps": trainer.global_step}
    return metrics | {f"data/{k}": v for k, v in datamodule.stats.items()}


def make_trainer(cfg: DictConfig):
    """The configured Trainer, plus what resuming needs: checkpoints written atomically, Slurm's
    SIGUSR1 left to lokal.preemption.Requeue (Lightning's own auto-requeue saves mid-step), and a
    resumed run logging to its W&B run of before."""
    from hydra.utils import instantiate

    run_dir = Path(cfg.paths.run_dir)
    resuming = resume_checkpoint(run_dir) is not None
    relaunch_as_single_run()
    return instantiate(
        cfg.trainer,
        logger=[instantiate(c, **wandb_resume(c, run_dir) if resuming else {}) for c in cfg.logger.values()],
        callbacks=[instantiate(c) for c in cfg.callbacks.values()],
        plugins=trainer_plugins(cfg.trainer),
    )


HYDRA_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def relaunch_as_single_run() -> None:
    """Lightning starts DDP processes 1..n-1 by running this script again with its sys.argv plus
    `hydra.run.dir=<hydra.run.dir>`. Point that at this run's actual folder (the pattern would
    name a new one), and in a multirun job replace the argv, which would start the whole sweep
    again in every process, by this job's own overrides (keeping the flags naming the config)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    argv, flags = sys.argv[1:], []
    for i, arg in enumerate(argv):
        if arg.startswith(HYDRA_FLAGS):
            flags += [arg] if "=" in arg else argv[i:i + 2]
    sys.argv[1:] = flags + list(hydra_cfg.overrides.task)


@contextmanager
def own_process_group() -> Iterator[None]:
    """Lightning's DDP launcher leaves its process group and its variables (LOCAL_RANK,
    MASTER_PORT...) in the launching process; the next run of a multirun, trained in the same
    process, would join the finished run's group. Both are put back as they were after each run."""
    before = {key: os.environ.get(key) for key in LAUNCH_ENV}
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def trainer_plugins(trainer_cfg: DictConfig) -> list:
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from lokal.resume import AtomicCheckpointIO

    strategy = str(trainer_cfg.get("strategy", ""))
    plugins = [] if ("fsdp" in strategy or "deepspeed" in strategy) else [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def wandb_resume(logger_cfg: DictConfig, run_dir: Path) -> dict:
    """Keep the W&B run id of the interrupted run (its folder name under run_dir/wandb/ ends with it)."""
    if not str(logger_cfg.get("_target_", "")).endswith("WandbLogger") or logger_cfg.get("id"):
        return {}
    runs = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    return {"id": runs[-1].name.rsplit("-", 1)[-1], "resume": "allow"} if runs else {}


def evaluate(trainer, module, datamodule) -> dict:
    """Validation and test once each, with the best checkpoint, plus the bars to beat."""
    from lokal.system import peak_memory_mb

    best = "best" if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path else None
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    metrics = {k: v for k, v in {**val, **test}.items() if not k.endswith("/loss")}
    metrics |= parameter_counts(module.model) | peak_memory_mb()
    metrics |= {"epochs": trainer.current_epoch, "steps": trainer.global_step,
                "majority_class_accuracy": majority_accuracy(datamodule)}
    metrics |= {f"data/{k}": v for k, v in datamodule.stats.items()}
    if datamodule.modality == "text":
        metrics |= text_baseline(datamodule)
    return metrics


def predict_test(trainer, module, datamodule):
    """The test split's predictions (Contract A) by the weights `trainer.test` just scored (the
    best checkpoint, which it loaded into `module`), on the trainer's device and precision."""
    from lokal.evaluation import predict_split

    return predict_split(module, datamodule, "test", trainer.strategy.root_device,
                         trainer.precision_plugin.forward_context())


def subgroup_metrics(predictions, settings, run_dir: Path) -> dict:
    """The fairness report (lokal.fairness): subgroups.json and subgroups.md, gaps above
    `evaluation.gap_warning` logged as warnings, flat `subgroup/<column>/max_gap/<metric>` keys."""
    from lokal.fairness import subgroup_report, write_subgroup_report

    report = subgroup_report(predictions, settings.subgroups, settings.gap_warning)
    write_subgroup_report(report, run_dir)
    for line in report["warnings"]:
        log.warning("subgroup gap: %s", line)
    for line in report["notes"]:
        log.info("subgroup note: %s", line)
    return report["metrics"]


def write_outputs(module, datamodule, metrics: dict, run_dir: Path, predictions, settings) -> dict:
    """Weights and predictions.csv first (nothing after training can lose them), then the test
    metrics from the predictions (they replace the `trainer.test` ones of the same name), the
    subgroup report, confusion_matrix.csv, plots/, metrics.json, the summary. Returns the metrics."""
    from lokal.evaluation import classification_report, confusion_counts, save_plots, write_predictions
    from lokal.predict import write_classes
    from lokal.report import print_summary
    from lokal.weights import save_weights

    save_weights(module.model, run_dir)
    write_classes(run_dir, datamodule.class_names)  # `lokal predict` then needs no training data
    write_predictions(predictions, run_dir / "predictions.csv")
    metrics = metrics | classification_report(predictions, datamodule.class_names)
    if settings.subgroups:
        metrics |= subgroup_metrics(predictions, settings, run_dir)
    counts = confusion_counts(predictions, datamodule.class_names)
    write_text(run_dir / "confusion_matrix.csv", counts.to_csv())
    if settings.plots:
        try:
            save_plots(run_dir, predictions, datamodule.class_names)
        except Exception as err:  # a plot must never cost a finished run its metrics.json
            log.warning("plots not written (%s: %s); metrics and predictions are", type(err).__name__, err)
    write_json(run_dir / "metrics.json", metrics)  # last: its presence marks a finished run
    print_summary(metrics, run_dir)
    return metrics


def build(cfg: DictConfig, method=None):
    """Data, then the model sized to its classes, then `method` (if given) applied once."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    check_task(cfg.model, datamodule)
    check_modality(cfg.model, datamodule)
    check_classes(datamodule)
    sized = {"num_classes": len(datamodule.class_names)} if task_of(datamodule) == "classification" else {}
    model = instantiate(cfg.model, **sized)
    datamodule.use_model(model)
    return datamodule, method.apply(model) if method is not None else model


TASK_MODELS = {"classification": "a classification model, e.g. model=minilm, model=efficientnet_lite0 or "
                                  "model=whisper_tiny_classifier",
               "causal_lm": "a causal-LM model, e.g. model=gemma3_270m_lm or model=hf_causal_lm",
               "speech_recognition": "a speech-recognition model, e.g. model=whisper_tiny"}
EXAMPLE_MODELS = {"text": "model=minilm", "image": "model=efficientnet_lite0",
                  "audio": "model=whisper_tiny (transcripts) or model=whisper_tiny_classifier (labels)"}


def task_of(obj) -> str:
    """What a model or data module is for; classifiers predate the attribute."""
    return getattr(obj, "task", "classification")


def check_task(model_cfg: DictConfig, datamodule) -> None:
    """Instruction data needs a language model, labelled data a classifier: checked from the
    model's class, before its weights load."""
    from hydra.utils import get_class

    model_task, data_task = task_of(get_class(model_cfg._target_)), task_of(datamodule)
    if model_task != data_task:
        raise LokalError(f"data={data_choice(datamodule)} needs {TASK_MODELS.get(data_task, data_task)}; "
                         f"model {model_cfg.name} is a {model_task} model")


def check_classes(datamodule) -> None:
    """A classifier needs two classes to tell apart: refuse one before the model loads."""
    if task_of(datamodule) != "classification" or len(datamodule.class_names) >= 2:
        return
    raise LokalError(f"data={data_choice(datamodule)} has a single class {datamodule.class_names}: a classifier "
                     "needs at least two. Check data.label_column (is it the label?), data.label_map and "
                     "data.classes, or add examples of the other classes")


def check_modality(model_cfg: DictConfig, datamodule) -> None:
    """Text models read text, image models images, audio models audio: checked from the model's
    class, before its weights load."""
    from hydra.utils import get_class

    reads = get_class(model_cfg._target_).modality
    if reads != datamodule.modality:
        raise LokalError(f"model {model_cfg.name} reads {reads} but data={data_choice(datamodule)} gives "
                         f"{datamodule.modality}: pick {'an' if datamodule.modality[0] in 'aeiou' else 'a'} "
                         f"{datamodule.modality} model, e.g. "
                         f"{EXAMPLE_MODELS.get(datamodule.modality, '')}")


def data_choice(datamodule) -> str:
    """The data config's name when Hydra runs (e.g. indo_instruct), else the data module's class."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get("data", type(datamodule).__name__)
    return type(datamodule).__name__


def load_run(run_dir: str | Path):
    """Rebuild a finished run (its data splits and its trained model) from its directory.

    The base model comes fresh from its source; only what the run trained is read from
    `adapter/` or `weights.safetensors`. Returns (datamodule, model) with the model in eval mode.
    """
    from hydra.utils import instantiate

    from lokal.crossval import FOLD_DIR
    from lokal.weights import ADAPTER_DIR, load_weights

    run_dir = Path(run_dir)
    first_fold = run_dir / FOLD_DIR.format(0)
    if first_fold.is_dir() and not (run_dir / "config.yaml").is_file():
        raise LokalError(f"{run_dir} is a k-fold run with one model per fold: load one, e.g. {first_fold}")
    if not (run_dir / "config.yaml").is_file():
        raise LokalError(f"{run_dir} is not a lokal run directory (no config.yaml)")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    is_adapter = (run_dir / ADAPTER_DIR).is_dir()
    datamodule, model = build(cfg, None if is_adapter else instantiate(cfg.method))
    return datamodule, load_weights(model, run_dir).eval()


def parameter_counts(model) -> dict[str, int | float]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_percent": round(100 * trainable / total, 4)}


def make_loss(cfg: DictConfig, datamodule):
    """The configured loss with the training split's class counts: "balanced" weights follow
    the data actually trained on (this fold's, after dedup), not the whole file."""
    from hydra.utils import instantiate

    return instantiate(cfg.loss)(class_counts=class_counts(datamodule))


def class_counts(datamodule) -> list[int]:
    """Training examples per class (class-weighted losses, the majority baseline)."""
    import numpy as np

    return np.bincount(datamodule.labels("train"), minlength=len(datamodule.class_names)).tolist()


def text_baseline(datamodule) -> dict[str, float]:
    from lokal.baseline import tfidf_logreg

    splits = ("train", "test")
    return tfidf_logreg({s: datamodule.texts(s) for s in splits}, {s: datamodule.labels(s) for s in splits})


def majority_accuracy(datamodule) -> float:
    """Test accuracy of always predicting the most common training class: the bar to beat."""
    counts = class_counts(datamodule)
    majority = counts.index(max(counts))
    test = datamodule.labels("test")
    return sum(y == majority for y in test) / len(test)

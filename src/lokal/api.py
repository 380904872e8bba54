"""What the public functions in `lokal/__init__.py` do: the CLI's work, callable from Python."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def compose(overrides: list[str], run_dir: str | Path | None = None) -> DictConfig:
    """The shipped train.yaml with `overrides`, as Hydra composes it for `train.py`; the run folder
    is `run_dir`, else the one Hydra would pick (a new one under outputs/runs/, or the unfinished
    run of the same overrides)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from lokal.assets.shipped import register_resolver
    from lokal.paths import CONFIG_DIR
    from lokal.training.rundir import register_resolvers

    register_resolver()
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # hydra.run.dir reads the choices through it
    with read_write(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(run_dir or cfg.hydra.run.dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def train(overrides: list[str], run_dir: str | Path | None = None) -> dict:
    from lokal.run import train as train_config

    cfg = compose(overrides, run_dir)
    Path(cfg.paths.run_dir).mkdir(parents=True, exist_ok=True)
    return train_config(cfg)


def audit_data(source: str | list[str], text_column: str = "text", label_column: str = "label",
               file_column: str = "file", split_column: str | None = None, table: str | None = None,
               encoding: str = "utf-8", near: bool = True, label_errors: bool = True) -> dict:
    from lokal.audit import AuditSettings, analyse
    from lokal.audit.core import report
    from lokal.audit.source import from_config, from_path

    if isinstance(source, str | Path):
        data = from_path(str(source), text_column, label_column, file_column, split_column, table, encoding)
    else:
        data = from_config(list(source))
    findings = report(analyse(data.records, data.modality, AuditSettings(near=near, label_errors=label_errors)))
    return findings | {"source": str(source), "notes": data.notes}

"""Every shipped YAML composes with train.yaml, and every cheap group instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from tests.conftest import CONF, compose

GROUPS = ["method", "optimizer", "scheduler", "logger", "callbacks", "trainer", "data", "model", "experiment",
          "evaluation"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_config_composes(group, option, tmp_path):
    cfg = compose([f"{group}={option}"], tmp_path)
    assert cfg.method.lr > 0 and cfg.model._target_.startswith("lokal.models.")


@pytest.mark.parametrize("option", [p.stem for p in sorted((CONF / "method").glob("*.yaml"))])
def test_every_method_instantiates_from_its_yaml(option, tmp_path):
    method = instantiate(compose([f"method={option}"], tmp_path).method)
    assert callable(method.apply)


@pytest.mark.parametrize("group", ["optimizer", "scheduler"])
def test_optimizers_and_schedulers_build_on_parameters(group, tmp_path):
    import torch

    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        cfg = compose([f"{group}={option}"], tmp_path)
        optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
        if group == "scheduler" and cfg.get("scheduler"):
            scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=100)
            lrs = []
            for _ in range(100):
                lrs.append(scheduler.get_last_lr()[0])
                optimizer.step()
                scheduler.step()
            assert max(lrs) == pytest.approx(cfg.method.lr, rel=0.02) and lrs[0] < lrs[10] and lrs[-1] < lrs[50]


@pytest.mark.parametrize("logger", ["csv", "wandb", "tensorboard"])
def test_loggers_instantiate_and_always_keep_the_csv(logger, tmp_path):
    cfg = compose([f"logger={logger}"], tmp_path)
    loggers = [instantiate(c) for c in cfg.logger.values()]
    assert "csv" in cfg.logger and len(loggers) == (1 if logger == "csv" else 2)


def test_image_data_picks_a_cnn_unless_told_otherwise(tmp_path):
    assert compose(["data=medical_xray"], tmp_path).model.name == "tf_efficientnet_lite0"
    assert compose(["data=medical_xray", "model=timm"], tmp_path).model.name == "resnet50"


def test_shipped_models_resolve_to_local_files(tmp_path):
    cfg = compose(["model=efficientnet_lite0"], tmp_path)
    assert Path(cfg.model.checkpoint).is_file()
    assert compose(["model=efficientnet_lite0", "model.name=resnet50"], tmp_path).model.checkpoint is None
    assert (Path(compose([], tmp_path).model.name) / "model.safetensors").is_file()


def test_shipped_efficientnet_is_really_imagenet_pretrained():
    """The converted checkpoint recognises a daisy (ImageNet class 985) in sklearn's sample photo."""
    import timm
    import torch
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from lokal.assets.shipped import efficientnet_lite0

    model = timm.create_model("tf_efficientnet_lite0", pretrained=True,
                              pretrained_cfg_overlay={"file": str(efficientnet_lite0())}).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    image = transform(Image.fromarray(load_sample_image("flower.jpg")))
    with torch.no_grad():
        assert model(image[None]).argmax().item() == 985


def test_weights_of_another_architecture_are_refused_clearly():
    from lokal.assets.shipped import efficientnet_lite0
    from lokal.errors import LokalError
    from lokal.models.vision import ImageClassifier

    with pytest.raises(LokalError, match="resnet18: pretrained weights could not be loaded.*model.checkpoint"):
        ImageClassifier("resnet18", num_classes=2, checkpoint=str(efficientnet_lite0()))


@pytest.mark.parametrize("option", ["ddp", "fsdp", "deepspeed", "tpu"])
def test_scale_out_trainer_configs_name_real_lightning_strategies(option, tmp_path):
    """The strategies the GPU/TPU configs name exist and build (they only run on such hardware)."""
    from lightning.pytorch.strategies import StrategyRegistry

    strategy = compose([f"trainer={option}"], tmp_path).trainer.get("strategy")
    if isinstance(strategy, str):
        assert strategy in StrategyRegistry
    elif strategy is not None:
        assert type(instantiate(strategy)).__name__ == "FSDPStrategy"

"""From a composed config to a data module and a model with the method applied, with the checks
that need no weights first (the model's task and modality against the data's)."""

from __future__ import annotations

from omegaconf import DictConfig

from lokal.errors import LokalError
from lokal.tasks import make_task, task_of, tasks_of


def build(cfg: DictConfig, method=None):
    """Data, then the model sized to its classes, then `method` (if given) applied once."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    check_task(cfg.model, datamodule)
    check_modality(cfg.model, datamodule)
    model = instantiate(cfg.model, **make_task(task_of(datamodule)).model_arguments(datamodule))
    datamodule.use_model(model)
    if method is None:
        return datamodule, model
    model = method.apply(model)
    model.plan_frozen_prefix(augmented=getattr(datamodule, "augment", None) is not None)  # text data's EDA
    return datamodule, model


EXAMPLE_MODELS = {"text": "model=e5_small", "image": "model=efficientnet_lite0",
                  "audio": "model=whisper_tiny (transcripts) or model=whisper_tiny_classifier (labels)"}


def check_task(model_cfg: DictConfig, datamodule) -> None:
    """Instruction data needs a language model, labelled data a classifier: checked from the
    model's class, before its weights load."""
    from hydra.utils import get_class

    model_tasks, data_task = tasks_of(get_class(model_cfg._target_)), task_of(datamodule)
    if data_task not in model_tasks:
        raise LokalError(f"data={data_choice(datamodule)} needs {make_task(data_task).models}; "
                         f"model {model_cfg.name} is a {' / '.join(model_tasks)} model")


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

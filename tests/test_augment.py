"""Augmentation touches training data only: EDA on training texts (fresh per epoch, fixed by
seed), mixup/CutMix on training image batches (soft labels the losses accept), the image
presets (RandAugment for photos, nothing colour or mirror for X-rays); slang normalisation
applies to every split."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from lokal.data.augment import (
    BatchMixup,
    MixupConfig,
    TextAugment,
    from_config,
    normalize_slang,
    random_deletion,
    random_swap,
)
from lokal.data.image import ImageFolderDataModule
from lokal.data.text import TextDataModule
from lokal.errors import LokalError
from lokal.training.losses import FocalLoss, cross_entropy
from tests.conftest import compose

COUNTS = [90, 8, 2]
LOGITS = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
DATA_CONFIG = {"input_size": (3, 64, 64), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
               "crop_pct": 0.875, "crop_mode": "center"}


# -- EDA ---------------------------------------------------------------------------------------
def test_eda_is_fixed_by_seed_and_keeps_words():
    words = "layanan internet di rumah lambat sekali sejak kemarin malam".split()
    augment = TextAugment(delete=0.2, swap=0.2)
    text = " ".join(words)
    assert augment(text, random.Random(1)) == augment(text, random.Random(1))
    assert len({augment(text, random.Random(seed)) for seed in range(20)}) > 10
    swapped = random_swap(words, 0.3, random.Random(0))
    assert sorted(swapped) == sorted(words) and swapped != words
    assert random_deletion(words, 1.0, random.Random(0))[0] in words  # never empties a text
    assert TextAugment()(text, random.Random(0)) == text


def test_eda_keys_are_checked():
    with pytest.raises(LokalError, match="must be in"):
        TextAugment(delete=1.5)


@pytest.fixture(scope="module")
def tokenizer_model():
    from transformers import AutoTokenizer

    from lokal.assets.shipped import minilm

    return SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(str(minilm())), max_length=32)


@pytest.fixture
def reviews(tmp_path):
    words = "sinyal internet lemot banget hari ini mantul pelayanan cepat ramah kecewa".split()
    rng = random.Random(0)
    rows = [(" ".join(rng.choices(words, k=8)) + f" {i}", i % 2) for i in range(60)]
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return path


def text_module(path, model, tmp_path, **kwargs) -> TextDataModule:
    data = TextDataModule(str(path), batch_size=8, cache_dir=str(tmp_path / "cache"), **kwargs)
    data.use_model(model)
    data.setup()
    return data


def batches(loader) -> list[torch.Tensor]:
    return [b["input_ids"] for b in loader]


def test_text_augmentation_changes_training_batches_only(reviews, tokenizer_model, tmp_path):
    plain = text_module(reviews, tokenizer_model, tmp_path)
    augmented = text_module(reviews, tokenizer_model, tmp_path, augment={"delete": 0.2, "swap": 0.2})
    for split in ("val", "test"):
        loader = getattr(plain, f"{split}_dataloader")()
        assert all(map(torch.equal, batches(loader), batches(getattr(augmented, f"{split}_dataloader")())))
    loader = augmented.train_dataloader()
    first = batches(loader)
    torch.manual_seed(123)  # the global RNG plays no part: the seed and the sample's position decide
    assert all(map(torch.equal, first, batches(augmented.train_dataloader())))
    loader.sampler.set_epoch(1)
    assert not all(map(torch.equal, first, batches(loader)))  # fresh every epoch
    assert not all(map(torch.equal, first, batches(plain.train_dataloader())))


@pytest.mark.filterwarnings("ignore:.*pin_memory.*")  # no GPU here: the flag is passed, pinning is skipped
def test_text_augmentation_works_in_loader_workers(reviews, tokenizer_model, tmp_path):
    data = text_module(reviews, tokenizer_model, tmp_path, augment={"delete": 0.1}, num_workers=2, pin_memory=True)
    rows = sum(len(b["label"]) for b in data.train_dataloader())
    assert rows == data.stats["train_rows"]


# -- slang -------------------------------------------------------------------------------------
def test_slang_is_normalised_from_indonlp_and_lokals_supplement():
    from indoNLP.preprocessing import replace_slang

    assert normalize_slang("Mantul gan, yg ini gapapa") == "mantap betul gan, yang ini enggak apa-apa"
    assert normalize_slang("klo") == "kalau"  # indoNLP's "kalo" completed by the supplement
    text = "emg siapa yg nanya? gw ga ngerti, bgt deh"  # no supplement word: indoNLP's own answer
    assert normalize_slang(text) == replace_slang(text) == "memang siapa yang bertanya? gue enggak mengerti, banget deh"


def test_slang_normalisation_applies_to_every_split(reviews, tokenizer_model, tmp_path):
    data = text_module(reviews, tokenizer_model, tmp_path, normalize_slang=True)
    decode = tokenizer_model.tokenizer.decode
    for split in ("train", "val", "test"):
        texts = [decode(row["input_ids"], skip_special_tokens=True) for row in data.datasets[split]]
        assert not any("mantul" in t for t in texts) and any("mantap betul" in t for t in texts), split
        assert not any("lemot" in t for t in texts)
    assert any("mantul" in t for t in data.texts("test"))  # the table itself is left as it is


# -- losses with soft targets -------------------------------------------------------------------
def focal_before_soft_targets(logits, labels, gamma, weight):
    """FocalLoss.forward as it was before soft targets: hard labels must give exactly this."""
    log_p = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    if weight is None:
        return loss.mean()
    w = weight[labels]
    return (w * loss).sum() / w.sum()


@pytest.mark.parametrize("mode", [None, "balanced"])
def test_losses_take_soft_targets_and_one_hot_equals_hard(mode):
    one_hot = F.one_hot(LABELS, 3).float()
    focal = FocalLoss(COUNTS, gamma=2.0, class_weights_mode=mode)
    assert torch.equal(focal(LOGITS, LABELS), focal_before_soft_targets(LOGITS, LABELS, 2.0, focal.weight))
    assert torch.allclose(focal(LOGITS, one_hot), focal(LOGITS, LABELS), atol=1e-6)
    for smoothing in (0.0, 0.1):
        ce = cross_entropy(COUNTS, mode, label_smoothing=smoothing)
        assert torch.equal(ce(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS, weight=ce.weight,
                                                               label_smoothing=smoothing))
        assert torch.allclose(ce(LOGITS, one_hot), ce(LOGITS, LABELS), atol=1e-6)
    soft = torch.softmax(torch.randn(8, 3, generator=torch.Generator().manual_seed(1)), -1)
    gamma_zero = FocalLoss(COUNTS, gamma=0.0, class_weights_mode=mode)
    assert torch.allclose(gamma_zero(LOGITS, soft), cross_entropy(COUNTS, mode)(LOGITS, soft), atol=1e-6)


# -- mixup -------------------------------------------------------------------------------------
def test_mixup_gives_soft_labels_and_handles_an_odd_batch():
    batch = {"image": torch.randn(5, 3, 8, 8), "label": torch.tensor([0, 1, 2, 0, 1])}
    mixed = BatchMixup(MixupConfig(label_smoothing=0.0), num_classes=3)(dict(batch, image=batch["image"].clone()))
    assert mixed["label"].shape == (5, 3)
    assert torch.allclose(mixed["label"].sum(-1), torch.ones(5))
    assert torch.equal(mixed["label"][4], torch.tensor([0.0, 1.0, 0.0]))  # the odd one out stays unmixed
    with pytest.raises(LokalError, match="the keys are mixup_alpha"):
        from_config(MixupConfig, {"alpha": 0.2}, "mixup")


def recorder():
    """A callback keeping the train loss and label shape per step, and every validation batch,
    as the module gets them (after the batch transfer hooks)."""
    from lightning.pytorch.callbacks import Callback

    class Recorder(Callback):
        def __init__(self) -> None:
            self.losses, self.label_shapes, self.val_batches = [], [], []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.label_shapes.append(tuple(batch["label"].shape))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.losses.append(outputs["loss"].detach())

        def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            self.val_batches.append(batch)

    return Recorder()


def test_a_mixup_training_step_learns_and_leaves_validation_alone(xray_dir, tmp_path):
    import lightning as L

    from lokal.models.vision import ImageClassifier
    from lokal.tasks.classification import ClassifierModule

    L.seed_everything(0, verbose=False)
    data = ImageFolderDataModule(str(xray_dir), batch_size=8, cache_dir=str(tmp_path / "cache"),
                                 mixup={"mixup_alpha": 0.4, "cutmix_alpha": 0.0})
    model = ImageClassifier("test_efficientnet", 2, pretrained=False, image_size=48)
    data.use_model(model)
    module = ClassifierModule(model, 2, optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3))
    record = recorder()
    trainer = L.Trainer(accelerator="cpu", max_epochs=10, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[record])
    trainer.fit(module, datamodule=data)

    losses = torch.stack(record.losses)
    assert torch.isfinite(losses).all() and len(losses) == 30
    assert set(record.label_shapes) == {(8, 2)}  # soft labels in every training batch
    assert losses[-9:].mean() < losses[:9].mean()
    expected = next(iter(data.val_dataloader()))
    seen = record.val_batches[0]
    assert seen["label"].ndim == 1 and torch.equal(seen["label"], expected["label"])
    assert torch.equal(seen["image"], expected["image"])


# -- image presets ---------------------------------------------------------------------------------
def train_and_eval_ops(preset: str, root, tmp_path) -> tuple[list[str], list[str]]:
    from hydra.utils import instantiate

    cfg = compose([f"data={preset}", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"], tmp_path / "run")
    data = instantiate(cfg.data)
    data.use_model(SimpleNamespace(data_config=DATA_CONFIG))
    return [transform_names(data.content.transform(train)) for train in (True, False)]


def transform_names(transform) -> list[str]:
    """Every op in a composed timm/torchvision transform, RandAugment's own ops included;
    a flip with p=0 is no flip."""
    names = []
    for op in transform.transforms:
        if getattr(op, "p", 1) == 0:
            continue
        names.append(type(op).__name__)
        names += [sub.name for sub in getattr(op, "ops", [])]
    return names


AUGMENTING = ("RandomHorizontalFlip", "RandomVerticalFlip", "ColorJitter", "RandAugment", "AutoAugment",
              "AugMixAugment", "RandomErasing")


def test_medical_preset_has_no_flip_colour_or_randaugment_and_eval_never_augments(xray_dir, tmp_path):
    medical_train, medical_eval = train_and_eval_ops("medical_xray", xray_dir, tmp_path)
    photo_train, photo_eval = train_and_eval_ops("image_folder", xray_dir, tmp_path)
    assert not set(AUGMENTING) & set(medical_train), medical_train
    assert {"RandomHorizontalFlip", "RandAugment", "ColorIncreasing", "Rotate"} <= set(photo_train), photo_train
    for ops in (medical_eval, photo_eval):
        assert ops == ["Resize", "CenterCrop", "MaybeToTensor", "Normalize"]


def randaugment_specs() -> list[str]:
    from omegaconf import OmegaConf

    from tests.conftest import CONF

    configs = [OmegaConf.load(path) for path in sorted((CONF / "data").glob("*.yaml"))]
    return sorted({c.augment.auto_augment for c in configs if (c.get("augment") or {}).get("auto_augment")})


@pytest.mark.parametrize("spec", randaugment_specs())
def test_shipped_randaugment_settings_never_crash(spec):
    """rand-m9-mstd0.5-inc1 without mmax9 draws magnitude 10 now and then, and timm then asks
    Pillow to posterize to 0 bits: a ValueError about 1 image in 600, i.e. a crash in epoch 1."""
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    augment, image = rand_augment_transform(spec, {}), Image.new("RGB", (16, 16), (120, 60, 30))
    random.seed(0)
    for _ in range(3000):
        augment(image)

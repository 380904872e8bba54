"""Shared fixtures: tiny real-architecture models, tiny image folders, and the real
`train.yaml` composed through Hydra and shrunk to a few steps."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup hangs ~46 s without a network
os.environ.setdefault("WANDB_MODE", "offline")
# tokenised texts, decoded images and file checks are cached by default: keep test runs out of ~/.cache
os.environ.setdefault("LOKAL_DATA_CACHE", tempfile.mkdtemp(prefix="lokal-data-cache-"))

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "lokal" / "conf"


def make_image_folder(root: Path, classes=("NORMAL", "PNEUMONIA"), per_class: int = 12,
                      splits: tuple[str, ...] | None = ("train", "val", "test"), size: int = 48) -> Path:
    """Images whose class is learnable (bright vs dark centre), half greyscale, half RGB."""
    rng = np.random.default_rng(0)
    for split in splits or (None,):
        for c, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 80, (size, size)).astype(np.uint8)
                pixels[size // 4: 3 * size // 4, size // 4: 3 * size // 4] += np.uint8(120 * c)
                image = Image.fromarray(pixels, mode="L")
                (image if i % 2 else image.convert("RGB")).save(folder / f"{name.lower()}_{i}.jpeg")
    return root


@pytest.fixture
def xray_dir(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "xray")


@pytest.fixture(scope="session")
def tiny_text_models(tmp_path_factory) -> dict[str, Path]:
    """A 2-layer BERT and a 2-layer LLaMA with random weights, using MiniLM's real tokenizer."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    from lokal.assets.shipped import minilm

    root = tmp_path_factory.mktemp("tiny_text")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm()))
    torch.manual_seed(0)  # the same weights whichever test builds them first (session scope)
    size = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                vocab_size=tokenizer.vocab_size, num_labels=2)
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    models = {
        "bert": BertForSequenceClassification(BertConfig(**size, **no_dropout)),
        "llama": LlamaForSequenceClassification(LlamaConfig(**size, num_key_value_heads=2,
                                                            pad_token_id=tokenizer.pad_token_id)),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = root / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A 2-layer LLaMA language model with random weights, using MiniLM's real tokenizer
    ([SEP] as its end-of-sequence token: decoders need one)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lokal.assets.shipped import minilm

    path = tmp_path_factory.mktemp("tiny_lm") / "llama_lm"
    tokenizer = AutoTokenizer.from_pretrained(str(minilm()), eos_token="[SEP]")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=32, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def compose(overrides: list[str], run_dir: Path):
    """The real train.yaml through Hydra, with the run directory set as Hydra would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from lokal.assets.shipped import register_resolver

    register_resolver()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


FAST = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> Path:
    """A 2+2-layer Whisper with random weights on a 2-second window (100 encoder positions), with
    the real tiny.en tokenizer and generation settings: every Whisper code path, in milliseconds."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    from lokal.assets.shipped import whisper_tiny_en

    real = whisper_tiny_en()
    path = tmp_path_factory.mktemp("tiny_whisper") / "whisper"
    processor = WhisperProcessor.from_pretrained(real)
    processor.feature_extractor = type(processor.feature_extractor)(chunk_length=2)  # 200 log-mel frames
    generation = GenerationConfig.from_pretrained(real)
    generation.alignment_heads = [[1, 0]]  # the real model's name layers 1-3
    tokens = {k: getattr(generation, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id",
                                                  "decoder_start_token_id")}
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=len(processor.tokenizer), d_model=16, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_source_positions=100, max_target_positions=64, **tokens,
                           dropout=0.0, init_std=0.1)  # 0.02 leaves near-uniform logits that barely move
    model = WhisperForConditionalGeneration(config)
    model.generation_config = generation
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path

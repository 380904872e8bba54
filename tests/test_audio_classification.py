"""Audio classification with Whisper's encoder (lokal.data.audio_files): class folders and tables
of recordings become log-mel batches from the model's own feature extractor, augmented in
training only, long clips split or skipped by name; train.py runs end to end on generated tones
(the tiny random Whisper of tests/conftest.py) and, marked slow, on real Asterisk prompts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from lokal.data.audio_files import AudioFolderDataModule
from lokal.data.files import FileTableDataModule
from lokal.errors import LokalError
from tests.conftest import FAST, compose

TONES = {"low": 300, "high": 1200}  # Hz: two classes any log-mel separates
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # as src/lokal/conf/model/whisper_tiny_classifier.yaml


def write_tone(path: Path, hz: float, seconds: float = 1.0, rate: int = 8000, seed: int = 0) -> Path:
    """A noisy sine at `rate` Hz (8 kHz: telephone audio, resampled to 16 kHz on loading)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.4 * np.sin(2 * np.pi * hz * t + rng.uniform(0, 6)) + 0.05 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio.astype(np.float32), rate)
    return path


def tone_folder(root: Path, per_class: int = 10, splits: tuple[str, ...] | None = None) -> Path:
    for split in splits or (None,):
        for name, hz in TONES.items():
            for i in range(per_class):
                folder = root / split / name if split else root / name
                write_tone(folder / f"{name}_{i}.wav", hz * (1 + 0.02 * (i % 5)), seed=i)
    return root


def tiny_classifier(path: Path, classes: int = 2):
    from lokal.models.speech import WhisperAudioClassifier

    return WhisperAudioClassifier(str(path), num_classes=classes, lora_targets=LORA_TARGETS)


def ready(data, model):
    data.use_model(model)
    data.setup()
    return data


# -- loaders -----------------------------------------------------------------------------------
def test_audio_folder_gives_log_mel_batches_the_model_reads(tmp_path, tiny_whisper):
    model = tiny_classifier(tiny_whisper)
    data = ready(AudioFolderDataModule(str(tone_folder(tmp_path / "tones")), batch_size=4), model)
    assert data.modality == "audio" and data.class_names == ["high", "low"]
    assert sum(data.stats[f"{s}_rows"] for s in ("train", "val", "test")) == 20 and data.stats["bad_files"] == 0
    batch = next(iter(data.train_dataloader()))
    assert batch["input_features"].shape == (4, 80, 200) and batch["input_features"].dtype == torch.float32
    assert batch["label"].shape == (4,) and batch["index"].shape == (4,)
    assert batch["attention_mask"].shape == (4, 200) and (batch["attention_mask"].sum(1) == 100).all()  # 1 s of 2
    assert model(batch).shape == (4, 2)
    records = data.records()
    assert list(records.columns) == ["id", "split", "label", "path"] and records["id"].str.match(r"(low|high)/").all()


def test_a_split_folder_keeps_its_splits(tmp_path, tiny_whisper):
    data = AudioFolderDataModule(str(tone_folder(tmp_path / "tones", per_class=3, splits=("train", "test"))))
    assert data.stats["train_rows"] + data.stats["val_rows"] == 6 and data.stats["test_rows"] == 6


def test_augmentation_is_for_training_only(tmp_path, tiny_whisper):
    root = tone_folder(tmp_path / "tones", per_class=6)
    data = AudioFolderDataModule(str(root), spec_augment={"time_width": 20, "time_masks": 2})
    ready(data, tiny_classifier(tiny_whisper))
    train, test = data.datasets["train"], data.datasets["test"]
    torch.manual_seed(1)
    first = test[0]["input_features"]
    torch.manual_seed(2)
    assert torch.equal(test[0]["input_features"], first)  # evaluation: the same features every time
    draws = []
    for seed in (1, 2, 1):
        torch.manual_seed(seed)  # what the resumable loader does per sample
        draws.append(train[0]["input_features"])
    assert torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])  # seeded, yet varied
    clean = type(test)(train.items, train.feature_extractor, train.max_samples)[0]["input_features"]
    assert not torch.equal(draws[0], clean)


def test_audio_options_are_checked_by_name(tmp_path, tiny_whisper):
    root = str(tone_folder(tmp_path / "tones", per_class=4))
    with pytest.raises(LokalError, match="data.long_clips='cut'"):
        AudioFolderDataModule(root, long_clips="cut")
    data = AudioFolderDataModule(root, augment={"hflip": 0.5, "speeds": [1.0]})
    with pytest.raises(LokalError, match=r"data.augment: hflip are not audio options.*speeds, shift_seconds"):
        data.use_model(tiny_classifier(tiny_whisper))
    with pytest.raises(LokalError, match="hears at most 2 s"):
        AudioFolderDataModule(root, max_seconds=5).use_model(tiny_classifier(tiny_whisper))


# -- pooling over the clip, not the padding -------------------------------------------------------
def test_the_mask_marks_the_frames_that_hold_the_clip(tmp_path, tiny_whisper):
    from lokal.data.audio_files import AudioDataset

    model = tiny_classifier(tiny_whisper)
    clips = [write_tone(tmp_path / f"{s}.wav", 300, seconds=s) for s in (0.5, 2.0)]
    dataset = AudioDataset([(str(c), 0, 0, 1) for c in clips], model.feature_extractor, 32_000)
    short, full = (dataset[i]["attention_mask"] for i in range(2))
    assert short.shape == full.shape == (200,)  # 100 frames per second
    assert short[:50].all() and not short[50:].any() and full.all()


def masked_batch(classes: int = 3) -> dict[str, torch.Tensor]:
    """Two windows of random log-mel: 0.6 s and 1.4 s of the 2 s hold audio."""
    mask = torch.zeros(2, 200, dtype=torch.int32)
    mask[0, :60], mask[1, :140] = 1, 1
    return {"input_features": torch.randn(2, 80, 200, generator=torch.Generator().manual_seed(0)),
            "attention_mask": mask, "label": torch.tensor([0, classes - 1])}


def test_padding_positions_do_not_reach_the_logits(tiny_whisper):
    model = tiny_classifier(tiny_whisper, classes=3).eval()
    batch = masked_batch()
    unmasked = {"input_features": batch["input_features"]}
    with torch.no_grad():
        clean, clean_unmasked = model(batch), model(unmasked)
    audio = batch["attention_mask"][:, ::2].bool().unsqueeze(-1)  # encoder positions: half the frame rate

    def scramble_padding(_module, _args, out):
        out.last_hidden_state = torch.where(audio, out.last_hidden_state, 10 * torch.randn_like(out.last_hidden_state))
        return out

    model.net.encoder.register_forward_hook(scramble_padding)
    with torch.no_grad():
        assert torch.allclose(model(batch), clean, atol=1e-6)  # whatever the padding encodes
        assert not torch.allclose(model(unmasked), clean_unmasked, atol=1e-3)  # HF's mean reads it


@pytest.mark.parametrize("weighted_layers", [False, True])
def test_a_full_mask_pools_as_transformers_does(tiny_whisper, weighted_layers):
    model = tiny_classifier(tiny_whisper, classes=3).eval()
    if weighted_layers:  # checkpoints fine-tuned with a learned mix of layers
        layers = model.net.config.num_hidden_layers + 1
        model.net.config.use_weighted_layer_sum = True
        model.net.layer_weights = torch.nn.Parameter(torch.randn(layers, generator=torch.Generator().manual_seed(1)))
    batch = masked_batch() | {"attention_mask": torch.ones(2, 200, dtype=torch.int32)}
    with torch.no_grad():
        ours, theirs = model(batch), model.net(input_features=batch["input_features"]).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "ia3", "bitfit", "adapter", "side", "prompt"])
def test_every_kind_of_method_trains_through_the_masked_pooling(tiny_whisper, method):
    from tests.test_methods import METHODS

    model = METHODS[method]().apply(tiny_classifier(tiny_whisper, classes=3))
    batch = masked_batch()
    torch.nn.functional.cross_entropy(model(batch), batch["label"]).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and [n for n, p in trainable.items() if p.grad is None] == []


def test_a_shorter_window_shortens_the_encoder_and_the_features(tmp_path, tiny_whisper):
    from lokal.models.speech import WhisperAudioClassifier

    model = WhisperAudioClassifier(str(tiny_whisper), num_classes=2, window_seconds=1)  # the tiny one hears 2 s
    positions = model.net.encoder.embed_positions.weight
    assert positions.shape[0] == 50 and not positions.requires_grad  # 100 frames, halved
    data = ready(AudioFolderDataModule(str(tone_folder(tmp_path / "tones", per_class=4)), batch_size=4), model)
    batch = next(iter(data.train_dataloader()))
    assert batch["input_features"].shape == (4, 80, 100) and model(batch).shape == (4, 2)
    for seconds, said in ((3, "hears at most 2 s"), (1.5, "whole seconds")):
        with pytest.raises(LokalError, match=f"model.window_seconds={seconds}.*{said}"):
            WhisperAudioClassifier(str(tiny_whisper), num_classes=2, window_seconds=seconds)


# -- long clips and bad files ----------------------------------------------------------------------
@pytest.mark.parametrize("long_clips", ["split", "skip"])
def test_clips_longer_than_the_window_are_split_or_skipped_by_name(tmp_path, tiny_whisper, long_clips, caplog):
    root = tone_folder(tmp_path / "tones", per_class=6)
    write_tone(root / "low" / "long.wav", 300, seconds=5.0)  # the tiny model hears 2 s: 3 chunks of 1.67 s
    data = ready(AudioFolderDataModule(str(root), long_clips=long_clips), tiny_classifier(tiny_whisper))
    records = data.records()
    chunks = records[records["id"].str.startswith("low/long.wav")]
    said = "split 1 clip" if long_clips == "split" else "skipped 1 clip"
    assert said in caplog.text and "low/long.wav" in caplog.text
    if long_clips == "skip":
        assert chunks.empty and data.stats["long_clips_skipped"] == 1
        return
    assert chunks["id"].tolist() == [f"low/long.wav#{k}of3" for k in (1, 2, 3)]
    assert chunks["split"].nunique() == 1 and set(chunks["label"]) == {"low"}  # one clip, one split, one label
    assert data.stats["long_clips_split"] == 1 and len(records) == 15
    split = chunks["split"].iloc[0]
    dataset = data.datasets[split]
    at = [i for i, item in enumerate(dataset.items) if item[0].endswith("long.wav")]
    features = [dataset[i]["input_features"] for i in at]
    assert len(features) == 3 and not torch.equal(features[0], features[1])


def test_bad_audio_files_are_named_or_skipped(tmp_path, tiny_whisper):
    root = tone_folder(tmp_path / "tones", per_class=5)
    from tests.test_audio_data import wav_with_rate

    (root / "low" / "empty.wav").write_bytes(b"")
    (root / "high" / "notes.wav").write_text("not a recording")
    soundfile.write(root / "high" / "silent.wav", np.zeros(0, np.float32), 16_000)
    wav_with_rate(root / "low" / "rate0.wav", 0)
    with pytest.raises(LokalError, match=r"(?s)4 unusable file.*high/notes.wav: not readable audio.*"
                                         r"high/silent.wav: 0 seconds of audio.*low/empty.wav: zero bytes.*"
                                         r"low/rate0.wav: sample rate cannot be read.*data.bad_files=skip"):
        AudioFolderDataModule(str(root), cache=False)
    data = AudioFolderDataModule(str(root), bad_files="skip", cache=False)
    assert data.stats["bad_files"] == 4 and len(data.records()) == 10


def test_a_folder_without_recordings_says_the_layout(tmp_path):
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "pics", per_class=2, splits=None)
    with pytest.raises(LokalError, match=r"(?s)0 recordings.*DIR/CLASS/\*.wav"):
        AudioFolderDataModule(str(root))


# -- tables of recordings ---------------------------------------------------------------------------
def test_an_audio_table_trains_like_an_audio_folder(tmp_path, tiny_whisper):
    root = tone_folder(tmp_path / "tones", per_class=6)
    files = sorted(root.rglob("*.wav"))
    pd.DataFrame({"file": [f.relative_to(root).as_posix() for f in files],
                  "label": [f.parent.name for f in files]}).to_csv(root / "labels.csv", index=False)
    data = ready(FileTableDataModule(str(root / "labels.csv"), batch_size=3), tiny_classifier(tiny_whisper))
    batch = next(iter(data.train_dataloader()))
    assert batch["input_features"].shape == (3, 80, 200) and data.class_names == ["high", "low"]
    image_defaults = FileTableDataModule(str(root / "labels.csv"), augment={"hflip": 0.5, "scale": [0.6, 1.0]})
    assert len(image_defaults.records()) == 12  # `lokal audit` still reads it with file_table.yaml's defaults
    with pytest.raises(LokalError, match=r"data.augment: hflip, scale are not audio options"):
        image_defaults.use_model(tiny_classifier(tiny_whisper))
    with pytest.raises(LokalError, match="data.mixup mixes images"):
        FileTableDataModule(str(root / "labels.csv"), mixup={"mixup_alpha": 0.8})


# -- methods on the audio classifier -------------------------------------------------------------
def test_side_network_reads_the_audio_encoder(tiny_whisper):
    from lokal.methods.additive import Additive

    model = Additive(kind="side").apply(tiny_classifier(tiny_whisper, classes=3))
    logits = model({"input_features": torch.randn(2, 80, 200)})
    assert logits.shape == (2, 3)


# -- train.py end to end ----------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_train_py_on_an_audio_folder(tmp_path, run_dir, tiny_whisper, method):
    from lokal.run import train
    from lokal.runs.load import load_run

    root = tone_folder(tmp_path / "tones", per_class=10)
    cfg = compose(FAST + [f"method={method}", "data=audio_folder", f"data.root={root}", "data.batch_size=4",
                          f"model.name={tiny_whisper}", "trainer.max_epochs=3", "trainer.limit_train_batches=null",
                          "method.lr=1e-2", "evaluation.plots=false"], run_dir)
    assert cfg.model._target_ == "lokal.models.speech.WhisperAudioClassifier"
    metrics = train(cfg)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
    assert 0 < saved["trainable_params"] < saved["total_params"]
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert len(predictions) == saved["data/test_rows"]
    assert {"id", "label", "predicted", "prob/low", "prob/high"} <= set(predictions)

    datamodule, model = load_run(run_dir)
    datamodule.setup()
    with torch.no_grad():
        probs = torch.cat([model(batch).softmax(-1) for batch in datamodule.test_dataloader()])
    assert probs.numpy() == pytest.approx(predictions[["prob/high", "prob/low"]].to_numpy(), abs=1e-4)


# -- real model, real recordings ------------------------------------------------------------------
@pytest.mark.slow
def test_whisper_tiny_tells_asterisk_prompt_kinds_apart(tmp_path, run_dir):
    """Real speech, real tiny.en encoder: which kind of prompt (digit, letter, phonetic-alphabet
    word) a recording is. One speaker, so the classes differ in words, not in voice."""
    from lokal.assets.asterisk import asterisk_sounds
    from lokal.run import train

    sounds = asterisk_sounds() / "wav"
    root = tmp_path / "prompts"
    for kind in ("digits", "letters", "phonetic"):
        (root / kind).mkdir(parents=True)
        for wav in sorted((sounds / kind).glob("*.wav")):
            (root / kind / wav.name).symlink_to(wav)
    start = time.perf_counter()
    # prompts last 0.6-1.6 s: a 2 s window costs 1/30 of the 30 s one (1.1 vs 32 s a step), and the
    # mean pools only the clip. Every word is heard once: test words are new words of a known kind,
    # so it overfits fast (train loss ~0 by epoch 3; the best val checkpoint is tested); lr 1e-2 diverges
    cfg = compose(["data=audio_folder", f"data.root={root}", "model.window_seconds=2", "data.batch_size=16",
                   "data.augment=null", "data.spec_augment=null", "trainer.max_epochs=12", "method.lr=3e-3",
                   "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "evaluation.plots=false"],
                  run_dir)
    metrics = train(cfg)
    seconds = time.perf_counter() - start
    print(f"asterisk prompt kinds: test accuracy {metrics['test/accuracy']:.3f} vs majority "
          f"{metrics['majority_class_accuracy']:.3f} ({metrics['data/test_rows']} test clips) in {seconds:.0f} s")
    assert metrics["test/accuracy"] >= metrics["majority_class_accuracy"] + 0.08  # measured: 0.622 vs 0.514

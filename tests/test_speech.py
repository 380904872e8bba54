"""Whisper speech recognition: transcript tables load, check and split (bad files named), labels
are Whisper's decoder targets padded with -100, augmentation touches training items only, and
train.py runs end to end (WER/CER before and after, transcripts.csv, weights load back) on a tiny
random Whisper with real Asterisk recordings; the real tiny.en demo is marked slow."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from lokal.data.speech import IGNORE, SpeechDataModule, collate
from lokal.errors import LokalError
from lokal.models.speech import WhisperASR
from lokal.tasks.speech_recognition import normalise
from tests.conftest import FAST, compose
from tests.test_audio_data import bad_files

SHORT_PROMPTS = 40  # the shortest Asterisk recordings (digits, letters, short words): under 2 s


@pytest.fixture(scope="module")
def short_table(tmp_path_factory):
    """A transcript table of real recordings that fit the tiny model's 2 s window, paths relative to it."""
    from lokal.assets.asterisk import asterisk_sounds

    folder = asterisk_sounds()
    table = pd.read_csv(folder / "transcripts.tsv", sep="\t")
    table["seconds"] = [soundfile.info(folder / f).duration for f in table["file"]]
    short = table[table["seconds"] < 1.8].sort_values("file").head(SHORT_PROMPTS)
    path = tmp_path_factory.mktemp("speech") / "transcripts.csv"
    short.assign(file=[str(folder / f) for f in short["file"]])[["file", "text"]].to_csv(path, index=False)
    return path


@pytest.fixture
def whisper(tiny_whisper):
    torch.manual_seed(0)
    return WhisperASR(str(tiny_whisper), lora_targets=["q_proj", "v_proj"])


def ready(model, path, **kwargs) -> SpeechDataModule:
    datamodule = SpeechDataModule(str(path), **kwargs)
    datamodule.use_model(model)
    datamodule.setup()
    return datamodule


def test_labels_are_decoder_targets_padded_with_ignore(whisper, short_table):
    datamodule = ready(whisper, short_table, batch_size=4)
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["input_features"].shape == (4, 80, 200)  # the tiny model's 2 s window
    start = whisper.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    for labels, text in zip(batch["labels"], batch["text"], strict=True):
        ids = labels[labels != IGNORE].tolist()
        assert ids[0] != start  # the model prepends it itself (shift right)
        assert ids[-1] == whisper.tokenizer.eos_token_id
        assert whisper.tokenizer.decode(ids, skip_special_tokens=True).strip() == text
    lengths = (batch["labels"] != IGNORE).sum(1)
    assert (batch["labels"][lengths < batch["labels"].shape[1]] == IGNORE).any()  # padded rows end in -100
    # HF's loss skips -100: equal to the mean cross-entropy over real tokens only
    out = whisper({"input_features": batch["input_features"], "labels": batch["labels"]})
    assert torch.isfinite(out.loss)


def test_the_split_is_by_seed_and_every_row_is_used_once(whisper, short_table):
    datamodule = ready(whisper, short_table, val_fraction=0.2, test_fraction=0.2)
    files = [f for split in ("train", "val", "test") for f in datamodule.files(split)]
    assert sorted(files) == sorted(pd.read_csv(short_table)["file"])
    assert len(datamodule.files("test")) == 8
    again = SpeechDataModule(str(short_table), val_fraction=0.2, test_fraction=0.2)
    assert again.parts["test"]["_id"].tolist() == datamodule.files("test")


def test_a_speaker_column_keeps_each_speaker_in_one_split(whisper, short_table, tmp_path):
    table = pd.read_csv(short_table).assign(speaker=[f"s{i % 5}" for i in range(SHORT_PROMPTS)])
    table.to_csv(tmp_path / "t.csv", index=False)
    datamodule = SpeechDataModule(str(tmp_path / "t.csv"), group_column="speaker", val_fraction=0.2,
                                  test_fraction=0.2)
    speakers = {name: set(part["_group"]) for name, part in datamodule.parts.items()}
    assert not (speakers["train"] & speakers["test"]) and not (speakers["val"] & speakers["test"])


def test_blank_transcripts_and_duplicate_recordings_are_dropped_and_counted(short_table, tmp_path):
    table = pd.read_csv(short_table)
    table.loc[0, "text"] = "   "
    table = pd.concat([table, table.iloc[[3, 4]]])  # the same recordings with the same words again
    table.to_csv(tmp_path / "t.csv", index=False)
    datamodule = SpeechDataModule(str(tmp_path / "t.csv"))
    assert datamodule.stats["empty_dropped"] == 1 and datamodule.stats["duplicates_dropped"] == 2
    assert sum(len(part) for part in datamodule.parts.values()) == SHORT_PROMPTS - 1


@pytest.mark.parametrize("case", ["missing", "not audio", "zero bytes", "0 seconds", "sample rate"])
def test_a_bad_recording_in_a_row_is_named_with_its_row(short_table, tmp_path, case):
    path, words = bad_files(tmp_path)[case]
    table = pd.read_csv(short_table)
    table.loc[5, "file"] = str(path)
    table.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(LokalError) as err:
        SpeechDataModule(str(tmp_path / "t.csv"))
    message = str(err.value)
    assert f"row 5: {path}" in message and words in message and "data.bad_files=skip" in message


def test_bad_files_skip_leaves_them_out(short_table, tmp_path):
    table = pd.read_csv(short_table)
    table.loc[2, "file"] = str(tmp_path / "gone.wav")
    table.to_csv(tmp_path / "t.csv", index=False)
    datamodule = SpeechDataModule(str(tmp_path / "t.csv"), bad_files="skip")
    assert datamodule.stats["bad_files"] == 1
    assert str(tmp_path / "gone.wav") not in sum((datamodule.files(s) for s in datamodule.parts), [])


def test_a_missing_column_names_the_real_ones(short_table):
    with pytest.raises(LokalError, match=r"no column 'transcript'.*\['file', 'text'\].*data.text_column"):
        SpeechDataModule(str(short_table), text_column="transcript")


def test_recordings_longer_than_the_window_are_skipped_and_named(whisper, short_table, tmp_path, caplog):
    table = pd.read_csv(short_table)
    soundfile.write(tmp_path / "long.wav", np.zeros(16000 * 3, np.float32), 16000)  # 3 s > 2 s window
    soundfile.write(tmp_path / "very_long.wav", np.zeros(16000 * 31, np.float32), 16000)  # over Whisper's 30 s
    table.loc[1, "file"], table.loc[2, "file"] = str(tmp_path / "long.wav"), str(tmp_path / "very_long.wav")
    table.to_csv(tmp_path / "t.csv", index=False)
    datamodule = ready(whisper, tmp_path / "t.csv")
    kept = sum((datamodule.files(s) for s in datamodule.parts), [])
    assert str(tmp_path / "long.wav") not in kept and str(tmp_path / "very_long.wav") not in kept
    assert datamodule.stats["too_long_skipped"] == 2
    assert "long.wav" in caplog.text and "very_long.wav" in caplog.text


def test_augmentation_changes_training_items_only(whisper, short_table):
    datamodule = ready(whisper, short_table, augment={"snr_db": [5, 5], "speeds": [0.9, 1.1]},
                       spec_augment={"freq_width": 10, "freq_masks": 1})
    train, test = datamodule.datasets["train"], datamodule.datasets["test"]
    assert torch.equal(test[0]["input_features"], test[0]["input_features"])
    torch.manual_seed(1)
    first = train[0]["input_features"]
    torch.manual_seed(2)
    assert not torch.equal(first, train[0]["input_features"])
    torch.manual_seed(1)
    assert torch.equal(first, train[0]["input_features"])  # the loader's per-sample seed fixes the draw


def test_collate_pads_to_the_longest_transcript():
    items = [{"input_features": torch.zeros(80, 10), "labels": [1, 2, 3], "text": "a", "index": 0},
             {"input_features": torch.ones(80, 10), "labels": [4], "text": "b", "index": 1}]
    batch = collate(items)
    assert batch["labels"].tolist() == [[1, 2, 3], [4, IGNORE, IGNORE]]
    assert batch["input_features"].shape == (2, 80, 10) and batch["text"] == ["a", "b"]


def test_normalise_follows_whispers_english_normaliser():
    assert normalise("Please enter the extension number, followed by the pound key.") == \
        "please enter the extension number followed by the pound key"
    assert normalise("Press 1.") == normalise("press one")
    assert normalise("Halo, apa kabar?", "id") == "halo apa kabar"


def test_english_only_whisper_refuses_another_language(tiny_whisper):
    with pytest.raises(LokalError, match="English-only.*model.language=id.*multilingual"):
        WhisperASR(str(tiny_whisper), language="id")


def test_train_py_runs_end_to_end_and_the_adapter_loads_back(run_dir, tiny_whisper, short_table):
    from lokal.run import train
    from lokal.runs.load import load_run

    cfg = compose(FAST + ["data=speech_table", f"data.path={short_table}", f"model.name={tiny_whisper}",
                          "method.lr=3e-2", "trainer.max_epochs=3", "data.batch_size=4", "model.max_new_tokens=8",
                          "data.augment={snr_db: [20, 30]}", "evaluation.forgetting=true"], run_dir)
    assert cfg.callbacks.model_checkpoint.monitor == "val/wer"
    metrics = train(cfg)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    assert {"base/test_wer", "base/test_cer", "test/wer", "test/cer", "val/wer", "val/cer", "test/loss",
            "trainable_params", "train_time_s", "peak_memory_mb"} <= saved.keys()
    assert 0 < saved["forgetting/cka"] <= 1 + 1e-6  # measured for speech too (LoRA: its adapters disabled)
    rows = pd.read_csv(run_dir / "transcripts.csv", keep_default_na=False)
    assert list(rows.columns) == ["file", "reference", "before", "after"] and len(rows) == 4
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    from torchmetrics.functional.text import word_error_rate

    heard = [normalise(t) for t in rows["after"]]
    assert float(word_error_rate(heard, [normalise(t) for t in rows["reference"]])) == pytest.approx(
        saved["test/wer"], abs=1e-6)  # transcripts.csv holds exactly what test/wer scored
    datamodule, model = load_run(run_dir)
    datamodule.setup()
    from lokal.tasks.speech_recognition import transcribe_split

    assert transcribe_split(model, datamodule, "test", torch.device("cpu")) == rows["after"].tolist()
    from lokal.runs.predict import load_predictor

    assert load_predictor(run_dir).task == "speech_recognition"  # `lokal predict` transcribes: test_predict_audio.py


def test_speech_data_with_a_text_model_is_refused_before_loading(run_dir, short_table):
    from lokal.run import train

    cfg = compose(FAST + ["data=speech_table", f"data.path={short_table}", "model=minilm"], run_dir)
    with pytest.raises(LokalError, match="speech-recognition model, e.g. model=whisper_tiny"):
        train(cfg)


@pytest.fixture(scope="module")
def tiny_multilingual_whisper(tiny_whisper, tmp_path_factory):
    """The tiny Whisper with the language and task tokens of a multilingual checkpoint (only English and
    Indonesian, for the test): what `model.language=id` needs from openai/whisper-small online."""
    from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperProcessor

    path = tmp_path_factory.mktemp("multilingual") / "whisper"
    processor = WhisperProcessor.from_pretrained(tiny_whisper)
    tokens = ["<|en|>", "<|id|>", "<|translate|>", "<|transcribe|>"]
    processor.tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
    ids = dict(zip(tokens, processor.tokenizer.convert_tokens_to_ids(tokens), strict=True))
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper)
    model.resize_token_embeddings(len(processor.tokenizer))
    generation = GenerationConfig.from_pretrained(tiny_whisper)
    generation.is_multilingual = True
    generation.lang_to_id = {"<|en|>": ids["<|en|>"], "<|id|>": ids["<|id|>"]}
    generation.task_to_id = {"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]}
    model.generation_config = generation
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_language_and_task_tokens_lead_the_labels_and_the_transcripts(tiny_multilingual_whisper, short_table):
    model = WhisperASR(str(tiny_multilingual_whisper), language="id")
    tokenizer = model.tokenizer
    expected = tokenizer.convert_tokens_to_ids(["<|id|>", "<|transcribe|>", "<|notimestamps|>"])
    datamodule = ready(model, short_table)
    assert datamodule.label_ids("satu dua tiga")[:3] == expected
    features = next(iter(datamodule.test_dataloader()))["input_features"][:2]
    seen = []  # the decoder's first input during generation: the prompt transcribe() gives it
    hook = model.net.model.decoder.register_forward_pre_hook(
        lambda _m, _args, kwargs: seen.append(kwargs["input_ids"].tolist()), with_kwargs=True)
    assert len(model.transcribe(features)) == 2
    hook.remove()
    start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    assert seen[0] == [[start, *expected]] * 2


def test_a_multilingual_whisper_needs_the_recordings_language(tiny_multilingual_whisper):
    with pytest.raises(LokalError, match="multilingual: set the language.*model.language=id"):
        WhisperASR(str(tiny_multilingual_whisper))


@pytest.mark.slow
def test_the_asterisk_demo_reports_wer_before_and_after(tmp_path):
    """The README's demo: real Whisper tiny.en, real recordings, 1 epoch of LoRA (~20 min on 2 cores)."""
    from tests.test_cli import run

    out = run("data=asterisk", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
              f"hydra.run.dir={tmp_path}", timeout=3600)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.03 < metrics["base/test_wer"] < 0.10  # tiny.en on clean studio prompts (5.9% here)
    assert metrics["test/wer"] <= metrics["base/test_wer"] + 0.01  # one epoch teaches style, breaks little
    assert metrics["test/cer"] < metrics["base/test_cer"]
    assert len(pd.read_csv(tmp_path / "transcripts.csv")) == metrics["data/test_rows"]


def test_a_row_without_a_file_is_named(short_table, tmp_path):
    table = pd.read_csv(short_table)
    table.loc[4, "file"] = None
    table.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(LokalError, match=r"1 row\(s\) have no value in column 'file' \(data.file_column\): row 4"):
        SpeechDataModule(str(tmp_path / "t.csv"))

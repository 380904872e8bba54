"""The forgetting meter (lokal.evaluation.forgetting): linear CKA against a numpy reference and its
invariances, 1.0 for an unchanged model (a copy, a detached adapter, LoRA switched off), lower
after a weight change, perplexities for causal LMs, and the reference sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lokal.errors import LokalError
from lokal.evaluation.forgetting import (
    base_copy,
    forgetting_report,
    linear_cka,
    reference_inputs,
    sample_crops,
    summary_line,
)

TEXTS = [f"Kalimat umum nomor {i} tentang cuaca, pasar, dan sekolah di kota kecil." for i in range(24)]


def numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. for linear CKA in feature space, written independently."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def random_views(seed: int, n: int, d1: int, d2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related views: y is a noisy linear map of x."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d1, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(d1, d2, generator=gen, dtype=torch.float64) + torch.randn(n, d2, generator=gen,
                                                                                   dtype=torch.float64)
    return x, y


# -- linear CKA -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "d1", "d2"), [(50, 8, 12), (20, 64, 30), (100, 3, 3), (12, 200, 5)])
def test_cka_matches_numpy_reference(n, d1, d2):
    x, y = random_views(n + d1, n, d1, d2)
    assert linear_cka(x, y) == pytest.approx(numpy_cka(x.numpy(), y.numpy()), abs=1e-10)
    assert linear_cka(x.float(), y.float()) == pytest.approx(numpy_cka(x.numpy(), y.numpy()), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3), shift=st.floats(-100, 100))
def test_cka_invariant_to_orthogonal_maps_isotropic_scale_and_shift(seed, scale, shift):
    x, y = random_views(seed, 40, 6, 9)
    rotation, _ = torch.linalg.qr(torch.randn(9, 9, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    assert linear_cka(x, scale * y @ rotation + shift) == pytest.approx(linear_cka(x, y), abs=1e-6)
    assert linear_cka(y, x) == pytest.approx(linear_cka(x, y), abs=1e-12)


def test_cka_is_not_invariant_to_anisotropic_scaling():
    """The other side of the invariance: stretching one axis is a change CKA sees."""
    x, y = random_views(0, 40, 6, 9)
    stretched = y * torch.tensor([50.0] + [1.0] * 8, dtype=torch.float64)
    assert abs(linear_cka(x, stretched) - linear_cka(x, y)) > 1e-3


def test_cka_of_identical_features_is_exactly_one_and_constant_is_nan():
    x, _ = random_views(3, 30, 7, 7)
    assert linear_cka(x, x) == 1.0
    assert linear_cka(x.float(), x.float().clone()) == 1.0
    assert math.isnan(linear_cka(x, torch.ones(30, 4)))
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, x[:10])


# -- models ---------------------------------------------------------------------------------------

def text_model(path, lora_targets=None):
    from lokal.models.text import TextClassifier

    torch.manual_seed(0)
    return TextClassifier(str(path), num_classes=2, lora_targets=lora_targets)


def image_model(name: str = "test_efficientnet"):
    from lokal.models.vision import ImageClassifier

    torch.manual_seed(0)
    return ImageClassifier(name, num_classes=2, pretrained=False, lora_targets=["conv_pw", "conv_pwl", "conv_head"])


def train_steps(model, steps: int = 5, lr: float = 1e-2) -> None:
    """A few AdamW steps in train mode (dropout on, BatchNorm statistics move) on a fixed batch."""
    if model.modality == "text":
        batch = dict(model.tokenizer(TEXTS[:8], padding=True, return_tensors="pt"))
    else:
        batch = {"image": torch.randn(8, *model.data_config["input_size"], generator=torch.Generator().manual_seed(0))}
    labels = torch.tensor([0, 1] * 4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def perturb(model, scale: float) -> None:
    """Noise of `scale` times each tensor's own spread on every parameter."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.net.parameters():
            spread = param.std() if param.numel() > 1 else param.abs()
            param.add_(torch.randn(param.shape, generator=gen) * spread.nan_to_num(0.02).clamp(min=1e-3) * scale)


@pytest.fixture
def make(tiny_text_models, tiny_whisper):
    def build(backbone: str):
        from lokal.models.speech import WhisperASR, WhisperAudioClassifier

        torch.manual_seed(0)
        if backbone in ("bert", "llama"):
            return text_model(tiny_text_models[backbone])
        if backbone == "whisper":  # the reference: general Indonesian sentences read by espeak-ng
            return WhisperASR(str(tiny_whisper))
        if backbone == "whisper_classifier":
            return WhisperAudioClassifier(str(tiny_whisper), num_classes=2)
        return image_model({"cnn": "test_efficientnet", "vit": "test_vit"}[backbone])
    return build


def ckas(report: dict) -> list[float]:
    return [v for k, v in report.items() if k.startswith("forgetting/cka")]


@pytest.mark.parametrize("backbone", ["bert", "llama", "cnn", "vit", "whisper", "whisper_classifier"])
def test_unchanged_model_reports_one_on_the_shipped_reference(make, backbone):
    model = make(backbone)
    report = forgetting_report(base_copy(model), model, limit=32)
    assert report["forgetting/examples"] == 32
    assert len(ckas(report)) >= 3  # final + at least two blocks
    assert all(value == pytest.approx(1.0, abs=1e-6) for value in ckas(report))


@pytest.mark.parametrize("backbone", ["bert", "cnn", "whisper"])
def test_weight_perturbation_lowers_cka_in_order(make, backbone):
    base = make(backbone)
    values = []
    for scale in (0.01, 1.0):
        tuned = base_copy(base)
        perturb(tuned, scale)
        values.append(forgetting_report(base, tuned, limit=32)["forgetting/cka"])
    assert 1.0 - 1e-2 < values[0] < 1.0
    assert values[1] < 0.9
    assert values[1] < values[0]


def test_detached_adapter_reports_exactly_no_loss(tiny_text_models):
    from lokal.methods.adapter import Adapter, detach

    model = text_model(tiny_text_models["bert"])
    base = base_copy(model)
    Adapter(reduction_factor=4).apply(model)
    train_steps(model, lr=5e-2)
    attached = forgetting_report(base, model)
    assert attached["forgetting/cka"] < 1.0 - 1e-5  # the adapter did change the features
    detached = forgetting_report(base, detach(model))
    assert all(value == 1.0 for value in ckas(detached))


def test_detached_adapter_on_a_cnn_shows_batchnorm_drift():
    """Frozen weights are not the whole base: BatchNorm statistics move in train mode, and the
    meter sees it even after the adapters are gone."""
    from lokal.methods.adapter import Adapter, detach
    from lokal.training.weights import trained_state

    model = image_model()
    base = base_copy(model)
    Adapter().apply(model)
    train_steps(model, steps=2)
    report = forgetting_report(base, detach(model), limit=24)
    assert report["forgetting/cka"] < 1.0 - 1e-6
    frozen, head = dict(base.net.named_parameters()), tuple(f"{h}." for h in model.head_names)
    assert all(torch.equal(p, frozen[n]) for n, p in model.net.named_parameters() if not n.startswith(head))
    model.net.load_state_dict(trained_state(base.net, parameters=False), strict=False)  # the base's statistics
    assert all(value == 1.0 for value in ckas(forgetting_report(base, model, limit=24)))


def test_lora_base_comes_from_its_disabled_adapters(tiny_text_models):
    from lokal.methods.lora import LoRA

    model = LoRA(dropout=0.0).apply(text_model(tiny_text_models["bert"], ["query", "value"]))
    assert base_copy(model) is None  # nothing to copy: the adapters switch off
    train_steps(model, lr=5e-2)
    shortcut = forgetting_report(None, model)
    fresh = forgetting_report(text_model(tiny_text_models["bert"]), model)
    assert shortcut == pytest.approx(fresh, abs=1e-12)
    assert shortcut["forgetting/cka"] < 1.0 - 1e-5
    with model.net.disable_adapter():  # LoRA switched off is the base again, bit for bit
        assert all(value == 1.0 for value in ckas(forgetting_report(None, model)))
    assert not model.net._adapters_disabled  # and the adapters are back on afterwards


def test_base_must_be_kept_when_the_model_cannot_give_it_back(tiny_text_models):
    from lokal.methods.lora import LoRA

    with pytest.raises(LokalError, match="not a PEFT model.*base_copy"):
        forgetting_report(None, text_model(tiny_text_models["bert"]))
    cnn = LoRA().apply(image_model())  # PEFT, but its BatchNorm statistics train
    with pytest.raises(LokalError, match="BatchNorm.*base_copy"):
        forgetting_report(None, cnn)
    kept = base_copy(cnn)
    assert kept is not None and not kept.training and not any(p.requires_grad for p in kept.parameters())
    report = forgetting_report(kept, cnn, limit=16)  # blocks found and hooked through the PEFT wrapper
    assert "forgetting/cka/block_0" in report and all(value == 1.0 for value in ckas(report))


def test_measuring_leaves_mode_and_device_as_found(tiny_text_models):
    model = text_model(tiny_text_models["bert"]).train()
    base = base_copy(model)
    forgetting_report(base, model)
    assert model.net.training and not base.net.training
    assert next(base.parameters()).device.type == "cpu"


def test_causal_lm_perplexity_matches_hf_loss(tiny_causal_lm):
    from lokal.models.causal_lm import CausalLM

    model = CausalLM(str(tiny_causal_lm))
    base = base_copy(model)
    same = forgetting_report(base, model, TEXTS)
    assert same["forgetting/ppl_ratio"] == 1.0 and same["forgetting/cka"] == 1.0
    # HF's own mean loss, text by text, weighted by each text's predicted tokens
    nll = tokens = 0
    for text in TEXTS:
        enc = model.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            loss = model.net(**enc, labels=enc["input_ids"]).loss
        count = enc["input_ids"].shape[1] - 1
        nll, tokens = nll + float(loss) * count, tokens + count
    assert same["forgetting/ppl_base"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    perturb(model, 0.5)
    changed = forgetting_report(base, model, TEXTS)
    ratio = changed["forgetting/ppl_tuned"] / changed["forgetting/ppl_base"]
    assert changed["forgetting/ppl_ratio"] == pytest.approx(ratio)
    assert changed["forgetting/ppl_ratio"] != pytest.approx(1.0, abs=1e-3)
    assert changed["forgetting/cka"] < 1.0


def test_summary_line_names_cka_blocks_and_perplexity():
    report = {"forgetting/cka": 0.9, "forgetting/cka/block_0": 0.95, "forgetting/cka/block_1": 0.85,
              "forgetting/examples": 130, "forgetting/ppl_base": 10.0, "forgetting/ppl_tuned": 12.0,
              "forgetting/ppl_ratio": 1.2}
    line = summary_line(report)
    assert "CKA 0.9000" in line and "lowest block 0.8500" in line and "10.00 -> 12.00 (x1.200)" in line


# -- reference sets -------------------------------------------------------------------------------

def test_shipped_references():
    texts = reference_inputs(None, "text")
    assert len(texts) >= 100 and len(set(texts)) == len(texts)
    crops = reference_inputs(None, "image", limit=40)
    assert len(crops) == 40 and all(c.mode == "RGB" for c in crops)
    again = sample_crops(40)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(crops, again, strict=True))
    assert len({c.size for c in crops}) > 10  # crops of many scales


def test_user_references(tmp_path):
    from PIL import Image

    (tmp_path / "general.txt").write_text("\n".join(TEXTS) + "\n\n", encoding="utf-8")
    assert reference_inputs(tmp_path / "general.txt", "text") == TEXTS
    import pandas as pd

    pd.DataFrame({"text": TEXTS, "other": 1}).to_csv(tmp_path / "general.csv", index=False)
    assert reference_inputs(str(tmp_path / "general.csv"), "text") == TEXTS
    assert reference_inputs(tmp_path / "general.csv", "text", limit=5) == reference_inputs(
        tmp_path / "general.csv", "text", limit=5)  # a fixed sample
    assert len(reference_inputs(tmp_path / "general.csv", "text", limit=5)) == 5
    images = tmp_path / "photos" / "nested"
    images.mkdir(parents=True)
    for i in range(12):
        Image.new("L", (20 + i, 30), color=i * 20).save(images / f"{i}.png")
    loaded = reference_inputs(tmp_path / "photos", "image")
    assert len(loaded) == 12 and all(image.mode == "RGB" for image in loaded)


@pytest.mark.parametrize(("name", "modality", "message"), [
    ("missing.txt", "text", "does not exist"),
    ("photos", "text", "is a folder, but the model reads text"),
    ("general.txt", "image", "give a folder of images"),
    ("wrong.csv", "text", "no `text` column; columns are \\['sentence'\\]"),
    ("short.txt", "text", "has 3 examples; CKA needs at least 10"),
])
def test_bad_references_say_what_to_do(tmp_path, name, modality, message):
    import pandas as pd

    (tmp_path / "photos").mkdir()
    (tmp_path / "general.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    (tmp_path / "short.txt").write_text("a\nb\nc\n", encoding="utf-8")
    pd.DataFrame({"sentence": TEXTS}).to_csv(tmp_path / "wrong.csv", index=False)
    with pytest.raises(LokalError, match=message):
        reference_inputs(tmp_path / name, modality)


@pytest.mark.integration
@pytest.mark.parametrize("method,cka_range", [("lora", (0.999, 1.0 + 1e-9)), ("full", (0.0, 0.99))])
def test_a_run_reports_forgetting_in_its_metrics(method, cka_range, run_dir, tmp_path, tiny_text_models):
    """evaluation.forgetting=true through the real train.yaml (tiny BERT, 1 epoch): forgetting/*
    keys in metrics.json, CKA in (0, 1]; full fine-tuning at a high lr moves the representations."""
    import json

    import pandas as pd

    from lokal.run import train
    from tests.conftest import FAST, compose

    path = tmp_path / "reviews.csv"
    texts = [f"ulasan nomor {i} {'bagus sekali' if i % 2 else 'jelek banget'}" for i in range(60)]
    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(60)]}).to_csv(path, index=False)
    train(compose(FAST + ["trainer.max_epochs=1", "model=hf_text", f"model.name={tiny_text_models['bert']}",
                          "model.max_length=32", f"method={method}", "method.lr=1e-2", "data=text_csv",
                          f"data.path={path}", "data.batch_size=8", "evaluation.plots=false",
                          "evaluation.forgetting=true"], run_dir))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["forgetting/examples"] > 10
    assert cka_range[0] < metrics["forgetting/cka"] <= cka_range[1]  # (measured: LoRA 0.99997, full 0.907)

"""Per-domain adapters on one frozen base, on tiny random models of every backbone family:
hot-swapped adapters give each one's own outputs; a merged model equals the adapter model,
and its exported files load back with plain transformers / timm to the same outputs."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from lokal.errors import LokalError
from lokal.methods.additive import Additive
from lokal.methods.lora import LoRA
from lokal.runs.adapters import AdapterBank, export, from_runs, logits, merge, unique_name
from lokal.training.weights import adapter_name, is_peft, load_weights, save_weights
from tests.test_methods import LORA_TARGETS, make_batch, make_model

BACKBONES = [b for b in LORA_TARGETS if b != "whisper"]  # the classifiers: bert, llama, cnn, vit (timm test models)
KINDS = {"lora": lambda name: LoRA(r=4, alpha=8, dropout=0.0, adapter_name=name),
         "ia3": lambda name: Additive(kind="ia3", adapter_name=name)}  # the bank is generic over PEFT kinds


@pytest.fixture
def paths(tiny_text_models):
    return tiny_text_models


def train_adapter(backbone, paths, name: str, batch, run_dir, steps: int = 5, kind: str = "lora"):
    """An adapter trained a few steps on `batch` and saved to `run_dir` (BatchNorm statistics move too)."""
    model = KINDS[kind](name).apply(make_model(backbone, paths)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        torch.nn.functional.cross_entropy(model(batch), batch["label"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    save_weights(model, run_dir)
    return model.eval()


def head(net):
    """The active adapter's task head weights (LoRA saves the head per adapter: modules_to_save)."""
    return {n: p for n, p in net.named_parameters() if "modules_to_save" in n and net.active_adapter in n}


@pytest.mark.parametrize("backbone,kind", [(b, "lora") for b in BACKBONES] + [("bert", "ia3"), ("cnn", "ia3")])
def test_hot_swapped_adapters_give_each_ones_own_outputs(backbone, kind, paths, tmp_path):
    batch = make_batch(backbone)
    flipped = batch | {"label": 1 - batch["label"]}  # the other domain: the opposite mapping
    own = {"jakarta": train_adapter(backbone, paths, "jakarta", batch, tmp_path / "jakarta", kind=kind),
           "bali": train_adapter(backbone, paths, "bali", flipped, tmp_path / "bali", kind=kind)}
    expected = {name: logits(model, batch) for name, model in own.items()}
    assert not torch.allclose(expected["jakarta"], expected["bali"], atol=1e-3)

    bank = AdapterBank(make_model(backbone, paths))
    assert [bank.add(tmp_path / "jakarta"), bank.add(tmp_path / "bali")] == ["jakarta", "bali"]
    base = bank.model.net.get_base_model()
    frozen = {n: p.data_ptr() for n, p in base.named_parameters() if f"{kind}_" not in n and "modules_to_save" not in n}
    for name in ("jakarta", "bali", "jakarta", "bali"):  # and back: nothing of the last one lingers
        out = logits(bank.use(name), batch)
        assert torch.allclose(out, expected[name], atol=1e-6), f"{name}: {(out - expected[name]).abs().max()}"
        bank_head, own_head = head(bank.model.net), head(own[name].net)
        assert bank_head.keys() == own_head.keys() and bank_head
        assert all(torch.equal(bank_head[k], own_head[k]) for k in own_head)  # the head switches with the adapter
    assert bank.model.net.get_base_model() is base  # the base was never reloaded or copied
    assert {n: p.data_ptr() for n, p in base.named_parameters() if n in frozen} == frozen
    assert not any(p.requires_grad for p in bank.model.parameters())
    assert {a.kind for a in bank.adapters.values()} == {kind.upper()}


@pytest.mark.parametrize("backbone,kind", [(b, "lora") for b in BACKBONES] + [("bert", "ia3"), ("cnn", "ia3")])
def test_merged_model_equals_the_adapter_model_and_its_export_loads_plainly(backbone, kind, paths, tmp_path):
    batch = make_batch(backbone)
    train_adapter(backbone, paths, "jakarta", batch, tmp_path / "run", kind=kind)
    model = load_weights(make_model(backbone, paths), tmp_path / "run")  # as `lokal export` rebuilds a run
    expected = logits(model, batch)

    merged = merge(model, batch)
    assert not is_peft(merged.net) and not any(f"{kind}_" in k for k in merged.net.state_dict())
    assert torch.allclose(logits(merged, batch), expected, atol=1e-5)

    out = export(merged, tmp_path / "exported", ["neg", "pos"], batch)
    for plain in plain_loaders(backbone, out):
        assert torch.allclose(plain(batch), expected, atol=1e-5)


def plain_loaders(backbone: str, folder):
    """The exported folder loaded the ways a user would, without lokal."""
    if backbone in ("bert", "llama"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        net = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        assert net.config.id2label == {0: "neg", 1: "pos"}
        assert AutoTokenizer.from_pretrained(folder).pad_token_id is not None
        return [lambda b: net(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.detach()]
    import timm

    config = json.loads((folder / "config.json").read_text())
    assert config["label_names"] == ["neg", "pos"] and config["num_classes"] == 2
    by_folder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    overlay = {"file": str(folder / "model.safetensors"), "num_classes": 2}
    by_file = timm.create_model(config["architecture"], num_classes=2, pretrained=True,
                                pretrained_cfg_overlay=overlay).eval()
    return [lambda b: by_folder(b["image"]).detach(), lambda b: by_file(b["image"]).detach()]


def test_adapters_save_flat_under_their_name_and_load_back_under_it(paths, tmp_path):
    batch = make_batch("cnn")
    train_adapter("cnn", paths, "jakarta", batch, tmp_path, steps=1)
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "buffers.safetensors", "lokal_adapter.json"]
    assert adapter_name(tmp_path) == "jakarta"
    assert load_weights(make_model("cnn", paths), tmp_path).net.active_adapter == "jakarta"


def test_runs_sharing_a_name_get_suffixes_and_unknown_names_are_refused(paths, tmp_path):
    train_adapter("bert", paths, "default", make_batch("bert"), tmp_path, steps=1)
    bank = AdapterBank(make_model("bert", paths))
    assert [bank.add(tmp_path), bank.add(tmp_path)] == ["default", "default_2"]
    assert unique_name("x", {"x": 1, "x_2": 1}) == "x_3"
    with pytest.raises(LokalError, match="no adapter 'bali'.*default, default_2"):
        bank.use("bali")


@pytest.mark.parametrize("name", ["a", "bad.name", "lora"])
def test_adapter_names_that_would_break_peft_are_refused(name, paths):
    with pytest.raises(LokalError, match="adapter.name="):
        LoRA(adapter_name=name).apply(make_model("bert", paths))


def fake_run(run_dir, model_name: str = "tiny-bert", kind: str | None = "LORA"):
    """A run directory's config and adapter config, enough for the checks before any loading."""
    run_dir.mkdir(parents=True)
    OmegaConf.save({"model": {"_target_": "lokal.models.text.TextClassifier", "name": model_name}},
                   run_dir / "config.yaml")
    if kind:
        (run_dir / "adapter").mkdir()
        (run_dir / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": kind}))
    else:
        (run_dir / "weights.safetensors").write_bytes(b"")
    return run_dir


def test_a_run_without_an_adapter_is_refused_clearly(tmp_path):
    runs = [fake_run(tmp_path / "lora_run"), fake_run(tmp_path / "bitfit_run", kind=None)]
    with pytest.raises(LokalError, match="bitfit_run has no adapter/.*method=lora adapter.name=NAME"):
        from_runs(runs)
    with pytest.raises(LokalError, match="not a lokal run directory"):
        from_runs([tmp_path / "nowhere"])


def test_runs_on_different_bases_or_of_different_kinds_are_refused(tmp_path):
    with pytest.raises(LokalError, match=r"other_base was trained on another base.*model.name=tiny-llama"):
        from_runs([fake_run(tmp_path / "a_run"), fake_run(tmp_path / "other_base", model_name="tiny-llama")])
    with pytest.raises(LokalError, match=r"different kinds \(IA3, LORA\)"):
        from_runs([fake_run(tmp_path / "lora_run"), fake_run(tmp_path / "ia3_run", kind="IA3")])


@pytest.mark.parametrize("backbone", ["bert", "cnn"])
def test_a_model_whose_method_changed_the_architecture_does_not_export(backbone, paths, tmp_path):
    """Weights a plain model has no place for (e.g. a side network) would be dropped on loading."""
    model = make_model(backbone, paths).eval()
    model.net.lokal_side = torch.nn.Linear(2, 2)
    model.register_forward_hook(lambda _m, _args, out: out + model.net.lokal_side(out))
    with pytest.raises(LokalError, match="do not load as a plain model|differs from the trained model"):
        export(model, tmp_path / "out", ["neg", "pos"], make_batch(backbone))
    assert not (tmp_path / "out").exists()


def test_export_never_overwrites_a_folder_with_files(paths, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(LokalError, match="exists and is not empty"):
        export(make_model("cnn", paths), tmp_path / "out", ["neg", "pos"], make_batch("cnn"))
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_lokal_help_stays_light_and_a_bad_run_dir_is_one_clear_line(tmp_path):
    from tests.test_cli import run

    heavy = "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'timm') if m in sys.modules))"
    for argv in (["--help"], ["adapters", "--help"], ["export", "--help"]):
        code = f"import sys; sys.argv = ['lokal', *{argv!r}]\nfrom lokal.cli import main\n" \
               f"try: main()\nexcept SystemExit: pass\n{heavy}"
        result = run(code=code)
        assert result.returncode == 0 and "HEAVY []" in result.stdout, result.stderr
    assert "lokal export RUN_DIR OUT_DIR" in run(code="import sys; sys.argv = ['lokal']\nfrom lokal.cli import main\n"
                                                     "main()").stderr
    result = run(code=f"import sys; sys.argv = ['lokal', 'adapters', '{tmp_path}']\nfrom lokal.cli import main\nmain()")
    assert result.returncode == 2 and "is not a lokal run directory" in result.stderr
    assert "Traceback" not in result.stderr


# -- integration: two domains trained through the real train.yaml, then the CLI commands ----------
def write_domain(path, positive: str, negative: str, rows: int = 30):
    lines = ["text,label"] + [f"{positive} {i},pos" for i in range(rows)] + [f"{negative} {i},neg" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.integration
def test_two_domains_trained_then_compared_and_exported(paths, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from lokal.cli import adapters_main, export_main
    from lokal.run import train
    from tests.conftest import FAST, compose

    domains = {"jakarta": write_domain(tmp_path / "jakarta.csv", "jalanan lancar sekali", "macet parah lagi"),
               "bali": write_domain(tmp_path / "bali.csv", "pantai indah bersih", "ombak kotor sampah")}
    runs = {}
    for name, csv in domains.items():
        runs[name] = tmp_path / name
        cfg = compose(FAST + ["method=lora", f"adapter.name={name}", "data=text_csv", f"data.path={csv}",
                              f"model.name={paths['bert']}", "model.pooling=first", "model.max_length=16",
                              "data.batch_size=8"], runs[name])  # pooling=first: a plain HF head exports
        train(cfg)

    adapters_main([str(runs["jakarta"]), str(runs["bali"]), "--out", str(tmp_path / "report.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    assert "| domain \\ adapter | jakarta | bali |" in capsys.readouterr().out
    assert sorted(report["metrics"]) == sorted(report["adapters"]) == ["bali", "jakarta"]
    for name, run_dir in runs.items():  # the bank's own-domain cell is the run's own test score
        own = json.loads((run_dir / "metrics.json").read_text())
        cell = report["metrics"][name][name]
        assert (cell["accuracy"], cell["auroc"]) == pytest.approx((own["test/accuracy"], own["test/auroc"]), abs=1e-5)
        size = sum(f.stat().st_size for f in (run_dir / "adapter").iterdir())
        assert report["adapters"][name]["bytes"] == size < report["base"]["bytes"]

    export_main([str(runs["bali"]), str(tmp_path / "bali_model")])
    net = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bali_model")
    assert net.config.id2label == {0: "neg", 1: "pos"}

    with pytest.raises(LokalError, match="not a lokal run directory"):
        adapters_main([str(runs["bali"]), str(tmp_path)])


# -- a head that reads the mean (model.pooling=mean, the default e5's) ---------------------------
def mean_pooled_export(paths, tmp_path):
    from lokal.models.text import TextClassifier

    batch = make_batch("bert")
    torch.manual_seed(0)
    model = LoRA(r=4, alpha=8, dropout=0.0).apply(TextClassifier(str(paths["bert"]), num_classes=2, pooling="mean",
                                                               lora_targets=LORA_TARGETS["bert"]))
    for p in model.parameters():  # a trained adapter: LoRA's B starts at zero
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.2)
    expected = logits(model, batch)
    first_token = model.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.detach()
    assert not torch.allclose(first_token, expected, atol=1e-3)  # the pooling matters on this batch
    return export(merge(model, batch), tmp_path / "exported", ["neg", "pos"], batch), batch, expected


def test_a_mean_pooled_model_exports_and_loads_with_plain_transformers(paths, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lokal.runs.adapters import how_to_load
    from lokal.runs.predict import ExportedText

    out, batch, expected = mean_pooled_export(paths, tmp_path)
    net = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    plain = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.detach()
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=0)
    assert AutoTokenizer.from_pretrained(out, trust_remote_code=True).pad_token_id is not None
    assert net.config.id2label == {0: "neg", 1: "pos"} and how_to_load(out).count("trust_remote_code=True") == 2
    asked = []  # without the flag, transformers asks in a terminal whether to run the folder's code
    load = AutoTokenizer.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        asked.append(kwargs.get("trust_remote_code"))
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(recording))
    torch.testing.assert_close(ExportedText(out)(batch).detach(), expected, atol=1e-5, rtol=0)  # lokal predict
    assert asked == [True]
    with pytest.raises(ValueError, match="trust_remote_code"):  # never silently the first token
        AutoModelForSequenceClassification.from_pretrained(out)


def test_code_lokal_did_not_write_is_not_run(paths, tmp_path):
    from lokal.runs.predict import ExportedText

    out, _, _ = mean_pooled_export(paths, tmp_path)
    code = out / "modeling_mean_pooling.py"
    code.write_text(code.read_text() + "\nimport os  # changed\n")
    with pytest.raises(LokalError, match="did not write"):
        ExportedText(out)
